//! Accept loops: one per client listener. They enforce the connection cap,
//! back off on accept errors (out of file descriptors, …) and never die.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pgsteer_protocol::sqlstate::SqlState;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::session::{self, ListenerKind};
use crate::state::Shared;

/// Accepts connections on `listener` until `stop` fires, for event loop `event_loop` (see
/// `loops.rs`): its sessions run there.
pub async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    event_loop: usize,
    shared: Arc<Shared>,
    sessions: TaskTracker,
    stop: CancellationToken,
) {
    let permits = shared.permits.clone();
    let accepted_here = shared
        .metrics
        .loop_accepted
        .with_label_values(&[&event_loop.to_string()]);
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                accepted_here.inc();
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let shared = shared.clone();
                        sessions.spawn(async move {
                            session::serve(shared, stream, kind, peer).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        sessions.spawn(reject(
                            stream,
                            peer,
                            shared.config.limits.max_client_connections,
                        ));
                    }
                }
            }
            Err(e) => {
                // Usually EMFILE/ENFILE: wait for sessions to end instead of spinning.
                warn!(listener = kind.as_str(), error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Tells a client over the cap why it is refused. libpq reads an
/// ErrorResponse sent before its startup packet is even answered.
async fn reject(mut stream: TcpStream, peer: SocketAddr, max: usize) {
    debug!(client = %peer, "connection refused: too many clients");
    let msg = format!("pgsteer: sorry, too many clients already (max_client_connections = {max})");
    session::send_fatal(&mut stream, SqlState::TOO_MANY_CONNECTIONS, &msg).await;
}
