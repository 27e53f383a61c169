//! Trust but verify: a dynamic source's claim (labels, Patroni) cross-checked against what the
//! SQL probe sees, and the one way every source publishes a [`Topology`].
//!
//! Writes go only to a member that the source calls primary *and* the probe found writable;
//! a writable member the source does not call primary is a zombie and is fenced.

use std::collections::BTreeMap;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::probe::{Observation, TWO_PRIMARIES_NOTE};
use crate::topology::{Fence, Member, Role, Topology};

/// Note of a member the source calls primary while the probe sees it in recovery.
pub const RECOVERING_PRIMARY_NOTE: &str =
    "labelled primary but still in recovery (pg_is_in_recovery() = true); writes wait";

/// Note of a member the source calls primary that the probe has not answered for yet.
pub const UNCONFIRMED_PRIMARY_NOTE: &str = "primary not confirmed by the probe yet";

/// Start of the note of a zombie: writable, but not the primary according to the source.
pub const ZOMBIE_NOTE: &str =
    "zombie: writable but not the primary according to the source; fenced";

/// Cross-checks a source's view of the members against probe observations and returns the
/// members to publish.
///
/// `claimed` is the source's view before verification (role from labels or Patroni; routable
/// if the source says so; draining; note; lag if the source has it). With `probing` false,
/// `claimed` is returned unchanged. Otherwise, per member:
///
/// | claimed | probe | published |
/// |---|---|---|
/// | primary | up, writable | primary, routable as claimed, probe LSN |
/// | primary | up, in recovery | unknown, not routable, [`RECOVERING_PRIMARY_NOTE`] |
/// | primary | none yet | unknown, not routable, [`UNCONFIRMED_PRIMARY_NOTE`] |
/// | any | down | unreachable, not routable, the error as note |
/// | replica | up, in recovery | replica as claimed, probe LSN and replay delay, byte lag behind the one confirmed primary |
/// | not primary | none yet | as claimed |
/// | not primary | up, writable | zombie: unknown, not routable, note starting with [`ZOMBIE_NOTE`] |
/// | unknown, unreachable | up, in recovery | as claimed, probe LSN and replay delay |
///
/// Two or more confirmed primaries all stay primary (so [`Topology::primary`] fails closed)
/// with [`TWO_PRIMARIES_NOTE`]. `draining` and the source's notes carry over; probe notes are
/// appended (a zombie's comes first). Every observed member gets the probe query's round-trip
/// time as `probe_seconds` (`None` when the probe failed), whatever its role. Observations of
/// unclaimed names are ignored.
pub fn verify(
    claimed: &BTreeMap<String, Member>,
    observations: &BTreeMap<String, Observation>,
    probing: bool,
) -> BTreeMap<String, Member> {
    if !probing {
        return claimed.clone();
    }
    let confirmed: Vec<u64> = claimed
        .values()
        .filter(|m| m.role == Role::Primary)
        .filter_map(|m| observations.get(&m.name)?.writable_lsn())
        .collect();
    let context = Context {
        primary_lsn: match confirmed.as_slice() {
            [lsn] => Some(*lsn),
            _ => None,
        },
        contested: confirmed.len() > 1,
    };
    claimed
        .iter()
        .map(|(name, member)| {
            let verified = verify_member(member, observations.get(name), context);
            (name.clone(), verified)
        })
        .collect()
}

/// What verifying one member needs to know about the others.
#[derive(Clone, Copy)]
struct Context {
    /// LSN of the one confirmed primary, if exactly one.
    primary_lsn: Option<u64>,
    /// Two or more members are confirmed primaries.
    contested: bool,
}

