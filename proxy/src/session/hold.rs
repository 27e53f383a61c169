//! Finding a backend for a new session: ask the router, connect, and while no member fits the
//! route (no primary yet, new sessions paused, the chosen one refused) hold the connection
//! until the topology changes, up to `hold_timeout`.

use pgsteer_discovery::ProbeHandle;
use pgsteer_protocol::sqlstate::SqlState;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::stream::Stream;
use super::upstream::{self, UpstreamError};
use super::{SessionError, Side};
use crate::config;
use crate::metrics::Metrics;
use crate::router::{self, Decision, Policy, Request, Route, Target};
use crate::state::SessionCounts;
use crate::tls::ServerSide;
use crate::topology::TopologyHub;

/// What finding and opening a backend needs, borrowed from the proxy's shared state.
#[derive(Clone, Copy)]
pub struct Backends<'a> {
    /// `[routing]`: hold timeout, replica fallback, connect timeout.
    pub routing: &'a config::Routing,
    /// The topology sessions route on.
    pub topology: &'a TopologyHub,
    /// Sessions per member (least-loaded replica choice).
    pub sessions: &'a SessionCounts,
    /// `true` while new sessions are paused by an operator.
    pub paused: &'a watch::Sender<bool>,
    /// Fires when the proxy starts shutting down.
    pub shutdown: &'a CancellationToken,
    /// TLS towards the servers.
    pub tls: &'a ServerSide,
    /// Asks discovery to re-check members after a refusal.
    pub reprobe: &'a ProbeHandle,
    /// Connect and hold metrics.
    pub metrics: &'a Metrics,
    /// Pooled connections lent per member (least-loaded routing counts them too).
    pub pools: &'a crate::pool::Pools,
}

impl<'a> Backends<'a> {
    /// What finding and opening a backend needs, out of the proxy's shared state.
    pub fn of(shared: &'a crate::state::Shared) -> Backends<'a> {
        Backends {
            routing: &shared.config.routing,
            topology: &shared.topology,
            sessions: &shared.sessions,
            paused: &shared.paused,
            shutdown: &shared.shutdown.drain,
            tls: &shared.tls.server,
            reprobe: &shared.reprobe,
            metrics: &shared.metrics,
            pools: &shared.pools,
        }
    }

    /// The router's policy knobs out of `[routing]`.
    pub fn policy(&self) -> Policy {
        Policy {
            replica_fallback: self.routing.replica_fallback,
        }
    }

    /// A member's load for least-loaded routing: its passthrough sessions and the pooled
    /// connections lent on it.
    pub fn load(&self, member: &str) -> usize {
        self.sessions.get(member) + self.pools.lent_on(member)
    }
}

/// One connection's wait for a backend: the deadline, the members that just
/// failed it, and the held-connection metrics from the first wait until it
/// is released.
pub struct Hold<'a> {
    metrics: &'a Metrics,
    since: Option<std::time::Instant>,
    deadline: Instant,
    /// Members that refused this connection; forgotten when the topology changes, or at
    /// `retry_at` (a refusal may be a one-off: a connect or login timeout under load, on a
    /// member the probe still finds healthy).
    exclude: Vec<String>,
    /// When the excluded members are tried again (`None`: none excluded).
    retry_at: Option<Instant>,
    /// Refusals so far: the retry delay doubles with each.
    refusals: u32,
    generation: u64,
    client_quiet: bool,
}

/// The first retry of a member that refused a connection; doubled per refusal, up to
/// [`RETRY_MAX`].
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(250);
/// The longest pause before a member that refused is tried again.
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

