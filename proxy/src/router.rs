//! Routing decisions: (topology, listener, client hints) → which member.
//!
//! Pure functions, no IO, table-tested. The session asks again whenever the
//! topology changes while it waits.

use pgsteer_discovery::{Member, Role, Topology};

/// What kind of member a session wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The primary (read-write).
    Primary,
    /// A replica (read-only).
    Replica,
    /// Whichever routable member has the fewest sessions.
    Any,
    /// Pooled transaction mode: each transaction to a replica when it only reads (and the
    /// replica has seen the client's writes), else to the primary. Logs in like `Primary`.
    Auto,
}

/// How fresh `auto` reads must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Any replica within the lag bound.
    Eventual,
    /// A replica that has replayed the client's last write, else the primary.
    #[default]
    ReadYourWrites,
    /// Every read on the primary.
    Strong,
}

impl Consistency {
    /// Parses a `pgsteer.consistency` value.
    pub fn parse(s: &str) -> Option<Consistency> {
        match s {
            "eventual" => Some(Consistency::Eventual),
            "read-your-writes" | "read_your_writes" => Some(Consistency::ReadYourWrites),
            "strong" => Some(Consistency::Strong),
            _ => None,
        }
    }
}

impl Route {
    /// Name used in messages, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Primary => "primary",
            Route::Replica => "replica",
            Route::Any => "any",
            Route::Auto => "auto",
        }
    }

    /// Parses a `pgsteer.route` value.
    pub fn parse(s: &str) -> Option<Route> {
        match s {
            "primary" => Some(Route::Primary),
            "replica" => Some(Route::Replica),
            "any" => Some(Route::Any),
            "auto" => Some(Route::Auto),
            _ => None,
        }
    }
}

/// What the client asked for: its listener's route, possibly overridden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The route.
    pub route: Route,
    /// Whether the route was set explicitly by `pgsteer.route`.
    pub explicit_route: bool,
    /// `pgsteer.pod`: pin to one member by name.
    pub pin: Option<String>,
    /// `pgsteer.consistency`, for route `auto`.
    pub consistency: Consistency,
    /// A replica must have replayed up to here (an `auto` client's last write); 0: any.
    pub min_lsn: u64,
}

/// The chosen backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Member name.
    pub member: String,
    /// Address to connect to.
    pub address: String,
    /// The role it was chosen for.
    pub role: Role,
}

/// The router's answer: connect to a [`Target`] ([`decide`]) or to a member of the
/// topology looked at ([`choose`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<T = Target> {
    /// Connect here.
    Connect(T),
    /// Nothing suitable now; wait for the topology to change.
    Wait(String),
    /// Never satisfiable: tell the client why.
    Refuse(String),
}

/// Routing policy knobs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    /// `ro` may fall back to the primary.
    pub replica_fallback: bool,
}

/// Picks a member for `req`. `load(name)` is the member's current session
/// count; members in `exclude` (refused a connection just now) are skipped.
pub fn decide(
    t: &Topology,
    req: &Request,
    policy: Policy,
    load: impl Fn(&str) -> usize,
    exclude: &[String],
) -> Decision {
    choose(t, req, policy, load, exclude).map(target)
}

impl<T> Decision<T> {
    /// The same answer, connecting to `f(T)`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Decision<U> {
        match self {
            Decision::Connect(t) => Decision::Connect(f(t)),
            Decision::Wait(why) => Decision::Wait(why),
            Decision::Refuse(why) => Decision::Refuse(why),
        }
    }
}

