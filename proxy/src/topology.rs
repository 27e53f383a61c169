//! The topology sessions route on, published once: discovery's view with operator drains laid
//! over it ([`view`]), the bookkeeping of role changes (metrics, one log line, the reroute
//! clock) and readiness.
//!
//! Discovery publishes into a channel only this module reads; a change travels
//! discovery → [`TopologyHub`] → sessions, once. The generation of the published view is
//! discovery's generation plus the number of changes of the drain set and of the replicas
//! over the lag bound ([`crate::lag`]), so it goes up whenever any changes what routing may do.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pgsteer_discovery::{Fence, Member, Topology};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::lag::{self, LagBound};
use crate::metrics::Metrics;

/// Note added to a member drained through `POST /drain/{member}`.
pub const OPERATOR_DRAIN_NOTE: &str = "drained by an operator (POST /drain)";

/// The published topology and what feeds it besides discovery.
pub struct TopologyHub {
    discovered: watch::Receiver<Topology>,
    routed: watch::Receiver<Topology>,
    drained: watch::Sender<BTreeSet<String>>,
    /// When the last role change was published, and at which generation, until the first
    /// session is routed on it (`pgsteer_reroute_seconds`).
    role_change: Mutex<Option<(u64, Instant)>>,
    /// The replica lag bound.
    lag_bound: LagBound,
    /// Discovery has answered and every member it lists was probed once.
    ready: AtomicBool,
    metrics: Arc<Metrics>,
}

impl TopologyHub {
    /// Starts publishing what `discovered` says, with operator drains applied, until `stop`.
    pub fn start(
        discovered: watch::Receiver<Topology>,
        metrics: Arc<Metrics>,
        lag_bound: LagBound,
        stop: CancellationToken,
    ) -> Arc<TopologyHub> {
        let (tx, routed) = watch::channel(Topology::default());
        let hub = Arc::new(TopologyHub {
            discovered,
            routed,
            drained: watch::Sender::new(BTreeSet::new()),
            role_change: Mutex::new(None),
            lag_bound,
            ready: AtomicBool::new(false),
            metrics,
        });
        tokio::spawn(publish(hub.clone(), tx, stop));
        hub
    }

    /// A receiver of the published topology.
    pub fn subscribe(&self) -> watch::Receiver<Topology> {
        self.routed.clone()
    }

    /// The published topology now.
    pub fn current(&self) -> watch::Ref<'_, Topology> {
        self.routed.borrow()
    }

    /// How long ago discovery last confirmed its view (grows during a source outage).
    pub fn staleness(&self) -> Option<Duration> {
        self.discovered.borrow().staleness(SystemTime::now())
    }

    /// Whether discovery has answered and every member it lists was probed once.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Drains `member` (no new sessions; its sessions close at their idle points);
    /// `false` if discovery knows no such member.
    pub fn drain(&self, member: &str) -> bool {
        if self.discovered.borrow().member(member).is_none() {
            return false;
        }
        self.drained
            .send_if_modified(|d| d.insert(member.to_owned()));
        true
    }

    /// Lifts an operator drain.
    pub fn undrain(&self, member: &str) {
        self.drained.send_if_modified(|d| d.remove(member));
    }

    /// Members drained by an operator.
    pub fn drained(&self) -> Vec<String> {
        self.drained.borrow().iter().cloned().collect()
    }

    /// Records the reroute latency if this is the first session routed on the topology of
    /// the last role change.
    pub fn rerouted(&self, generation: u64) {
        let mut pending = self.role_change.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((g, at)) = *pending
            && generation >= g
        {
            self.metrics
                .reroute_seconds
                .observe(at.elapsed().as_secs_f64());
            *pending = None;
        }
    }
}

/// The view sessions route on: `discovered` with the members in `drained` draining, at
/// generation `discovered.generation + drain_changes`.
pub fn view(discovered: &Topology, drained: &BTreeSet<String>, drain_changes: u64) -> Topology {
    let mut t = discovered.clone();
    t.generation += drain_changes;
    for name in drained {
        if let Some(m) = t.members.get_mut(name) {
            m.draining = true;
            m.add_note(OPERATOR_DRAIN_NOTE);
        }
    }
    t
}

/// Ready for traffic: discovery has answered (an empty pod list counts) and no member it
/// lists is still waiting for its first probe.
pub fn is_ready(t: &Topology) -> bool {
    (t.confirmed_at.is_some() || !t.members.is_empty())
        && t.members
            .values()
            .all(|m| m.fence != Some(Fence::NotProbed))
}