impl<'a> Hold<'a> {
    /// A hold that has not started waiting yet.
    pub fn new(b: Backends<'a>) -> Hold<'a> {
        Hold {
            metrics: b.metrics,
            since: None,
            deadline: Instant::now() + b.routing.hold_timeout,
            exclude: Vec::new(),
            retry_at: None,
            refusals: 0,
            generation: b.topology.current().generation,
            client_quiet: false,
        }
    }

    /// The topology generation of the last routing decision.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A hold set up after a decision made without it, on topology `generation`: a member
    /// that refused since counts as refused on that topology (a change forgives it).
    pub fn decided_at(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// Skips `member` until the topology changes (it refused this connection), or until
    /// the retry delay has passed: 250 ms after the first refusal, doubling to 2 s.
    pub fn exclude(&mut self, member: String) {
        self.exclude.push(member);
        let delay = RETRY_FIRST
            .saturating_mul(1 << self.refusals.min(8))
            .min(RETRY_MAX);
        self.refusals += 1;
        self.retry_at = Some(Instant::now() + delay);
    }

    /// Forgets the members that refused (the topology changed, or their retry is due).
    fn forgive(&mut self) {
        self.exclude.clear();
        self.retry_at = None;
    }

    fn start(&mut self) {
        if self.since.is_none() {
            self.since = Some(std::time::Instant::now());
            self.metrics.held_connections.inc();
        }
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.since {
            self.metrics.held_connections.dec();
            self.metrics.held_seconds.observe(t.elapsed().as_secs_f64());
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
pub async fn route_and_connect(
    b: Backends<'_>,
    client: &Stream,
    request: &Request,
    hold: &mut Hold<'_>,
) -> Result<(Stream, Target), SessionError> {
    let mut routing = Routing::new(b);
    loop {
        let target = routing.next(client, request, hold).await?;
        match connect(b, &target, hold.generation).await {
            Ok(s) => return Ok((s, target)),
            Err(refused) => routing.refused(request, hold, target, refused)?,
        }
    }
}

/// Where a session goes: the router asked again whenever something changed, holding while
/// no member fits or new sessions are paused (up to `hold_timeout`). The caller connects
/// to what [`Routing::next`] gives (a socket for a passthrough session, a pooled connection
/// for a pooled one) and reports a refusal with [`Routing::refused`].
pub struct Routing<'b> {
    b: Backends<'b>,
    topology: watch::Receiver<pgsteer_discovery::Topology>,
    paused: watch::Receiver<bool>,
    /// A member refused and the session must wait for a change before routing again.
    wait: Option<String>,
}

impl<'b> Routing<'b> {
    /// Routing with the proxy's topology and pause switch.
    pub fn new(b: Backends<'b>) -> Routing<'b> {
        Routing {
            b,
            topology: b.topology.subscribe(),
            paused: b.paused.subscribe(),
            wait: None,
        }
    }

    /// The member to go to now, after holding as long as needed.
    pub async fn next(
        &mut self,
        client: &Stream,
        request: &Request,
        hold: &mut Hold<'_>,
    ) -> Result<Target, SessionError> {
        loop {
            let why = match self.wait.take() {
                Some(why) => why,
                None if *self.paused.borrow_and_update() => {
                    "new sessions are paused by an operator".to_owned()
                }
                None => match decide(self.b, &mut self.topology, request, hold)? {
                    Next::Connect(target) => return Ok(target),
                    Next::Wait(why) => why,
                },
            };
            self.hold(client, request, hold, why).await?;
        }
    }

    /// `target` refused: a configuration problem ends the session; otherwise the member is
    /// skipped until the topology changes, and a primary session waits for that change.
    pub fn refused(
        &mut self,
        request: &Request,
        hold: &mut Hold<'_>,
        target: Target,
        refused: Refused,
    ) -> Result<(), SessionError> {
        match refused {
            Refused::Fatal(e) => Err(e),
            Refused::Moved => Ok(()),
            Refused::Wait(why) => {
                hold.exclude(target.member);
                if request.route == Route::Primary && request.pin.is_none() {
                    self.wait = Some(why);
                }
                Ok(())
            }
        }
    }

    /// Waits for a change, or fails at the hold deadline.
    async fn hold(
        &mut self,
        client: &Stream,
        request: &Request,
        hold: &mut Hold<'_>,
        why: String,
    ) -> Result<(), SessionError> {
        let b = self.b;
        if b.shutdown.is_cancelled() {
            return Err(SessionError::fatal(
                Side::Internal,
                SqlState::CANNOT_CONNECT_NOW,
                "pgsteer: the proxy is shutting down",
            ));
        }
        debug!(reason = %why, "holding the connection");
        hold.start();
        if let Woken::TimedOut = wait(b, client, hold, &mut self.topology, &mut self.paused).await?
        {
            b.metrics.refused_after_hold.inc();
            return Err(SessionError::fatal(
                Side::Internal,
                SqlState::CANNOT_CONNECT_NOW,
                format!(
                    "pgsteer: no backend for route {} after waiting {}: {why}",
                    request.route.as_str(),
                    humantime::format_duration(b.routing.hold_timeout)
                ),
            ));
        }
        Ok(())
    }
}

/// What to do next, when the router did not refuse.
enum Next {
    Connect(Target),
    Wait(String),
}

/// The router's decision on the latest topology; a refusal is the client's error.
fn decide(
    b: Backends<'_>,
    topology: &mut watch::Receiver<pgsteer_discovery::Topology>,
    request: &Request,
    hold: &mut Hold<'_>,
) -> Result<Next, SessionError> {
    let t = topology.borrow_and_update();
    if t.generation != hold.generation {
        hold.generation = t.generation;
        hold.forgive();
        hold.refusals = 0;
    }
    match router::decide(&t, request, b.policy(), |m| b.load(m), &hold.exclude) {
        Decision::Refuse(why) => Err(SessionError::fatal(
            Side::Internal,
            SqlState::UNABLE_TO_CONNECT,
            why,
        )),
        Decision::Connect(target) => Ok(Next::Connect(target)),
        Decision::Wait(why) => Ok(Next::Wait(why)),
    }
}

/// Waits for something that may let a held connection go on.
async fn wait(
    b: Backends<'_>,
    client: &Stream,
    hold: &mut Hold<'_>,
    topology: &mut watch::Receiver<pgsteer_discovery::Topology>,
    paused: &mut watch::Receiver<bool>,
) -> Result<Woken, SessionError> {
    Ok(tokio::select! {
        r = topology.changed() => match r {
            Ok(()) => Woken::Retry,
            Err(_) => Woken::TimedOut,
        },
        _ = paused.changed() => Woken::Retry,
        _ = tokio::time::sleep_until(hold.deadline) => Woken::TimedOut,
        // Before the deadline: a hold that is about to time out is not retried.
        _ = tokio::time::sleep_until(hold.retry_at.unwrap_or(hold.deadline)),
            if hold.retry_at.is_some_and(|at| at < hold.deadline) =>
        {
            hold.forgive();
            Woken::Retry
        }
        gone = client_gone(client), if !hold.client_quiet => {
            if gone {
                return Err(SessionError::quiet(Side::Client, "client left while held"));
            }
            hold.client_quiet = true;
            Woken::Retry
        }
        _ = b.shutdown.cancelled() => Woken::Retry,
    })
}

/// Why a backend connection was not made.
pub enum Refused {
    /// The member may come back or another may do: the reason to wait.
    Wait(String),
    /// Configuration-level failure (TLS): tell the client now.
    Fatal(SessionError),
    /// The topology moved under the request (the pool it waited on was retired): route
    /// again at once, on the latest topology.
    Moved,
}

/// Connects to the chosen backend, recording latency, failures and the
/// reroute time after a role change.
pub async fn connect(b: Backends<'_>, target: &Target, generation: u64) -> Result<Stream, Refused> {
    let m = b.metrics;
    let started = std::time::Instant::now();
    match upstream::connect(target, b.tls, b.routing.connect_timeout).await {
        Ok(s) => {
            m.backend_connect_seconds
                .with_label_values(&[&target.member])
                .observe(started.elapsed().as_secs_f64());
            b.topology.rerouted(generation);
            Ok(s)
        }
        Err(e) => Err(refused(b, target, e)),
    }
}

/// What a failed connect means for the session: wait (and try another member) or fail.
pub fn refused(b: Backends<'_>, target: &Target, e: UpstreamError) -> Refused {
    match e {
        UpstreamError::Unreachable(e) => {
            b.metrics
                .backend_connect_failures
                .with_label_values(&[&target.member])
                .inc();
            warn!(member = %target.member, address = %target.address, error = %e, "backend refused the connection");
            b.reprobe.reprobe();
            Refused::Wait(format!(
                "{} ({}) refused the connection",
                target.member, target.address
            ))
        }
        UpstreamError::Tls(e) => {
            b.metrics
                .backend_connect_failures
                .with_label_values(&[&target.member])
                .inc();
            Refused::Fatal(SessionError::fatal(
                Side::Server,
                SqlState::UNABLE_TO_CONNECT,
                format!(
                    "pgsteer: cannot connect to {} ({}) with tls.server_mode = \"{}\": {e}",
                    target.member,
                    target.address,
                    b.tls.mode().as_str()
                ),
            ))
        }
    }
}

/// Resolves `true` when the client closed, `false` if it sent data instead.
/// (A TLS client's close_notify is data: it is noticed at the next read.)
async fn client_gone(client: &Stream) -> bool {
    let mut b = [0u8; 1];
    !matches!(client.peek(&mut b).await, Ok(n) if n > 0)
}
