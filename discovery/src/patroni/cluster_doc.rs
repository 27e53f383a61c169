//! Patroni's `GET /cluster` document and the pure fold of it into routing members (what Patroni
//! claims, before the SQL probe cross-checks it).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::topology::{Member, Role};

/// A scheduled switchover drains the leader once its time is this close.
pub const SWITCHOVER_DRAIN_LEAD: Duration = Duration::from_secs(10);

/// Note of a replica with the `noloadbalance` tag.
pub const NOLOADBALANCE_NOTE: &str = "patroni tag noloadbalance: no read-only sessions";

/// Note of a standby cluster's leader.
pub const STANDBY_LEADER_NOTE: &str =
    "patroni standby_leader (standby cluster): replicates from elsewhere, read-only";

/// Patroni's `GET /cluster` document (the parts routing uses; unknown fields are ignored).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ClusterDoc {
    /// Every member Patroni knows (member keys in the DCS).
    #[serde(default)]
    pub members: Vec<PatroniMember>,
    /// A switchover scheduled for later (`patronictl switchover --scheduled`).
    #[serde(default)]
    pub scheduled_switchover: Option<ScheduledSwitchover>,
    /// Maintenance mode: Patroni will not fail over.
    #[serde(default)]
    pub pause: bool,
}

/// One member of [`ClusterDoc`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PatroniMember {
    /// Patroni member name: the stable identity.
    pub name: String,
    /// `leader`, `standby_leader`, `replica`, `sync_standby`, `quorum_standby`.
    #[serde(default)]
    pub role: String,
    /// `running`, `streaming`, `stopped`, `starting`, `stopping`, `crashed`, …
    #[serde(default)]
    pub state: String,
    /// Postgres host (`postgresql.connect_address`).
    #[serde(default)]
    pub host: Option<String>,
    /// Postgres port (a number, or a numeric string).
    #[serde(default)]
    pub port: Option<serde_json::Value>,
    /// The member's REST API.
    #[serde(default)]
    pub api_url: Option<String>,
    /// Timeline the member is on.
    #[serde(default)]
    pub timeline: Option<u64>,
    /// Replication lag in bytes, or `"unknown"`.
    #[serde(default)]
    pub lag: Option<serde_json::Value>,
    /// Member tags (`nofailover`, `noloadbalance`, custom ones).
    #[serde(default)]
    pub tags: BTreeMap<String, serde_json::Value>,
}

/// `scheduled_switchover` of [`ClusterDoc`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ScheduledSwitchover {
    /// When (ISO 8601 with an offset).
    #[serde(default)]
    pub at: Option<String>,
    /// Current leader.
    #[serde(default)]
    pub from: Option<String>,
    /// Candidate, if one was named.
    #[serde(default)]
    pub to: Option<String>,
}

impl PatroniMember {
    /// `host:port` (`[v6]:port` for IPv6 literals), if Patroni reported both.
    pub fn address(&self) -> Option<String> {
        let host = self.host.as_deref().filter(|h| !h.is_empty())?;
        let port: u16 = match self.port.as_ref()? {
            serde_json::Value::Number(n) => n.as_u64()?.try_into().ok()?,
            serde_json::Value::String(s) => s.trim().parse().ok()?,
            _ => return None,
        };
        if host.contains(':') && !host.starts_with('[') {
            Some(format!("[{host}]:{port}"))
        } else {
            Some(format!("{host}:{port}"))
        }
    }

    /// Lag in bytes; `None` for `"unknown"` or when absent (the leader).
    pub fn lag_bytes(&self) -> Option<u64> {
        match self.lag.as_ref()? {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// Whether tag `name` is set to a true value (`true`, `"true"`, `"on"`, `"yes"`, `1`).
    pub fn tag(&self, name: &str) -> bool {
        match self.tags.get(name) {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::Number(n)) => n.as_u64().is_some_and(|n| n != 0),
            Some(serde_json::Value::String(s)) => {
                matches!(
                    s.trim().to_ascii_lowercase().as_str(),
                    "true" | "on" | "yes" | "1"
                )
            }
            _ => false,
        }
    }

    fn kind(&self) -> Kind {
        match self.role.as_str() {
            // `master` and `primary`: older and newer spellings of the leader.
            "leader" | "master" | "primary" => Kind::Leader,
            "standby_leader" => Kind::StandbyLeader,
            "replica" | "sync_standby" | "quorum_standby" => Kind::Replica,
            _ => Kind::Other,
        }
    }
}

/// Roles as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Leader,
    StandbyLeader,
    Replica,
    Other,
}

/// Leader states that announce a role change.
fn leaving(state: &str) -> bool {
    matches!(state, "stopping" | "demoting" | "demoted")
}

