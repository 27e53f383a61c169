//! Integration-test crate: the tests live in `tests/tests/`; this library is intentionally empty.
