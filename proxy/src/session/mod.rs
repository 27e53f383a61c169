//! One client connection: startup → route (hold while no backend) → connect
//! → authenticate → relay → close cleanly.
//!
//! Errors carry the side that failed ([`Side`]): that picks the SQLSTATE the
//! client sees, the log level, and whether anything can be said at all.

mod auth;
pub mod buffer;
mod relay;
mod startup;
pub mod stream;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pgsteer_protocol::backend::TxStatus;
use pgsteer_protocol::encode::{self, ErrorInfo};
use pgsteer_protocol::sqlstate::SqlState;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use crate::drain::{self, Binding, DrainOrder, Graces};
use crate::metrics::PodTally;
use crate::router::{self, Decision, Policy, Request, Route, Target};
use crate::state::{SessionSlot, Shared};
use relay::{EndKind, Relay, Signals};
use startup::Opening;
use stream::Stream;
use upstream::UpstreamError;

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
    /// The backend could not take the session and nothing reached the client
    /// yet: the session may be routed again (held like a missing backend).
    pub retryable: bool,
}

impl SessionError {
    /// An error the client is told about.
    pub fn fatal(side: Side, code: SqlState, message: impl Into<String>) -> SessionError {
        SessionError {
            side,
            code: Some(code),
            message: message.into(),
            retryable: false,
        }
    }

    /// An ending nothing can or need be said about.
    pub fn quiet(side: Side, message: impl Into<String>) -> SessionError {
        SessionError {
            side,
            code: None,
            message: message.into(),
            retryable: false,
        }
    }

    /// The backend refused or dropped the session before anything reached
    /// the client (starting up, shutting down, crashed): route again.
    pub fn unavailable(message: String) -> SessionError {
        SessionError {
            side: Side::Server,
            code: Some(SqlState::CANNOT_CONNECT_NOW),
            message,
            retryable: true,
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

    /// Label for `pgsteer_client_connections_rejected_total`, if this error
    /// refused the client before a session was established.
    fn rejection(&self) -> Option<&'static str> {
        let code = self.code?;
        Some(match code {
            SqlState::PROTOCOL_VIOLATION => "protocol_violation",
            SqlState::CANNOT_CONNECT_NOW => "no_backend",
            SqlState::TOO_MANY_CONNECTIONS => "too_many_connections",
            SqlState::INVALID_AUTHORIZATION
            | SqlState::UNDEFINED_OBJECT
            | SqlState::INVALID_PARAMETER_VALUE => "bad_startup",
            SqlState::UNABLE_TO_CONNECT => "unknown_member",
            _ => return None,
        })
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
    client: TcpStream,
    listener: ListenerKind,
    peer: SocketAddr,
) {
    let span = tracing::info_span!(
        "session",
        client = %peer,
        listener = listener.as_str(),
        route = tracing::field::Empty,
        pod = tracing::field::Empty,
        tls = tracing::field::Empty,
    );
    let _ = client.set_nodelay(true);
    let mut client = Stream::Plain(client);
    let m = &shared.metrics;
    m.client_accepted
        .with_label_values(&[listener.as_str()])
        .inc();
    let open = m.client_connections.with_label_values(&[listener.as_str()]);
    open.inc();
    let result = run(&shared, &mut client, listener, &span).await;
    open.dec();
    if let Err(e) = result {
        async {
            e.log();
            if let Some(reason) = e.rejection() {
                m.client_rejected
                    .with_label_values(&[listener.as_str(), reason])
                    .inc();
            }
            if let Some(code) = e.code {
                send_fatal(&mut client, code, &e.message).await;
            }
        }
        .instrument(span)
        .await
    }
}

/// Sets the session up and closes it inside its span, but relays outside
/// it: entering a span on every poll would cost on the hot path, and the
/// relay does not log (its errors are logged by [`serve`], in the span).
async fn run(
    shared: &Shared,
    client: &mut Stream,
    listener: ListenerKind,
    span: &tracing::Span,
) -> Result<(), SessionError> {
    let Some(session) = establish(shared, client, listener)
        .instrument(span.clone())
        .await?
    else {
        return Ok(());
    };
    let Established {
        mut server,
        target,
        tx,
        signals,
        tally,
        guards,
    } = session;
    let limit = shared.config.limits.max_message_bytes;
    let end = Relay::new(client, &mut server, limit, tx, signals, tally)
        .run()
        .await?;
    close(shared, client, &mut server, &target, end)
        .instrument(span.clone())
        .await;
    drop(guards);
    Ok(())
}

/// Writes a FATAL error and closes, bounded in time (the client may be gone or stalled).
pub async fn send_fatal<S: AsyncWrite + Unpin>(client: &mut S, code: SqlState, message: &str) {
    let mut buf = BytesMut::with_capacity(64 + message.len());
    encode::error_response(&mut buf, &ErrorInfo::fatal(code, message));
    let write = async {
        client.write_all(&buf).await?;
        client.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Closes a connection (TLS: close_notify, flushing what is buffered),
/// bounded in time like [`send_fatal`].
async fn shut(s: &mut Stream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), s.shutdown()).await;
}

/// An authenticated session, ready to relay.
struct Established<'a> {
    server: Stream,
    target: Target,
    /// Transaction status of the ReadyForQuery that ended authentication.
    tx: TxStatus,
    signals: Signals<'a>,
    tally: PodTally,
    guards: SessionGuards<'a>,
}

/// What a session holds while it lives; released when it is dropped.
struct SessionGuards<'a> {
    _slot: SessionSlot<'a>,
    _backend: GaugeGuard,
    _key: KeyGuard<'a>,
}

