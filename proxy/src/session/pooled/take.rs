//! Taking a server connection for a pooled client: from the pool of the member the client's
//! transaction is routed to (an idle one, or a new one opened and logged in as the client),
//! and checking that the member still fits the client's request.

use std::sync::Arc;

use super::{Lent, Session};
use crate::drain::{self, Binding, Graces};
use crate::pool::server::{self, Login, OpenError, ServerConn};
use crate::pool::{Acquired, NoConn, Pool};
use crate::router::{self, Decision, Route, Target};
use crate::session::hold::{self, Backends, Hold, Refused, Routing};
use crate::session::stream::Stream;
use crate::session::{SessionError, Side};
use pgsteer_discovery::Role;
use pgsteer_protocol::sqlstate::SqlState;

/// A transaction's hold and routing, set up only when it cannot be routed at once.
pub(super) type SlowRouting<'a> = Option<(Hold<'a>, Routing<'a>)>;

impl<'a> Session<'a> {
    /// Where the current transaction goes, with the topology generation it was decided on:
    /// at once when nothing holds it, else through `slow` (set up now if it was not).
    pub(super) async fn next_target(
        &mut self,
        client: &Stream,
        slow: &mut SlowRouting<'a>,
    ) -> Result<(Target, u64), SessionError> {
        if slow.is_none()
            && let Some(found) = self.route_at_once()
        {
            return Ok(found);
        }
        // What the slow way chooses is no choice of the router alone.
        self.routed_at = None;
        let (hold, routing) = slow.get_or_insert_with(|| self.slow_routing(None));
        let target = routing.next(client, &self.route_now, hold).await?;
        Ok((target, hold.generation()))
    }

    /// A hold and routing for the current transaction. `decided`: the topology generation a
    /// member that refused was chosen on without them (a change since then forgives the
    /// refusal, as when the hold is set up first).
    pub(super) fn slow_routing(&self, decided: Option<u64>) -> (Hold<'a>, Routing<'a>) {
        let b = Backends::of(self.shared);
        let mut hold = Hold::new(b);
        if let Some(generation) = decided {
            hold.decided_at(generation);
        }
        (hold, Routing::new(b))
    }

    /// Where the current transaction goes when nothing holds it: new sessions are not
    /// paused and the router picks a member at once (as [`Routing::next`] would without
    /// waiting), with the topology generation it decided on. `None`: route the slow way.
    ///
    /// [`Routing::next`]: crate::session::hold::Routing::next
    pub(super) fn route_at_once(&mut self) -> Option<(Target, u64)> {
        let b = Backends::of(self.shared);
        if *b.paused.borrow() {
            return None;
        }
        let t = b.topology.current();
        // An unpinned primary route depends on the topology alone, and the generation moves
        // with everything the router looks at: the last choice stands while it is current.
        let primary = self.route_now.route == Route::Primary && self.route_now.pin.is_none();
        if primary
            && self.routed_at == Some(t.generation)
            && let Some(last) = self.last_target.take()
        {
            return Some((last, t.generation));
        }
        self.routed_at = None;
        match router::choose(&t, &self.route_now, b.policy(), |m| b.load(m), &[]) {
            Decision::Connect(m) => {
                let target = match self.last_target.take() {
                    Some(last)
                        if last.member == m.name
                            && last.address == m.address
                            && last.role == m.role =>
                    {
                        last
                    }
                    _ => router::target(m),
                };
                if primary {
                    self.routed_at = Some(t.generation);
                }
                Some((target, t.generation))
            }
            Decision::Wait(_) | Decision::Refuse(_) => None,
        }
    }

    /// A connection from `target`'s pool: an idle one or a new one.
    pub(super) async fn take(&mut self, target: Target) -> Result<Lent, (Refused, Target)> {
        match self.take_from(&target).await {
            Ok((conn, pool)) => Ok(Lent { conn, pool, target }),
            Err(refused) => Err((refused, target)),
        }
    }

