//! The SQL role probe: what one member says about itself (`pg_is_in_recovery()`, WAL position,
//! replay delay) and the pure fold of those observations into routing members.
//!
//! IO lives in `Prober`, which keeps one persistent connection per member; everything that
//! decides a role is in [`fold`], which is table-tested.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, Statement};
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use crate::probe_tls::ProbeTls;
use crate::topology::{Fence, Member, Role};

/// The one query a probe runs. Its columns: in recovery, WAL position (replay LSN on a replica,
/// current LSN on a primary) as text, replay delay in seconds (NULL if nothing was replayed).
pub const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
     (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text, \
     EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8";

/// `application_name` of probe connections, so operators can tell them apart in
/// `pg_stat_activity`.
pub const PROBE_APPLICATION_NAME: &str = "pgsteer-probe";

/// Note of members that are up and not in recovery while another one is too.
pub const TWO_PRIMARIES_NOTE: &str = "two members claim to be primary: no primary until resolved";

/// Note of members that have not been probed yet.
pub const NOT_PROBED_NOTE: &str = "not probed yet";

/// How the probe connects and how often it asks.
#[derive(Clone)]
pub struct ProbeConfig {
    /// Role the probe logs in as (needs no privileges beyond `CONNECT`).
    pub user: String,
    /// Password, if the server asks for one.
    pub password: Option<String>,
    /// Database to connect to.
    pub dbname: String,
    /// Time between two probes of one member.
    pub interval: Duration,
    /// Bound on one probe: connect + authenticate + query.
    pub timeout: Duration,
    /// TLS towards the servers (the proxy's `[tls] server_mode`); plaintext by default.
    pub tls: ProbeTls,
}

impl Default for ProbeConfig {
    /// User and database `postgres`, no password, every 500 ms, 2 s timeout.
    fn default() -> Self {
        ProbeConfig {
            user: "postgres".to_owned(),
            password: None,
            dbname: "postgres".to_owned(),
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(2),
            tls: ProbeTls::default(),
        }
    }
}

impl fmt::Debug for ProbeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeConfig")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

/// One configured member of the static source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticMember {
    /// Stable name: the member's identity in the topology (must be unique).
    pub name: String,
    /// `host:port` to connect to (`[v6]:port` for IPv6 literals).
    pub address: String,
}

impl StaticMember {
    /// A member named `name` at `address` (`host:port`).
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> StaticMember {
        StaticMember {
            name: name.into(),
            address: address.into(),
        }
    }
}

/// One probe result of one member.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// The member answered the probe query.
    Up {
        /// `pg_is_in_recovery()`: a replica (or a primary not yet promoted).
        in_recovery: bool,
        /// Replay LSN in recovery, current WAL LSN otherwise.
        lsn: u64,
        /// Seconds since the last replayed transaction's commit, if any was replayed.
        replay_delay: Option<f64>,
        /// Round-trip time of the probe query alone (not connecting or authenticating).
        round_trip: Duration,
    },
    /// The member could not be reached or did not answer in time.
    Down {
        /// What went wrong, for operators.
        error: String,
    },
}

impl Observation {
    /// Round-trip time of the probe query in seconds; `None` if the probe failed.
    pub fn round_trip_seconds(&self) -> Option<f64> {
        match self {
            Observation::Up { round_trip, .. } => Some(round_trip.as_secs_f64()),
            Observation::Down { .. } => None,
        }
    }

    /// The current WAL position if the member answered and is writable
    /// (not in recovery): what makes it a primary.
    pub fn writable_lsn(&self) -> Option<u64> {
        match self {
            Observation::Up {
                in_recovery: false,
                lsn,
                ..
            } => Some(*lsn),
            _ => None,
        }
    }
}

/// Parses a textual LSN (`"16/B374D848"`) into its 64-bit position.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hex = |p: &str| {
        let valid = !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| u32::from_str_radix(p, 16).ok()).flatten()
    };
    Some((u64::from(hex(hi)?) << 32) | u64::from(hex(lo)?))
}