fn verify_member(claimed: &Member, observation: Option<&Observation>, cx: Context) -> Member {
    let mut member = claimed.clone();
    let primary = claimed.role == Role::Primary;
    if let Some(observed) = observation {
        member.probe_seconds = observed.round_trip_seconds();
        member.probed = true;
    }
    match observation {
        None if primary => {
            member.fence(Fence::Unconfirmed, Role::Unknown, UNCONFIRMED_PRIMARY_NOTE)
        }
        None => {}
        Some(Observation::Down { error }) => {
            member.fence(Fence::Unreachable, Role::Unreachable, error)
        }
        Some(&Observation::Up {
            in_recovery: false,
            lsn,
            ..
        }) => {
            member.lsn = Some(lsn);
            if !primary {
                member.role = Role::Unknown;
                member.routable = false;
                member.fence = Some(Fence::Zombie);
                // The zombie's note comes first: it is the one that matters.
                let note = format!("{ZOMBIE_NOTE} (source says {})", claimed.role);
                member.note = Some(match member.note.take() {
                    Some(source) => format!("{note}; {source}"),
                    None => note,
                });
            } else if cx.contested {
                member.add_note(TWO_PRIMARIES_NOTE);
            }
        }
        Some(&Observation::Up {
            in_recovery: true,
            lsn,
            replay_delay,
            ..
        }) => {
            member.lsn = Some(lsn);
            if primary {
                member.fence(Fence::Recovering, Role::Unknown, RECOVERING_PRIMARY_NOTE);
                return member;
            }
            if let Some(delay) = replay_delay {
                member.lag_seconds = Some(delay.max(0.0));
            }
            if member.role == Role::Replica
                && let Some(primary_lsn) = cx.primary_lsn
            {
                member.lag_bytes = Some(primary_lsn.saturating_sub(lsn));
            }
        }
    }
    member
}

/// Members [`verify`] fenced as zombies: writable, but not the primary according to the
/// source (log these at error level).
pub fn zombies(members: &BTreeMap<String, Member>) -> impl Iterator<Item = &Member> {
    members.values().filter(|m| is_zombie(m))
}

/// Whether [`verify`] fenced `member` as a zombie.
pub fn is_zombie(member: &Member) -> bool {
    member.fence == Some(Fence::Zombie)
}

