//! One drain mechanism for role changes, pod drains, operator drains and shutdown.
//!
//! A session is bound to the member and role it was routed for ([`Binding`]). Whenever the
//! topology changes, [`check`] decides whether that binding still holds; when it does not, or
//! the proxy shuts down, the session gets a [`DrainOrder`] ([`watch`]). What happens next is
//! the pure state machine [`DrainState`]: the session may finish its transaction within a
//! grace period and is closed with `FATAL 57P01` at its next idle point ([`Closing`]). A
//! primary that lost its role gets the short `demoted_primary_grace` (0 by default: writes
//! there may be lost), everything else the normal `grace`.

use std::time::Duration;

use pgsteer_discovery::{Member, Role, Topology};
use pgsteer_protocol::backend::TxStatus;
use pgsteer_protocol::sqlstate::SqlState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::router::Route;

/// What a session was routed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Member name.
    pub member: String,
    /// The role the session needs: `Primary`, `Replica`, or `None` for a
    /// pin without an explicit route (any role will do).
    pub role: Option<Role>,
}

impl Binding {
    /// The binding for a session routed by `route` (explicitly or not) to a
    /// member that had `role` at the time.
    pub fn new(
        member: &str,
        role: Role,
        route: Route,
        explicit_route: bool,
        pinned: bool,
    ) -> Binding {
        Binding {
            member: member.to_owned(),
            role: Binding::role_of(role, route, explicit_route, pinned),
        }
    }

    /// The role a binding made by [`Binding::new`] holds its member to (`None`: any).
    pub fn role_of(role: Role, route: Route, explicit_route: bool, pinned: bool) -> Option<Role> {
        match route {
            Route::Primary | Route::Replica | Route::Auto if pinned && !explicit_route => None,
            // An `auto` client's connections are bound by each transaction's own route.
            Route::Primary | Route::Auto => Some(Role::Primary),
            Route::Replica => Some(role),
            Route::Any => None,
        }
    }
}

/// An order to drain one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainOrder {
    /// Why, for the client and the logs ("pg-0 is no longer the primary (now pg-1)").
    pub reason: String,
    /// How long an open transaction may still take; `None` = until the hard stop.
    pub grace: Option<Duration>,
    /// Whether the session was on a primary that lost its role.
    pub demoted_primary: bool,
}

/// Graces in force.
#[derive(Debug, Clone, Copy)]
pub struct Graces {
    /// Normal drains.
    pub grace: Duration,
    /// Sessions on a demoted or vanished primary.
    pub demoted_primary: Duration,
}

impl From<&config::Drain> for Graces {
    fn from(d: &config::Drain) -> Graces {
        Graces {
            grace: d.grace,
            demoted_primary: d.demoted_primary_grace,
        }
    }
}

/// Whether a session bound by `b` must drain under topology `t`.
pub fn check(t: &Topology, b: &Binding, g: Graces) -> Option<DrainOrder> {
    let now_primary = || match t.primary() {
        Some(p) => format!("now {}", p.name),
        None => "no primary yet".to_owned(),
    };
    let Some(m) = t.member(&b.member) else {
        return Some(match b.role {
            Some(Role::Primary) => demoted(g, format!("{} is gone ({})", b.member, now_primary())),
            _ => normal(g, format!("{} left the cluster", b.member)),
        });
    };
    if b.role == Some(Role::Primary) {
        return lost_primary(t, m).map(|why| demoted(g, format!("{why} ({})", now_primary())));
    }
    if m.draining {
        return Some(normal(g, format!("{} is being drained", m.name)));
    }
    match (b.role, m.role) {
        (Some(Role::Replica), Role::Primary) => Some(normal(
            g,
            format!("{} was promoted and is no longer a replica", m.name),
        )),
        (Some(Role::Replica), Role::Unknown) => Some(normal(
            g,
            format!("{} is no longer a streaming replica", m.name),
        )),
        _ => None,
    }
}

/// Why a primary no longer holds its role, if it does not.
fn lost_primary(t: &Topology, m: &Member) -> Option<String> {
    match m.role {
        Role::Primary if t.primaries().count() > 1 => Some(format!(
            "{} is not the only member claiming to be primary",
            m.name
        )),
        Role::Primary if m.draining => Some(format!("{} is being drained", m.name)),
        Role::Primary => None,
        Role::Replica => Some(format!("{} is no longer the primary", m.name)),
        Role::Unknown => Some(format!(
            "{} is no longer the primary{}",
            m.name,
            m.note
                .as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        )),
        // A probe that times out is not a demotion by itself: only fence once
        // another member has taken over.
        Role::Unreachable => t
            .primary()
            .filter(|p| p.name != m.name)
            .map(|_| format!("{} is unreachable and no longer the primary", m.name)),
    }
}

