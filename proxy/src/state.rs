//! State shared by the listeners, sessions and the admin endpoint, passed by `Arc`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use pgsteer_discovery::Topology;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cancel::CancelRegistry;
use crate::config::Config;

/// How the process is asked to stop; only `main` (or a test) cancels these.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Graceful: stop accepting, close sessions at their next idle point.
    pub drain: CancellationToken,
    /// Immediate: close everything now.
    pub now: CancellationToken,
}

impl Shutdown {
    /// Fresh, un-fired tokens.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }
}

/// Sessions per member, for least-loaded replica choice and `/topology`.
#[derive(Default)]
pub struct SessionCounts {
    counts: Mutex<HashMap<String, usize>>,
}

/// Decrements a member's session count when dropped.
pub struct SessionSlot<'a> {
    counts: &'a SessionCounts,
    member: String,
}

impl SessionCounts {
    /// Sessions currently on `member`.
    pub fn get(&self, member: &str) -> usize {
        self.lock().get(member).copied().unwrap_or(0)
    }

    /// All counts.
    pub fn snapshot(&self) -> HashMap<String, usize> {
        self.lock().clone()
    }

    /// Counts one more session on `member` until the slot is dropped.
    pub fn enter(&self, member: &str) -> SessionSlot<'_> {
        *self.lock().entry(member.to_owned()).or_insert(0) += 1;
        SessionSlot {
            counts: self,
            member: member.to_owned(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for SessionSlot<'_> {
    fn drop(&mut self) {
        let mut c = self.counts.lock();
        if let Some(n) = c.get_mut(&self.member) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&self.member);
            }
        }
    }
}

/// Operator controls from the admin endpoint.
pub struct AdminState {
    /// Members drained by `POST /drain/{member}`.
    pub drained: watch::Sender<std::collections::BTreeSet<String>>,
    /// `POST /pause` holds new transactions until `POST /resume`.
    pub paused: watch::Sender<bool>,
}

impl Default for AdminState {
    fn default() -> Self {
        AdminState {
            drained: watch::Sender::new(Default::default()),
            paused: watch::Sender::new(false),
        }
    }
}

/// Everything a session needs, shared by all of them.
pub struct Shared {
    /// The configuration in force.
    pub config: Config,
    /// Latest topology, admin drains applied: what routing and fencing use.
    pub topology: watch::Receiver<Topology>,
    /// Sessions per member.
    pub sessions: SessionCounts,
    /// Cancel keys.
    pub cancels: CancelRegistry,
    /// Stop signals.
    pub shutdown: Shutdown,
    /// Asks discovery to re-check members now (a backend refused a connection).
    pub reprobe: pgsteer_discovery::ProbeHandle,
    /// Client connection slots (`max_client_connections`).
    pub permits: std::sync::Arc<tokio::sync::Semaphore>,
    /// Operator controls.
    pub admin: AdminState,
    /// Metric families.
    pub metrics: crate::metrics::Metrics,
    /// When the last role change was published, and at which generation,
    /// until the first session is routed on it (`pgsteer_reroute_seconds`).
    pub role_change: Mutex<Option<(u64, std::time::Instant)>>,
    /// The topology as discovered (before admin drains), for staleness.
    pub discovered: watch::Receiver<Topology>,
    /// Whether discovery has produced a first view.
    pub ready: AtomicBool,
    /// TLS towards clients (certificate reloaded by `tls::watch`) and servers.
    pub tls: std::sync::Arc<crate::tls::Tls>,
}

impl Shared {
    /// Records the reroute latency if this is the first session routed on
    /// the topology of the last role change.
    pub fn rerouted(&self, generation: u64) {
        let mut pending = self.role_change.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((g, at)) = *pending
            && generation >= g
        {
            self.metrics
                .reroute_seconds
                .observe(at.elapsed().as_secs_f64());
            *pending = None;
        }
    }

    /// Ready for traffic: discovery ran once and no shutdown is under way.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.shutdown.drain.is_cancelled()
    }
}
