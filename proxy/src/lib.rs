//! pgsteer: a Postgres-protocol-aware connection router.
//!
//! [`start`] binds the listeners, starts discovery and serves until the
//! [`Shutdown`] tokens fire; `main` only parses the command line, sets up
//! logging and the runtime, and turns signals into those tokens. Nothing here
//! reaches for globals, so tests run several proxies in one process.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used),
    warn(clippy::too_many_lines)
)]

pub mod admin;
pub mod auth;
pub mod cancel;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod drain;
pub mod listener;
pub mod metrics;
pub mod router;
pub mod session;
pub mod state;
pub mod tls;
pub mod topology;

use std::net::SocketAddr;
use std::sync::Arc;

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
        self.shared.topology.subscribe()
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

    let (discovered_tx, discovered) = watch::channel(Topology::default());
    let discovery_stop = CancellationToken::new();
    let (reprobe, discovery_task) =
        discovery::spawn(&config, discovered_tx, discovery_stop.clone())?;
    let metrics = Arc::new(
        metrics::Metrics::new()
            .map_err(|e| ConfigError(format!("cannot register metrics: {e}")))?,
    );
    let tls = Arc::new(tls::Tls::load(&config.tls)?);
    let topology =
        topology::TopologyHub::start(discovered, metrics.clone(), discovery_stop.clone());

    let shared = Arc::new(Shared {
        permits: Arc::new(Semaphore::new(config.limits.max_client_connections)),
        config,
        topology,
        paused: watch::Sender::new(false),
        metrics,
        sessions: Default::default(),
        cancels: Default::default(),
        shutdown,
        reprobe,
        tls: tls.clone(),
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
    // Certificate reload stops with the admin endpoint, after the sessions.
    tokio::spawn(tls::watch(tls, admin_stop.child_token()));
    info!(rw = ?rw_addr, ro = ?ro_addr, admin = ?admin_addr, "pgsteer listening");

    let supervisor = tokio::spawn(supervise(
        shared.clone(),
        sessions,
        Stops {
            accept: accept_stop,
            admin: admin_stop,
            discovery: discovery_stop,
        },
        discovery_task,
    ));
    Ok(Running {
        rw: rw_addr,
        ro: ro_addr,
        admin: admin_addr,
        shared,
        task: supervisor,
    })
}

/// What the supervisor stops, in this order, after the sessions.
struct Stops {
    accept: CancellationToken,
    admin: CancellationToken,
    discovery: CancellationToken,
}

/// Waits for the shutdown signal, then stops accepting, lets sessions close at their idle
/// points until `shutdown_timeout` (or a second signal), terminates the rest, and stops the
/// admin endpoint and discovery.
async fn supervise(
    shared: Arc<Shared>,
    sessions: TaskTracker,
    stops: Stops,
    discovery_task: JoinHandle<()>,
) {
    let shutdown = &shared.shutdown;
    tokio::select! {
        _ = shutdown.drain.cancelled() => {}
        _ = shutdown.now.cancelled() => {}
    }
    info!(
        sessions = sessions.len(),
        "shutting down: no new connections, closing sessions at idle points"
    );
    stops.accept.cancel();
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
    stops.admin.cancel();
    stops.discovery.cancel();
    let _ = discovery_task.await;
    info!("pgsteer stopped");
}

/// Starts and serves until shut down.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), StartError> {
    start(config, shutdown).await?.wait().await;
    Ok(())
}