/// Startup, routing (holding while no backend is available), connection and
/// authentication. `None`: the connection was a cancel request, now served.
async fn establish<'a>(
    shared: &'a Shared,
    client: &mut Stream,
    listener: ListenerKind,
) -> Result<Option<Established<'a>>, SessionError> {
    let limits = &shared.config.limits;
    let opening = startup::read_opening(client, shared.tls.client.as_ref());
    let opening = tokio::time::timeout(limits.startup_timeout, opening)
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
            return Ok(None);
        }
        Opening::Session {
            message,
            negotiation,
        } => (message, negotiation),
    };
    let request = startup::take_request(&mut message, listener.route())?;
    let span = tracing::Span::current();
    span.record("route", request.route.as_str());
    span.record("tls", client.is_tls());

    let mut hold = Hold::new(shared);
    let (server, target, authed) = loop {
        let (mut server, target) = route_and_connect(shared, client, &request, &mut hold).await?;
        let authed = auth::authenticate(
            client,
            &mut server,
            &message,
            &negotiation,
            &target,
            &shared.cancels,
        )
        .await;
        match authed {
            Ok(a) => break (server, target, a),
            Err(e) if e.retryable => {
                warn!(member = %target.member, error = %e.message, "backend cannot take sessions now; routing again");
                shared.reprobe.reprobe();
                hold.exclude.push(target.member);
            }
            Err(e) => return Err(e),
        }
    };
    drop(hold);
    span.record("pod", target.member.as_str());
    let slot = shared.sessions.enter(&target.member);
    let m = &shared.metrics;
    m.sessions_routed
        .with_label_values(&[listener.as_str(), request.route.as_str(), &target.member])
        .inc();
    let backend_gauge = m
        .backend_sessions
        .with_label_values(&[&target.member, target.role.as_str()]);
    backend_gauge.inc();
    let backend = GaugeGuard(backend_gauge);
    debug!(
        address = %target.address,
        role = %target.role,
        tls = server.is_tls(),
        "connected to backend"
    );
    let key = KeyGuard {
        shared,
        pid: authed.cancel_pid,
    };

    let binding = Binding::new(
        &target.member,
        target.role,
        request.route,
        request.explicit_route,
        request.pin.is_some(),
    );
    let fence = drain::fence(
        shared.topology.clone(),
        binding,
        Graces::from(&shared.config.drain),
    );
    let shutdown = shared.shutdown.drain.clone();
    let signals = Signals {
        drain: Box::pin(
            async move {
                tokio::select! {
                    order = fence => order,
                    _ = shutdown.cancelled() => DrainOrder {
                        reason: "the proxy is shutting down".into(),
                        grace: None,
                        demoted_primary: false,
                    },
                }
            }
            .in_current_span(),
        ),
        hard: Box::pin(shared.shutdown.now.cancelled()),
        paused: shared.admin.paused.subscribe(),
    };
    Ok(Some(Established {
        tally: PodTally::new(m.pod(&target.member)),
        server,
        target,
        tx: authed.tx,
        signals,
        guards: SessionGuards {
            _slot: slot,
            _backend: backend,
            _key: key,
        },
    }))
}

