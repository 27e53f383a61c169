//! The routing view of a cluster: who is primary, who is replica, right now.
//!
//! A [`Topology`] is a value. Sources build a new one from their events with
//! pure functions and publish it through a `tokio::sync::watch` channel; the
//! router reads the latest value without locks. `generation` goes up whenever
//! something routing depends on changes (roles, addresses, readiness,
//! draining), not for lag or probe time updates, so sessions can be fenced by
//! generation.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// What a member is, as far as routing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Accepts writes.
    Primary,
    /// A streaming replica: reads only.
    Replica,
    /// Reachable but its role is not known (or not routable).
    Unknown,
    /// Did not answer.
    Unreachable,
}

impl Role {
    /// Lowercase name, as in `/topology` and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Unknown => "unknown",
            Role::Unreachable => "unreachable",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the probe's cross-check keeps a member out of routing. Typed, so code can act on it;
/// [`Member::note`] says the same for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fence {
    /// The probe has not answered for this member yet (the static source routes nothing
    /// before it has; readiness waits for it).
    NotProbed,
    /// The source calls it primary; the probe has not confirmed it yet.
    Unconfirmed,
    /// The source calls it primary; the probe sees it still in recovery.
    Recovering,
    /// The probe could not reach it.
    Unreachable,
    /// Writable, but the source does not call it primary: an old primary that did not step
    /// down (a zombie). Logged at error level.
    Zombie,
}

/// One database member, named by its stable identity (pod name).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    /// Stable name: pod name, Patroni member name or configured name.
    pub name: String,
    /// `host:port` to connect to now (may change when a pod is recreated).
    pub address: String,
    /// Role used for routing.
    pub role: Role,
    /// Whether new sessions may be sent here at all.
    pub routable: bool,
    /// Being drained: no new sessions, existing ones close at idle points.
    pub draining: bool,
    /// Replication lag behind the primary in bytes (replicas; `None` if unknown).
    pub lag_bytes: Option<u64>,
    /// Replay delay in seconds (replicas; `None` if unknown).
    pub lag_seconds: Option<f64>,
    /// Last WAL position seen (current LSN on the primary, replay LSN on replicas).
    pub lsn: Option<u64>,
    /// A replica past the proxy's lag bound: no new reads until it catches up (set by the
    /// proxy's published view, never by discovery).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lagging: bool,
    /// Round-trip time in seconds of the last SQL probe query (`None` if not probed or the
    /// probe failed).
    pub probe_seconds: Option<f64>,
    /// Whether the SQL probe has answered (or failed) for this member at least once.
    pub probed: bool,
    /// Why the probe's cross-check keeps the member out of routing, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence: Option<Fence>,
    /// Why the member is not routable or is flagged, for operators.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Member {
    /// A member that has not been probed yet.
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> Member {
        Member {
            name: name.into(),
            address: address.into(),
            role: Role::Unknown,
            routable: false,
            draining: false,
            lag_bytes: None,
            lag_seconds: None,
            lsn: None,
            lagging: false,
            probe_seconds: None,
            probed: false,
            fence: None,
            note: None,
        }
    }

    /// Whether routing-relevant fields differ (lag, LSN and probe time do not count).
    pub fn routing_differs(&self, other: &Member) -> bool {
        self.address != other.address
            || self.role != other.role
            || self.routable != other.routable
            || self.draining != other.draining
            || self.fence != other.fence
    }

    /// Takes the member out of routing with `role` for `why`, adding `note` to what the
    /// source said about it.
    pub fn fence(&mut self, why: Fence, role: Role, note: &str) {
        self.role = role;
        self.routable = false;
        self.fence = Some(why);
        self.add_note(note);
    }

    /// Appends `note` to the member's note.
    pub fn add_note(&mut self, note: &str) {
        self.note = Some(match self.note.take() {
            Some(before) => format!("{before}; {note}"),
            None => note.to_owned(),
        });
    }
}

