//! A pooled client session: pgsteer authenticates the client itself, answers its login with
//! the parameters of a real server connection, and lends it a pooled server connection per
//! transaction (or for the whole session) on the one relay core.
//!
//! Each lend routes the client as a new passthrough session would be routed (holding while
//! no member fits), takes a connection from the (member, database, user) pool, checks the
//! topology again (a connection to a member that lost the role is never used), and gives
//! the connection the client's settings. Between transactions the client holds nothing.

mod auto;
mod auto_session;
mod login;
mod lost;
pub mod owner;
mod stand_in;
pub mod state;
mod take;

use std::sync::Arc;

use bytes::BytesMut;
use pgsteer_protocol::backend::TxStatus;
use pgsteer_protocol::encode::{self, ErrorInfo};
use pgsteer_protocol::sqlstate::SqlState;
use pgsteer_protocol::startup::{Negotiation, StartupMessage};
use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};

use super::hold::{Backends, Hold, Routing};
use super::relay::{End, EndKind, Event, Passthrough, Relay, Signals};
use super::stream::Stream;
use super::{ListenerKind, SessionError, Side, close};
use crate::auth::Credentials;
use crate::cancel::{KeyHandle, LentSlot};
use crate::config::PoolMode;
use crate::drain::{self, DrainOrder, Graces};
use crate::metrics::PodTally;
use crate::pool::Pool;
use crate::pool::lifecycle::{self, CloseReason, Disposition, Returned};
use crate::pool::server::{self, OpenError, QueryError, ServerConn};
use crate::router::{Request, Route, Target};
use crate::state::Shared;
use auto::{Auto, ReadOnlyFunctions, WRITTEN_LSN_SQL};
use lost::Next;
use owner::{InFlight, Pooled};
use stand_in::StandIn;
use state::{ClientState, SESSION_SETTINGS_SQL, sync_sql};
use take::SlowRouting;

/// A server connection lent to the client.
struct Lent {
    conn: Box<ServerConn>,
    pool: Arc<Pool>,
    target: Target,
}

