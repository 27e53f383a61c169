//! Discovery: sources that find out which member is primary and which are
//! replicas, folded into a [`Topology`] value published through
//! `tokio::sync::watch`.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used),
    deny(clippy::too_many_lines)
)]

pub mod kubernetes;
pub mod patroni;
pub mod probe;
pub mod probe_set;
pub mod probe_tls;
pub mod static_source;
pub mod topology;
pub mod verify;

#[cfg(test)]
mod test_support;

#[cfg(feature = "kubernetes")]
pub use kubernetes::spawn_kubernetes;
pub use kubernetes::{KubernetesSettings, Preset};
pub use patroni::{ClusterDoc, PatroniSettings, fold_cluster, patroni_once, spawn_patroni};
pub use probe::{Observation, ProbeConfig, StaticMember, fold, parse_lsn};
pub use probe_set::{ProbeHandle, ProbeSet};
pub use probe_tls::ProbeTls;
pub use static_source::{probe_once, spawn_static};
pub use topology::{Fence, Member, Role, Topology};
pub use verify::{publish, verify, zombies};