fn demoted(g: Graces, reason: String) -> DrainOrder {
    DrainOrder {
        reason,
        grace: Some(g.demoted_primary),
        demoted_primary: true,
    }
}

fn normal(g: Graces, reason: String) -> DrainOrder {
    DrainOrder {
        reason,
        grace: Some(g.grace),
        demoted_primary: false,
    }
}

/// Resolves once the binding no longer holds.
pub async fn fence(mut rx: watch::Receiver<Topology>, binding: Binding, g: Graces) -> DrainOrder {
    loop {
        if let Some(order) = check(&rx.borrow_and_update(), &binding, g) {
            return order;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Resolves with the first reason a session bound by `binding` must drain: the binding no
/// longer holds, or the proxy is shutting down (`shutdown` fired; no grace of its own: the
/// shutdown timeout ends what is left).
pub async fn watch(
    rx: watch::Receiver<Topology>,
    binding: Binding,
    g: Graces,
    shutdown: CancellationToken,
) -> DrainOrder {
    tokio::select! {
        order = fence(rx, binding, g) => order,
        _ = shutdown.cancelled() => DrainOrder {
            reason: SHUTTING_DOWN.into(),
            grace: None,
            demoted_primary: false,
        },
    }
}

/// The binding of the server connection a pooled session has now (none between its
/// transactions), watched by the session's one drain future ([`watch_lent`]).
#[derive(Default)]
pub struct Lent {
    binding: std::sync::Mutex<Option<Binding>>,
    changed: tokio::sync::Notify,
}

impl Lent {
    /// A connection bound by `binding` was lent (`None`: given back). Setting the binding
    /// the session had already costs one lock and wakes nothing.
    pub fn set(&self, binding: Option<Binding>) {
        let mut current = self.binding.lock().unwrap_or_else(|e| e.into_inner());
        if *current == binding {
            return;
        }
        let lent = binding.is_some();
        *current = binding;
        drop(current);
        if lent {
            // A new binding is checked against the topology now, not at its next change.
            self.changed.notify_one();
        }
    }

    /// Whether the binding of the connection lent now matches `member` and `role`.
    pub fn is(&self, member: &str, role: Option<Role>) -> bool {
        let current = self.binding.lock().unwrap_or_else(|e| e.into_inner());
        current
            .as_ref()
            .is_some_and(|b| b.member == member && b.role == role)
    }

    fn order(&self, t: &Topology, g: Graces) -> Option<DrainOrder> {
        let current = self.binding.lock().unwrap_or_else(|e| e.into_inner());
        check(t, current.as_ref()?, g)
    }
}

/// Resolves with the first reason the connection a pooled session has lent must drain, or
/// shutdown: one future for the session's whole life, not one per transaction.
pub async fn watch_lent(
    mut rx: watch::Receiver<Topology>,
    lent: std::sync::Arc<Lent>,
    g: Graces,
    shutdown: CancellationToken,
) -> DrainOrder {
    loop {
        if let Some(order) = lent.order(&rx.borrow_and_update(), g) {
            return order;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return std::future::pending().await },
            _ = lent.changed.notified() => {}
            _ = shutdown.cancelled() => return DrainOrder {
                reason: SHUTTING_DOWN.into(),
                grace: None,
                demoted_primary: false,
            },
        }
    }
}

/// Reason given when the proxy shuts down.
pub const SHUTTING_DOWN: &str = "the proxy is shutting down";

/// What a session does after a drain transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Carry on.
    Continue,
    /// Carry on, and call [`DrainState::deadline`] when this grace has passed.
    StartGrace(Duration),
    /// Close now: the session is at an idle point.
    Drain,
    /// Close now, wherever the session is.
    Terminate,
}

/// One session's drain, as a pure state machine: the order (if any), whether the session was
/// idle when it came, whether its grace ran out, and whether relaying stopped at the idle
/// point. The relay feeds it events and does what the returned [`Step`] says.
#[derive(Debug, Default)]
pub struct DrainState {
    order: Option<DrainOrder>,
    idle_at_order: bool,
    deadline_passed: bool,
    stopped: bool,
}

impl DrainState {
    /// Whether a drain order was received.
    pub fn draining(&self) -> bool {
        self.order.is_some()
    }

    /// A drain order arrived while the session was `idle` (or not). Only the first counts.
    pub fn order(&mut self, order: DrainOrder, idle: bool) -> Step {
        if self.order.is_some() {
            return Step::Continue;
        }
        let grace = order.grace;
        self.order = Some(order);
        self.idle_at_order = idle;
        match grace {
            // Close before reading whatever the client sent next.
            _ if idle => Step::Drain,
            // No grace: not one more byte goes to the server.
            Some(g) if g.is_zero() => Step::Terminate,
            Some(g) => Step::StartGrace(g),
            None => Step::Continue,
        }
    }

    /// The grace period ran out. Remembered: a transaction that starts after it (while
    /// idle) is not let run.
    pub fn deadline(&mut self, idle: bool) -> Step {
        self.deadline_passed = true;
        self.check(idle)
    }

    /// A ReadyForQuery arrived with `tx` and `pending` requests still unanswered: `true` if
    /// relaying from the server stops right after it (draining, and the session is idle now).
    pub fn ready_for_query(&mut self, tx: TxStatus, pending: u32) -> bool {
        if self.draining() && pending == 0 && tx == TxStatus::Idle {
            self.stopped = true;
        }
        self.stopped
    }

    /// Whether relaying from the server stopped at the drain's idle point.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// After relaying, with whether the session is `idle` now.
    pub fn check(&self, idle: bool) -> Step {
        if self.draining() && idle {
            Step::Drain
        } else if self.deadline_passed {
            Step::Terminate
        } else {
            Step::Continue
        }
    }

    /// How the session closes after `step` ([`Step::Drain`] or [`Step::Terminate`]).
    pub fn closing(&self, step: Step) -> Closing {
        let outcome = match step {
            Step::Drain if self.idle_at_order => Outcome::Idle,
            Step::Drain => Outcome::AfterTransaction,
            _ => Outcome::Terminated,
        };
        let reason = self.order.as_ref().map_or(SHUTTING_DOWN, |o| &o.reason);
        Closing {
            outcome,
            reason: reason.to_owned(),
        }
    }
}

/// How a drained session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It was idle when the order came.
    Idle,
    /// It finished its transaction first.
    AfterTransaction,
    /// It was cut off (no grace, grace over, or the hard stop).
    Terminated,
}

