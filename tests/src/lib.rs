//! Integration-test crate: the tests live in `tests/tests/`; this library holds fixtures they
//! share.

pub mod kube_api;
