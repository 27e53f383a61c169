//! The static discovery source: a configured member list, each member probed with SQL by its
//! own lane of a [`ProbeSet`], the observations folded into the published [`Topology`].
//!
//! Every lane keeps one persistent connection and sends one [`Observation`] per probe; a
//! single folding task owns the observations, applies [`fold`] and publishes at once with
//! `send_if_modified`, so a role change shows within one probe round trip.

use std::collections::BTreeMap;
use std::time::SystemTime;

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use crate::probe_set::{MIN_REPROBE_GAP, ProbeHandle};

use crate::probe::{Observation, ProbeConfig, Prober, StaticMember, fold};
use crate::probe_set::ProbeSet;
use crate::topology::{Member, Role, Topology};
use crate::verify::publish;

/// Runs the static source until `cancel` fires.
///
/// Publishes all members as [`Role::Unknown`] at once, then every observation as it arrives.
/// `confirmed_at` is refreshed on every observation without waking receivers; they are woken
/// when members change (roles, readiness, but also LSN and lag). Returns the handle that asks
/// for an immediate re-probe and the task, which ends after `cancel` fires and every probe
/// connection is closed.
pub fn spawn_static(
    members: Vec<StaticMember>,
    probe: ProbeConfig,
    tx: watch::Sender<Topology>,
    cancel: CancellationToken,
) -> (ProbeHandle, JoinHandle<()>) {
    let (out, observations) = mpsc::channel(members.len().max(1) * 2);
    let set = ProbeSet::new(probe, out, cancel.clone());
    let handle = set.handle();
    let task = tokio::spawn(run_static(members, set, observations, tx, cancel));
    (handle, task)
}

async fn run_static(
    members: Vec<StaticMember>,
    mut set: ProbeSet,
    mut observations: mpsc::Receiver<(String, Observation)>,
    tx: watch::Sender<Topology>,
    cancel: CancellationToken,
) {
    let addresses: BTreeMap<String, String> = members
        .iter()
        .map(|m| (m.name.clone(), m.address.clone()))
        .collect();
    set.sync(&addresses);
    let mut folder = Folder::new(members);
    folder.publish(&tx);
    while let Some(Some((name, observation))) =
        cancel.run_until_cancelled(observations.recv()).await
    {
        folder.observations.insert(name, observation);
        folder.publish(&tx);
    }
    drop(observations);
    set.shutdown().await;
}

/// The folding task's state: configuration, latest observations, what was last published.
struct Folder {
    members: Vec<StaticMember>,
    observations: BTreeMap<String, Observation>,
    published: BTreeMap<String, Member>,
    contested: bool,
}

impl Folder {
    fn new(members: Vec<StaticMember>) -> Folder {
        Folder {
            members,
            observations: BTreeMap::new(),
            published: BTreeMap::new(),
            contested: false,
        }
    }

    /// Folds the observations and publishes them, waking receivers only if members changed.
    fn publish(&mut self, tx: &watch::Sender<Topology>) {
        let next = fold(&self.members, &self.observations);
        self.log_transitions(&next);
        publish(tx, next.clone(), None, None);
        self.published = next;
    }

    /// Logs role changes per member, and a primary conflict once when it starts and ends.
    fn log_transitions(&mut self, next: &BTreeMap<String, Member>) {
        for member in next.values() {
            let before = self
                .published
                .get(&member.name)
                .map_or(Role::Unknown, |m| m.role);
            if before == member.role {
                continue;
            }
            let note = member.note.as_deref().unwrap_or("");
            if member.role == Role::Unreachable {
                warn!(member = %member.name, from = %before, error = %note, "member unreachable");
            } else {
                info!(member = %member.name, from = %before, to = %member.role, "member role changed");
            }
        }
        let primaries: Vec<&str> = next
            .values()
            .filter(|m| m.role == Role::Primary)
            .map(|m| m.name.as_str())
            .collect();
        let contested = primaries.len() > 1;
        if contested && !self.contested {
            let primaries = primaries.join(",");
            error!(primaries = %primaries, "two members claim to be primary: no primary until resolved");
        } else if !contested && self.contested {
            info!(primaries = %primaries.join(","), "primary conflict resolved");
        }
        self.contested = contested;
    }
}