/// [`decide`], answering with the member itself: a caller that routes every transaction
/// can reuse the [`Target`] it made last time instead of copying the member's names.
pub fn choose<'t>(
    t: &'t Topology,
    req: &Request,
    policy: Policy,
    load: impl Fn(&str) -> usize,
    exclude: &[String],
) -> Decision<&'t Member> {
    let usable = |m: &&Member| m.routable && !m.draining && !exclude.contains(&m.name);
    // Replicas past the lag bound take no new sessions (a pinned session still may).
    let fresh = |m: &&Member| usable(m) && !m.lagging && m.lsn.unwrap_or(0) >= req.min_lsn;
    if let Some(pin) = &req.pin {
        let Some(m) = t.member(pin) else {
            return Decision::Refuse(format!("pgsteer: no member named \"{pin}\""));
        };
        let role_ok = match (req.explicit_route, req.route) {
            (false, _) | (true, Route::Any) => matches!(m.role, Role::Primary | Role::Replica),
            (true, Route::Primary | Route::Auto) => m.role == Role::Primary,
            (true, Route::Replica) => m.role == Role::Replica,
        };
        if role_ok && usable(&m) && (m.role != Role::Primary || t.primary().is_some()) {
            return Decision::Connect(m);
        }
        return Decision::Wait(format!(
            "member \"{pin}\" is {} and not available for route {}",
            m.role,
            req.route.as_str()
        ));
    }
    match req.route {
        Route::Primary | Route::Auto => match t.primary().filter(usable) {
            Some(m) => Decision::Connect(m),
            None => Decision::Wait(no_primary_reason(t)),
        },
        Route::Replica => {
            if let Some(m) = least_loaded(t.replicas().filter(fresh), &load) {
                return Decision::Connect(m);
            }
            if policy.replica_fallback
                && let Some(m) = t.primary().filter(usable)
            {
                return Decision::Connect(m);
            }
            Decision::Wait("no replica available".into())
        }
        Route::Any => {
            let primary = t.primary().filter(usable);
            match least_loaded(t.replicas().filter(fresh).chain(primary), &load) {
                Some(m) => Decision::Connect(m),
                None => Decision::Wait("no member available".into()),
            }
        }
    }
}

fn no_primary_reason(t: &Topology) -> String {
    match t.primaries().count() {
        // What keeps members out (a probe that cannot log in or verify a certificate, …)
        // tells the client more than the absence.
        0 => {
            let notes: Vec<String> = t
                .members
                .values()
                .filter(|m| !m.routable)
                .filter_map(|m| m.note.as_ref().map(|n| format!("{}: {n}", m.name)))
                .collect();
            match notes.is_empty() {
                true => "no primary available".into(),
                false => format!("no primary available ({})", notes.join("; ")),
            }
        }
        n => format!("{n} members claim to be primary; refusing writes until resolved"),
    }
}

/// The target for routing to `m`.
pub fn target(m: &Member) -> Target {
    Target {
        member: m.name.clone(),
        address: m.address.clone(),
        role: m.role,
    }
}

/// Fewest sessions first; ties go to a stable hash of the name so that
/// proxies in front of the same cluster spread the same way.
fn least_loaded<'a>(
    members: impl Iterator<Item = &'a Member>,
    load: &impl Fn(&str) -> usize,
) -> Option<&'a Member> {
    members.min_by_key(|m| (load(&m.name), stable_hash(&m.name)))
}

