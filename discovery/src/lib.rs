//! Discovery: sources that find out which member is primary and which are
//! replicas, folded into a [`Topology`] value published through
//! `tokio::sync::watch`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod probe;
pub mod static_source;
pub mod topology;

pub use probe::{Observation, ProbeConfig, StaticMember, fold, parse_lsn};
pub use static_source::{ProbeHandle, probe_once, spawn_static};
pub use topology::{Member, Role, Topology};
