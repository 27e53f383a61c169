//! One client connection: startup → route (hold while no backend) → connect
//! → authenticate → relay → close cleanly.
//!
//! Each step has its own file: `startup` (TLS negotiation, the startup
//! packet, `pgsteer.*` options), `hold` (routing and waiting for a backend),
//! `upstream` (opening the server connection), `auth` (passthrough
//! authentication), `relay` (the bytes), `close` (telling the client why),
//! `error` (which side failed). This file strings them together and holds
//! what a live session owns.

mod auth;
pub mod buffer;
mod close;
pub(crate) mod engine;
mod error;
mod hold;
mod pooled;
mod relay;
mod startup;
pub mod stream;
pub(crate) mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use pgsteer_protocol::backend::TxStatus;
use pgsteer_protocol::sqlstate::SqlState;
use tokio::net::TcpStream;
use tracing::{Instrument, debug, warn};

use crate::config::{PoolMode, RelayEngine};
use crate::drain::{self, Binding, Graces};
use crate::metrics::PodTally;
use crate::router::{Request, Route, Target};
use crate::state::{SessionSlot, Shared};
pub use close::send_fatal;
pub use error::{SessionError, Side};
pub use hold::Backends;
use hold::Hold;
use relay::{Event, Passthrough, Relay, Signals};
use startup::Opening;
use stream::Stream;

/// Which listener a connection came in on: its name (logs, metric labels), the route its
/// sessions take, and how they use server connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerKind {
    name: &'static str,
    route: Route,
    /// Passthrough, or a pooled mode.
    pub mode: PoolMode,
}

impl ListenerKind {
    /// The read-write listener.
    pub const fn rw(mode: PoolMode) -> ListenerKind {
        ListenerKind {
            name: "rw",
            route: Route::Primary,
            mode,
        }
    }

    /// The read-only listener.
    pub const fn ro(mode: PoolMode) -> ListenerKind {
        ListenerKind {
            name: "ro",
            route: Route::Replica,
            mode,
        }
    }

    /// Another listener (`[[listen.extra]]`); its name lives as long as the process.
    pub fn extra(name: &str, route: Route, mode: PoolMode) -> ListenerKind {
        ListenerKind {
            name: Box::leak(name.to_owned().into_boxed_str()),
            route,
            mode,
        }
    }

    /// Name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        self.name
    }

    fn route(self) -> Route {
        self.route
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
    let result = run(&shared, &mut client, (listener, peer.ip()), &span).await;
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
///
/// Each phase is boxed: a task's future is as large as its largest state, so
/// a parked client, a pooled client and a passthrough session each pay only
/// for the phase they are in.
async fn run(
    shared: &Arc<Shared>,
    client: &mut Stream,
    (listener, source): (ListenerKind, std::net::IpAddr),
    span: &tracing::Span,
) -> Result<(), SessionError> {
    let opened =
        Box::pin(establish(shared, client, listener, source).instrument(span.clone())).await?;
    let session = match opened {
        Opened::Done => return Ok(()),
        Opened::Passthrough(session) => *session,
        Opened::Pooled(p) => {
            return Box::pin(serve_pooled(shared, client, listener, *p, span)).await;
        }
    };
    Box::pin(relay(shared, client, session, span)).await
}

/// Serves a pooled session in its task; when both its sides are plaintext (the client's now,
/// the server connections' by `server_mode = "disable"`), it moves to the first loop's epoll
/// engine once it is busy, between two transactions.
async fn serve_pooled(
    shared: &Arc<Shared>,
    client: &mut Stream,
    listener: ListenerKind,
    start: PooledStart,
    span: &tracing::Span,
) -> Result<(), SessionError> {
    let PooledStart {
        request,
        message,
        negotiation,
    } = start;
    let plain = matches!(client, Stream::Plain(_))
        && shared.tls.server.mode() == crate::config::ServerTlsMode::Disable;
    let engine = if plain && shared.config.runtime.relay_engine == RelayEngine::Epoll {
        engine::shared_handle(&shared.pool_engine)
    } else {
        None
    };
    let relayed = shared.metrics.relayed.clone();
    let (shared, span) = (shared.clone(), span.clone());
    let mut c = std::mem::replace(client, Stream::Detached);
    // One box for the session, on either path: a second path awaiting `pooled::serve` inline
    // would make this future as large as the session again (an idle pooled client pays both).
    let session = Box::pin(async move {
        let res = pooled::serve(
            &shared,
            &mut c,
            listener,
            request,
            message,
            negotiation,
            &span,
        )
        .await;
        engine::release(&mut c);
        (c, res)
    });
    let (c, res) = match engine {
        Some(engine) => engine.hop_when_busy(session, &relayed).await?,
        None => {
            relayed.with_label_values(&["task"]).inc();
            session.await
        }
    };
    *client = c;
    res
}

/// Relays an established passthrough session to its end and closes it.
async fn relay(
    shared: &Shared,
    client: &mut Stream,
    session: Established<'_>,
    span: &tracing::Span,
) -> Result<(), SessionError> {
    let Established {
        server,
        target,
        tx,
        signals,
        tally,
        guards,
    } = session;
    let limit = shared.config.limits.max_message_bytes;
    let use_engine = shared.config.runtime.relay_engine == RelayEngine::Epoll;
    let mut r = engine::Relaying {
        relay: Relay::new::<Passthrough>(limit, tx, signals, tally),
        client: std::mem::replace(client, Stream::Detached),
        server,
    };
    let end = loop {
        let (back, res) = engine::run(r, use_engine, &shared.metrics.relayed).await?;
        r = back;
        // A passthrough session always has its server and never lends it:
        // only the end comes back.
        match res {
            Ok(Event::End(end)) => break end,
            Ok(_) => {}
            Err(e) => {
                *client = r.client;
                return Err(e);
            }
        }
    };
    *client = r.client;
    let mut server = r.server;
    close::close(&shared.metrics, client, &mut server, &target.member, end)
        .instrument(span.clone())
        .await;
    drop(guards);
    Ok(())
}

/// An authenticated session, ready to relay.
struct Established<'a> {
    server: Stream,
    target: Target,
    /// Transaction status of the ReadyForQuery that ended authentication.
    tx: TxStatus,
    signals: Signals<'static>,
    tally: PodTally,
    guards: SessionGuards<'a>,
}

