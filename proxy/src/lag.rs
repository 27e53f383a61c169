//! The replica lag bound (`[routing] max_replica_lag`, `max_replica_lag_bytes`): which
//! replicas take no new reads, with hysteresis so a replica near the bound does not flap. A
//! replica goes out when it is over either bound and comes back when it is under half of
//! both. Pure; the topology publisher keeps the set and marks the members.

use std::collections::BTreeSet;
use std::time::Duration;

use pgsteer_discovery::{Member, Role, Topology};

use crate::config::Routing;

/// Note added to a replica kept from new reads by the lag bound.
pub const LAGGING_NOTE: &str = "over the replica lag bound: no new reads";

/// The bound; zero means no bound on that measure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LagBound {
    /// Replay delay.
    pub time: Duration,
    /// WAL bytes behind the primary.
    pub bytes: u64,
}

impl LagBound {
    /// The bound `[routing]` sets.
    pub fn of(routing: &Routing) -> LagBound {
        LagBound {
            time: routing.max_replica_lag,
            bytes: routing.max_replica_lag_bytes,
        }
    }

    /// Whether any bound is set.
    pub fn is_set(&self) -> bool {
        !self.time.is_zero() || self.bytes > 0
    }

    /// Whether `m` is over the bound (`fraction` 1) or over half of it (`fraction` 0.5).
    fn over(&self, m: &Member, fraction: f64) -> bool {
        // A replica that has replayed everything is not behind, however long ago the last
        // write was (the replay delay grows while the primary is idle).
        let caught_up = m.lag_bytes == Some(0);
        let time = !self.time.is_zero()
            && !caught_up
            && m.lag_seconds
                .is_some_and(|s| s > self.time.as_secs_f64() * fraction);
        #[allow(clippy::cast_precision_loss, clippy::cast_sign_loss)]
        let bytes = self.bytes > 0
            && m.lag_bytes
                .is_some_and(|b| b as f64 > self.bytes as f64 * fraction);
        time || bytes
    }
}

/// The replicas kept from new reads now, given those kept before.
pub fn lagging(before: &BTreeSet<String>, t: &Topology, bound: LagBound) -> BTreeSet<String> {
    if !bound.is_set() {
        return BTreeSet::new();
    }
    t.members
        .values()
        .filter(|m| m.role == Role::Replica)
        .filter(|m| {
            if before.contains(&m.name) {
                bound.over(m, 0.5)
            } else {
                bound.over(m, 1.0)
            }
        })
        .map(|m| m.name.clone())
        .collect()
}

/// Marks the members in `lagging`.
pub fn mark(t: &mut Topology, lagging: &BTreeSet<String>) {
    for name in lagging {
        if let Some(m) = t.members.get_mut(name) {
            m.lagging = true;
            m.add_note(LAGGING_NOTE);
        }
    }
}

#[cfg(test)]
mod tests {
    use pgsteer_discovery::Role;

    use super::*;
    use crate::topology::topo;

    fn with_lag(seconds: Option<f64>, bytes: Option<u64>) -> Topology {
        let mut t = topo(&[("pg-0", Role::Primary), ("pg-1", Role::Replica)]);
        let m = t.members.get_mut("pg-1").unwrap();
        m.lag_seconds = seconds;
        m.lag_bytes = bytes;
        t
    }

    const BOUND: LagBound = LagBound {
        time: Duration::from_secs(10),
        bytes: 1000,
    };

    #[test]
    fn a_replica_goes_out_over_either_bound_and_comes_back_under_half_of_both() {
        let none = BTreeSet::new();
        let out: BTreeSet<String> = ["pg-1".to_owned()].into();
        // (seconds, bytes, lagging before) → lagging after
        let table = [
            (Some(5.0), Some(500), false, false),
            (Some(11.0), Some(500), false, true),
            (Some(1.0), Some(1001), false, true),
            (Some(8.0), Some(400), true, true),
            (Some(4.0), Some(600), true, true),
            (Some(4.0), Some(400), true, false),
            (None, None, true, false),
        ];
        for (seconds, bytes, before, after) in table {
            let prev = if before { &out } else { &none };
            let got = lagging(prev, &with_lag(seconds, bytes), BOUND);
            assert_eq!(
                got.contains("pg-1"),
                after,
                "{seconds:?} s, {bytes:?} B, before {before}"
            );
        }
    }

    #[test]
    fn a_caught_up_replica_of_an_idle_primary_is_not_lagging() {
        let t = with_lag(Some(3600.0), Some(0));
        assert!(lagging(&BTreeSet::new(), &t, BOUND).is_empty());
    }

    #[test]
    fn no_bound_keeps_every_replica_and_the_primary_is_never_marked() {
        let t = with_lag(Some(3600.0), Some(1 << 40));
        assert!(lagging(&BTreeSet::new(), &t, LagBound::default()).is_empty());
        let mut t = with_lag(None, None);
        t.members.get_mut("pg-0").unwrap().lag_bytes = Some(1 << 40);
        assert!(lagging(&BTreeSet::new(), &t, BOUND).is_empty());
    }

    #[test]
    fn a_marked_replica_gets_no_new_replica_sessions_but_a_pinned_one() {
        use crate::router::{Consistency, Decision, Policy, Request, Route, decide};
        let mut t = with_lag(Some(60.0), Some(10_000));
        mark(&mut t, &["pg-1".to_owned()].into());
        let mut req = Request {
            route: Route::Replica,
            explicit_route: false,
            pin: None,
            consistency: Consistency::default(),
            min_lsn: 0,
        };
        let d = decide(&t, &req, Policy::default(), |_| 0, &[]);
        assert!(matches!(d, Decision::Wait(_)), "{d:?}");
        req.pin = Some("pg-1".into());
        let d = decide(&t, &req, Policy::default(), |_| 0, &[]);
        assert!(
            matches!(d, Decision::Connect(ref target) if target.member == "pg-1"),
            "{d:?}"
        );
    }
}