/// Everything a pooled session keeps between relay runs.
struct Session<'a> {
    shared: &'a Shared,
    request: Request,
    /// Where the current transaction goes: `request`, or an `auto` client's per-transaction
    /// route.
    route_now: Request,
    /// Route `auto`: the client's per-transaction routing state.
    auto: Option<Auto>,
    user: String,
    database: String,
    db_user: String,
    credentials: Credentials,
    state: ClientState,
    cancel: Arc<LentSlot>,
    cancel_key: KeyHandle,
    /// The pool of the client's first transaction, which counts it as a client.
    counted: Option<Arc<Pool>>,
    /// The pod the relay's counters are for.
    tally_pod: String,
    /// The binding of the connection lent now, watched by the session's drain order.
    lent_binding: Arc<drain::Lent>,
    /// The pool of the last connection, reused while it is current.
    last_pool: Option<Arc<Pool>>,
    /// Where the last connection went: reused while the router picks the same member.
    last_target: Option<Target>,
    /// The topology generation `last_target` was chosen on for an unpinned primary route:
    /// while it is current, the router would choose the same (see `route_at_once`).
    routed_at: Option<u64>,
    /// What pgsteer answers for the server while nothing is lent (`stand_in.rs`).
    stand_in: StandIn,
    /// The deferred `BEGIN` to run on the connection lent next.
    begin: Option<Vec<u8>>,
    /// The stand-in's replies, written before they go to the relay.
    reply: BytesMut,
    /// The current transaction was sent again after its replica went away (only once).
    ran_again: bool,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.shared.cancels.unregister(self.cancel_key);
        if let Some(pool) = &self.counted {
            pool.clients
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Serves a pooled client from its startup message to the end.
pub async fn serve(
    shared: &Shared,
    client: &mut Stream,
    listener: ListenerKind,
    request: Request,
    message: StartupMessage,
    negotiation: Negotiation,
    span: &tracing::Span,
) -> Result<(), SessionError> {
    use tracing::Instrument;
    // Boxed here and below: the session's future stays as small as its relay phase (an
    // idle pooled client holds it), and the rare phases allocate only while they run.
    let (mut session, first) = Box::pin(log_in(
        shared,
        client,
        listener,
        request,
        message,
        &negotiation,
    ))
    .instrument(span.clone())
    .await?;
    let limit = shared.config.limits.max_message_bytes;
    let tally = PodTally::new(shared.metrics.pod(&session.tally_pod));
    let mut relay = Relay::new::<Pooled<'_>>(limit, TxStatus::Idle, session.idle_signals(), tally);
    relay.set_idle_transaction_timeout(shared.config.pool.idle_transaction_timeout);
    let mut lent = first;
    if session.state.lends()
        && let Some(l) = lent.take()
    {
        session.give_back(l, TxStatus::Idle, true);
    }
    let mut sent = InFlight::new();
    let end = loop {
        let event = match &mut lent {
            Some(l) => {
                let ServerConn {
                    stream,
                    statements,
                    reported,
                    reported_fingerprint,
                    ..
                } = &mut *l.conn;
                let mut owner = Pooled {
                    client: &mut session.state,
                    statements,
                    reported,
                    reported_fingerprint,
                    sent: &mut sent,
                    cap: shared.pools.settings.max_prepared_statements,
                    net: session.auto.as_mut().map(|a| &mut a.net),
                };
                relay.run(client, Some(stream), &mut owner).await
            }
            None => relay.run(client, None, &mut Passthrough).await,
        };
        if session.lost(&event, &mut relay, &mut lent, &mut sent) {
            continue;
        }
        match event {
            Err(e) => {
                if let Some(l) = lent.take() {
                    session.give_back(l, relay.tx(), false);
                }
                return Err(e);
            }
            Ok(Event::NeedServer) => {
                match session.stand_in(&mut relay) {
                    Next::Relay => continue,
                    Next::Leave => break None,
                    Next::Lend => {}
                }
                session.route_transaction(relay.client_unscanned());
                lent = session.lend_for(client, &mut relay).await?;
            }
            Ok(Event::Idle) => session.between(lent.take(), &mut relay, client).await,
            // The member of the lent connection lost its role and the client reached an idle
            // point: the connection goes (its pool is retired), the client stays.
            Ok(Event::End(end))
                if end.kind == EndKind::Drained && !shared.shutdown.drain.is_cancelled() =>
            {
                session.drained(lent.take(), &mut relay);
            }
            Ok(Event::End(end)) => break Some(end),
        }
    };
    Box::pin(session.close(client, lent, end, relay.tx())).await;
    Ok(())
}

/// Authenticates the client, lends it a first connection and sends the welcome.
async fn log_in<'a>(
    shared: &'a Shared,
    client: &mut Stream,
    listener: ListenerKind,
    request: Request,
    message: StartupMessage,
    negotiation: &Negotiation,
) -> Result<(Session<'a>, Option<Lent>), SessionError> {
    if message.get("replication").is_some() {
        return Err(SessionError::fatal(
            Side::Client,
            SqlState::PROTOCOL_VIOLATION,
            "pgsteer: replication connections are not pooled; use a passthrough listener",
        ));
    }
    let user = message.user().unwrap_or_default().to_owned();
    let database = message.database().unwrap_or(&user).to_owned();
    let Some(auth) = &shared.auth else {
        return Err(SessionError::fatal(
            Side::Internal,
            SqlState::INTERNAL_ERROR,
            "pgsteer: pooled mode without [auth]",
        ));
    };
    let mut out = BytesMut::new();
    if negotiation.downgraded {
        encode::negotiate_protocol_version(
            &mut out,
            message.version.minor,
            &negotiation.unsupported_options,
        );
        write(client, &out).await?;
    }
    let primary = shared
        .topology
        .current()
        .primary()
        .map(crate::router::target);
    let secret = auth
        .secret(&user, &database, primary.as_ref(), &shared.tls.server)
        .await;
    let end_point = shared.tls.client.as_ref().and_then(|t| t.end_point());
    let credentials = login::authenticate(client, auth, &user, secret.as_ref(), end_point).await?;
    auth.remember(&user, credentials.clone());
    let state = ClientState::new(
        listener.mode,
        &message,
        &shared.pools.settings_cache,
        shared.pools.statements.clone(),
        shared.metrics.pool_pins.clone(),
    )
    .map_err(|e| SessionError::fatal(Side::Client, SqlState::INVALID_PARAMETER_VALUE, e))?;
    let key_len = if message.version.minor >= 2 { 32 } else { 4 };
    let (cancel_key, key, cancel) = shared.cancels.register_lent(key_len);
    let auto = (request.route == Route::Auto).then(|| {
        Auto::new(
            request.consistency,
            ReadOnlyFunctions::new(&shared.config.routing.read_only_functions),
        )
    });
    let mut session = Session {
        shared,
        route_now: request.clone(),
        auto,
        request,
        db_user: crate::pool::db_user(&database, &user),
        user,
        database,
        credentials,
        state,
        cancel,
        cancel_key,
        counted: None,
        tally_pod: String::new(),
        lent_binding: Arc::default(),
        last_pool: None,
        last_target: None,
        routed_at: None,
        stand_in: StandIn::Off,
        begin: None,
        reply: BytesMut::new(),
        ran_again: false,
    };
    let (parameters, first) = session.first_parameters(client).await?;
    session.welcome(client, parameters, &key).await?;
    Ok((session, first))
}

