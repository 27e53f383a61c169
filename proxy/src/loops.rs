//! Event loops: `[runtime] threads = N` runs N single-threaded runtimes, one per thread, each
//! with a listening socket of its own on every passthrough listener's address (`SO_REUSEPORT`:
//! the kernel spreads new connections over them). A session lives on the loop that accepted it,
//! with its sockets, timers and buffers: nothing on the relay's path is shared between loops.
//! Each loop that relays a plaintext passthrough session starts an epoll engine thread beside
//! it (`session/engine/`) that relays that loop's sessions; it stops with the loop's runtime.
//! Busy plaintext pooled sessions move to the first loop's engine (the pools' loop), which
//! their server connections join while lent there (`Shared::pool_engine`).
//! (On a 2-core machine shared with Postgres, 2 loops still cost more CPU per transaction than
//! 1: benches/RESULTS.md.)
//!
//! Shared between loops, all behind `Arc` and none taken per relayed message: the topology
//! (`watch`), the cancel-key registry (a lock per connect and cancel), the connection cap and
//! the metrics (per-session tallies flushed every interval). The first loop, the caller's, also
//! runs discovery, the admin endpoint, the peer port, and the pooled listeners with the server
//! connection pools and their janitor: a pooled connection is lent to one session after another,
//! and lent to a session on another loop its socket would be driven by one loop's IO driver and
//! read by another thread, a cross-thread wake per read. Pools split per loop would lift that;
//! until then only passthrough listeners are spread.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::StartError;
use crate::listener;
use crate::session::ListenerKind;
use crate::state::Shared;

/// Whether the sessions of a listener of `kind` are spread over the loops: passthrough ones
/// (each owns its server connection). Pooled ones stay on the first loop, with the pools.
pub fn spreads(kind: ListenerKind) -> bool {
    kind.mode == crate::config::PoolMode::Passthrough
}

/// What a failure to bind or read back the address of a listener of `kind` on `addr` says.
pub fn bind_failed(kind: ListenerKind, addr: SocketAddr) -> impl Fn(std::io::Error) -> StartError {
    move |source| StartError::Bind {
        what: kind.as_str(),
        addr,
        source,
    }
}

/// Binds a client listener; `shared_port`: with `SO_REUSEPORT`, so that the other loops can
/// bind the same address.
pub fn bind(addr: SocketAddr, shared_port: bool) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if shared_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The client listeners of one extra loop, bound.
pub struct Bound {
    n: usize,
    listeners: Vec<(std::net::TcpListener, ListenerKind)>,
}

/// Binds the sockets of loops `1..threads` (the caller's runtime is loop 0) on every address
/// of `clients`: before anything is started, so that a failure stops the start cleanly.
pub fn bind_extra(
    threads: usize,
    clients: &[(ListenerKind, SocketAddr)],
) -> Result<Vec<Bound>, StartError> {
    let mut loops = Vec::with_capacity(threads.saturating_sub(1));
    for n in 1..threads {
        let mut listeners = Vec::with_capacity(clients.len());
        for &(kind, addr) in clients {
            let l = bind(addr, true)
                .and_then(TcpListener::into_std)
                .map_err(bind_failed(kind, addr))?;
            listeners.push((l, kind));
        }
        loops.push(Bound { n, listeners });
    }
    Ok(loops)
}

/// Starts the extra loops, each on its thread accepting until `stop` fires; a loop's thread
/// ends once the sessions have (`sessions` is closed by the supervisor).
pub fn start(
    loops: Vec<Bound>,
    shared: &Arc<Shared>,
    sessions: &TaskTracker,
    stop: &CancellationToken,
) -> Result<(), StartError> {
    for bound in loops {
        let (shared, sessions, stop) = (shared.clone(), sessions.clone(), stop.clone());
        std::thread::Builder::new()
            .name(format!("pgsteer-loop-{}", bound.n))
            .spawn(move || run(bound, shared, sessions, stop))
            .map_err(StartError::Loop)?;
    }
    Ok(())
}

/// One loop's thread: its runtime, its accept loops, then its sessions until they end.
fn run(bound: Bound, shared: Arc<Shared>, sessions: TaskTracker, stop: CancellationToken) {
    let n = bound.n;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            warn!(event_loop = n, error = %e, "cannot start an event loop; the others serve");
            return;
        }
    };
    rt.block_on(async move {
        for (l, kind) in bound.listeners {
            match TcpListener::from_std(l) {
                Ok(l) => {
                    tokio::spawn(listener::accept_loop(
                        l,
                        kind,
                        n,
                        shared.clone(),
                        sessions.clone(),
                        stop.clone(),
                    ));
                }
                Err(e) => warn!(event_loop = n, listener = kind.as_str(), error = %e,
                    "an event loop cannot accept on this listener; the others do"),
            }
        }
        info!(event_loop = n, "event loop started");
        stop.cancelled().await;
        // Its sessions run on this runtime: it stays until they have ended.
        sessions.wait().await;
    });
}
