//! Discovery: sources that find out which member is primary and which are
//! replicas, folded into a [`Topology`] value published through
//! `tokio::sync::watch`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod topology;

pub use topology::{Member, Role, Topology};