/// Pure fold: configured members + latest observations → members map for
/// [`Topology::replace_members`](crate::Topology::replace_members).
///
/// Down members are unreachable, members never observed are unknown; both are not routable.
/// Members that answered carry the probe query's round-trip time.
/// Replica lag in bytes is measured against the primary only when exactly one member is a
/// primary; when two claim the role both stay primaries (so
/// [`Topology::primary`](crate::Topology::primary) fails closed) with [`TWO_PRIMARIES_NOTE`].
/// Observations of names not configured are ignored.
pub fn fold(
    members: &[StaticMember],
    observations: &BTreeMap<String, Observation>,
) -> BTreeMap<String, Member> {
    let primary_lsns: Vec<u64> = members
        .iter()
        .filter_map(|m| observations.get(&m.name)?.writable_lsn())
        .collect();
    let primary_lsn = match primary_lsns.as_slice() {
        [lsn] => Some(*lsn),
        _ => None,
    };
    let contested = primary_lsns.len() > 1;
    members
        .iter()
        .map(|m| {
            let member = fold_member(m, observations.get(&m.name), primary_lsn, contested);
            (m.name.clone(), member)
        })
        .collect()
}

fn fold_member(
    configured: &StaticMember,
    observation: Option<&Observation>,
    primary_lsn: Option<u64>,
    contested: bool,
) -> Member {
    let mut member = Member::new(&configured.name, &configured.address);
    member.probe_seconds = observation.and_then(Observation::round_trip_seconds);
    member.probed = observation.is_some();
    match observation {
        None => member.fence(Fence::NotProbed, Role::Unknown, NOT_PROBED_NOTE),
        Some(Observation::Down { error }) => {
            member.fence(Fence::Unreachable, Role::Unreachable, error)
        }
        Some(Observation::Up {
            in_recovery: false,
            lsn,
            ..
        }) => {
            member.role = Role::Primary;
            member.routable = true;
            member.lsn = Some(*lsn);
            member.note = contested.then(|| TWO_PRIMARIES_NOTE.to_owned());
        }
        Some(Observation::Up {
            in_recovery: true,
            lsn,
            replay_delay,
            ..
        }) => {
            member.role = Role::Replica;
            member.routable = true;
            member.lsn = Some(*lsn);
            member.lag_bytes = primary_lsn.map(|p| p.saturating_sub(*lsn));
            member.lag_seconds = replay_delay.map(|d| d.max(0.0));
        }
    }
    member
}

/// Why one probe of one member gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The member's address is not `host:port` (configuration; every probe fails the same way).
    #[error("invalid member address {0:?}: expected host:port")]
    Address(String),
    /// Connecting, authenticating, preparing or running the probe query failed, or the answer
    /// had columns of unexpected types.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// Connect and query together took longer than the probe timeout.
    #[error("probe timed out after {0:?}")]
    Timeout(Duration),
}

/// Probes one member, keeping one connection open between probes.
pub(crate) struct Prober {
    member: StaticMember,
    config: Result<tokio_postgres::Config, ProbeError>,
    timeout: Duration,
    tls: ProbeTls,
    conn: Option<Conn>,
}

impl Prober {
    /// A prober of `member`; no connection is opened until the first [`Prober::observe`].
    pub(crate) fn new(member: StaticMember, probe: &ProbeConfig) -> Prober {
        let config = connect_config(&member.address, probe);
        Prober {
            member,
            config,
            timeout: probe.timeout,
            tls: probe.tls.clone(),
            conn: None,
        }
    }

    /// The member's stable name.
    pub(crate) fn name(&self) -> &str {
        &self.member.name
    }