/// Replica states that serve reads: `streaming` (Patroni ≥ 3.0.4), `running` (older Patroni).
fn serving(state: &str) -> bool {
    matches!(state, "streaming" | "running")
}

/// Pure fold: a `/cluster` document → the members Patroni claims (before the probe's
/// [`verify`](crate::verify::verify)) and the announced role change, if any.
///
/// | Patroni | member |
/// |---|---|
/// | `leader`, state `running` | primary, routable |
/// | `leader`, state `stopping`/`demoting` | primary, routable, draining (+ pending change) |
/// | `leader`, any other state | unknown, not routable |
/// | `replica`/`sync_standby`/`quorum_standby`, state `streaming` or `running` | replica, routable |
/// | the same with tag `noloadbalance` | replica, not routable, [`NOLOADBALANCE_NOTE`] |
/// | `standby_leader`, state `streaming`/`running` | replica (reads only, never a primary), [`STANDBY_LEADER_NOTE`] |
/// | anything else, or no host/port | unknown, not routable, with a note |
///
/// `scheduled_switchover` sets the pending change; it marks the leader draining once `at` is
/// within [`SWITCHOVER_DRAIN_LEAD`] of `now` (or past). Lag is Patroni's, in bytes. Names are
/// Patroni member names (the first of duplicates wins); addresses are `host:port`.
pub fn fold_cluster(
    doc: &ClusterDoc,
    now: SystemTime,
) -> (BTreeMap<String, Member>, Option<String>) {
    let leader = doc.members.iter().find(|m| m.kind() == Kind::Leader);
    let leader_timeline = leader.and_then(|m| m.timeline);
    let mut pending = Vec::new();
    let mut drain_leader = false;
    if let Some(s) = &doc.scheduled_switchover {
        pending.push(describe_switchover(s));
        let at = s.at.as_deref().and_then(parse_timestamp);
        drain_leader |= at.is_some_and(|at| at <= now + SWITCHOVER_DRAIN_LEAD);
    }
    if let Some(l) = leader.filter(|l| leaving(&l.state)) {
        pending.push(format!("patroni leader {} is {}", l.name, l.state));
        drain_leader = true;
    }
    let mut members = BTreeMap::new();
    for m in doc.members.iter().filter(|m| !m.name.is_empty()) {
        if members.contains_key(&m.name) {
            continue;
        }
        let mut member = fold_member(m, leader_timeline);
        if drain_leader && m.kind() == Kind::Leader {
            member.draining = true;
        }
        members.insert(m.name.clone(), member);
    }
    let pending = (!pending.is_empty()).then(|| pending.join("; "));
    (members, pending)
}

fn describe_switchover(s: &ScheduledSwitchover) -> String {
    let mut text = String::from("patroni switchover scheduled");
    if let Some(at) = &s.at {
        text.push_str(&format!(" at {at}"));
    }
    if let Some(from) = &s.from {
        text.push_str(&format!(" from {from}"));
    }
    if let Some(to) = &s.to {
        text.push_str(&format!(" to {to}"));
    }
    text
}

fn fold_member(m: &PatroniMember, leader_timeline: Option<u64>) -> Member {
    let Some(address) = m.address() else {
        let mut member = Member::new(&m.name, "");
        member.note = Some("patroni reports no host/port for this member".to_owned());
        return member;
    };
    let mut member = Member::new(&m.name, address);
    member.lag_bytes = m.lag_bytes();
    let state = m.state.as_str();
    let mut notes = Vec::new();
    match m.kind() {
        Kind::Leader if state == "running" || leaving(state) => {
            member.role = Role::Primary;
            member.routable = true;
        }
        Kind::Leader => notes.push(format!("patroni leader in state {state:?}")),
        Kind::StandbyLeader | Kind::Replica if serving(state) => {
            member.role = Role::Replica;
            member.routable = !m.tag("noloadbalance");
            if m.kind() == Kind::StandbyLeader {
                notes.push(STANDBY_LEADER_NOTE.to_owned());
            }
            if m.tag("noloadbalance") {
                notes.push(NOLOADBALANCE_NOTE.to_owned());
            }
            if let (Some(tl), Some(leader_tl)) = (m.timeline, leader_timeline)
                && tl != leader_tl
            {
                notes.push(format!("on timeline {tl}, the leader on {leader_tl}"));
            }
        }
        Kind::StandbyLeader | Kind::Replica => {
            notes.push(format!("patroni {} in state {state:?}", m.role));
        }
        Kind::Other => notes.push(format!("patroni role {:?} in state {state:?}", m.role)),
    }
    member.note = (!notes.is_empty()).then(|| notes.join("; "));
    member
}