    /// The pool of `target` for this client: the last one used while it is current.
    pub(super) fn pool_of(&mut self, target: &Target) -> Arc<Pool> {
        if let Some(p) = &self.last_pool
            && p.key.member == target.member
            && p.address == target.address
            && !p.retired()
        {
            return p.clone();
        }
        let p = self
            .shared
            .pools
            .get(&target.member, &target.address, &self.db_user);
        self.last_pool = Some(p.clone());
        p
    }

    pub(super) async fn take_from(
        &mut self,
        target: &Target,
    ) -> Result<(Box<ServerConn>, Arc<Pool>), Refused> {
        let shared = self.shared;
        let pool = self.pool_of(target);
        let settings = &shared.pools.settings;
        let acquired = match pool.acquire(settings, &shared.metrics).await {
            Ok(a) => a,
            Err(NoConn::Retired) => return Err(Refused::Moved),
            Err(NoConn::Exhausted { size, .. }) => {
                shared.metrics.pool_checkout_timeouts.inc();
                return Err(Refused::Fatal(SessionError::fatal(
                    Side::Internal,
                    SqlState::TOO_MANY_CONNECTIONS,
                    format!(
                        "pgsteer: no server connection free on {} for {} after waiting {} (pool size {size})",
                        target.member,
                        self.user,
                        humantime::format_duration(settings.checkout_timeout),
                    ),
                )));
            }
        };
        let conn = match acquired {
            Acquired::Idle(c) => c,
            Acquired::Open => {
                // Given back if the opening fails, or if this future is dropped halfway.
                let mut permit = Permit(Some(&pool));
                let c = Box::pin(self.open(target)).await?;
                permit.0 = None;
                pool.greeting().remember_defaults(&c.reported);
                c
            }
        };
        Ok((conn, pool))
    }

    pub(super) async fn open(&self, target: &Target) -> Result<Box<ServerConn>, Refused> {
        let shared = self.shared;
        let started = std::time::Instant::now();
        let login = Login {
            user: &self.user,
            database: &self.database,
            credentials: &self.credentials,
            tls: &shared.tls.server,
            timeout: shared.pools.settings.connect_timeout,
        };
        match server::open(target, login).await {
            Ok(c) => {
                shared
                    .metrics
                    .backend_connect_seconds
                    .with_label_values(&[&target.member])
                    .observe(started.elapsed().as_secs_f64());
                Ok(c)
            }
            Err(OpenError::Unreachable(e)) => Err(hold::refused(
                Backends::of(shared),
                target,
                crate::session::upstream::UpstreamError::Unreachable(e),
            )),
            Err(OpenError::Tls(e)) => Err(hold::refused(
                Backends::of(shared),
                target,
                crate::session::upstream::UpstreamError::Tls(e),
            )),
            Err(OpenError::Refused { code, message, .. }) if code == "57P03" => {
                shared.reprobe.reprobe();
                Err(Refused::Wait(format!(
                    "{} cannot take sessions now: {message}",
                    target.member
                )))
            }
            Err(e) => Err(Refused::Fatal(super::login_error(e))),
        }
    }

    /// What a connection to `target` was lent for.
    pub(super) fn binding(&self, target: &Target) -> Binding {
        Binding {
            member: target.member.clone(),
            role: self.binding_role(target),
        }
    }

    /// The role [`Session::binding`] holds `target`'s member to (`None`: any).
    pub(super) fn binding_role(&self, target: &Target) -> Option<Role> {
        let r = &self.route_now;
        Binding::role_of(target.role, r.route, r.explicit_route, r.pin.is_some())
    }

    /// Whether `target`, chosen at topology generation `decided`, is still where the
    /// client's request goes.
    pub(super) fn still_fits(&self, target: &Target, decided: u64) -> bool {
        let t = self.shared.topology.current();
        if t.generation == decided {
            return true;
        }
        let b = self.binding(target);
        drain::check(&t, &b, Graces::from(&self.shared.config.drain)).is_none()
            && t.member(&target.member)
                .is_some_and(|m| m.address == target.address)
    }
}

/// A permit to open a connection in a pool ([`Acquired::Open`]), handed back unless the
/// connection was opened: a permit lost would shrink the pool for good.
struct Permit<'p>(Option<&'p Pool>);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(pool) = self.0 {
            pool.forget();
        }
    }
}
