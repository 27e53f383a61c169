//! Probe lanes for a changing member set: one task per member that keeps one connection open,
//! probes every interval (or sooner when asked) and sends each [`Observation`] to its owner.
//!
//! The static source runs one set for its fixed list; the Kubernetes and Patroni sources call
//! [`ProbeSet::sync`] whenever their member list changes.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, error};

use crate::probe::{Observation, ProbeConfig, Prober, StaticMember};

/// Re-probes asked for through a [`ProbeHandle`] start no sooner than this after the previous
/// probe of the same member started, so a burst of refused connections cannot turn into a
/// probe storm.
pub const MIN_REPROBE_GAP: Duration = Duration::from_millis(50);

/// Asks running probe lanes to probe every member now rather than at the next interval.
///
/// Cheap to clone; calling it while no lane is running does nothing.
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

/// Probe lanes for a changing member set: one lane (persistent connection, every interval) per
/// member.
///
/// Dropping the set stops every lane and closes its connection. After [`ProbeSet::sync`]
/// removed a member or changed its address, observations the old lane had already queued in
/// `out` may still arrive once: a caller that keeps observations should forget the stored one
/// of a member whose address changed.
pub struct ProbeSet {
    config: ProbeConfig,
    out: mpsc::Sender<(String, Observation)>,
    /// Child of the caller's token: [`ProbeSet::shutdown`] stops the lanes without cancelling
    /// the caller.
    cancel: CancellationToken,
    handle: ProbeHandle,
    lanes: BTreeMap<String, RunningLane>,
}

/// A running lane: the address it probes and its task (aborted, with its connection, on drop).
struct RunningLane {
    address: String,
    task: AbortOnDropHandle<()>,
}

impl ProbeSet {
    /// An empty set. Lanes send `(member name, Observation)` into `out`; all lanes stop when
    /// `cancel` fires or the set is dropped. Starts nothing until [`ProbeSet::sync`].
    pub fn new(
        config: ProbeConfig,
        out: mpsc::Sender<(String, Observation)>,
        cancel: CancellationToken,
    ) -> ProbeSet {
        ProbeSet {
            config,
            out,
            cancel: cancel.child_token(),
            handle: ProbeHandle::default(),
            lanes: BTreeMap::new(),
        }
    }

    /// Makes the lanes match `members` (name → `"host:port"`): starts lanes for new names, stops
    /// lanes of removed names, restarts a lane whose address changed (pod recreated with a new
    /// IP). Cheap when nothing changed. A new lane probes at once.
    ///
    /// Must be called within a Tokio runtime (it spawns the lane tasks).
    pub fn sync(&mut self, members: &BTreeMap<String, String>) {
        self.lanes.retain(|name, lane| {
            let keep = members.get(name) == Some(&lane.address);
            if !keep {
                debug!(member = %name, address = %lane.address, "probe lane stopped");
            }
            keep
        });
        for (name, address) in members {
            if !self.lanes.contains_key(name) {
                let lane = self.start(name, address);
                self.lanes.insert(name.clone(), lane);
            }
        }
    }

    /// Handle that makes every lane probe now.
    pub fn handle(&self) -> ProbeHandle {
        self.handle.clone()
    }

    /// Names and addresses of the running lanes.
    pub fn members(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lanes
            .iter()
            .map(|(name, lane)| (name.as_str(), lane.address.as_str()))
    }

    /// Stops every lane and waits until they have ended and closed their connections.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        for (name, lane) in std::mem::take(&mut self.lanes) {
            if let Err(e) = lane.task.await {
                error!(member = %name, error = %e, "member probe task failed");
            }
        }
    }

    fn start(&self, name: &str, address: &str) -> RunningLane {
        debug!(member = %name, address = %address, "probe lane started");
        let prober = Prober::new(StaticMember::new(name, address), &self.config);
        let lane = Lane {
            interval: self.config.interval,
            notify: Arc::clone(&self.handle.notify),
            out: self.out.clone(),
            cancel: self.cancel.clone(),
        };
        RunningLane {
            address: address.to_owned(),
            task: AbortOnDropHandle::new(tokio::spawn(lane.run(prober))),
        }
    }
}