impl Outcome {
    /// Value of the `outcome` label of `pgsteer_sessions_drained_total`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Idle => "idle",
            Outcome::AfterTransaction => "after_transaction",
            Outcome::Terminated => "terminated",
        }
    }
}

/// What a drained session is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    /// How it ended.
    pub outcome: Outcome,
    /// Why ("pg-0 is no longer the primary (now pg-1)").
    pub reason: String,
}

impl Closing {
    /// The SQLSTATE of the FATAL the client gets.
    pub const SQLSTATE: SqlState = SqlState::ADMIN_SHUTDOWN;

    /// The FATAL message the client gets.
    pub fn message(&self) -> String {
        match self.outcome {
            Outcome::Terminated => {
                format!(
                    "pgsteer: terminating connection: {}; reconnect",
                    self.reason
                )
            }
            _ => format!("pgsteer: {}; reconnect", self.reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::topo;

    const G: Graces = Graces {
        grace: Duration::from_secs(30),
        demoted_primary: Duration::ZERO,
    };

    fn primary_binding() -> Binding {
        Binding::new("pg-0", Role::Primary, Route::Primary, false, false)
    }

    #[test]
    fn a_primary_session_holds_while_its_member_is_the_only_primary() {
        let t = topo(&[("pg-0", Role::Primary), ("pg-1", Role::Replica)]);
        assert_eq!(check(&t, &primary_binding(), G), None);
    }

    #[test]
    fn a_demoted_primary_is_fenced_with_the_short_grace_and_names_the_new_one() {
        let t = topo(&[("pg-0", Role::Replica), ("pg-1", Role::Primary)]);
        let o = check(&t, &primary_binding(), G).unwrap();
        assert!(o.demoted_primary);
        assert_eq!(o.grace, Some(Duration::ZERO));
        assert_eq!(o.reason, "pg-0 is no longer the primary (now pg-1)");
    }

    #[test]
    fn an_unreachable_primary_is_fenced_only_once_another_member_leads() {
        let t = topo(&[("pg-0", Role::Unreachable), ("pg-1", Role::Replica)]);
        assert_eq!(check(&t, &primary_binding(), G), None);
        let t = topo(&[("pg-0", Role::Unreachable), ("pg-1", Role::Primary)]);
        assert!(check(&t, &primary_binding(), G).unwrap().demoted_primary);
    }

    #[test]
    fn two_primaries_fence_primary_sessions_and_a_vanished_one_too() {
        let t = topo(&[("pg-0", Role::Primary), ("pg-1", Role::Primary)]);
        let o = check(&t, &primary_binding(), G).unwrap();
        assert!(o.reason.contains("not the only member"), "{}", o.reason);
        let t = topo(&[("pg-1", Role::Primary)]);
        assert_eq!(
            check(&t, &primary_binding(), G).unwrap().reason,
            "pg-0 is gone (now pg-1)"
        );
    }

    #[test]
    fn replica_sessions_drain_with_the_normal_grace_when_promoted_or_drained() {
        let b = Binding::new("pg-1", Role::Replica, Route::Replica, false, false);
        let t = topo(&[("pg-0", Role::Unreachable), ("pg-1", Role::Primary)]);
        let o = check(&t, &b, G).unwrap();
        assert!(!o.demoted_primary);
        assert_eq!(o.grace, Some(Duration::from_secs(30)));
        let t = topo(&[("pg-0", Role::Primary), ("pg-1", Role::Replica)]);
        assert_eq!(check(&t, &b, G), None);
        let drained = crate::topology::view(&t, &["pg-1".to_owned()].into(), 1);
        assert!(check(&drained, &b, G).unwrap().reason.contains("drained"));
    }

    #[test]
    fn a_pin_without_a_route_survives_role_changes_but_not_removal() {
        let b = Binding::new("pg-1", Role::Replica, Route::Primary, false, true);
        let t = topo(&[("pg-0", Role::Replica), ("pg-1", Role::Primary)]);
        assert_eq!(check(&t, &b, G), None);
        let t = topo(&[("pg-0", Role::Primary)]);
        assert!(check(&t, &b, G).is_some());
    }

    fn order(grace: Option<Duration>) -> DrainOrder {
        DrainOrder {
            reason: "pg-0 is no longer the primary (now pg-1)".into(),
            grace,
            demoted_primary: true,
        }
    }

    const SECS: Option<Duration> = Some(Duration::from_secs(30));
    const ZERO: Option<Duration> = Some(Duration::ZERO);

    #[test]
    fn an_order_drains_at_once_when_idle_else_by_its_grace() {
        use Step::*;
        // (grace, idle at the order) -> step
        let table = [
            (SECS, true, Drain),
            (ZERO, true, Drain),
            (None, true, Drain),
            (SECS, false, StartGrace(Duration::from_secs(30))),
            (ZERO, false, Terminate),
            (None, false, Continue),
        ];
        for (grace, idle, step) in table {
            let mut d = DrainState::default();
            assert!(!d.draining());
            assert_eq!(d.order(order(grace), idle), step, "{grace:?} idle={idle}");
            assert!(d.draining());
            assert_eq!(
                d.order(order(ZERO), false),
                Continue,
                "a second order changes nothing"
            );
        }
    }

    #[test]
    fn a_draining_session_closes_at_its_next_idle_ready_for_query() {
        let mut d = DrainState::default();
        assert!(!d.ready_for_query(TxStatus::Idle, 0), "not draining");
        assert_eq!(d.check(true), Step::Continue);
        d.order(order(SECS), false);
        assert!(!d.ready_for_query(TxStatus::InTransaction, 0));
        assert!(
            !d.ready_for_query(TxStatus::Idle, 1),
            "a pipelined query is pending"
        );
        assert!(!d.stopped());
        assert!(d.ready_for_query(TxStatus::Idle, 0));
        assert!(d.stopped());
        assert_eq!(d.check(true), Step::Drain);
    }

    #[test]
    fn a_passed_deadline_terminates_a_busy_session_and_stays_passed() {
        let mut d = DrainState::default();
        d.order(order(SECS), false);
        assert_eq!(d.check(false), Step::Continue);
        assert_eq!(d.deadline(false), Step::Terminate);
        let mut d = DrainState::default();
        d.order(order(SECS), false);
        assert_eq!(d.deadline(true), Step::Drain, "idle when the grace ran out");
        assert_eq!(
            d.check(false),
            Step::Terminate,
            "a new transaction is not let run"
        );
    }

    #[test]
    fn each_ending_maps_to_its_label_and_message() {
        let reason = "pg-0 is no longer the primary (now pg-1)";
        let mut idle = DrainState::default();
        idle.order(order(SECS), true);
        let mut busy = DrainState::default();
        busy.order(order(SECS), false);
        let table = [
            (
                &idle,
                Step::Drain,
                "idle",
                format!("pgsteer: {reason}; reconnect"),
            ),
            (
                &busy,
                Step::Drain,
                "after_transaction",
                format!("pgsteer: {reason}; reconnect"),
            ),
            (
                &busy,
                Step::Terminate,
                "terminated",
                format!("pgsteer: terminating connection: {reason}; reconnect"),
            ),
            (
                &DrainState::default(),
                Step::Terminate,
                "terminated",
                "pgsteer: terminating connection: the proxy is shutting down; reconnect".into(),
            ),
        ];
        for (state, step, label, message) in table {
            let c = state.closing(step);
            assert_eq!(c.outcome.label(), label);
            assert_eq!(c.message(), message);
        }
        assert_eq!(Closing::SQLSTATE.code(), "57P01");
    }
}