/// Decrements a gauge when dropped.
struct GaugeGuard(prometheus::IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
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
async fn close(
    shared: &Shared,
    client: &mut Stream,
    server: &mut Stream,
    target: &Target,
    end: relay::End,
) {
    if end.client_at_boundary && !end.client_terminated {
        let mut x = BytesMut::with_capacity(5);
        encode::terminate(&mut x);
        let _ = tokio::time::timeout(Duration::from_secs(1), server.write_all(&x)).await;
    }
    shut(server).await;
    match end.kind {
        EndKind::ClientClosed => debug!("client closed the session"),
        EndKind::ServerClosed if end.client_terminated || end.last_server_tag == b'E' => {
            debug!("server closed the session");
            shut(client).await;
        }
        EndKind::ServerClosed => {
            warn!("server closed the connection unexpectedly");
            if end.server_at_boundary {
                let msg = format!("pgsteer: the connection to {} was lost", target.member);
                send_fatal(client, SqlState::CONNECTION_FAILURE, &msg).await;
            }
        }
        EndKind::Drained | EndKind::Terminated => {
            let reason = end
                .order
                .as_ref()
                .map(|o| o.reason.as_str())
                .unwrap_or("the proxy is shutting down");
            let outcome = match (end.kind, end.idle_at_order) {
                (EndKind::Drained, true) => "idle",
                (EndKind::Drained, false) => "after_transaction",
                _ => "terminated",
            };
            shared
                .metrics
                .sessions_drained
                .with_label_values(&[outcome])
                .inc();
            let msg = if end.kind == EndKind::Drained {
                format!("pgsteer: {reason}; reconnect")
            } else {
                format!("pgsteer: terminating connection: {reason}; reconnect")
            };
            info!(outcome, tx = ?end.tx, reason, "session drained");
            if end.server_at_boundary {
                send_fatal(client, SqlState::ADMIN_SHUTDOWN, &msg).await;
            } else {
                shut(client).await;
            }
        }
    }
}

/// One connection's wait for a backend: the deadline, the members that just
/// failed it, and the held-connection metrics from the first wait until it
/// is released.
struct Hold<'a> {
    shared: &'a Shared,
    since: Option<std::time::Instant>,
    deadline: Instant,
    /// Members that refused this connection; forgotten when the topology changes.
    exclude: Vec<String>,
    generation: u64,
    client_quiet: bool,
}