/// Publishes `members` with `send_if_modified` and [`Topology::replace_members`] (the generation
/// goes up on routing changes), and sets `source_error` and `pending_change`.
///
/// `confirmed_at` becomes now when `source_error` is `None`; during a source outage it keeps its
/// old value, so staleness grows. Refreshing `confirmed_at` alone wakes no receivers, but the
/// first confirmation does: a source that found no members at all (a selector matching no pods)
/// has still answered, and readiness waits for that. Returns whether receivers were woken.
pub fn publish(
    tx: &watch::Sender<Topology>,
    members: BTreeMap<String, Member>,
    source_error: Option<String>,
    pending_change: Option<String>,
) -> bool {
    let now = SystemTime::now();
    tx.send_if_modified(move |topology| {
        let mut changed = false;
        if source_error.is_none() {
            changed = topology.confirmed_at.is_none();
            topology.confirmed_at = Some(now);
        }
        changed |= topology.replace_members(members);
        if topology.source_error != source_error {
            topology.source_error = source_error;
            changed = true;
        }
        if topology.pending_change != pending_change {
            topology.pending_change = pending_change;
            changed = true;
        }
        changed
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{Row, down, observed, row, up};

    fn claim(name: &str, role: Role, routable: bool) -> Member {
        Member {
            role,
            routable,
            ..Member::new(name, format!("10.0.0.1:{}", 5432 + name.len()))
        }
    }

    fn by_name(members: &[Member]) -> BTreeMap<String, Member> {
        members
            .iter()
            .map(|m| (m.name.clone(), m.clone()))
            .collect()
    }

    fn note(text: &str) -> Option<String> {
        Some(text.to_owned())
    }

    /// Verifies one claimed member alone against one observation (or none).
    fn verify_one(claimed: Member, observation: Option<Observation>) -> Member {
        let name = claimed.name.clone();
        let obs = observation.map_or_else(BTreeMap::new, |o| observed(&[(&name, o)]));
        verify(&by_name(&[claimed]), &obs, true)
            .remove(&name)
            .expect("member kept")
    }

    #[test]
    fn each_claim_and_observation_of_a_lone_member_verifies_as_the_table_says() {
        use Role::{Primary, Replica, Unknown, Unreachable};
        let zombie = |role: &str| note(&format!("{ZOMBIE_NOTE} (source says {role})"));
        let table: Vec<(&str, Member, Option<Observation>, Row)> = vec![
            (
                "a primary confirmed writable",
                claim("pg-0", Primary, true),
                Some(up(false, 100, None)),
                (Primary, true, Some(100), None, None, None),
            ),
            (
                "a primary the source does not route stays unroutable when writable",
                claim("pg-0", Primary, false),
                Some(up(false, 100, None)),
                (Primary, false, Some(100), None, None, None),
            ),
            (
                "a primary still in recovery waits for writes",
                claim("pg-0", Primary, true),
                Some(up(true, 90, Some(0.5))),
                (
                    Unknown,
                    false,
                    Some(90),
                    None,
                    None,
                    note(RECOVERING_PRIMARY_NOTE),
                ),
            ),
            (
                "a primary not probed yet fails closed",
                claim("pg-0", Primary, true),
                None,
                (
                    Unknown,
                    false,
                    None,
                    None,
                    None,
                    note(UNCONFIRMED_PRIMARY_NOTE),
                ),
            ),
            (
                "a primary that is down is unreachable",
                claim("pg-0", Primary, true),
                Some(down("connection refused")),
                (
                    Unreachable,
                    false,
                    None,
                    None,
                    None,
                    note("connection refused"),
                ),
            ),
            (
                "a replica in recovery gets the probe's lsn and delay",
                claim("pg-1", Replica, true),
                Some(up(true, 90, Some(1.5))),
                (Replica, true, Some(90), None, Some(1.5), None),
            ),
            (
                "a replica not probed yet stays as claimed",
                claim("pg-1", Replica, true),
                None,
                (Replica, true, None, None, None, None),
            ),
            (
                "a replica that is down is unreachable",
                claim("pg-1", Replica, true),
                Some(down("timed out")),
                (Unreachable, false, None, None, None, note("timed out")),
            ),
            (
                "a writable replica is a zombie",
                claim("pg-1", Replica, true),
                Some(up(false, 120, None)),
                (Unknown, false, Some(120), None, None, zombie("replica")),
            ),
            (
                "a writable unroutable replica is a zombie",
                claim("pg-1", Replica, false),
                Some(up(false, 120, None)),
                (Unknown, false, Some(120), None, None, zombie("replica")),
            ),
            (
                "a writable member of unknown role is a zombie",
                claim("pg-2", Unknown, false),
                Some(up(false, 120, None)),
                (Unknown, false, Some(120), None, None, zombie("unknown")),
            ),
            (
                "an unknown member in recovery stays unknown",
                claim("pg-2", Unknown, false),
                Some(up(true, 80, None)),
                (Unknown, false, Some(80), None, None, None),
            ),
        ];
        for (case, claimed, observation, want) in table {
            // Whatever the role: the probe's round trip if it answered, else none.
            let round_trip = observation
                .as_ref()
                .and_then(Observation::round_trip_seconds);
            let verified = verify_one(claimed.clone(), observation);
            assert_eq!(row(&verified), want, "{case}");
            assert_eq!(verified.probe_seconds, round_trip, "{case}: probe time");
            assert_eq!(verified.address, claimed.address, "{case}: address kept");
            assert_eq!(is_zombie(&verified), case.contains("zombie"), "{case}");
        }
    }

    #[test]
    fn replica_byte_lag_is_measured_against_the_one_confirmed_primary() {
        let claimed = by_name(&[
            claim("pg-0", Role::Primary, true),
            claim("pg-1", Role::Replica, true),
            claim("pg-2", Role::Replica, true),
        ]);
        let obs = observed(&[
            ("pg-0", up(false, 1_000, None)),
            ("pg-1", up(true, 900, Some(0.25))),
            ("pg-2", up(true, 1_100, Some(-0.5))),
        ]);
        let verified = verify(&claimed, &obs, true);
        assert_eq!(
            row(&verified["pg-1"]),
            (Role::Replica, true, Some(900), Some(100), Some(0.25), None)
        );
        // Sampled after the primary: ahead, so no lag; negative clock skew clamps to 0.
        assert_eq!(
            row(&verified["pg-2"]),
            (Role::Replica, true, Some(1_100), Some(0), Some(0.0), None)
        );
    }

    #[test]
    fn without_a_confirmed_primary_replicas_keep_the_lag_the_source_claimed() {
        let mut replica = claim("pg-1", Role::Replica, true);
        replica.lag_bytes = Some(4_096);
        replica.lag_seconds = Some(2.0);
        let claimed = by_name(&[claim("pg-0", Role::Primary, true), replica]);
        // The claimed primary is still in recovery: not confirmed, so no reference LSN.
        let obs = observed(&[
            ("pg-0", up(true, 1_000, None)),
            ("pg-1", up(true, 900, None)),
        ]);
        let verified = verify(&claimed, &obs, true);
        assert_eq!(
            row(&verified["pg-1"]),
            (Role::Replica, true, Some(900), Some(4_096), Some(2.0), None)
        );
    }

    #[test]
    fn two_confirmed_primaries_both_stay_primary_so_there_is_no_primary() {
        let claimed = by_name(&[
            claim("pg-0", Role::Primary, true),
            claim("pg-1", Role::Primary, true),
            claim("pg-2", Role::Replica, true),
        ]);
        let obs = observed(&[
            ("pg-0", up(false, 1_000, None)),
            ("pg-1", up(false, 2_000, None)),
            ("pg-2", up(true, 900, Some(1.0))),
        ]);
        let verified = verify(&claimed, &obs, true);
        for name in ["pg-0", "pg-1"] {
            let m = &verified[name];
            assert_eq!((m.role, m.routable), (Role::Primary, true), "{name}");
            assert_eq!(m.note.as_deref(), Some(TWO_PRIMARIES_NOTE), "{name}");
        }
        assert_eq!(
            verified["pg-2"].lag_bytes, None,
            "no single primary to lag behind"
        );
        let mut topology = Topology::default();
        topology.replace_members(verified);
        assert!(topology.primary().is_none());
    }

    #[test]
    fn each_fenced_member_says_why_in_a_typed_field_and_whether_it_was_probed() {
        use Role::{Primary, Replica, Unknown};
        let table: Vec<(Member, Option<Observation>, Option<Fence>, bool)> = vec![
            (
                claim("pg-0", Primary, true),
                Some(up(false, 1, None)),
                None,
                true,
            ),
            (
                claim("pg-0", Primary, true),
                None,
                Some(Fence::Unconfirmed),
                false,
            ),
            (
                claim("pg-0", Primary, true),
                Some(up(true, 1, None)),
                Some(Fence::Recovering),
                true,
            ),
            (
                claim("pg-1", Replica, true),
                Some(down("refused")),
                Some(Fence::Unreachable),
                true,
            ),
            (
                claim("pg-1", Replica, true),
                Some(up(false, 1, None)),
                Some(Fence::Zombie),
                true,
            ),
            (claim("pg-2", Unknown, false), None, None, false),
        ];
        for (claimed, observation, fence, probed) in table {
            let what = format!("{claimed:?} / {observation:?}");
            let m = verify_one(claimed, observation);
            assert_eq!(m.fence, fence, "{what}");
            assert_eq!(m.probed, probed, "{what}");
            assert_eq!(is_zombie(&m), fence == Some(Fence::Zombie), "{what}");
        }
    }

    #[test]
    fn a_zombie_never_counts_as_primary_and_does_not_contest_the_real_one() {
        let claimed = by_name(&[
            claim("pg-0", Role::Replica, true),
            claim("pg-1", Role::Primary, true),
        ]);
        let obs = observed(&[
            ("pg-0", up(false, 5_000, None)),
            ("pg-1", up(false, 6_000, None)),
        ]);
        let verified = verify(&claimed, &obs, true);
        let fenced: Vec<&str> = zombies(&verified).map(|m| m.name.as_str()).collect();
        assert_eq!(fenced, vec!["pg-0"]);
        assert_eq!(verified["pg-1"].note, None);
        let mut topology = Topology::default();
        topology.replace_members(verified);
        assert_eq!(topology.primary().map(|m| m.name.as_str()), Some("pg-1"));
        assert_eq!(topology.primaries().count(), 1);
    }

    #[test]
    fn draining_and_source_notes_carry_over_with_probe_notes_appended() {
        let mut primary = claim("pg-0", Role::Primary, true);
        primary.draining = true;
        primary.note = note("switchover scheduled");
        let mut replica = claim("pg-1", Role::Replica, true);
        replica.draining = true;
        replica.note = note("pod terminating");
        let mut old = claim("pg-2", Role::Replica, true);
        old.note = note("patroni state: running");
        let claimed = by_name(&[primary, replica, old]);
        let obs = observed(&[
            ("pg-0", up(true, 1, None)),
            ("pg-1", down("connection refused")),
            ("pg-2", up(false, 3, None)),
        ]);
        let verified = verify(&claimed, &obs, true);
        let pg0 = &verified["pg-0"];
        assert!(pg0.draining);
        assert_eq!(
            pg0.note.as_deref(),
            Some(format!("switchover scheduled; {RECOVERING_PRIMARY_NOTE}").as_str())
        );
        let pg1 = &verified["pg-1"];
        assert!(pg1.draining);
        assert_eq!(
            pg1.note.as_deref(),
            Some("pod terminating; connection refused")
        );
        let pg2 = verified["pg-2"].note.clone().unwrap_or_default();
        assert!(pg2.starts_with(ZOMBIE_NOTE), "{pg2}");
        assert!(pg2.ends_with("; patroni state: running"), "{pg2}");
    }

    #[test]
    fn without_probing_the_claim_is_published_unchanged() {
        let claimed = by_name(&[
            claim("pg-0", Role::Primary, true),
            claim("pg-1", Role::Replica, true),
        ]);
        let obs = observed(&[("pg-0", down("refused")), ("pg-1", up(false, 1, None))]);
        assert_eq!(verify(&claimed, &obs, false), claimed);
        assert_eq!(verify(&claimed, &BTreeMap::new(), false), claimed);
    }

    #[test]
    fn observations_of_members_the_source_does_not_claim_are_ignored() {
        let claimed = by_name(&[claim("pg-0", Role::Primary, true)]);
        let obs = observed(&[("pg-0", up(false, 10, None)), ("pg-9", up(false, 20, None))]);
        let verified = verify(&claimed, &obs, true);
        assert_eq!(verified.len(), 1);
        assert_eq!(
            verified["pg-0"].note, None,
            "an unclaimed member does not contest"
        );
    }

    #[test]
    fn a_first_confirmation_without_members_wakes_receivers_once() {
        let (tx, mut rx) = watch::channel(Topology::default());
        assert!(publish(&tx, BTreeMap::new(), Some("no API".into()), None));
        let failing = rx.borrow_and_update().clone();
        assert_eq!(failing.confirmed_at, None, "an error confirms nothing");
        assert!(
            publish(&tx, BTreeMap::new(), None, None),
            "the first answer"
        );
        assert!(rx.has_changed().expect("open"));
        let empty = rx.borrow_and_update().clone();
        assert!(empty.confirmed_at.is_some());
        assert_eq!((empty.generation, empty.members.len()), (0, 0));
        assert!(
            !publish(&tx, BTreeMap::new(), None, None),
            "later confirmations are quiet"
        );
        assert!(!rx.has_changed().expect("open"));
    }

    #[test]
    fn publish_wakes_receivers_only_on_changes_and_keeps_confirmed_at_during_an_outage() {
        let (tx, mut rx) = watch::channel(Topology::default());
        let members = by_name(&[claim("pg-0", Role::Primary, true)]);
        assert!(publish(&tx, members.clone(), None, None));
        assert!(rx.has_changed().expect("open"));
        let first = rx.borrow_and_update().clone();
        assert_eq!(first.generation, 1);
        let confirmed = first.confirmed_at.expect("confirmed");

        assert!(
            !publish(&tx, members.clone(), None, None),
            "nothing changed"
        );
        assert!(!rx.has_changed().expect("open"));
        assert!(
            rx.borrow().confirmed_at >= Some(confirmed),
            "refreshed quietly"
        );
        let refreshed = rx.borrow().confirmed_at;

        assert!(publish(
            &tx,
            members.clone(),
            Some("watch failed".into()),
            None
        ));
        let outage = rx.borrow_and_update().clone();
        assert_eq!(outage.source_error.as_deref(), Some("watch failed"));
        assert_eq!(
            outage.confirmed_at, refreshed,
            "staleness grows during an outage"
        );
        assert_eq!(outage.generation, 1);

        let pending = Some("switchover to pg-1".to_owned());
        assert!(publish(&tx, members.clone(), None, pending.clone()));
        let back = rx.borrow_and_update().clone();
        assert_eq!((back.source_error, back.pending_change), (None, pending));
        assert!(back.confirmed_at >= refreshed);

        let mut replica = members;
        replica.insert("pg-0".into(), claim("pg-0", Role::Replica, true));
        assert!(publish(&tx, replica, None, None));
        let demoted = rx.borrow_and_update().clone();
        assert_eq!(demoted.generation, 2);
        assert_eq!(demoted.pending_change, None);
    }
}
