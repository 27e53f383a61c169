//! One client connection: startup → route (hold while no backend) → connect
//! → authenticate → relay → close cleanly.
//!
//! Errors carry the side that failed ([`Side`]): that picks the SQLSTATE the
//! client sees, the log level, and whether anything can be said at all.

mod auth;
pub mod buffer;
mod relay;
mod startup;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pgsteer_protocol::encode::{self, ErrorInfo};
use pgsteer_protocol::sqlstate::SqlState;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use crate::router::{self, Decision, Policy, Request, Route, Target};
use crate::state::Shared;
use relay::{EndKind, Relay, Signals};
use startup::Opening;

/// Which side of a session an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: bad input, or it went away. Logged at debug.
    Client,
    /// The backend. Logged at warn.
    Server,
    /// pgsteer itself (routing, limits, shutdown). Logged at info.
    Internal,
}

/// Why a session ended early.
#[derive(Debug)]
pub struct SessionError {
    /// Which side failed.
    pub side: Side,
    /// The SQLSTATE to send the client with a FATAL, if anything can be sent.
    pub code: Option<SqlState>,
    /// Human-readable reason (sent to the client when `code` is set).
    pub message: String,
}

impl SessionError {
    /// An error the client is told about.
    pub fn fatal(side: Side, code: SqlState, message: impl Into<String>) -> SessionError {
        SessionError {
            side,
            code: Some(code),
            message: message.into(),
        }
    }

    /// An ending nothing can or need be said about.
    pub fn quiet(side: Side, message: impl Into<String>) -> SessionError {
        SessionError {
            side,
            code: None,
            message: message.into(),
        }
    }

    /// Malformed client input: `08P01`.
    pub fn client_protocol(message: String) -> SessionError {
        SessionError::fatal(
            Side::Client,
            SqlState::PROTOCOL_VIOLATION,
            format!("pgsteer: invalid client message: {message}"),
        )
    }

    /// Malformed backend output: the client is told the backend failed.
    pub fn server_protocol(message: String) -> SessionError {
        SessionError::fatal(
            Side::Server,
            SqlState::CONNECTION_FAILURE,
            format!("pgsteer: invalid message from the server: {message}"),
        )
    }

    /// An IO error on one side.
    pub fn io(side: Side, e: std::io::Error) -> SessionError {
        match side {
            Side::Server => SessionError::fatal(
                side,
                SqlState::CONNECTION_FAILURE,
                format!("pgsteer: lost the connection to the server: {e}"),
            ),
            _ => SessionError::quiet(side, format!("client connection error: {e}")),
        }
    }

    fn log(&self) {
        let code = self.code.map(|c| c.code()).unwrap_or("-");
        match self.side {
            Side::Client => {
                debug!(error = %self.message, sqlstate = code, "session ended by the client")
            }
            Side::Server => {
                warn!(error = %self.message, sqlstate = code, "session ended by the server")
            }
            Side::Internal => info!(error = %self.message, sqlstate = code, "session refused"),
        }
    }
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Read-write: the primary.
    Rw,
    /// Read-only: a replica.
    Ro,
}

impl ListenerKind {
    /// Name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Rw => "rw",
            ListenerKind::Ro => "ro",
        }
    }

    fn route(self) -> Route {
        match self {
            ListenerKind::Rw => Route::Primary,
            ListenerKind::Ro => Route::Replica,
        }
    }
}

/// Serves one client connection to the end. Never panics on network input.
pub async fn serve(
    shared: Arc<Shared>,
    mut client: TcpStream,
    listener: ListenerKind,
    peer: SocketAddr,
) {
    let span = tracing::info_span!(
        "session",
        client = %peer,
        listener = listener.as_str(),
        route = tracing::field::Empty,
        pod = tracing::field::Empty,
    );
    async move {
        let _ = client.set_nodelay(true);
        if let Err(e) = run(&shared, &mut client, listener).await {
            e.log();
            if let Some(code) = e.code {
                send_fatal(&mut client, code, &e.message).await;
            }
        }
    }
    .instrument(span)
    .await
}

/// Writes a FATAL error and closes, bounded in time (the client may be gone or stalled).
pub async fn send_fatal(client: &mut TcpStream, code: SqlState, message: &str) {
    let mut buf = BytesMut::with_capacity(64 + message.len());
    encode::error_response(&mut buf, &ErrorInfo::fatal(code, message));
    let write = async {
        client.write_all(&buf).await?;
        client.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

async fn run(
    shared: &Shared,
    client: &mut TcpStream,
    listener: ListenerKind,
) -> Result<(), SessionError> {
    let limits = &shared.config.limits;
    let opening = tokio::time::timeout(limits.startup_timeout, startup::read_opening(client))
        .await
        .map_err(|_| {
            SessionError::fatal(
                Side::Client,
                SqlState::PROTOCOL_VIOLATION,
                format!(
                    "pgsteer: startup packet not received within {}",
                    humantime::format_duration(limits.startup_timeout)
                ),
            )
        })??;
    let (mut message, negotiation) = match opening {
        Opening::Cancel(c) => {
            forward_cancel(shared, c).await;
            return Ok(());
        }
        Opening::Session {
            message,
            negotiation,
        } => (message, negotiation),
    };
    let request = startup::take_request(&mut message, listener.route())?;
    tracing::Span::current().record("route", request.route.as_str());

    let (mut server, target) = route_and_connect(shared, client, &request).await?;
    tracing::Span::current().record("pod", target.member.as_str());
    let _slot = shared.sessions.enter(&target.member);
    debug!(address = %target.address, role = %target.role, "connected to backend");

    let authed = auth::authenticate(
        client,
        &mut server,
        &message,
        &negotiation,
        &target,
        &shared.cancels,
    )
    .await?;
    let _key = KeyGuard {
        shared,
        pid: authed.cancel_pid,
    };

    let signals = Signals {
        drain: Box::pin(shared.shutdown.drain.cancelled()),
        hard: Box::pin(shared.shutdown.now.cancelled()),
    };
    let end = Relay::new(
        client,
        &mut server,
        limits.max_message_bytes,
        authed.tx,
        signals,
    )
    .run()
    .await?;
    close(client, &mut server, &target, end).await;
    Ok(())
}

/// Unregisters the client's cancel key when the session ends.
struct KeyGuard<'a> {
    shared: &'a Shared,
    pid: Option<i32>,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            self.shared.cancels.unregister(pid);
        }
    }
}