/// A snapshot of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Topology {
    /// Bumped on every routing-relevant change.
    pub generation: u64,
    /// Members by name.
    #[serde(serialize_with = "members_as_list")]
    pub members: BTreeMap<String, Member>,
    /// When the source last confirmed this view (wall clock, for staleness).
    #[serde(skip)]
    pub confirmed_at: Option<SystemTime>,
    /// Source problem, if the view may be stale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_error: Option<String>,
    /// A role change the source announced ahead of time (Patroni scheduled
    /// switchover, a stopping leader, a terminating pod), for operators and
    /// the drain logic. The affected member is also marked `draining`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_change: Option<String>,
}

fn members_as_list<S: serde::Serializer>(
    m: &BTreeMap<String, Member>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.values())
}

impl Topology {
    /// The one routable primary, or `None` if there is none or more than one
    /// (two writable members: fail closed).
    pub fn primary(&self) -> Option<&Member> {
        let mut it = self.primaries();
        let first = it.next()?;
        match it.next() {
            None => Some(first),
            Some(_) => None,
        }
    }

    /// Every member claiming the primary role and routable.
    pub fn primaries(&self) -> impl Iterator<Item = &Member> {
        self.members
            .values()
            .filter(|m| m.role == Role::Primary && m.routable)
    }

    /// Routable, non-draining replicas.
    pub fn replicas(&self) -> impl Iterator<Item = &Member> {
        self.members
            .values()
            .filter(|m| m.role == Role::Replica && m.routable && !m.draining)
    }

    /// A member by stable name.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.get(name)
    }

    /// How long ago the source last confirmed this view.
    pub fn staleness(&self, now: SystemTime) -> Option<Duration> {
        self.confirmed_at
            .map(|t| now.duration_since(t).unwrap_or_default())
    }

    /// Replaces the members with `next`, bumping the generation if anything
    /// routing depends on changed. Returns whether anything at all changed.
    pub fn replace_members(&mut self, next: BTreeMap<String, Member>) -> bool {
        if next == self.members {
            return false;
        }
        let routing_changed = next.len() != self.members.len()
            || next.iter().any(|(name, m)| {
                self.members
                    .get(name)
                    .is_none_or(|old| old.routing_differs(m))
            });
        if routing_changed {
            self.generation += 1;
        }
        self.members = next;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, role: Role) -> Member {
        Member {
            role,
            routable: true,
            ..Member::new(name, "127.0.0.1:1")
        }
    }

    fn topo(members: &[Member]) -> BTreeMap<String, Member> {
        members
            .iter()
            .map(|m| (m.name.clone(), m.clone()))
            .collect()
    }

    #[test]
    fn two_primaries_mean_no_primary() {
        let mut t = Topology::default();
        t.replace_members(topo(&[
            member("pg-0", Role::Primary),
            member("pg-1", Role::Primary),
        ]));
        assert!(t.primary().is_none());
        assert_eq!(t.primaries().count(), 2);
    }

    #[test]
    fn lag_and_probe_time_updates_do_not_bump_the_generation_but_role_changes_do() {
        let mut t = Topology::default();
        assert!(t.replace_members(topo(&[member("pg-0", Role::Primary)])));
        assert_eq!(t.generation, 1);
        let mut lagging = member("pg-0", Role::Primary);
        lagging.lsn = Some(42);
        assert!(t.replace_members(topo(&[lagging.clone()])));
        assert_eq!(t.generation, 1);
        lagging.probe_seconds = Some(0.002);
        assert!(t.replace_members(topo(&[lagging])));
        assert_eq!(t.generation, 1, "a new probe time is no routing change");
        assert!(t.replace_members(topo(&[member("pg-0", Role::Replica)])));
        assert_eq!(t.generation, 2);
        assert!(!t.replace_members(topo(&[member("pg-0", Role::Replica)])));
    }
}