impl fmt::Debug for ProbeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeSet")
            .field("config", &self.config)
            .field("lanes", &self.members().collect::<BTreeMap<_, _>>())
            .finish_non_exhaustive()
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
    /// Probes every interval (or sooner when asked) until cancelled or the receiver is gone.
    async fn run(self, mut prober: Prober) {
        loop {
            // Registered before probing: a re-probe asked for during the probe is not lost.
            let mut reprobe = pin!(self.notify.notified());
            let started = Instant::now();
            let Some(observation) = self.cancel.run_until_cancelled(prober.observe()).await else {
                return;
            };
            let send = self.out.send((prober.name().to_owned(), observation));
            match self.cancel.run_until_cancelled(send).await {
                Some(Ok(())) => {}
                None | Some(Err(_)) => return,
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

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    const DEADLINE: Duration = Duration::from_secs(10);

    /// A server that accepts connections and never answers: a probe on it hangs until its
    /// timeout, so its connection stays open exactly as long as its lane runs.
    async fn silent_server() -> (String, mpsc::UnboundedReceiver<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                if tx.send(socket).is_err() {
                    return;
                }
            }
        });
        (address, rx)
    }

    /// An address that refuses connections: a port that was just free.
    fn refusing_address() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").to_string()
    }

    fn slow_probe() -> ProbeConfig {
        ProbeConfig {
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(3600),
            ..ProbeConfig::default()
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(n, a)| ((*n).to_owned(), (*a).to_owned()))
            .collect()
    }

    async fn accepted(rx: &mut mpsc::UnboundedReceiver<TcpStream>) -> TcpStream {
        tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .expect("a probe connects in time")
            .expect("server alive")
    }

    /// Waits until the peer closes `socket` (reading whatever the probe sent first).
    async fn closed(mut socket: TcpStream) {
        let mut sink = Vec::new();
        tokio::time::timeout(DEADLINE, socket.read_to_end(&mut sink))
            .await
            .expect("the probe connection is closed in time")
            .expect("read");
    }

    #[tokio::test]
    async fn removing_a_member_closes_its_probe_connection() {
        let (address, mut sockets) = silent_server().await;
        let (out, _rx) = mpsc::channel(8);
        let mut set = ProbeSet::new(slow_probe(), out, CancellationToken::new());
        set.sync(&map(&[("pg-0", &address)]));
        let socket = accepted(&mut sockets).await;
        set.sync(&BTreeMap::new());
        assert_eq!(set.members().count(), 0);
        closed(socket).await;
    }

    #[tokio::test]
    async fn dropping_the_set_or_cancelling_closes_every_probe_connection() {
        let (address, mut sockets) = silent_server().await;
        let (out, _rx) = mpsc::channel(8);
        let mut set = ProbeSet::new(slow_probe(), out.clone(), CancellationToken::new());
        set.sync(&map(&[("pg-0", &address), ("pg-1", &address)]));
        let (a, b) = (accepted(&mut sockets).await, accepted(&mut sockets).await);
        drop(set);
        closed(a).await;
        closed(b).await;

        let cancel = CancellationToken::new();
        let mut set = ProbeSet::new(slow_probe(), out, cancel.clone());
        set.sync(&map(&[("pg-0", &address)]));
        let socket = accepted(&mut sockets).await;
        cancel.cancel();
        closed(socket).await;
        tokio::time::timeout(DEADLINE, set.shutdown())
            .await
            .expect("shutdown");
    }

    #[tokio::test]
    async fn a_changed_address_restarts_the_lane_and_an_unchanged_one_does_not() {
        let (old, mut old_sockets) = silent_server().await;
        let (new, mut new_sockets) = silent_server().await;
        let (out, _rx) = mpsc::channel(8);
        let mut set = ProbeSet::new(slow_probe(), out, CancellationToken::new());
        set.sync(&map(&[("pg-0", &old), ("pg-1", &old)]));
        let first = accepted(&mut old_sockets).await;
        let second = accepted(&mut old_sockets).await;
        let id = |set: &ProbeSet, name: &str| set.lanes[name].task.abort_handle().id();
        let (id0, id1) = (id(&set, "pg-0"), id(&set, "pg-1"));

        set.sync(&map(&[("pg-0", &old), ("pg-1", &old)]));
        assert_eq!((id(&set, "pg-0"), id(&set, "pg-1")), (id0, id1));

        set.sync(&map(&[("pg-0", &old), ("pg-1", &new)]));
        assert_eq!(id(&set, "pg-0"), id0);
        assert_ne!(id(&set, "pg-1"), id1);
        let _moved = accepted(&mut new_sockets).await;
        // One of the two old connections (pg-1's) closes; pg-0's stays.
        tokio::select! {
            () = closed(first) => {}
            () = closed(second) => {}
        }
        assert_eq!(
            set.members().collect::<Vec<_>>(),
            vec![("pg-0", old.as_str()), ("pg-1", new.as_str())]
        );
    }

    #[tokio::test]
    async fn lanes_report_observations_by_member_name_and_reprobe_on_request() {
        let (out, mut rx) = mpsc::channel(8);
        let config = ProbeConfig {
            timeout: Duration::from_secs(5),
            ..slow_probe()
        };
        let mut set = ProbeSet::new(config, out, CancellationToken::new());
        set.sync(&map(&[("pg-0", &refusing_address())]));
        let next = async |rx: &mut mpsc::Receiver<(String, Observation)>| {
            tokio::time::timeout(DEADLINE, rx.recv())
                .await
                .expect("an observation in time")
                .expect("lanes alive")
        };
        let (name, observation) = next(&mut rx).await;
        assert_eq!(name, "pg-0");
        assert!(
            matches!(observation, Observation::Down { .. }),
            "{observation:?}"
        );
        set.handle().reprobe();
        let (name, _) = next(&mut rx).await;
        assert_eq!(name, "pg-0", "a second probe long before the hour is up");
    }
}