/// Parses an ISO 8601 timestamp as Python's `isoformat()` writes it
/// (`2026-11-26T15:00:00.123456+01:00`; `Z` and no offset mean UTC).
pub fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let (date, rest) = (text.get(..10)?, text.get(10..)?);
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let (hms, rest) = (rest.get(..8)?, rest.get(8..)?);
    let num = |s: &str| -> Option<i64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = hms.split(':').collect();
    let ([y, mo, da], [h, mi, s]) = (d.as_slice(), t.as_slice()) else {
        return None;
    };
    let (y, mo, da, h, mi, s) = (num(y)?, num(mo)?, num(da)?, num(h)?, num(mi)?, num(s)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let (frac, offset) = match rest.strip_prefix(['.', ',']) {
        Some(r) => {
            let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            (&r[..end], &r[end..])
        }
        None => ("", rest),
    };
    let nanos = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        u32::try_from(num(&digits)?).ok()?
    };
    let offset_secs = match offset {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match offset.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hhmm = offset[1..].replace(':', "");
            if hhmm.len() != 4 {
                return None;
            }
            sign * (num(&hhmm[..2])? * 3600 + num(&hhmm[2..])? * 60)
        }
    };
    let secs = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + s - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::probe::Observation;
    use crate::topology::Topology;
    use crate::verify::{is_zombie, verify};

    fn doc(value: serde_json::Value) -> ClusterDoc {
        serde_json::from_value(value).expect("a valid /cluster document")
    }

    fn member(name: &str, role: &str, state: &str, port: u16) -> serde_json::Value {
        json!({"name": name, "role": role, "state": state, "host": "127.0.0.1", "port": port,
               "api_url": "http://127.0.0.1:8008/patroni", "timeline": 3})
    }

    /// (role, routable, draining, lag_bytes) by name.
    fn rows(members: &BTreeMap<String, Member>) -> Vec<(&str, Role, bool, bool, Option<u64>)> {
        members
            .values()
            .map(|m| (m.name.as_str(), m.role, m.routable, m.draining, m.lag_bytes))
            .collect()
    }

    #[test]
    fn the_running_leader_is_primary_and_serving_replicas_are_replicas() {
        let mut lagging = member("pg-1", "replica", "streaming", 5433);
        lagging["lag"] = json!(4096);
        let mut unknown_lag = member("pg-2", "sync_standby", "running", 5434);
        unknown_lag["lag"] = json!("unknown");
        let d = doc(json!({"members": [
            member("pg-0", "leader", "running", 5432), lagging, unknown_lag,
            member("pg-3", "quorum_standby", "streaming", 5435),
        ]}));
        let (members, pending) = fold_cluster(&d, SystemTime::now());
        assert_eq!(
            rows(&members),
            vec![
                ("pg-0", Role::Primary, true, false, None),
                ("pg-1", Role::Replica, true, false, Some(4096)),
                ("pg-2", Role::Replica, true, false, None),
                ("pg-3", Role::Replica, true, false, None),
            ]
        );
        assert_eq!(members["pg-1"].address, "127.0.0.1:5433");
        assert!(members.values().all(|m| m.note.is_none()));
        assert_eq!(pending, None);
    }

    #[test]
    fn members_that_cannot_serve_are_not_routable_and_say_why() {
        let mut noload = member("pg-1", "replica", "streaming", 5433);
        noload["tags"] = json!({"noloadbalance": true, "nofailover": true});
        let mut noload_text = member("pg-6", "replica", "running", 5438);
        noload_text["tags"] = json!({"noloadbalance": "on"});
        let mut old_timeline = member("pg-7", "replica", "streaming", 5439);
        old_timeline["timeline"] = json!(2);
        let mut no_host = member("pg-8", "replica", "streaming", 5440);
        no_host.as_object_mut().unwrap().remove("host");
        let d = doc(json!({"members": [
            member("pg-0", "leader", "starting", 5432), noload,
            member("pg-2", "replica", "stopped", 5434),
            member("pg-3", "replica", "creating replica", 5435),
            member("pg-4", "standby_leader", "streaming", 5436),
            member("pg-5", "witness", "running", 5437), noload_text, old_timeline, no_host,
        ]}));
        let (members, _) = fold_cluster(&d, SystemTime::now());
        let row = |n: &str| (members[n].role, members[n].routable);
        let note = |n: &str| members[n].note.clone().unwrap_or_default();
        assert_eq!(row("pg-0"), (Role::Unknown, false));
        assert!(note("pg-0").contains("starting"), "{}", note("pg-0"));
        assert_eq!(row("pg-1"), (Role::Replica, false));
        assert_eq!(note("pg-1"), NOLOADBALANCE_NOTE);
        assert_eq!(row("pg-6"), (Role::Replica, false));
        assert_eq!(row("pg-2"), (Role::Unknown, false));
        assert_eq!(row("pg-3"), (Role::Unknown, false));
        assert!(note("pg-3").contains("creating replica"));
        // A standby cluster's leader is in recovery: reads, never writes.
        assert_eq!(row("pg-4"), (Role::Replica, true));
        assert_eq!(note("pg-4"), STANDBY_LEADER_NOTE);
        assert_eq!(row("pg-5"), (Role::Unknown, false));
        assert_eq!(row("pg-7"), (Role::Replica, true));
        assert_eq!(row("pg-8"), (Role::Unknown, false));
        assert!(note("pg-8").contains("no host/port"));
        let mut topology = Topology::default();
        topology.replace_members(members);
        assert!(
            topology.primary().is_none(),
            "no running leader, no primary"
        );
    }

    #[test]
    fn a_stopping_leader_announces_a_change_and_drains() {
        let d = doc(json!({"members": [
            member("pg-0", "leader", "stopping", 5432),
            member("pg-1", "replica", "streaming", 5433),
        ]}));
        let (members, pending) = fold_cluster(&d, SystemTime::now());
        assert_eq!(rows(&members)[0], ("pg-0", Role::Primary, true, true, None));
        assert!(!members["pg-1"].draining);
        assert_eq!(pending.as_deref(), Some("patroni leader pg-0 is stopping"));
    }

    #[test]
    fn a_scheduled_switchover_drains_the_leader_only_when_it_is_near() {
        let now = parse_timestamp("2026-11-26T15:00:00+00:00").unwrap();
        let at = |at: &str| {
            doc(json!({
                "members": [member("pg-0", "leader", "running", 5432),
                            member("pg-1", "replica", "streaming", 5433)],
                "scheduled_switchover": {"at": at, "from": "pg-0", "to": "pg-1"},
            }))
        };
        let (members, pending) = fold_cluster(&at("2026-11-26T16:00:00+01:00"), now);
        assert_eq!(
            pending.as_deref(),
            Some("patroni switchover scheduled at 2026-11-26T16:00:00+01:00 from pg-0 to pg-1")
        );
        assert!(members["pg-0"].draining, "16:00+01:00 is now");
        let (members, pending) = fold_cluster(&at("2026-11-26T15:05:00+00:00"), now);
        assert!(pending.is_some());
        assert!(!members["pg-0"].draining, "five minutes ahead");
        let (members, _) = fold_cluster(&at("2026-11-26T15:00:09.5+00:00"), now);
        assert!(members["pg-0"].draining, "within ten seconds");
        assert!(!members["pg-1"].draining);
    }

    #[test]
    fn timestamps_parse_as_python_writes_them() {
        let t = |s: &str| {
            parse_timestamp(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64())
        };
        assert_eq!(t("1970-01-01T00:00:00+00:00"), Some(0.0));
        assert_eq!(t("2000-03-01T00:00:00Z"), Some(951_868_800.0));
        assert_eq!(
            t("2026-11-26T15:00:00.250000+01:30"),
            Some(1_795_699_800.25)
        );
        assert_eq!(t("2026-11-26 15:00:00-02:00"), Some(1_795_712_400.0));
        assert_eq!(t("2026-11-26T15:00:00"), Some(1_795_705_200.0));
        for bad in [
            "",
            "2026-11-26",
            "2026-13-01T00:00:00Z",
            "2026-11-26T15:00:00+1",
            "x",
        ] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_writable_member_patroni_calls_a_replica_is_fenced_as_a_zombie() {
        // The old leader's Patroni died; the leader key moved on, its member key not yet.
        let d = doc(json!({"members": [
            member("pg-0", "replica", "running", 5432),
            member("pg-1", "leader", "running", 5433),
        ]}));
        let (claimed, _) = fold_cluster(&d, SystemTime::now());
        let up = |in_recovery| Observation::Up {
            in_recovery,
            lsn: 7,
            replay_delay: None,
            round_trip: Duration::from_millis(1),
        };
        let observations = BTreeMap::from([
            ("pg-0".to_owned(), up(false)),
            ("pg-1".to_owned(), up(false)),
        ]);
        let verified = verify(&claimed, &observations, true);
        assert!(is_zombie(&verified["pg-0"]), "{:?}", verified["pg-0"]);
        let mut topology = Topology::default();
        topology.replace_members(verified);
        assert_eq!(topology.primary().map(|m| m.name.as_str()), Some("pg-1"));
        assert_eq!(topology.replicas().count(), 0);
    }
}