/// FNV-1a: stable across processes and versions, unlike `DefaultHasher`.
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    fn topo(members: &[(&str, Role, bool)]) -> Topology {
        let mut t = Topology::default();
        let map: BTreeMap<_, _> = members
            .iter()
            .map(|&(n, role, routable)| {
                let mut m = Member::new(n, format!("{n}:5432"));
                m.role = role;
                m.routable = routable;
                (n.to_string(), m)
            })
            .collect();
        t.replace_members(map);
        t
    }

    fn req(route: Route) -> Request {
        Request {
            route,
            explicit_route: false,
            pin: None,
            consistency: Consistency::default(),
            min_lsn: 0,
        }
    }

    fn member_of(d: Decision) -> String {
        match d {
            Decision::Connect(t) => t.member,
            other => panic!("expected a connect, got {other:?}"),
        }
    }

    #[test]
    fn routes_follow_roles() {
        let t = topo(&[
            ("pg-0", Role::Primary, true),
            ("pg-1", Role::Replica, true),
            ("pg-2", Role::Unreachable, false),
        ]);
        let none = |_: &str| 0;
        let p = Policy::default();
        assert_eq!(
            member_of(decide(&t, &req(Route::Primary), p, none, &[])),
            "pg-0"
        );
        assert_eq!(
            member_of(decide(&t, &req(Route::Replica), p, none, &[])),
            "pg-1"
        );
    }

    #[test]
    fn replicas_are_chosen_by_fewest_sessions() {
        let t = topo(&[
            ("pg-0", Role::Primary, true),
            ("pg-1", Role::Replica, true),
            ("pg-2", Role::Replica, true),
        ]);
        let loads: HashMap<&str, usize> = [("pg-1", 5), ("pg-2", 2)].into();
        let load = |n: &str| loads.get(n).copied().unwrap_or(0);
        let d = decide(&t, &req(Route::Replica), Policy::default(), load, &[]);
        assert_eq!(member_of(d), "pg-2");
        // excluded after a refused connect: the other one
        let d = decide(
            &t,
            &req(Route::Replica),
            Policy::default(),
            load,
            &["pg-2".into()],
        );
        assert_eq!(member_of(d), "pg-1");
    }

    #[test]
    fn equal_loads_break_ties_the_same_way_every_time() {
        let t = topo(&[("pg-1", Role::Replica, true), ("pg-2", Role::Replica, true)]);
        let first = member_of(decide(
            &t,
            &req(Route::Replica),
            Policy::default(),
            |_| 0,
            &[],
        ));
        for _ in 0..10 {
            let again = member_of(decide(
                &t,
                &req(Route::Replica),
                Policy::default(),
                |_| 0,
                &[],
            ));
            assert_eq!(again, first);
        }
    }

    #[test]
    fn no_replica_waits_unless_fallback_is_allowed() {
        let t = topo(&[
            ("pg-0", Role::Primary, true),
            ("pg-1", Role::Unreachable, false),
        ]);
        assert!(matches!(
            decide(&t, &req(Route::Replica), Policy::default(), |_| 0, &[]),
            Decision::Wait(_)
        ));
        let fallback = Policy {
            replica_fallback: true,
        };
        assert_eq!(
            member_of(decide(&t, &req(Route::Replica), fallback, |_| 0, &[])),
            "pg-0"
        );
    }

    #[test]
    fn two_primaries_make_writes_wait() {
        let t = topo(&[("pg-0", Role::Primary, true), ("pg-1", Role::Primary, true)]);
        let Decision::Wait(why) = decide(&t, &req(Route::Primary), Policy::default(), |_| 0, &[])
        else {
            panic!("writes must wait");
        };
        assert!(why.contains("2 members claim to be primary"));
    }

    #[test]
    fn pins_choose_the_member_and_check_an_explicit_route() {
        let t = topo(&[("pg-0", Role::Primary, true), ("pg-1", Role::Replica, true)]);
        let mut r = req(Route::Primary);
        r.pin = Some("pg-1".into());
        assert_eq!(
            member_of(decide(&t, &r, Policy::default(), |_| 0, &[])),
            "pg-1"
        );
        r.explicit_route = true;
        assert!(matches!(
            decide(&t, &r, Policy::default(), |_| 0, &[]),
            Decision::Wait(_)
        ));
        r.pin = Some("pg-9".into());
        assert!(matches!(
            decide(&t, &r, Policy::default(), |_| 0, &[]),
            Decision::Refuse(_)
        ));
    }

    #[test]
    fn draining_members_get_no_new_sessions() {
        let mut t = topo(&[("pg-0", Role::Primary, true), ("pg-1", Role::Replica, true)]);
        let mut members = t.members.clone();
        members.get_mut("pg-0").unwrap().draining = true;
        t.replace_members(members);
        assert!(matches!(
            decide(&t, &req(Route::Primary), Policy::default(), |_| 0, &[]),
            Decision::Wait(_)
        ));
    }
}