/// What a session holds while it lives; released when it is dropped.
struct SessionGuards<'a> {
    _slot: SessionSlot<'a>,
    _backend: GaugeGuard,
    _key: KeyGuard<'a>,
}

/// What a connection turned out to need after its startup.
enum Opened<'a> {
    /// A cancel request, now served.
    Done,
    /// A passthrough session, authenticated by its backend.
    Passthrough(Box<Established<'a>>),
    /// A pooled session, to be authenticated by pgsteer.
    Pooled(Box<PooledStart>),
}

/// The startup of a pooled session.
struct PooledStart {
    request: Request,
    message: pgsteer_protocol::startup::StartupMessage,
    negotiation: pgsteer_protocol::startup::Negotiation,
}

/// Startup, routing (holding while no backend is available), connection and
/// authentication.
async fn establish<'a>(
    shared: &'a Shared,
    client: &mut Stream,
    listener: ListenerKind,
    source: std::net::IpAddr,
) -> Result<Opened<'a>, SessionError> {
    let (mut message, negotiation) = match opening(shared, client).await? {
        Opening::Cancel(c) => {
            crate::cancel_forward::serve_request(shared, c, source).await;
            return Ok(Opened::Done);
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
    if request.route == Route::Auto && listener.mode != PoolMode::Transaction {
        return Err(SessionError::fatal(
            Side::Client,
            SqlState::FEATURE_NOT_SUPPORTED,
            format!(
                "pgsteer: route auto needs pooled transaction mode; listener {} is in {} mode",
                listener.as_str(),
                listener.mode.as_str()
            ),
        ));
    }
    if listener.mode != PoolMode::Passthrough {
        return Ok(Opened::Pooled(Box::new(PooledStart {
            request,
            message,
            negotiation,
        })));
    }
    let mut hold = Hold::new(Backends::of(shared));
    let (server, target, authed) = loop {
        let (mut server, target) =
            hold::route_and_connect(Backends::of(shared), client, &request, &mut hold).await?;
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
                hold.exclude(target.member);
            }
            Err(e) => return Err(e),
        }
    };
    drop(hold);
    span.record("pod", target.member.as_str());
    Ok(Opened::Passthrough(Box::new(bind(
        shared, listener, &request, server, target, authed,
    ))))
}

/// Reads the connection's opening packets within `startup_timeout`.
async fn opening(shared: &Shared, client: &mut Stream) -> Result<Opening, SessionError> {
    let limit = shared.config.limits.startup_timeout;
    let opening = startup::read_opening(client, shared.tls.client.as_ref());
    tokio::time::timeout(limit, opening).await.map_err(|_| {
        SessionError::fatal(
            Side::Client,
            SqlState::PROTOCOL_VIOLATION,
            format!(
                "pgsteer: startup packet not received within {}",
                humantime::format_duration(limit)
            ),
        )
    })?
}

/// Counts the session on its member, keeps its cancel key, and arms its drain.
fn bind<'a>(
    shared: &'a Shared,
    listener: ListenerKind,
    request: &Request,
    server: Stream,
    target: Target,
    authed: auth::Authenticated,
) -> Established<'a> {
    let slot = shared.sessions.enter(&target.member);
    let m = &shared.metrics;
    m.sessions_routed
        .with_label_values(&[listener.as_str(), request.route.as_str(), &target.member])
        .inc();
    let backend_gauge = m
        .backend_sessions
        .with_label_values(&[&target.member, target.role.as_str()]);
    backend_gauge.inc();
    debug!(
        address = %target.address,
        role = %target.role,
        tls = server.is_tls(),
        "connected to backend"
    );
    let binding = Binding::new(
        &target.member,
        target.role,
        request.route,
        request.explicit_route,
        request.pin.is_some(),
    );
    let order = drain::watch(
        shared.topology.subscribe(),
        binding,
        Graces::from(&shared.config.drain),
        shared.shutdown.drain.clone(),
    );
    let signals = Signals {
        drain: Box::pin(order.in_current_span()),
        hard: Box::pin(shared.shutdown.now.clone().cancelled_owned()),
        paused: shared.paused.subscribe(),
    };
    Established {
        tally: PodTally::new(m.pod(&target.member)),
        server,
        target,
        tx: authed.tx,
        signals,
        guards: SessionGuards {
            _slot: slot,
            _backend: GaugeGuard(backend_gauge),
            _key: KeyGuard {
                cancels: &shared.cancels,
                handle: authed.cancel_key,
            },
        },
    }
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
    cancels: &'a crate::cancel::CancelRegistry,
    handle: Option<crate::cancel::KeyHandle>,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        if let Some(handle) = self.handle {
            self.cancels.unregister(handle);
        }
    }
}