    /// Runs the probe query once, (re)connecting if needed, bounded by the timeout.
    pub(crate) async fn observe(&mut self) -> Observation {
        let config = match &self.config {
            Ok(config) => config,
            Err(error) => {
                return Observation::Down {
                    error: with_causes(error),
                };
            }
        };
        let name = self.member.name.as_str();
        let attempt = attempt((config, &self.tls), name, &mut self.conn);
        let error = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(observation)) => return observation,
            Ok(Err(error)) => error,
            Err(_) => ProbeError::Timeout(self.timeout),
        };
        let error = with_causes(&error);
        debug!(member = %name, error = %error, "probe failed");
        self.conn = None;
        Observation::Down { error }
    }
}

/// One probe: on the open connection if there is one, else (or if that fails) on a new one.
async fn attempt(
    (config, tls): (&tokio_postgres::Config, &ProbeTls),
    name: &str,
    conn: &mut Option<Conn>,
) -> Result<Observation, ProbeError> {
    if let Some(open) = conn.as_ref() {
        match open.query().await {
            Ok(observation) => return Ok(observation),
            Err(error) => {
                debug!(member = %name, error = %with_causes(&error), "probe on open connection failed, reconnecting");
                *conn = None;
            }
        }
    }
    let fresh = Conn::open(config, tls, name).await?;
    let observation = fresh.query().await?;
    *conn = Some(fresh);
    Ok(observation)
}

/// An open probe connection with the prepared probe statement. Dropping it closes the socket.
struct Conn {
    client: Client,
    statement: Statement,
    _driver: AbortOnDropHandle<()>,
}

impl Conn {
    async fn open(
        config: &tokio_postgres::Config,
        tls: &ProbeTls,
        name: &str,
    ) -> Result<Conn, ProbeError> {
        let (client, connection) = config.connect(tls.clone()).await?;
        let member = name.to_owned();
        let driver = AbortOnDropHandle::new(tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(member = %member, error = %with_causes(&e), "probe connection ended");
            }
        }));
        let statement = client.prepare(PROBE_SQL).await?;
        Ok(Conn {
            client,
            statement,
            _driver: driver,
        })
    }

    /// Runs the probe and times its round trip. `Err` means the connection is unusable; an
    /// answer that makes no sense is a [`Observation::Down`] on a healthy connection (fail
    /// closed, keep the connection).
    async fn query(&self) -> Result<Observation, ProbeError> {
        let started = Instant::now();
        let row = self.client.query_one(&self.statement, &[]).await?;
        let round_trip = started.elapsed();
        let columns = (
            row.try_get::<_, bool>(0),
            row.try_get::<_, Option<String>>(1),
            row.try_get::<_, Option<f64>>(2),
        );
        let (in_recovery, lsn, replay_delay) = match columns {
            (Ok(r), Ok(l), Ok(d)) => (r, l, d),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Err(e.into()),
        };
        let Some(lsn) = lsn.as_deref().and_then(parse_lsn) else {
            let shown = lsn.as_deref().unwrap_or("null");
            let error = format!("server reported no usable wal position: {shown}");
            return Ok(Observation::Down { error });
        };
        Ok(Observation::Up {
            in_recovery,
            lsn,
            replay_delay,
            round_trip,
        })
    }
}

/// Connection settings for `address` (`host:port`), or why it is not a valid address.
fn connect_config(
    address: &str,
    probe: &ProbeConfig,
) -> Result<tokio_postgres::Config, ProbeError> {
    let invalid = || ProbeError::Address(address.to_owned());
    let (host, port) = address.rsplit_once(':').ok_or_else(invalid)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| invalid())?;
    if host.is_empty() {
        return Err(invalid());
    }
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(&probe.user)
        .dbname(&probe.dbname)
        .application_name(PROBE_APPLICATION_NAME)
        .ssl_mode(probe.tls.ssl_mode())
        .channel_binding(tokio_postgres::config::ChannelBinding::Disable)
        .connect_timeout(probe.timeout);
    if let Some(password) = &probe.password {
        config.password(password);
    }
    Ok(config)
}