async fn write(client: &mut Stream, bytes: &[u8]) -> Result<(), SessionError> {
    let io = async {
        client.write_all(bytes).await?;
        client.flush().await
    };
    io.await.map_err(|e| SessionError::io(Side::Client, e))
}

impl<'a> Session<'a> {
    /// AuthenticationOk, the connection's parameters, pgsteer's cancel key, ReadyForQuery.
    /// The parameters the client is shown at login: those of a fresh connection of its pool
    /// with its own settings in place, as the pool learnt them from its first connection. A
    /// pool that has not opened one yet opens it now (and it may be the client's first).
    async fn first_parameters(
        &mut self,
        client: &Stream,
    ) -> Result<(server::Settings, Option<Lent>), SessionError> {
        let shared = self.shared;
        let mut hold = Hold::new(Backends::of(shared));
        let target = Routing::new(Backends::of(shared))
            .next(client, &self.request, &mut hold)
            .await?;
        drop(hold);
        self.tally_pod.clone_from(&target.member);
        let pool = shared
            .pools
            .get(&target.member, &target.address, &self.db_user);
        pool.clients
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.counted = Some(pool.clone());
        if let Some(shown) = pool.greeting().shown(&self.state.desired) {
            return Ok((shown, None));
        }
        let first = self.lend(client).await?;
        pool.greeting()
            .learn(&self.state.desired, &first.conn.reported);
        Ok((first.conn.reported.clone(), Some(first)))
    }

    async fn welcome(
        &mut self,
        client: &mut Stream,
        parameters: server::Settings,
        key: &[u8],
    ) -> Result<(), SessionError> {
        let mut out = BytesMut::with_capacity(512);
        encode::authentication_ok(&mut out);
        for (name, value) in &parameters {
            encode::parameter_status(&mut out, name, value);
        }
        self.state.seen = self.shared.pools.settings_cache.intern(parameters);
        encode::backend_key_data(&mut out, self.cancel_key.pid, key);
        encode::ready_for_query(&mut out, TxStatus::Idle);
        write(client, &out).await
    }