/// Probes every member once, concurrently (for `pgsteer check`), and returns the topology.
///
/// Each probe is bounded by `probe.timeout`; connections are closed afterwards.
pub async fn probe_once(members: &[StaticMember], probe: &ProbeConfig) -> Topology {
    let mut probes = JoinSet::new();
    for member in members {
        let mut prober = Prober::new(member.clone(), probe);
        probes.spawn(async move {
            let observation = prober.observe().await;
            (prober.name().to_owned(), observation)
        });
    }
    let mut observations = BTreeMap::new();
    while let Some(result) = probes.join_next().await {
        match result {
            Ok((name, observation)) => {
                observations.insert(name, observation);
            }
            Err(e) => error!(error = %e, "member probe task failed"),
        }
    }
    let mut topology = Topology::default();
    topology.replace_members(fold(members, &observations));
    topology.confirmed_at = Some(SystemTime::now());
    topology
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An address that refuses connections: a port that was just free.
    fn refusing_address() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").to_string()
    }

    fn fast_probe() -> ProbeConfig {
        ProbeConfig {
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(5),
            ..ProbeConfig::default()
        }
    }

    #[tokio::test]
    async fn unreachable_members_are_published_and_the_source_stops_on_cancel() {
        let members = vec![
            StaticMember::new("pg-0", refusing_address()),
            StaticMember::new("pg-1", "not-an-address"),
        ];
        let (tx, mut rx) = watch::channel(Topology::default());
        let cancel = CancellationToken::new();
        let (handle, task) = spawn_static(members, fast_probe(), tx, cancel.clone());
        handle.reprobe();
        let deadline = Duration::from_secs(10);
        let topology = tokio::time::timeout(
            deadline,
            rx.wait_for(|t| {
                t.members.len() == 2 && t.members.values().all(|m| m.role == Role::Unreachable)
            }),
        )
        .await
        .expect("members become unreachable in time")
        .expect("source alive")
        .clone();
        assert_eq!(topology.members.len(), 2);
        assert!(topology.confirmed_at.is_some());
        assert!(topology.members.values().all(|m| !m.routable));
        let note = topology.members["pg-1"].note.clone().unwrap_or_default();
        assert!(note.contains("invalid member address"), "{note}");
        cancel.cancel();
        tokio::time::timeout(deadline, task)
            .await
            .expect("source stops when cancelled")
            .expect("source does not panic");
    }

    #[tokio::test]
    async fn reprobe_probes_again_without_waiting_for_the_interval() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        let (accepted_tx, mut accepted) = mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            // Accept and hang up at once: every probe is one accepted connection.
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
                let _ = accepted_tx.send(());
            }
        });
        let probe = ProbeConfig {
            interval: Duration::from_secs(3600),
            ..fast_probe()
        };
        let (tx, _rx) = watch::channel(Topology::default());
        let cancel = CancellationToken::new();
        let members = vec![StaticMember::new("pg-0", address)];
        let (handle, task) = spawn_static(members, probe, tx, cancel.clone());
        let deadline = Duration::from_secs(10);
        tokio::time::timeout(deadline, accepted.recv())
            .await
            .expect("first probe");
        handle.reprobe();
        tokio::time::timeout(deadline, accepted.recv())
            .await
            .expect("a second probe long before the hour is up");
        cancel.cancel();
        tokio::time::timeout(deadline, task)
            .await
            .expect("stops")
            .expect("no panic");
        server.abort();
    }

    #[test]
    fn the_folder_flags_a_primary_conflict_while_it_lasts() {
        let up = |in_recovery| Observation::Up {
            in_recovery,
            lsn: 1,
            replay_delay: None,
            round_trip: Duration::from_millis(1),
        };
        let members = vec![
            StaticMember::new("pg-0", "a:1"),
            StaticMember::new("pg-1", "b:1"),
        ];
        let (tx, rx) = watch::channel(Topology::default());
        let mut folder = Folder::new(members);
        folder.observations.insert("pg-0".to_owned(), up(false));
        folder.observations.insert("pg-1".to_owned(), up(true));
        folder.publish(&tx);
        assert!(!folder.contested);
        assert_eq!(rx.borrow().primary().map(|m| m.name.as_str()), Some("pg-0"));
        folder.observations.insert("pg-1".to_owned(), up(false));
        folder.publish(&tx);
        assert!(folder.contested);
        assert!(rx.borrow().primary().is_none());
        folder.observations.insert("pg-0".to_owned(), up(true));
        folder.publish(&tx);
        assert!(!folder.contested);
        assert_eq!(rx.borrow().primary().map(|m| m.name.as_str()), Some("pg-1"));
        assert_eq!(rx.borrow().generation, 3);
    }

    #[tokio::test]
    async fn a_source_without_members_runs_until_cancelled() {
        let (tx, rx) = watch::channel(Topology::default());
        let cancel = CancellationToken::new();
        let (_handle, task) = spawn_static(Vec::new(), fast_probe(), tx, cancel.clone());
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops")
            .expect("no panic");
        assert!(rx.borrow().members.is_empty());
    }

    #[tokio::test]
    async fn probe_once_reports_every_member() {
        let members = vec![StaticMember::new("pg-0", refusing_address())];
        let topology = probe_once(&members, &fast_probe()).await;
        assert_eq!(topology.members["pg-0"].role, Role::Unreachable);
        assert_eq!(topology.generation, 1);
        assert!(topology.confirmed_at.is_some());
    }
}
