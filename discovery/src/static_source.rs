//! The static discovery source: a configured member list, each member probed with SQL by its
//! own task, the observations folded into the published [`Topology`].
//!
//! Every member task keeps one persistent connection and sends one [`Observation`] per probe; a
//! single folding task owns the observations, applies [`fold`] and publishes at once with
//! `send_if_modified`, so a role change shows within one probe round trip.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::probe::{Observation, ProbeConfig, Prober, StaticMember, fold};
use crate::topology::{Member, Role, Topology};

/// Re-probes asked for through a [`ProbeHandle`] start no sooner than this after the previous
/// probe of the same member started, so a burst of refused connections cannot turn into a
/// probe storm.
pub const MIN_REPROBE_GAP: Duration = Duration::from_millis(50);

/// Asks a running static source to probe every member now rather than at the next interval.
///
/// Cheap to clone; calling it while the source is not running does nothing.
#[derive(Debug, Clone, Default)]
pub struct ProbeHandle {
    notify: Arc<Notify>,
}

impl ProbeHandle {
    /// Probes every member as soon as possible (for instance after a backend refused a
    /// connection). Requests that arrive while a probe is running cause one more probe right
    /// after it; requests never queue up beyond that.
    pub fn reprobe(&self) {
        self.notify.notify_waiters();
    }
}

/// Runs the static source until `cancel` fires.
///
/// Publishes all members as [`Role::Unknown`] at once, then every observation as it arrives.
/// `confirmed_at` is refreshed on every observation without waking receivers; they are woken
/// when members change (roles, readiness, but also LSN and lag). Returns the handle that asks
/// for an immediate re-probe and the task, which ends after `cancel` fires.
pub fn spawn_static(
    members: Vec<StaticMember>,
    probe: ProbeConfig,
    tx: watch::Sender<Topology>,
    cancel: CancellationToken,
) -> (ProbeHandle, JoinHandle<()>) {
    let handle = ProbeHandle::default();
    let notify = Arc::clone(&handle.notify);
    let task = tokio::spawn(run_static(members, probe, tx, notify, cancel));
    (handle, task)
}

async fn run_static(
    members: Vec<StaticMember>,
    probe: ProbeConfig,
    tx: watch::Sender<Topology>,
    notify: Arc<Notify>,
    cancel: CancellationToken,
) {
    let (out, mut observations) = mpsc::channel(members.len().max(1) * 2);
    let mut tasks = JoinSet::new();
    for member in &members {
        let prober = Prober::new(member.clone(), &probe);
        let lane = Lane {
            interval: probe.interval,
            notify: Arc::clone(&notify),
            out: out.clone(),
            cancel: cancel.clone(),
        };
        tasks.spawn(lane.run(prober));
    }
    drop(out);
    let mut folder = Folder::new(members);
    folder.publish(&tx);
    while let Some(Some((name, observation))) =
        cancel.run_until_cancelled(observations.recv()).await
    {
        folder.observations.insert(name, observation);
        folder.publish(&tx);
    }
    // Without members the loop ends at once; still run until cancelled, as documented.
    cancel.cancelled().await;
    drop(observations);
    while let Some(result) = tasks.join_next().await {
        if let Err(e) = result {
            error!(error = %e, "member probe task failed");
        }
    }
}

/// What one member task needs besides its [`Prober`].
struct Lane {
    interval: Duration,
    notify: Arc<Notify>,
    out: mpsc::Sender<(String, Observation)>,
    cancel: CancellationToken,
}

impl Lane {
    /// Probes every interval (or sooner when asked) until cancelled or the folder is gone.
    async fn run(self, mut prober: Prober) {
        loop {
            // Registered before probing: a re-probe asked for during the probe is not lost.
            let mut reprobe = pin!(self.notify.notified());
            let started = Instant::now();
            let Some(observation) = self.cancel.run_until_cancelled(prober.observe()).await else {
                return;
            };
            if self
                .out
                .send((prober.name().to_owned(), observation))
                .await
                .is_err()
            {
                return;
            }
            let wait = async {
                tokio::select! {
                    () = tokio::time::sleep(self.interval) => {}
                    () = reprobe.as_mut() => {
                        tokio::time::sleep_until(started + MIN_REPROBE_GAP).await;
                    }
                }
            };
            if self.cancel.run_until_cancelled(wait).await.is_none() {
                return;
            }
        }
    }
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
        let now = SystemTime::now();
        tx.send_if_modified(|topology| {
            topology.confirmed_at = Some(now);
            let error_cleared = topology.source_error.take().is_some();
            topology.replace_members(next.clone()) || error_cleared
        });
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