/// Republishes on every change of discovery's view or of the drain set.
async fn publish(hub: Arc<TopologyHub>, tx: watch::Sender<Topology>, stop: CancellationToken) {
    let mut discovered = hub.discovered.clone();
    let mut drained = hub.drained.subscribe();
    let mut drain_changes = 0;
    let mut lagging = BTreeSet::new();
    let mut lag_changes = 0;
    loop {
        let next = {
            let d = drained.borrow_and_update();
            if d.has_changed() {
                drain_changes += 1;
            }
            let mut next = view(&discovered.borrow_and_update(), &d, drain_changes);
            let now = lag::lagging(&lagging, &next, hub.lag_bound);
            if now != lagging {
                info!(lagging = ?now, "replicas over the lag bound changed");
                lag_changes += 1;
                lagging = now;
            }
            lag::mark(&mut next, &lagging);
            next.generation += lag_changes;
            next
        };
        if *tx.borrow() != next {
            let before = tx.send_replace(next);
            record_change(&hub, &before, &tx.borrow());
        }
        tokio::select! {
            r = discovered.changed() => if r.is_err() { return },
            r = drained.changed() => if r.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}

/// Metrics, readiness, the reroute clock and one info line per role change.
fn record_change(hub: &TopologyHub, before: &Topology, after: &Topology) {
    let m = &hub.metrics;
    m.observe_topology(after);
    if after.source_error.is_some() && after.source_error != before.source_error {
        m.discovery_errors.inc();
    }
    if is_ready(after) {
        hub.ready.store(true, Ordering::Relaxed);
    }
    let changed = role_changes(&before.members, &after.members);
    if changed == 0 || before.generation == 0 {
        return;
    }
    m.role_changes.inc_by(changed as u64);
    *hub.role_change.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((after.generation, Instant::now()));
    info!(
        generation = after.generation,
        before = %roles(before),
        after = %roles(after),
        primary = after.primary().map(|m| m.name.as_str()).unwrap_or("none"),
        pending_change = after.pending_change.as_deref().unwrap_or(""),
        "topology changed"
    );
}

/// Members whose role or draining flag differ from before (new members count).
fn role_changes(before: &BTreeMap<String, Member>, after: &BTreeMap<String, Member>) -> usize {
    after
        .values()
        .filter(|m| {
            before
                .get(&m.name)
                .is_none_or(|b| b.role != m.role || b.draining != m.draining)
        })
        .count()
}

/// `pg-0=primary pg-1=replica(draining)`, for the log line.
fn roles(t: &Topology) -> String {
    t.members
        .values()
        .map(|m| {
            let draining = if m.draining { "(draining)" } else { "" };
            format!("{}={}{draining}", m.name, m.role)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A topology of members at `127.0.0.1:1` with these roles, routable when primary or
/// replica, for table tests.
#[cfg(test)]
pub(crate) fn topo(members: &[(&str, pgsteer_discovery::Role)]) -> Topology {
    use pgsteer_discovery::Role;
    let mut t = Topology::default();
    t.replace_members(
        members
            .iter()
            .map(|&(n, r)| {
                let mut m = Member::new(n, "127.0.0.1:1");
                m.role = r;
                m.routable = r == Role::Primary || r == Role::Replica;
                (n.to_owned(), m)
            })
            .collect(),
    );
    t
}

#[cfg(test)]
mod tests {
    use pgsteer_discovery::Role;

    use super::*;

    #[test]
    fn an_operator_drain_marks_the_member_and_moves_the_generation() {
        let t = topo(&[("pg-0", Role::Primary), ("pg-1", Role::Replica)]);
        let none = view(&t, &BTreeSet::new(), 0);
        assert_eq!(none, t);
        let drained: BTreeSet<String> = ["pg-1".to_owned(), "pg-9".to_owned()].into();
        let v = view(&t, &drained, 1);
        assert_eq!(v.generation, t.generation + 1);
        assert!(v.members["pg-1"].draining);
        assert_eq!(v.members["pg-1"].note.as_deref(), Some(OPERATOR_DRAIN_NOTE));
        assert!(!v.members["pg-0"].draining);
        assert_eq!(
            v.replicas().count(),
            0,
            "a drained replica takes no sessions"
        );
        assert_eq!(v.source_error, t.source_error);
    }

    #[test]
    fn readiness_waits_for_an_answer_and_for_every_first_probe() {
        assert!(
            !is_ready(&Topology::default()),
            "discovery has not answered"
        );
        let mut t = Topology {
            confirmed_at: Some(SystemTime::now()),
            ..Topology::default()
        };
        assert!(is_ready(&t), "an empty answer counts");
        let mut waiting = Member::new("pg-0", "127.0.0.1:1");
        waiting.fence(Fence::NotProbed, Role::Unknown, "not probed yet");
        t.replace_members([("pg-0".to_owned(), waiting.clone())].into());
        assert!(!is_ready(&t));
        waiting.fence(Fence::Unreachable, Role::Unreachable, "refused");
        t.replace_members([("pg-0".to_owned(), waiting)].into());
        assert!(is_ready(&t), "a probe that failed has answered");
    }

    #[test]
    fn role_changes_count_members_whose_role_or_drain_moved() {
        let a = topo(&[("pg-0", Role::Primary), ("pg-1", Role::Replica)]);
        let b = topo(&[("pg-0", Role::Replica), ("pg-1", Role::Primary)]);
        assert_eq!(role_changes(&a.members, &a.members), 0);
        assert_eq!(role_changes(&a.members, &b.members), 2);
        let drained = view(&a, &["pg-1".to_owned()].into(), 1);
        assert_eq!(role_changes(&a.members, &drained.members), 1);
        assert_eq!(roles(&drained), "pg-0=primary pg-1=replica(draining)");
    }
}