/// An error with its causes on one line (`tokio_postgres::Error`'s own text omits them): what
/// operators see as the member's note.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{ROUND_TRIP, Row, down, observed, row, up};

    fn members(names: &[&str]) -> Vec<StaticMember> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| StaticMember::new(*n, format!("127.0.0.1:{}", 5432 + i)))
            .collect()
    }

    #[test]
    fn one_primary_and_replicas_get_roles_and_lag_behind_the_primary() {
        let cfg = members(&["pg-0", "pg-1", "pg-2"]);
        let obs = observed(&[
            ("pg-0", up(false, 1_000, Some(3.0))),
            ("pg-1", up(true, 900, Some(0.25))),
            ("pg-2", up(true, 1_100, Some(-0.5))),
        ]);
        let folded = fold(&cfg, &obs);
        let rows: Vec<Row> = folded.values().map(row).collect();
        assert_eq!(
            rows,
            vec![
                (Role::Primary, true, Some(1_000), None, None, None),
                (Role::Replica, true, Some(900), Some(100), Some(0.25), None),
                // Sampled after the primary: ahead, so no lag; negative clock skew clamps to 0.
                (Role::Replica, true, Some(1_100), Some(0), Some(0.0), None),
            ]
        );
        assert_eq!(folded["pg-1"].address, "127.0.0.1:5433");
        assert_eq!(folded["pg-1"].name, "pg-1");
        assert!(!folded.values().any(|m| m.draining));
    }

    #[test]
    fn two_primaries_both_stay_primary_with_a_note_and_replicas_have_no_byte_lag() {
        let cfg = members(&["pg-0", "pg-1", "pg-2"]);
        let obs = observed(&[
            ("pg-0", up(false, 1_000, None)),
            ("pg-1", up(false, 2_000, Some(1.0))),
            ("pg-2", up(true, 900, Some(2.0))),
        ]);
        let folded = fold(&cfg, &obs);
        let note = Some(TWO_PRIMARIES_NOTE.to_owned());
        assert_eq!(
            row(&folded["pg-0"]),
            (Role::Primary, true, Some(1_000), None, None, note.clone())
        );
        assert_eq!(
            row(&folded["pg-1"]),
            (Role::Primary, true, Some(2_000), None, None, note)
        );
        assert_eq!(
            row(&folded["pg-2"]),
            (Role::Replica, true, Some(900), None, Some(2.0), None)
        );
        let mut topology = crate::Topology::default();
        topology.replace_members(folded);
        assert!(topology.primary().is_none());
    }

    #[test]
    fn a_down_member_is_unreachable_with_its_error_as_note() {
        let cfg = members(&["pg-0", "pg-1"]);
        let obs = observed(&[
            (
                "pg-0",
                down("error connecting to server: connection refused"),
            ),
            ("pg-1", up(true, 900, None)),
        ]);
        let folded = fold(&cfg, &obs);
        assert_eq!(
            row(&folded["pg-0"]),
            (
                Role::Unreachable,
                false,
                None,
                None,
                None,
                Some("error connecting to server: connection refused".to_owned())
            )
        );
        // No primary up: the replica's byte lag is unknown.
        assert_eq!(
            row(&folded["pg-1"]),
            (Role::Replica, true, Some(900), None, None, None)
        );
    }

    #[test]
    fn members_never_observed_are_unknown_and_not_routable() {
        let cfg = members(&["pg-0", "pg-1"]);
        let obs = observed(&[("pg-0", up(false, 5, None)), ("pg-9", up(false, 7, None))]);
        let folded = fold(&cfg, &obs);
        assert_eq!(folded.len(), 2, "unconfigured names are ignored");
        assert_eq!(
            row(&folded["pg-1"]),
            (
                Role::Unknown,
                false,
                None,
                None,
                None,
                Some(NOT_PROBED_NOTE.to_owned())
            )
        );
        assert_eq!(folded["pg-1"].fence, Some(Fence::NotProbed));
        assert!(!folded["pg-1"].probed);
        assert!(folded["pg-0"].probed);
        assert_eq!(folded["pg-0"].fence, None);
        assert_eq!(folded["pg-0"].role, Role::Primary);
        assert_eq!(
            folded["pg-0"].note, None,
            "an unconfigured primary does not contest"
        );
    }

    #[test]
    fn replica_byte_lag_is_none_without_a_unique_primary() {
        let cfg = members(&["pg-0", "pg-1"]);
        for obs in [
            observed(&[("pg-1", up(true, 10, Some(1.0)))]),
            observed(&[("pg-0", down("gone")), ("pg-1", up(true, 10, Some(1.0)))]),
        ] {
            let folded = fold(&cfg, &obs);
            assert_eq!(folded["pg-1"].lag_bytes, None);
            assert_eq!(folded["pg-1"].lag_seconds, Some(1.0));
        }
    }

    #[test]
    fn members_that_answered_carry_the_probe_round_trip_and_the_others_none() {
        let cfg = members(&["pg-0", "pg-1", "pg-2", "pg-3"]);
        let obs = observed(&[
            ("pg-0", up(false, 1_000, None)),
            ("pg-1", up(true, 900, Some(0.5))),
            ("pg-2", down("connection refused")),
        ]);
        let folded = fold(&cfg, &obs);
        let probe_seconds: Vec<Option<f64>> = folded.values().map(|m| m.probe_seconds).collect();
        let answered = Some(ROUND_TRIP.as_secs_f64());
        assert_eq!(probe_seconds, vec![answered, answered, None, None]);
    }

    #[test]
    fn an_empty_configuration_folds_to_no_members() {
        assert!(fold(&[], &BTreeMap::new()).is_empty());
    }

    #[test]
    fn parse_lsn_reads_both_halves_as_hex() {
        let table: &[(&str, Option<u64>)] = &[
            ("16/B374D848", Some(0x16_B374_D848)),
            ("0/0", Some(0)),
            ("0/3000060", Some(0x300_0060)),
            ("FFFFFFFF/FFFFFFFF", Some(u64::MAX)),
            ("ffffffff/0", Some(0xFFFF_FFFF_0000_0000)),
            (" 1/2\n", Some(0x1_0000_0002)),
            ("", None),
            ("16", None),
            ("/1", None),
            ("1/", None),
            ("1/2/3", None),
            ("G/0", None),
            ("+1/0", None),
            ("100000000/0", None),
            ("0/100000000", None),
        ];
        for (text, want) in table {
            assert_eq!(parse_lsn(text), *want, "parse_lsn({text:?})");
        }
    }

    #[test]
    fn member_addresses_become_connection_settings() {
        let probe = ProbeConfig::default();
        for ok in ["127.0.0.1:5432", "db-0.db.svc:6000", "[::1]:5432"] {
            assert!(connect_config(ok, &probe).is_ok(), "{ok}");
        }
        for bad in ["127.0.0.1", ":5432", "host:", "host:99999", "host:port"] {
            let error = connect_config(bad, &probe).err();
            assert!(
                matches!(&error, Some(e @ ProbeError::Address(_))
                    if e.to_string().contains("invalid member address")),
                "{bad}"
            );
        }
    }

    #[test]
    fn probe_config_debug_hides_the_password() {
        let probe = ProbeConfig {
            password: Some("hunter2".to_owned()),
            ..ProbeConfig::default()
        };
        assert!(!format!("{probe:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn an_address_nobody_listens_on_is_observed_down_without_panicking() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let probe = ProbeConfig {
            timeout: Duration::from_secs(5),
            ..ProbeConfig::default()
        };
        let mut prober = Prober::new(StaticMember::new("pg-0", address), &probe);
        match prober.observe().await {
            Observation::Down { error } => assert!(error.contains("connect"), "{error}"),
            up => panic!("expected down, got {up:?}"),
        }
        assert_eq!(prober.name(), "pg-0");
    }
}