impl<'a> Hold<'a> {
    fn new(shared: &'a Shared) -> Hold<'a> {
        Hold {
            shared,
            since: None,
            deadline: Instant::now() + shared.config.routing.hold_timeout,
            exclude: Vec::new(),
            generation: shared.topology.borrow().generation,
            client_quiet: false,
        }
    }

    fn start(&mut self) {
        if self.since.is_none() {
            self.since = Some(std::time::Instant::now());
            self.shared.metrics.held_connections.inc();
        }
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.since {
            let m = &self.shared.metrics;
            m.held_connections.dec();
            m.held_seconds.observe(t.elapsed().as_secs_f64());
        }
    }
}

/// Why a held connection stopped waiting.
enum Woken {
    /// Something changed: decide again.
    Retry,
    /// The hold deadline passed.
    TimedOut,
}

/// Decides where the session goes, holding it while no backend is available
/// or new sessions are paused (up to `hold_timeout`), and connects.
async fn route_and_connect(
    shared: &Shared,
    client: &Stream,
    request: &Request,
    hold: &mut Hold<'_>,
) -> Result<(Stream, Target), SessionError> {
    let routing = &shared.config.routing;
    let policy = Policy {
        replica_fallback: routing.replica_fallback,
    };
    let deadline = hold.deadline;
    let mut topology = shared.topology.clone();
    let mut paused = shared.admin.paused.subscribe();
    loop {
        let why = if *paused.borrow_and_update() {
            "new sessions are paused by an operator".to_owned()
        } else {
            let decision = {
                let t = topology.borrow_and_update();
                if t.generation != hold.generation {
                    hold.generation = t.generation;
                    hold.exclude.clear();
                }
                router::decide(
                    &t,
                    request,
                    policy,
                    |m| shared.sessions.get(m),
                    &hold.exclude,
                )
            };
            match decision {
                Decision::Refuse(why) => {
                    return Err(SessionError::fatal(
                        Side::Internal,
                        SqlState::UNABLE_TO_CONNECT,
                        why,
                    ));
                }
                Decision::Connect(target) => {
                    match connect(shared, &target, hold.generation).await {
                        Ok(s) => return Ok((s, target)),
                        Err(Refused::Fatal(e)) => return Err(e),
                        Err(Refused::Wait(why)) => {
                            hold.exclude.push(target.member);
                            if request.route != Route::Primary || request.pin.is_some() {
                                continue;
                            }
                            why
                        }
                    }
                }
                Decision::Wait(why) => why,
            }
        };
        if shared.shutdown.drain.is_cancelled() {
            return Err(SessionError::fatal(
                Side::Internal,
                SqlState::CANNOT_CONNECT_NOW,
                "pgsteer: the proxy is shutting down",
            ));
        }
        debug!(reason = %why, "holding the connection");
        hold.start();
        let woken = tokio::select! {
            r = topology.changed() => match r {
                Ok(()) => Woken::Retry,
                Err(_) => Woken::TimedOut,
            },
            _ = paused.changed() => Woken::Retry,
            _ = tokio::time::sleep_until(deadline) => Woken::TimedOut,
            gone = client_gone(client), if !hold.client_quiet => {
                if gone {
                    return Err(SessionError::quiet(Side::Client, "client left while held"));
                }
                hold.client_quiet = true;
                Woken::Retry
            }
            _ = shared.shutdown.drain.cancelled() => Woken::Retry,
        };
        if let Woken::TimedOut = woken {
            shared.metrics.refused_after_hold.inc();
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
    }
}

/// Why a backend connection was not made.
enum Refused {
    /// The member may come back or another may do: the reason to wait.
    Wait(String),
    /// Configuration-level failure (TLS): tell the client now.
    Fatal(SessionError),
}

/// Connects to the chosen backend, recording latency, failures and the
/// reroute time after a role change.
async fn connect(shared: &Shared, target: &Target, generation: u64) -> Result<Stream, Refused> {
    let m = &shared.metrics;
    let started = std::time::Instant::now();
    let timeout = shared.config.routing.connect_timeout;
    match upstream::connect(target, &shared.tls.server, timeout).await {
        Ok(s) => {
            m.backend_connect_seconds
                .with_label_values(&[&target.member])
                .observe(started.elapsed().as_secs_f64());
            shared.rerouted(generation);
            Ok(s)
        }
        Err(UpstreamError::Unreachable(e)) => {
            m.backend_connect_failures
                .with_label_values(&[&target.member])
                .inc();
            warn!(member = %target.member, address = %target.address, error = %e, "backend refused the connection");
            shared.reprobe.reprobe();
            Err(Refused::Wait(format!(
                "{} ({}) refused the connection",
                target.member, target.address
            )))
        }
        Err(UpstreamError::Tls(e)) => {
            m.backend_connect_failures
                .with_label_values(&[&target.member])
                .inc();
            Err(Refused::Fatal(SessionError::fatal(
                Side::Server,
                SqlState::UNABLE_TO_CONNECT,
                format!(
                    "pgsteer: cannot connect to {} ({}) with tls.server_mode = \"{}\": {e}",
                    target.member,
                    target.address,
                    shared.tls.server.mode().as_str()
                ),
            )))
        }
    }
}

/// Resolves `true` when the client closed, `false` if it sent data instead.
/// (A TLS client's close_notify is data: it is noticed at the next read.)
async fn client_gone(client: &Stream) -> bool {
    let Some(tcp) = client.tcp() else {
        return true;
    };
    let mut b = [0u8; 1];
    !matches!(tcp.peek(&mut b).await, Ok(n) if n > 0)
}

async fn forward_cancel(shared: &Shared, c: pgsteer_protocol::startup::CancelRequest) {
    let target = shared.cancels.lookup(c.pid, &c.key);
    let result = if target.is_some() {
        "forwarded"
    } else {
        "unknown"
    };
    shared
        .metrics
        .cancel_requests
        .with_label_values(&[result])
        .inc();
    match target {
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
