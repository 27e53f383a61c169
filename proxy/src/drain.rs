//! One drain mechanism for role changes, pod drains, admin drains and shutdown.
//!
//! A session is bound to the member and role it was routed for. Whenever the
//! topology changes, [`check`] decides whether that binding still holds; when
//! it does not, the session drains: it may finish its transaction within a
//! grace period and is closed with `FATAL 57P01` at its next idle point. A
//! primary that lost its role gets the short `demoted_primary_grace` (0 by
//! default: writes there may be lost), everything else the normal `grace`.
//! Admin drains are an overlay on the discovered topology ([`overlay`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pgsteer_discovery::{Member, Role, Topology};
use tokio::sync::watch;

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
        let role = match route {
            Route::Primary | Route::Replica if pinned && !explicit_route => None,
            Route::Primary => Some(Role::Primary),
            Route::Replica => Some(role),
            Route::Any => None,
        };
        Binding {
            member: member.to_owned(),
            role,
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

/// The discovered members with admin drains applied.
pub fn overlay(raw: &Topology, drained: &BTreeSet<String>) -> BTreeMap<String, Member> {
    let mut members = raw.members.clone();
    for name in drained {
        if let Some(m) = members.get_mut(name) {
            m.draining = true;
            let note = "drained by an operator (POST /drain)";
            m.note = Some(match m.note.take() {
                Some(n) => format!("{n}; {note}"),
                None => note.to_owned(),
            });
        }
    }
    members
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Graces = Graces {
        grace: Duration::from_secs(30),
        demoted_primary: Duration::ZERO,
    };

    fn topo(members: &[(&str, Role)]) -> Topology {
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
        let mut t = topo(&[("pg-0", Role::Primary), ("pg-1", Role::Replica)]);
        assert_eq!(check(&t, &b, G), None);
        let drained: BTreeSet<String> = ["pg-1".to_owned()].into();
        t.replace_members(overlay(&t, &drained));
        assert!(check(&t, &b, G).unwrap().reason.contains("drained"));
    }

    #[test]
    fn a_pin_without_a_route_survives_role_changes_but_not_removal() {
        let b = Binding::new("pg-1", Role::Replica, Route::Primary, false, true);
        let t = topo(&[("pg-0", Role::Replica), ("pg-1", Role::Primary)]);
        assert_eq!(check(&t, &b, G), None);
        let t = topo(&[("pg-0", Role::Primary)]);
        assert!(check(&t, &b, G).is_some());
    }
}
