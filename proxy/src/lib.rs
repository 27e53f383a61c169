//! pgsteer: a Postgres-protocol-aware connection router.
//!
//! [`start`] binds the listeners, starts discovery and serves until the
//! [`Shutdown`] tokens fire; `main` only parses the command line, sets up
//! logging and the runtime, and turns signals into those tokens. Nothing here
//! reaches for globals, so tests run several proxies in one process.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod cancel;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod discovery;
pub mod drain;
pub mod listener;
pub mod load;
pub mod metrics;
pub mod router;
pub mod session;
pub mod state;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use pgsteer_discovery::Topology;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use config::Config;
pub use state::{Shared, Shutdown};

use crate::config::ConfigError;
use crate::session::ListenerKind;
use crate::tls::TlsError;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A certificate, key or CA file named in `[tls]` does not load.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The metric families could not be registered.
    #[error("cannot register metrics: {0}")]
    Metrics(#[source] prometheus::Error),
}

/// A running proxy.
pub struct Running {
    /// Bound read-write address.
    pub rw: Option<SocketAddr>,
    /// Bound read-only address.
    pub ro: Option<SocketAddr>,
    /// Bound admin address.
    pub admin: Option<SocketAddr>,
    /// State shared with sessions (topology, counts, readiness).
    pub shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Running {
    /// Waits until the proxy has shut down.
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// The latest topology.
    pub fn topology(&self) -> watch::Receiver<Topology> {
        self.shared.topology.clone()
    }
}

async fn bind(
    what: &'static str,
    addr: Option<SocketAddr>,
) -> Result<Option<TcpListener>, StartError> {
    match addr {
        None => Ok(None),
        Some(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| StartError::Bind { what, addr, source }),
    }
}

/// Binds the listeners, starts discovery and serves until `shutdown` fires.
pub async fn start(config: Config, shutdown: Shutdown) -> Result<Running, StartError> {
    // The files first: a bad certificate leaves nothing started behind.
    let tls = Arc::new(tls::Tls::load(&config.tls)?);
    let rw = bind("rw", config.listen.rw).await?;
    let ro = bind("ro", config.listen.ro).await?;
    let admin = bind("admin", config.listen.admin).await?;
    let addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
    let (rw_addr, ro_addr, admin_addr) = (addr(&rw), addr(&ro), addr(&admin));

    let (raw_tx, raw_rx) = watch::channel(Topology::default());
    let (tx, rx) = watch::channel(Topology::default());
    let discovery_stop = CancellationToken::new();
    let (reprobe, discovery_task) = discovery::spawn(&config, raw_tx, discovery_stop.clone())?;
    let admin_state = state::AdminState::default();
    let drained_rx = admin_state.drained.subscribe();
    let metrics = metrics::Metrics::new().map_err(StartError::Metrics)?;

    let shared = Arc::new(Shared {
        permits: Arc::new(Semaphore::new(config.limits.max_client_connections)),
        config,
        topology: rx,
        discovered: raw_rx.clone(),
        admin: admin_state,
        metrics,
        role_change: Default::default(),
        sessions: Default::default(),
        cancels: Default::default(),
        shutdown: shutdown.clone(),
        reprobe,
        ready: AtomicBool::new(false),
        tls: tls.clone(),
    });

    tokio::spawn(apply_overlay(
        shared.clone(),
        raw_rx,
        drained_rx,
        tx,
        discovery_stop.clone(),
    ));
    let sessions = TaskTracker::new();
    let accept_stop = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    for (listener, kind) in [(rw, ListenerKind::Rw), (ro, ListenerKind::Ro)] {
        if let Some(l) = listener {
            tokio::spawn(listener::accept_loop(
                l,
                kind,
                shared.clone(),
                shared.permits.clone(),
                sessions.clone(),
                accept_stop.clone(),
            ));
        }
    }
    if let Some(l) = admin {
        tokio::spawn(admin::serve(l, shared.clone(), admin_stop.clone()));
    }
    // Certificate reload stops with the admin endpoint, after the sessions.
    tokio::spawn(tls::watch(tls, admin_stop.child_token()));
    let ready_watch = {
        let shared = shared.clone();
        let mut rx = shared.topology.clone();
        tokio::spawn(async move {
            // Ready once the source has answered (an empty pod list counts)
            // and every member it lists has been probed once.
            let _ = rx
                .wait_for(|t| {
                    (t.confirmed_at.is_some() || !t.members.is_empty())
                        && t.members.values().all(|m| {
                            m.note.as_deref() != Some(pgsteer_discovery::probe::NOT_PROBED_NOTE)
                        })
                })
                .await;
            shared.ready.store(true, Ordering::Relaxed);
        })
    };
    info!(rw = ?rw_addr, ro = ?ro_addr, admin = ?admin_addr, "pgsteer listening");

    let supervisor = {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.drain.cancelled() => {}
                _ = shutdown.now.cancelled() => {}
            }
            info!(
                sessions = sessions.len(),
                "shutting down: no new connections, closing sessions at idle points"
            );
            accept_stop.cancel();
            sessions.close();
            let budget = shared.config.drain.shutdown_timeout;
            tokio::select! {
                _ = sessions.wait() => {}
                _ = shutdown.now.cancelled() => {}
                _ = tokio::time::sleep(budget) => {
                    info!(left = sessions.len(), "shutdown timeout reached: terminating the remaining sessions");
                }
            }
            shutdown.now.cancel();
            sessions.wait().await;
            ready_watch.abort();
            admin_stop.cancel();
            discovery_stop.cancel();
            let _ = discovery_task.await;
            info!("pgsteer stopped");
        })
    };
    Ok(Running {
        rw: rw_addr,
        ro: ro_addr,
        admin: admin_addr,
        shared,
        task: supervisor,
    })
}