/// Closes both sides after the relay stopped, telling the client why when
/// it can be said at a message boundary.
async fn close(client: &mut TcpStream, server: &mut TcpStream, target: &Target, end: relay::End) {
    if end.client_at_boundary && !end.client_terminated {
        let mut x = BytesMut::with_capacity(5);
        encode::terminate(&mut x);
        let _ = tokio::time::timeout(Duration::from_secs(1), server.write_all(&x)).await;
    }
    let _ = server.shutdown().await;
    match end.kind {
        EndKind::ClientClosed => debug!("client closed the session"),
        EndKind::ServerClosed if end.client_terminated || end.last_server_tag == b'E' => {
            debug!("server closed the session");
            let _ = client.shutdown().await;
        }
        EndKind::ServerClosed => {
            warn!("server closed the connection unexpectedly");
            if end.server_at_boundary {
                let msg = format!("pgsteer: the connection to {} was lost", target.member);
                send_fatal(client, SqlState::CONNECTION_FAILURE, &msg).await;
            }
        }
        EndKind::Drained | EndKind::Terminated => {
            info!(kind = ?end.kind, tx = ?end.tx, "session closed for shutdown");
            if end.server_at_boundary {
                send_fatal(
                    client,
                    SqlState::ADMIN_SHUTDOWN,
                    "pgsteer: terminating connection because the proxy is shutting down; reconnect",
                )
                .await;
            }
        }
    }
}

/// Decides where the session goes, holding it while no backend is available
/// (up to `hold_timeout`), and connects.
async fn route_and_connect(
    shared: &Shared,
    client: &TcpStream,
    request: &Request,
) -> Result<(TcpStream, Target), SessionError> {
    let routing = &shared.config.routing;
    let policy = Policy {
        replica_fallback: routing.replica_fallback,
    };
    let deadline = Instant::now() + routing.hold_timeout;
    let mut topology = shared.topology.clone();
    let mut exclude: Vec<String> = Vec::new();
    let mut generation = topology.borrow().generation;
    let mut client_quiet = false;
    loop {
        let decision = {
            let t = topology.borrow_and_update();
            if t.generation != generation {
                generation = t.generation;
                exclude.clear();
            }
            router::decide(&t, request, policy, |m| shared.sessions.get(m), &exclude)
        };
        let why = match decision {
            Decision::Refuse(why) => {
                return Err(SessionError::fatal(
                    Side::Internal,
                    SqlState::UNABLE_TO_CONNECT,
                    why,
                ));
            }
            Decision::Connect(target) => match connect(&target, routing.connect_timeout).await {
                Ok(s) => return Ok((s, target)),
                Err(e) => {
                    warn!(member = %target.member, address = %target.address, error = %e, "backend refused the connection");
                    shared.reprobe.reprobe();
                    let why = format!(
                        "{} ({}) refused the connection",
                        target.member, target.address
                    );
                    exclude.push(target.member);
                    if request.route != Route::Primary || request.pin.is_some() {
                        continue;
                    }
                    why
                }
            },
            Decision::Wait(why) => why,
        };
        if shared.shutdown.drain.is_cancelled() {
            return Err(SessionError::fatal(
                Side::Internal,
                SqlState::CANNOT_CONNECT_NOW,
                "pgsteer: the proxy is shutting down",
            ));
        }
        debug!(reason = %why, "holding the connection until a backend is available");
        tokio::select! {
            changed = topology.changed() => {
                if changed.is_err() {
                    return Err(SessionError::fatal(Side::Internal, SqlState::CANNOT_CONNECT_NOW, "pgsteer: discovery stopped"));
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(SessionError::fatal(
                    Side::Internal,
                    SqlState::CANNOT_CONNECT_NOW,
                    format!(
                        "pgsteer: no backend for route {} after waiting {}: {why}",
                        request.route.as_str(),
                        humantime::format_duration(routing.hold_timeout)
                    ),
                ));
            }
            gone = client_gone(client), if !client_quiet => {
                if gone {
                    return Err(SessionError::quiet(Side::Client, "client left while held"));
                }
                client_quiet = true;
            }
            _ = shared.shutdown.drain.cancelled() => {}
        }
    }
}

/// Resolves `true` when the client closed, `false` if it sent data instead.
async fn client_gone(client: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    !matches!(client.peek(&mut b).await, Ok(n) if n > 0)
}

async fn connect(target: &Target, timeout: Duration) -> std::io::Result<TcpStream> {
    let s = tokio::time::timeout(timeout, TcpStream::connect(&target.address))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn forward_cancel(shared: &Shared, c: pgsteer_protocol::startup::CancelRequest) {
    match shared.cancels.lookup(c.pid, &c.key) {
        Some(target) => {
            if let Err(e) =
                crate::cancel::forward(&target, shared.config.routing.connect_timeout).await
            {
                warn!(member = %target.member, error = %e, "could not forward a cancel request");
            } else {
                debug!(member = %target.member, "cancel request forwarded");
            }
        }
        None => debug!("cancel request with an unknown key dropped"),
    }
}
