//! pgsteer: a Postgres-protocol-aware connection router.
//!
//! [`start`] binds the listeners, starts discovery and serves until the
//! [`Shutdown`] tokens fire; `main` only parses the command line, sets up
//! logging and the runtime, and turns signals into those tokens. Nothing here
//! reaches for globals, so tests run several proxies in one process.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used),
    deny(clippy::too_many_lines)
)]

pub mod admin;
pub mod auth;
pub mod cancel;
pub mod cancel_forward;
pub mod clock;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod discovery;
pub mod drain;
pub mod lag;
pub mod listener;
pub mod load;
pub mod loops;
pub mod metrics;
pub mod peers;
pub mod pool;
pub mod router;
pub mod session;
pub mod state;
pub mod switchover;
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
    /// An event loop's thread could not be started (`[runtime] threads`).
    #[error("cannot start an event loop: {0}")]
    Loop(#[source] std::io::Error),
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
    /// Bound peer port address.
    pub peer: Option<SocketAddr>,
    /// Bound addresses of the extra listeners, by name.
    pub extra: Vec<(String, SocketAddr)>,
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

    /// The bound address of the extra listener `name`.
    pub fn extra(&self, name: &str) -> Option<SocketAddr> {
        self.extra.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
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

/// Client listeners, bound, with their kinds.
type Listeners = Vec<(TcpListener, ListenerKind, SocketAddr)>;

/// Binds the client listeners: rw and ro in `[pool] mode`, and the extra ones (shareable with
/// the other event loops when there are several).
async fn bind_clients(config: &Config) -> Result<Listeners, StartError> {
    let several_loops = config.runtime.threads > 1;
    let mode = config.pool.mode;
    let mut wanted = vec![
        (config.listen.rw, ListenerKind::rw(mode)),
        (config.listen.ro, ListenerKind::ro(mode)),
    ];
    for x in &config.listen.extra {
        let route = router::Route::parse(&x.route).unwrap_or(router::Route::Primary);
        let kind = ListenerKind::extra(&x.name, route, x.pool_mode.unwrap_or(mode));
        wanted.push((Some(x.address), kind));
    }
    let mut bound = Vec::new();
    for (addr, kind) in wanted {
        let Some(addr) = addr else { continue };
        let fail = loops::bind_failed(kind, addr);
        let l = loops::bind(addr, several_loops && loops::spreads(kind)).map_err(&fail)?;
        let local = l.local_addr().map_err(&fail)?;
        bound.push((l, kind, local));
    }
    Ok(bound)
}

/// Binds the listeners, starts discovery and serves until `shutdown` fires.
pub async fn start(config: Config, shutdown: Shutdown) -> Result<Running, StartError> {
    // The files first: a bad certificate leaves nothing started behind.
    let tls = Arc::new(tls::Tls::load(&config.tls, config.peer_ca())?);
    let clients = bind_clients(&config).await?;
    let client_addrs: Vec<_> = clients
        .iter()
        .filter(|c| loops::spreads(c.1))
        .map(|c| (c.1, c.2))
        .collect();
    let extra_loops = loops::bind_extra(config.runtime.threads, &client_addrs)?;
    let admin = bind("admin", config.listen.admin).await?;
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    let peer = bind("peer", config.listen.peer).await?;
    let peer_addr = peer.as_ref().and_then(|l| l.local_addr().ok());
    let discovery_stop = CancellationToken::new();
    let (shared, discovery_task) = share(config, shutdown, tls, &discovery_stop)?;

    let sessions = TaskTracker::new();
    let accept_stop = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    let addr_of = |name: &str| clients.iter().find(|c| c.1.as_str() == name).map(|c| c.2);
    let (rw, ro) = (addr_of("rw"), addr_of("ro"));
    let extra = clients
        .iter()
        .filter(|c| !matches!(c.1.as_str(), "rw" | "ro"))
        .map(|c| (c.1.as_str().to_owned(), c.2))
        .collect();
    for (l, kind, _) in clients {
        tokio::spawn(listener::accept_loop(
            l,
            kind,
            0,
            shared.clone(),
            sessions.clone(),
            accept_stop.clone(),
        ));
    }
    loops::start(extra_loops, &shared, &sessions, &accept_stop)?;
    if let Some(l) = admin {
        tokio::spawn(admin::serve(l, shared.clone(), admin_stop.clone()));
    }
    if let Some(l) = peer {
        // Cancels for draining sessions still arrive: the peer port stops after them.
        tokio::spawn(peers::server::serve(
            l,
            shared.clone(),
            admin_stop.child_token(),
        ));
    }
    // Certificate reload and the pools' janitor stop with the admin endpoint, after the sessions.
    tokio::spawn(tls::watch(shared.tls.clone(), admin_stop.child_token()));
    tokio::spawn(pool::maintain(
        shared.pools.clone(),
        shared.topology.subscribe(),
        admin_stop.child_token(),
    ));
    if let Some(auth) = &shared.auth {
        tokio::spawn(auth.clone().watch(admin_stop.child_token()));
    }
    info!(rw = ?rw, ro = ?ro, admin = ?admin_addr, "pgsteer listening");

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
        rw,
        ro,
        admin: admin_addr,
        peer: peer_addr,
        extra,
        shared,
        task: supervisor,
    })
}

/// Starts discovery and builds the state sessions share.
fn share(
    config: Config,
    shutdown: Shutdown,
    tls: Arc<tls::Tls>,
    discovery_stop: &CancellationToken,
) -> Result<(Arc<Shared>, JoinHandle<()>), StartError> {
    let (discovered_tx, discovered) = watch::channel(Topology::default());
    let (reprobe, discovery_task) =
        discovery::spawn(&config, &tls.server, discovered_tx, discovery_stop.clone())?;
    let metrics = Arc::new(metrics::Metrics::new().map_err(StartError::Metrics)?);
    let topology = topology::TopologyHub::start(
        discovered,
        metrics.clone(),
        lag::LagBound::of(&config.routing),
        discovery_stop.clone(),
    );
    let auth = match config.pooled() {
        true => Some(Arc::new(auth::store::AuthStore::load(&config.auth)?)),
        false => None,
    };
    let pools = Arc::new(pool::Pools::new(pool::PoolSettings::from(&config.pool)));
    let peering = peers::Peering::start(&config, discovery_stop.clone())?;
    let keys = peering
        .as_ref()
        .map_or_else(cancel::KeyMaker::random, |p| p.keys());
    let shared = Arc::new(Shared {
        permits: Arc::new(Semaphore::new(config.limits.max_client_connections)),
        config,
        topology,
        paused: watch::Sender::new(false),
        metrics,
        sessions: Default::default(),
        cancels: cancel::CancelRegistry::new(keys),
        peering,
        shutdown,
        reprobe,
        tls,
        pools,
        switchover: Default::default(),
        auth,
        pool_engine: std::sync::Mutex::new(None),
    });
    Ok((shared, discovery_task))
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