/// Publishes the discovered topology with admin drains applied, which is
/// what routing and fencing look at, and records role changes.
async fn apply_overlay(
    shared: Arc<Shared>,
    mut raw: watch::Receiver<Topology>,
    mut drained: watch::Receiver<std::collections::BTreeSet<String>>,
    tx: watch::Sender<Topology>,
    stop: CancellationToken,
) {
    loop {
        let next = {
            let r = raw.borrow_and_update();
            let d = drained.borrow_and_update();
            let mut next = tx.borrow().clone();
            let mut changed = next.replace_members(drain::overlay(&r, &d));
            if next.pending_change != r.pending_change || next.source_error != r.source_error {
                if r.source_error.is_some() && next.source_error != r.source_error {
                    shared.metrics.discovery_errors.inc();
                }
                next.pending_change = r.pending_change.clone();
                next.source_error = r.source_error.clone();
                changed = true;
            }
            // The first confirmation is news even without members: readiness waits for it.
            changed |= next.confirmed_at.is_none() && r.confirmed_at.is_some();
            next.confirmed_at = r.confirmed_at;
            changed.then_some(next)
        };
        if let Some(next) = next {
            let before = tx.send_replace(next);
            let after = tx.borrow().clone();
            record_change(&shared, &before, &after);
        }
        tokio::select! {
            r = raw.changed() => if r.is_err() { return },
            r = drained.changed() => if r.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}

/// Metrics and one info line per role change.
fn record_change(shared: &Shared, before: &Topology, after: &Topology) {
    shared.metrics.observe_topology(after);
    let roles = |t: &Topology| {
        t.members
            .values()
            .map(|m| {
                format!(
                    "{}={}{}",
                    m.name,
                    m.role,
                    if m.draining { "(draining)" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let changed = after
        .members
        .values()
        .filter(|m| {
            before
                .member(&m.name)
                .is_none_or(|b| b.role != m.role || b.draining != m.draining)
        })
        .count();
    if changed == 0 || before.generation == 0 {
        return;
    }
    shared.metrics.role_changes.inc_by(changed as u64);
    *shared.role_change.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((after.generation, std::time::Instant::now()));
    info!(
        generation = after.generation,
        before = %roles(before),
        after = %roles(after),
        primary = after.primary().map(|m| m.name.as_str()).unwrap_or("none"),
        pending_change = after.pending_change.as_deref().unwrap_or(""),
        "topology changed"
    );
}

/// Starts and serves until shut down.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), StartError> {
    start(config, shutdown).await?.wait().await;
    Ok(())
}
