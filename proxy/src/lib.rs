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
pub mod demo;
pub mod discovery;
pub mod listener;
pub mod router;
pub mod session;
pub mod state;

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
    let rw = bind("rw", config.listen.rw).await?;
    let ro = bind("ro", config.listen.ro).await?;
    let admin = bind("admin", config.listen.admin).await?;
    let addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
    let (rw_addr, ro_addr, admin_addr) = (addr(&rw), addr(&ro), addr(&admin));

    let (tx, rx) = watch::channel(Topology::default());
    let discovery_stop = CancellationToken::new();
    let (reprobe, discovery_task) = discovery::spawn(&config, tx, discovery_stop.clone())?;

    let shared = Arc::new(Shared {
        permits: Arc::new(Semaphore::new(config.limits.max_client_connections)),
        config,
        topology: rx,
        sessions: Default::default(),
        cancels: Default::default(),
        shutdown: shutdown.clone(),
        reprobe,
        discovered: AtomicBool::new(false),
    });

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
    let ready_watch = {
        let shared = shared.clone();
        let mut rx = shared.topology.clone();
        tokio::spawn(async move {
            // Ready once discovery has seen every member at least once.
            let _ = rx
                .wait_for(|t| {
                    t.members.values().all(|m| {
                        m.note.as_deref() != Some(pgsteer_discovery::probe::NOT_PROBED_NOTE)
                    })
                })
                .await;
            shared.discovered.store(true, Ordering::Relaxed);
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

/// Starts and serves until shut down.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), StartError> {
    start(config, shutdown).await?.wait().await;
    Ok(())
}
