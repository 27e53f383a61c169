//! State shared by the listeners, sessions and the admin endpoint, passed by `Arc`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::topology::TopologyHub;

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

/// Everything a session needs, shared by all of them.
pub struct Shared {
    /// The configuration in force.
    pub config: Config,
    /// The topology sessions route on (discovery's view with operator drains applied).
    pub topology: Arc<TopologyHub>,
    /// Sessions per member.
    pub sessions: SessionCounts,
    /// Cancel keys.
    pub cancels: CancelRegistry,
    /// Other pgsteer processes, for cancel keys this one does not own (`[listen] peer`).
    pub peering: Option<crate::peers::Peering>,
    /// Stop signals.
    pub shutdown: Shutdown,
    /// Asks discovery to re-check members now (a backend refused a connection).
    pub reprobe: pgsteer_discovery::ProbeHandle,
    /// Client connection slots (`max_client_connections`).
    pub permits: Arc<tokio::sync::Semaphore>,
    /// `POST /pause` holds new transactions until `POST /resume`.
    pub paused: watch::Sender<bool>,
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// TLS towards clients (certificate reloaded by `tls::watch`) and servers.
    pub tls: Arc<crate::tls::Tls>,
    /// Server connections of pooled listeners.
    pub pools: Arc<crate::pool::Pools>,
    /// The gate a switchover led by pgsteer closes.
    pub switchover: crate::switchover::gate::Gate,
    /// User secrets, when a listener is pooled.
    pub auth: Option<Arc<crate::auth::store::AuthStore>>,
    /// The epoll engine of the plaintext pooled sessions: one for all of them, beside the
    /// loop of the pools, so that a server connection changes hands inside one engine.
    /// Started by the first such session, again by the next one if it stopped.
    pub pool_engine: std::sync::Mutex<Option<crate::session::engine::Handle>>,
}

impl Shared {
    /// Ready for traffic: discovery ran once and no shutdown is under way.
    pub fn ready(&self) -> bool {
        self.topology.ready() && !self.shutdown.drain.is_cancelled()
    }
}