    /// A connection for the client's first transaction, set up for it, with the relay
    /// rebound to it; on failure the client's request is refused and it stays.
    async fn lend_for(
        &mut self,
        client: &mut Stream,
        relay: &mut Relay<'a>,
    ) -> Result<Option<Lent>, SessionError> {
        match self.lend(client).await {
            Ok(l) => {
                if self.state.seen_fingerprint != l.conn.reported_fingerprint {
                    for (name, value) in &l.conn.reported {
                        if self.state.seen.get(name) != Some(value) {
                            encode::parameter_status(relay.client_inject(), name, value);
                            Arc::make_mut(&mut self.state.seen).insert(name.clone(), value.clone());
                        }
                    }
                    self.state.seen_fingerprint = l.conn.reported_fingerprint;
                }
                if let Some(tally) = self.tally(&l.target) {
                    relay.retally(tally);
                }
                let role = self.binding_role(&l.target);
                if !self.lent_binding.is(&l.target.member, role) {
                    self.lent_binding.set(Some(self.binding(&l.target)));
                }
                *self.cancel.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(l.conn.cancel.clone());
                Ok(Some(l))
            }
            Err(e) if e.code.is_some() && e.side != Side::Client => {
                e.log();
                let mut out = BytesMut::new();
                let code = e.code.unwrap_or(SqlState::CANNOT_CONNECT_NOW);
                encode::error_response(&mut out, &ErrorInfo::error(code, &e.message));
                if self.begin.take().is_some() {
                    // The client was told its `BEGIN` worked: it is in a failed block now.
                    relay.set_tx(TxStatus::Failed);
                    self.stand_in.abort(Vec::new(), true);
                }
                relay.reject(&out);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Between two transactions: [`Self::idle`], then, if the session is busy, the move to the
    /// engine (where it can go), holding no connection; its client socket joins it there.
    async fn between(&mut self, lent: Option<Lent>, relay: &mut Relay<'_>, client: &mut Stream) {
        self.idle(lent, relay).await;
        if relay.busy() && !super::engine::in_engine() {
            super::engine::hop().await;
            if super::engine::in_engine() {
                relay.driven_off_thread();
                super::engine::adopt(client);
            }
        }
    }

    /// Routes the client (holding while no member fits) and takes a connection from the
    /// member's pool, with the client's settings applied.
    async fn lend(&mut self, client: &Stream) -> Result<Lent, SessionError> {
        let shared = self.shared;
        // Set up only when the transaction cannot be routed at once (it holds, a member
        // refused it, or the switchover gate holds it): most transactions need neither.
        let mut slow: SlowRouting<'a> = None;
        let gate = &shared.switchover;
        let mut broken_begins = 0;
        loop {
            // A switchover led by pgsteer holds transactions bound for the primary here.
            if self.route_now.route != Route::Replica {
                if gate.is_closed() && slow.is_none() {
                    // The hold's deadline runs while the gate holds, as it always has.
                    slow = Some(self.slow_routing(None));
                }
                gate.wait(shared.config.switchover.timeout, &shared.metrics)
                    .await;
            }
            let (target, decided) = self.next_target(client, &mut slow).await?;
            let mut lent = match self.take(target).await {
                Ok(l) => l,
                Err((refused, target)) => {
                    self.routed_at = None;
                    let (hold, routing) =
                        slow.get_or_insert_with(|| self.slow_routing(Some(decided)));
                    routing.refused(&self.route_now, hold, target, refused)?;
                    continue;
                }
            };
            // A connection lives where its borrower runs: in the engine, it joins the engine
            // (the first time it is lent there); lent to a session in its task, it goes back
            // to the task's loop, whose IO driver then reports its readiness straight to the
            // task (through the engine, every wait would wake a second thread).
            super::engine::settle(&mut lent.conn.stream);
            if !self.still_fits(&lent.target, decided) {
                // The topology moved while the connection was taken: route again.
                self.return_conn(lent, false);
                continue;
            }
            if lent.conn.applied_fingerprint != self.state.desired_fingerprint {
                let sql = sync_sql(&self.state.desired, &lent.conn.applied);
                if let Err(e) = Box::pin(lent.conn.query(&sql)).await {
                    let broken = matches!(e, QueryError::Broken(_));
                    self.return_conn(lent, broken);
                    return Err(query_error("cannot apply the session's settings", e));
                }
                lent.conn.applied = self.state.desired.clone();
                lent.conn.applied_fingerprint = self.state.desired_fingerprint;
            }
            if !self.fresh_enough(&mut lent).await {
                self.return_conn(lent, false);
                continue;
            }
            // Counted as lent before the gate is looked at again (see `switchover::Gate`).
            let lent_count = lent.pool.member_lent.clone();
            lent_count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.route_now.route != Route::Replica && gate.is_closed() {
                lent_count.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                self.return_conn(lent, false);
                continue;
            }
            if let Some(begin) = &self.begin {
                let sql = stand_in::query_text(begin);
                let opened = lent.conn.query_leaving(sql, TxStatus::InTransaction);
                if let Err(e) = Box::pin(opened).await {
                    lent_count.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    let broken = matches!(e, QueryError::Broken(_));
                    self.return_conn(lent, broken);
                    // Nothing of the client's reached a server: another connection will do.
                    broken_begins += 1;
                    if broken && broken_begins < 3 {
                        continue;
                    }
                    return Err(query_error("the transaction's BEGIN failed", e));
                }
                self.begin = None;
            }
            self.state.pool = Some(lent.pool.clone());
            return Ok(lent);
        }
    }

    /// Ends a transaction: reads the settings back if a statement may have changed them,
    /// and gives the connection back.
    async fn finish_transaction(&mut self, mut l: Lent) {
        if let Some(auto) = &mut self.auto
            && auto.needs_written_lsn()
        {
            auto.written_lsn = match Box::pin(l.conn.query(WRITTEN_LSN_SQL)).await {
                Ok(rows) => rows
                    .first()
                    .and_then(|r| r.first()?.as_deref().and_then(pgsteer_discovery::parse_lsn))
                    .unwrap_or(u64::MAX),
                Err(e) => {
                    debug!(error = %e, "could not read the WAL position after a write; reads stay on the primary");
                    u64::MAX
                }
            };
        }
        if std::mem::take(&mut self.state.settings_changed) {
            match Box::pin(l.conn.query(SESSION_SETTINGS_SQL)).await {
                Ok(rows) => {
                    let settings: server::Settings = rows
                        .into_iter()
                        .filter_map(|r| {
                            let mut it = r.into_iter();
                            Some((it.next()??, it.next()??))
                        })
                        .collect();
                    l.conn.applied_fingerprint = crate::pool::server::fingerprint(&settings);
                    let settings = self.shared.pools.settings_cache.intern(settings);
                    l.conn.applied = settings.clone();
                    self.state.set_desired(settings);
                }
                Err(e) => {
                    warn!(error = %e, "could not read back a client's settings; closing its connection");
                    l.conn.broken = true;
                }
            }
        }
        self.give_back(l, TxStatus::Idle, true);
    }

    /// Gives a lent connection back to its pool (or closes it).
    fn give_back(&mut self, l: Lent, tx: TxStatus, clean: bool) {
        *self.cancel.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let reprepared = std::mem::take(&mut self.state.reprepared);
        if reprepared > 0 {
            self.shared.metrics.pool_reprepares.inc_by(reprepared);
        }
        l.pool
            .member_lent
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let pinned = self.state.pinned.is_some();
        let facts = Returned {
            tx,
            clean,
            broken: l.conn.broken,
            dirty: false,
            // A retired pool closes what it gets back.
            retired: false,
            age: crate::clock::now().saturating_duration_since(l.conn.created),
        };
        match lifecycle::on_return(facts, self.shared.pools.settings.server_lifetime) {
            Disposition::Keep | Disposition::Reset => l.pool.give_back(Some(l.conn), pinned),
            Disposition::Close(why) => {
                crate::pool::close(l.conn, why);
                l.pool.give_back(None, pinned);
            }
        }
        self.state.pool = None;
        self.last_target = Some(l.target);
    }

    /// A connection taken but not lent (the topology moved, or its settings failed).
    fn return_conn(&mut self, l: Lent, broken: bool) {
        if broken {
            crate::pool::close(l.conn, CloseReason::Broken);
            l.pool.give_back(None, false);
        } else {
            l.pool.give_back(Some(l.conn), false);
        }
        self.last_target = Some(l.target);
    }

    /// The session is over: the connection it has goes back clean or is closed, and the
    /// client is told why when it was not its own doing.
    async fn close(
        &mut self,
        client: &mut Stream,
        lent: Option<Lent>,
        end: Option<End>,
        tx: TxStatus,
    ) {
        let clean = end.as_ref().is_none_or(|e| {
            e.server_at_boundary && e.client_at_boundary && e.kind == EndKind::ClientClosed
        });
        if let Some(mut l) = lent {
            if clean
                && tx == TxStatus::Idle
                && (self.state.pinned.is_some() || self.state.mode == PoolMode::Session)
            {
                self.reset(&mut l).await;
            }
            self.give_back(l, tx, clean);
        }
        let Some(end) = end else {
            return;
        };
        match (end.kind, end.closing) {
            (EndKind::IdleInTransaction, _) => {
                let msg = "terminating connection due to idle-in-transaction timeout";
                close::send_fatal(client, SqlState::IDLE_IN_TRANSACTION_TIMEOUT, msg).await;
            }
            (EndKind::ServerClosed, _) if end.server_at_boundary => {
                close::send_fatal(
                    client,
                    SqlState::CONNECTION_FAILURE,
                    "pgsteer: the server connection was lost",
                )
                .await;
            }
            (EndKind::Drained | EndKind::Terminated, Some(closing)) => {
                self.shared
                    .metrics
                    .sessions_drained
                    .with_label_values(&[closing.outcome.label()])
                    .inc();
                if end.server_at_boundary {
                    close::send_fatal(client, drain::Closing::SQLSTATE, &closing.message()).await;
                } else {
                    close::shut(client).await;
                }
            }
            _ => close::shut(client).await,
        }
    }

    /// Runs the reset query on a connection that carries its client's session state.
    async fn reset(&mut self, l: &mut Lent) {
        let query = &self.shared.config.pool.reset_query;
        if !query.is_empty()
            && let Err(e) = Box::pin(l.conn.query(query)).await
        {
            debug!(error = %e, "reset query failed; closing the connection");
            l.conn.broken = true;
        }
        l.conn.statements.clear();
        l.conn.applied = Arc::default();
        l.conn.applied_fingerprint = server::fingerprint(&l.conn.applied);
    }

    /// The session's drain order: the member of the connection lent now lost its role, or
    /// the proxy shuts down. One future for many transactions.
    fn drain_order(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = DrainOrder> + Send + 'a>> {
        Box::pin(drain::watch_lent(
            self.shared.topology.subscribe(),
            self.lent_binding.clone(),
            Graces::from(&self.shared.config.drain),
            self.shared.shutdown.drain.clone(),
        ))
    }

    /// The member of the lent connection lost its role and the client reached an idle
    /// point: the connection goes (its pool is retired), the client stays.
    fn drained(&mut self, lent: Option<Lent>, relay: &mut Relay<'a>) {
        if let Some(l) = lent {
            self.give_back(l, relay.tx(), true);
        }
        // The binding that drained is forgotten, or the new order would fire at once.
        self.lent_binding.set(None);
        relay.rebind(self.drain_order(), None);
    }

    /// Signals of a session with no connection lent.
    fn idle_signals(&self) -> Signals<'a> {
        Signals {
            drain: self.drain_order(),
            hard: Box::pin(self.shared.shutdown.now.cancelled()),
            paused: self.shared.paused.subscribe(),
        }
    }

    /// Counters for `target`'s pod, if they are not the ones in use already.
    fn tally(&mut self, target: &Target) -> Option<PodTally> {
        if self.tally_pod == target.member {
            return None;
        }
        self.tally_pod.clone_from(&target.member);
        Some(PodTally::new(self.shared.metrics.pod(&target.member)))
    }
}

/// The client's error when pgsteer's own query `what` fails on the connection lent
/// ("cannot apply the session's settings", "the transaction's BEGIN failed").
fn query_error(what: &str, e: QueryError) -> SessionError {
    let (code, message) = match &e {
        QueryError::Failed { message, .. } => (SqlState::INVALID_PARAMETER_VALUE, message.clone()),
        QueryError::Broken(b) => (SqlState::CONNECTION_FAILURE, b.to_string()),
    };
    SessionError::fatal(Side::Server, code, format!("pgsteer: {what}: {message}"))
}

/// The client's error when pgsteer cannot log in as its user.
fn login_error(e: OpenError) -> SessionError {
    match e {
        OpenError::Refused { code, message, .. } if code.starts_with("28") => SessionError::fatal(
            Side::Server,
            SqlState::INVALID_AUTHORIZATION,
            format!("pgsteer: the server refused the login: {message}"),
        ),
        OpenError::Refused { code, message, .. } if code == "3D000" => {
            SessionError::fatal(Side::Server, SqlState::INVALID_CATALOG_NAME, message)
        }
        e => SessionError::fatal(
            Side::Server,
            SqlState::UNABLE_TO_CONNECT,
            format!("pgsteer: cannot open a server connection: {e}"),
        ),
    }
}
