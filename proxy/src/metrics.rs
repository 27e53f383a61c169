//! Prometheus metrics: one struct of families, registered once per proxy in
//! its own registry (two proxies can share a process), passed by `Arc`.
//!
//! Labels are stable member (pod) names and roles, never addresses or
//! clients. Sessions resolve their per-pod handles once ([`PodCounters`]),
//! so the relay's hot path only does atomic adds.

use pgsteer_discovery::{Role, Topology};
use prometheus::local::LocalHistogram;
use prometheus::{
    Counter, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets from 100 µs to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Values of the `reason` label of `pgsteer_client_connections_rejected_total`.
pub const REJECT_REASONS: &[&str] = &[
    "too_many_connections",
    "protocol_violation",
    "no_backend",
    "bad_startup",
    "unknown_member",
];

/// Values of the `result` label of `pgsteer_cancel_requests_total`.
pub const CANCEL_RESULTS: &[&str] = &[
    "forwarded",
    "unknown",
    "to_peer",
    "rate_limited",
    "peer_unreachable",
];

/// Values of the `result` label of `pgsteer_peer_requests_total`.
pub const PEER_RESULTS: &[&str] = &[
    "forwarded",
    "unknown",
    "not_ours",
    "bad_hmac",
    "stale",
    "replayed",
    "malformed",
    "tls_refused",
    "timeout",
];

/// Every metric family pgsteer exports.
pub struct Metrics {
    registry: Registry,
    /// Open client connections by listener.
    pub client_connections: IntGaugeVec,
    /// Accepted client connections by listener.
    pub client_accepted: IntCounterVec,
    /// Accepted client connections by event loop.
    pub loop_accepted: IntCounterVec,
    /// Sessions relayed, by where: the epoll engine (busy plaintext sessions, passthrough and
    /// pooled) or their task.
    pub relayed: IntCounterVec,
    /// Refused client connections by listener and reason.
    pub client_rejected: IntCounterVec,
    /// Sessions routed, by listener, route and pod.
    pub sessions_routed: IntCounterVec,
    /// Backend sessions now, by pod and role.
    pub backend_sessions: IntGaugeVec,
    /// Backend TCP connect latency by pod.
    pub backend_connect_seconds: HistogramVec,
    /// Backend connect failures by pod.
    pub backend_connect_failures: IntCounterVec,
    /// Transactions (ReadyForQuery idle) by pod.
    pub transactions: IntCounterVec,
    /// Statements (CommandComplete) by pod.
    pub queries: IntCounterVec,
    /// Bytes from clients to the pod.
    pub bytes_to_backend: IntCounterVec,
    /// Bytes from the pod to clients.
    pub bytes_from_backend: IntCounterVec,
    /// Query duration (Query/Sync to ReadyForQuery) by pod.
    pub query_seconds: HistogramVec,
    /// Transaction duration (first request to idle ReadyForQuery) by pod.
    pub transaction_seconds: HistogramVec,
    /// 1 for the role each pod has now.
    pub member_role: IntGaugeVec,
    /// Topology generation.
    pub topology_generation: IntGauge,
    /// Role changes seen.
    pub role_changes: IntCounter,
    /// Discovery source errors.
    pub discovery_errors: IntCounter,
    /// Seconds since the source last confirmed the topology.
    pub discovery_staleness: Gauge,
    /// Replication lag in bytes by pod.
    pub lag_bytes: IntGaugeVec,
    /// Replay delay in seconds by pod.
    pub lag_seconds: GaugeVec,
    /// Round-trip time of the last discovery probe query by pod.
    pub probe_seconds: GaugeVec,
    /// Discovery change to first session routed on it.
    pub reroute_seconds: Histogram,
    /// Sessions drained by outcome (idle, after_transaction, terminated).
    pub sessions_drained: IntCounterVec,
    /// Connections held now (no backend yet, or paused).
    pub held_connections: IntGauge,
    /// How long held connections waited.
    pub held_seconds: Histogram,
    /// Held connections refused at hold_timeout.
    pub refused_after_hold: IntCounter,
    /// Cancel requests by result (forwarded, unknown, to_peer, rate_limited, peer_unreachable).
    pub cancel_requests: IntCounterVec,
    /// Requests received on the peer port by result.
    pub peer_requests: IntCounterVec,
    /// Pooled clients waiting for a server connection now, by pod.
    pub pool_waiting: IntGaugeVec,
    /// How long pooled clients waited for a server connection.
    pub pool_wait_seconds: Histogram,
    /// Waits that ran out (`checkout_timeout`).
    pub pool_checkout_timeouts: IntCounter,
    /// Pooled server connections by pod and state (idle, active, pinned), set at scrape.
    pub pool_server_connections: IntGaugeVec,
    /// Clients pinned to their server connection, by reason.
    pub pool_pins: IntCounterVec,
    /// Prepared statements prepared again on a connection that lacked them.
    pub pool_reprepares: IntCounter,
    /// `auto` transactions by route decision.
    pub auto_decisions: IntCounterVec,
    /// Its series, resolved once in [`AUTO_DECISIONS`] order: counted per transaction without
    /// a label lookup (a lock and a hash).
    pub auto_decided: [IntCounter; AUTO_DECISIONS.len()],
    /// Time spent classifying `auto` transactions.
    pub classify_seconds: Counter,
    /// Replicas kept from new reads by the lag bound.
    pub replicas_lagging: IntGauge,
    /// Pooled transactions whose server connection was lost while they ran, by what the
    /// client was told (`rolled_back`, `unknown`); the clients stayed.
    pub transactions_lost: IntCounterVec,
    /// `BEGIN`s pgsteer answered itself (sent on with the first statement, or never).
    pub deferred_begins: IntCounter,
    /// Pooled transactions held now by a switchover.
    pub transactions_held: IntGauge,
    /// The phase of the switchover pgsteer leads (1 for the current one).
    pub switchover_phase: IntGaugeVec,
    /// Switchovers led by pgsteer, by result.
    pub switchovers: IntCounterVec,
    /// Transactions of switchovers led by pgsteer, by what happened to them (held,
    /// released, ended).
    pub switchover_transactions: IntCounterVec,
}

/// The phases of a switchover led by pgsteer (`pgsteer_switchover_phase`).
pub const SWITCHOVER_PHASES: [&str; 5] = ["idle", "holding", "draining", "switching", "confirming"];

/// The route decisions of `auto` transactions (`pgsteer_auto_transactions_total`).
pub const AUTO_DECISIONS: [&str; 5] = [
    "replica",
    "primary_classifier",
    "primary_freshness",
    "primary_no_replica",
    "safety_net",
];

/// Name, help text and labels of one metric family.
struct Family {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

const LISTENER: &[&str] = &["listener"];
const POD: &[&str] = &["pod"];
const POD_ROLE: &[&str] = &["pod", "role"];

macro_rules! families {
    ($($id:ident = $name:literal, $help:literal, $labels:expr;)*) => {
        $(const $id: Family = Family { name: $name, help: $help, labels: $labels };)*
    };
}

families! {
    POOL_WAITING = "pgsteer_pool_waiting_clients",
        "Pooled clients waiting for a server connection",
        POD;
    POOL_WAIT_SECONDS = "pgsteer_pool_checkout_wait_seconds",
        "How long pooled clients waited for a server connection",
        &[];
    POOL_CHECKOUT_TIMEOUTS = "pgsteer_pool_checkout_timeouts_total",
        "Pooled clients whose wait for a server connection ran out",
        &[];
    POOL_SERVER_CONNECTIONS = "pgsteer_pool_server_connections",
        "Pooled server connections by state (idle, active, pinned)",
        &["pod", "state"];
    POOL_PINS = "pgsteer_pool_pins_total",
        "Pooled clients pinned to their server connection, by reason",
        &["reason"];
    POOL_REPREPARES = "pgsteer_pool_reprepares_total",
        "Prepared statements prepared again on a server connection that lacked them",
        &[];
    AUTO_DECISIONS_TOTAL = "pgsteer_auto_transactions_total",
        "Transactions of route auto by decision (replica, primary by classifier, by freshness, for want of a replica, after a replica refused it)",
        &["decision"];
    CLASSIFY_SECONDS = "pgsteer_classify_seconds_total",
        "Time spent classifying the first messages of route auto transactions",
        &[];
    REPLICAS_LAGGING = "pgsteer_replicas_lagging",
        "Replicas over the lag bound, taking no new reads",
        &[];
    TRANSACTIONS_LOST = "pgsteer_pool_transactions_lost_total",
        "Pooled transactions whose server connection was lost while they ran (the client stays), by what the client was told",
        &["outcome"];
    DEFERRED_BEGINS = "pgsteer_pool_deferred_begins_total",
        "BEGINs answered by pgsteer and sent on with the transaction's first statement",
        &[];
    TRANSACTIONS_HELD = "pgsteer_transactions_held",
        "Pooled transactions held now by a switchover",
        &[];
    SWITCHOVER_PHASE = "pgsteer_switchover_phase",
        "Phase of the switchover pgsteer leads (1 for the current phase)",
        &["phase"];
    SWITCHOVERS = "pgsteer_switchovers_total",
        "Switchovers led by pgsteer, by result",
        &["result"];
    SWITCHOVER_TRANSACTIONS = "pgsteer_switchover_transactions_total",
        "Transactions of switchovers led by pgsteer: held, released on the new primary, ended",
        &["outcome"];
    CLIENT_CONNECTIONS = "pgsteer_client_connections",
        "Open client connections",
        LISTENER;
    CLIENT_ACCEPTED = "pgsteer_client_connections_accepted_total",
        "Client connections accepted",
        LISTENER;
    LOOP_ACCEPTED = "pgsteer_loop_connections_accepted_total",
        "Client connections accepted by each event loop ([runtime] threads), on every listener",
        &["loop"];
    RELAYED = "pgsteer_relay_sessions_total",
        "Client sessions relayed, by where their relay ended: the loop's epoll engine (plaintext passthrough and pooled sessions that became busy), or their own task (short sessions, TLS, or relay_engine = \"tokio\")",
        &["engine"];
    CLIENT_REJECTED = "pgsteer_client_connections_rejected_total",
        "Client connections refused, by reason",
        &["listener", "reason"];
    SESSIONS_ROUTED = "pgsteer_sessions_routed_total",
        "Sessions routed to a backend",
        &["listener", "route", "pod"];
    BACKEND_SESSIONS = "pgsteer_backend_sessions",
        "Backend sessions open now",
        POD_ROLE;
    BACKEND_CONNECT_SECONDS = "pgsteer_backend_connect_seconds",
        "Backend TCP connect latency",
        POD;
    BACKEND_CONNECT_FAILURES = "pgsteer_backend_connect_failures_total",
        "Backend connects that failed",
        POD;
    TRANSACTIONS = "pgsteer_transactions_total",
        "Transactions completed (idle ReadyForQuery)",
        POD;
    QUERIES = "pgsteer_queries_total",
        "Statements completed (CommandComplete)",
        POD;
    BYTES_TO_BACKEND = "pgsteer_backend_sent_bytes_total",
        "Bytes relayed from clients to the backend",
        POD;
    BYTES_FROM_BACKEND = "pgsteer_backend_received_bytes_total",
        "Bytes relayed from the backend to clients",
        POD;
    QUERY_SECONDS = "pgsteer_query_duration_seconds",
        "Query/Sync to ReadyForQuery",
        POD;
    TRANSACTION_SECONDS = "pgsteer_transaction_duration_seconds",
        "First request to idle ReadyForQuery",
        POD;
    MEMBER_ROLE = "pgsteer_member_role",
        "1 for the role each member has now",
        POD_ROLE;
    TOPOLOGY_GENERATION = "pgsteer_topology_generation",
        "Topology generation",
        &[];
    ROLE_CHANGES = "pgsteer_role_changes_total",
        "Member role changes seen",
        &[];
    DISCOVERY_ERRORS = "pgsteer_discovery_errors_total",
        "Discovery source errors",
        &[];
    DISCOVERY_STALENESS = "pgsteer_discovery_staleness_seconds",
        "Seconds since the source last confirmed the topology",
        &[];
    LAG_BYTES = "pgsteer_replication_lag_bytes",
        "Replication lag behind the primary",
        POD;
    LAG_SECONDS = "pgsteer_replication_lag_seconds",
        "Replay delay",
        POD;
    PROBE_SECONDS = "pgsteer_probe_duration_seconds",
        "Round-trip time of the last discovery probe query",
        POD;
    REROUTE_SECONDS = "pgsteer_reroute_seconds",
        "Topology change to the first session routed on it",
        &[];
    SESSIONS_DRAINED = "pgsteer_sessions_drained_total",
        "Sessions closed by a drain, by outcome",
        &["outcome"];
    HELD_CONNECTIONS = "pgsteer_held_connections",
        "Connections held waiting for a backend or a resume",
        &[];
    HELD_SECONDS = "pgsteer_held_seconds",
        "How long held connections waited",
        &[];
    REFUSED_AFTER_HOLD = "pgsteer_refused_after_hold_total",
        "Held connections refused at hold_timeout",
        &[];
    CANCEL_REQUESTS = "pgsteer_cancel_requests_total",
        "Cancel requests by result",
        &["result"];
    PEER_REQUESTS = "pgsteer_peer_requests_total",
        "Cancel requests received from peers, by result",
        &["result"];
}

/// Registers families in one registry.
struct Reg(Registry);

impl Reg {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> prometheus::Result<C> {
        self.0.register(Box::new(c.clone()))?;
        Ok(c)
    }

    fn opts(f: &Family) -> Opts {
        Opts::new(f.name, f.help)
    }

    fn hopts(f: &Family) -> HistogramOpts {
        HistogramOpts::new(f.name, f.help).buckets(LATENCY_BUCKETS.to_vec())
    }

    fn counters(&self, f: &Family) -> prometheus::Result<IntCounterVec> {
        self.add(IntCounterVec::new(Reg::opts(f), f.labels)?)
    }

    fn gauges(&self, f: &Family) -> prometheus::Result<IntGaugeVec> {
        self.add(IntGaugeVec::new(Reg::opts(f), f.labels)?)
    }

    fn float_gauges(&self, f: &Family) -> prometheus::Result<GaugeVec> {
        self.add(GaugeVec::new(Reg::opts(f), f.labels)?)
    }

    fn histograms(&self, f: &Family) -> prometheus::Result<HistogramVec> {
        self.add(HistogramVec::new(Reg::hopts(f), f.labels)?)
    }

    fn float_counter(&self, f: &Family) -> prometheus::Result<Counter> {
        self.add(Counter::with_opts(Reg::opts(f))?)
    }

    fn int_counter(&self, f: &Family) -> prometheus::Result<IntCounter> {
        self.add(IntCounter::with_opts(Reg::opts(f))?)
    }

    fn int_gauge(&self, f: &Family) -> prometheus::Result<IntGauge> {
        self.add(IntGauge::with_opts(Reg::opts(f))?)
    }

    fn float_gauge(&self, f: &Family) -> prometheus::Result<Gauge> {
        self.add(Gauge::with_opts(Reg::opts(f))?)
    }

    fn one_histogram(&self, f: &Family) -> prometheus::Result<Histogram> {
        self.add(Histogram::with_opts(Reg::hopts(f))?)
    }

    /// `pgsteer_build_info` and the process collector.
    fn standard(&self) -> prometheus::Result<()> {
        let info = self.add(IntGaugeVec::new(
            Opts::new("pgsteer_build_info", "pgsteer build; always 1"),
            &["version"],
        )?)?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        self.0.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(())
    }
}

impl Metrics {
    /// Creates and registers every family in a fresh registry.
    pub fn new() -> prometheus::Result<Metrics> {
        let r = Reg(Registry::new());
        r.standard()?;
        let auto_decisions = r.counters(&AUTO_DECISIONS_TOTAL)?;
        let auto_decided = AUTO_DECISIONS.map(|d| auto_decisions.with_label_values(&[d]));
        let m = Metrics {
            client_connections: r.gauges(&CLIENT_CONNECTIONS)?,
            client_accepted: r.counters(&CLIENT_ACCEPTED)?,
            loop_accepted: r.counters(&LOOP_ACCEPTED)?,
            relayed: r.counters(&RELAYED)?,
            client_rejected: r.counters(&CLIENT_REJECTED)?,
            sessions_routed: r.counters(&SESSIONS_ROUTED)?,
            backend_sessions: r.gauges(&BACKEND_SESSIONS)?,
            backend_connect_seconds: r.histograms(&BACKEND_CONNECT_SECONDS)?,
            backend_connect_failures: r.counters(&BACKEND_CONNECT_FAILURES)?,
            transactions: r.counters(&TRANSACTIONS)?,
            queries: r.counters(&QUERIES)?,
            bytes_to_backend: r.counters(&BYTES_TO_BACKEND)?,
            bytes_from_backend: r.counters(&BYTES_FROM_BACKEND)?,
            query_seconds: r.histograms(&QUERY_SECONDS)?,
            transaction_seconds: r.histograms(&TRANSACTION_SECONDS)?,
            member_role: r.gauges(&MEMBER_ROLE)?,
            topology_generation: r.int_gauge(&TOPOLOGY_GENERATION)?,
            role_changes: r.int_counter(&ROLE_CHANGES)?,
            discovery_errors: r.int_counter(&DISCOVERY_ERRORS)?,
            discovery_staleness: r.float_gauge(&DISCOVERY_STALENESS)?,
            lag_bytes: r.gauges(&LAG_BYTES)?,
            lag_seconds: r.float_gauges(&LAG_SECONDS)?,
            probe_seconds: r.float_gauges(&PROBE_SECONDS)?,
            reroute_seconds: r.one_histogram(&REROUTE_SECONDS)?,
            sessions_drained: r.counters(&SESSIONS_DRAINED)?,
            held_connections: r.int_gauge(&HELD_CONNECTIONS)?,
            held_seconds: r.one_histogram(&HELD_SECONDS)?,
            refused_after_hold: r.int_counter(&REFUSED_AFTER_HOLD)?,
            cancel_requests: r.counters(&CANCEL_REQUESTS)?,
            peer_requests: r.counters(&PEER_REQUESTS)?,
            pool_waiting: r.gauges(&POOL_WAITING)?,
            pool_wait_seconds: r.one_histogram(&POOL_WAIT_SECONDS)?,
            pool_checkout_timeouts: r.int_counter(&POOL_CHECKOUT_TIMEOUTS)?,
            pool_server_connections: r.gauges(&POOL_SERVER_CONNECTIONS)?,
            pool_pins: r.counters(&POOL_PINS)?,
            pool_reprepares: r.int_counter(&POOL_REPREPARES)?,
            auto_decisions,
            auto_decided,
            classify_seconds: r.float_counter(&CLASSIFY_SECONDS)?,
            replicas_lagging: r.int_gauge(&REPLICAS_LAGGING)?,
            transactions_lost: r.counters(&TRANSACTIONS_LOST)?,
            deferred_begins: r.int_counter(&DEFERRED_BEGINS)?,
            transactions_held: r.int_gauge(&TRANSACTIONS_HELD)?,
            switchover_phase: r.gauges(&SWITCHOVER_PHASE)?,
            switchovers: r.counters(&SWITCHOVERS)?,
            switchover_transactions: r.counters(&SWITCHOVER_TRANSACTIONS)?,
            registry: r.0,
        };
        m.start_at_zero();
        Ok(m)
    }

    /// Creates the known label values at 0, so that `rate()` and
    /// `increase()` see their first event.
    fn start_at_zero(&self) {
        for listener in ["rw", "ro"] {
            self.client_accepted.with_label_values(&[listener]);
            self.client_connections.with_label_values(&[listener]);
            for reason in REJECT_REASONS {
                self.client_rejected.with_label_values(&[listener, reason]);
            }
        }
        for outcome in ["idle", "after_transaction", "terminated"] {
            self.sessions_drained.with_label_values(&[outcome]);
        }
        for result in CANCEL_RESULTS {
            self.cancel_requests.with_label_values(&[result]);
        }
        for result in PEER_RESULTS {
            self.peer_requests.with_label_values(&[result]);
        }
        for reason in pgsteer_protocol::classify::Reason::ALL {
            self.pool_pins.with_label_values(&[reason.as_str()]);
        }
        for outcome in ["rolled_back", "unknown"] {
            self.transactions_lost.with_label_values(&[outcome]);
        }
        for (i, phase) in SWITCHOVER_PHASES.iter().enumerate() {
            self.switchover_phase
                .with_label_values(&[phase])
                .set(i64::from(i == 0));
        }
        for result in ["ok", "failed"] {
            self.switchovers.with_label_values(&[result]);
        }
        for outcome in ["held", "released", "ended"] {
            self.switchover_transactions.with_label_values(&[outcome]);
        }
    }

    /// The text exposition of every family; `staleness` is how long ago discovery last
    /// confirmed its view.
    pub fn render(&self, staleness: Option<std::time::Duration>) -> Vec<u8> {
        if let Some(age) = staleness {
            self.discovery_staleness.set(age.as_secs_f64());
        }
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Sets the topology gauges from a new topology value.
    pub fn observe_topology(&self, t: &Topology) {
        self.topology_generation.set(t.generation as i64);
        self.replicas_lagging
            .set(t.members.values().filter(|m| m.lagging).count() as i64);
        self.member_role.reset();
        self.lag_bytes.reset();
        self.lag_seconds.reset();
        self.probe_seconds.reset();
        for m in t.members.values() {
            for role in [
                Role::Primary,
                Role::Replica,
                Role::Unknown,
                Role::Unreachable,
            ] {
                let v = i64::from(m.role == role);
                self.member_role
                    .with_label_values(&[&m.name, role.as_str()])
                    .set(v);
            }
            if let Some(b) = m.lag_bytes {
                self.lag_bytes.with_label_values(&[&m.name]).set(b as i64);
            }
            if let Some(s) = m.lag_seconds {
                self.lag_seconds.with_label_values(&[&m.name]).set(s);
            }
            if let Some(s) = m.probe_seconds {
                self.probe_seconds.with_label_values(&[&m.name]).set(s);
            }
        }
    }

    /// Handles for one session's pod.
    pub fn pod(&self, pod: &str) -> PodCounters {
        PodCounters {
            transactions: self.transactions.with_label_values(&[pod]),
            queries: self.queries.with_label_values(&[pod]),
            bytes_to_backend: self.bytes_to_backend.with_label_values(&[pod]),
            bytes_from_backend: self.bytes_from_backend.with_label_values(&[pod]),
            query_seconds: self.query_seconds.with_label_values(&[pod]),
            transaction_seconds: self.transaction_seconds.with_label_values(&[pod]),
        }
    }
}

/// One session's metric handles, resolved once: updates are atomic adds.
#[derive(Clone)]
pub struct PodCounters {
    /// Transactions.
    pub transactions: IntCounter,
    /// Statements.
    pub queries: IntCounter,
    /// Client → backend bytes.
    pub bytes_to_backend: IntCounter,
    /// Backend → client bytes.
    pub bytes_from_backend: IntCounter,
    /// Query durations.
    pub query_seconds: Histogram,
    /// Transaction durations.
    pub transaction_seconds: Histogram,
}

/// One session's per-pod counts, kept in the session and added to the
/// shared families by [`PodTally::flush`]: the relay's hot path does plain
/// adds, no atomics. The relay flushes at most every [`FLUSH_INTERVAL`]
/// while traffic flows and when the session ends (and on drop).
pub struct PodTally {
    shared: PodCounters,
    /// Transactions.
    pub transactions: u64,
    /// Statements.
    pub queries: u64,
    /// Client → backend bytes.
    pub bytes_to_backend: u64,
    /// Backend → client bytes.
    pub bytes_from_backend: u64,
    /// Query durations.
    pub query_seconds: LocalHistogram,
    /// Transaction durations.
    pub transaction_seconds: LocalHistogram,
}

/// How long a session's counts may lag behind its traffic in `/metrics`.
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

impl PodTally {
    /// An empty tally for one session's pod.
    pub fn new(shared: PodCounters) -> PodTally {
        PodTally {
            query_seconds: shared.query_seconds.local(),
            transaction_seconds: shared.transaction_seconds.local(),
            shared,
            transactions: 0,
            queries: 0,
            bytes_to_backend: 0,
            bytes_from_backend: 0,
        }
    }

    /// Counts wait to be flushed. (Histogram observations are flushed by
    /// every [`PodTally::flush`], which costs nothing when there are none.)
    pub fn is_dirty(&self) -> bool {
        (self.bytes_to_backend | self.bytes_from_backend | self.queries | self.transactions) != 0
    }

    /// Adds the counts to the shared families and starts again from zero.
    pub fn flush(&mut self) {
        self.query_seconds.flush();
        self.transaction_seconds.flush();
        if !self.is_dirty() {
            return;
        }
        let s = &self.shared;
        s.transactions
            .inc_by(std::mem::take(&mut self.transactions));
        s.queries.inc_by(std::mem::take(&mut self.queries));
        s.bytes_to_backend
            .inc_by(std::mem::take(&mut self.bytes_to_backend));
        s.bytes_from_backend
            .inc_by(std::mem::take(&mut self.bytes_from_backend));
    }
}

impl Drop for PodTally {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_tally_reaches_the_shared_families_on_flush_and_on_drop() {
        let m = Metrics::new().unwrap();
        let mut tally = PodTally::new(m.pod("pg-0"));
        tally.transactions += 2;
        tally.queries += 3;
        tally.bytes_to_backend += 40;
        tally.bytes_from_backend += 50;
        tally.query_seconds.observe(0.001);
        assert!(tally.is_dirty());
        let shared = m.pod("pg-0");
        assert_eq!(
            shared.transactions.get(),
            0,
            "nothing shared before a flush"
        );
        tally.flush();
        assert!(!tally.is_dirty());
        assert_eq!(
            (
                shared.transactions.get(),
                shared.queries.get(),
                shared.bytes_to_backend.get(),
                shared.bytes_from_backend.get(),
                shared.query_seconds.get_sample_count(),
            ),
            (2, 3, 40, 50, 1)
        );
        tally.transactions += 1;
        tally.bytes_to_backend += 5;
        tally.transaction_seconds.observe(0.002);
        drop(tally);
        assert_eq!(shared.transactions.get(), 3, "the rest is flushed on drop");
        assert_eq!(shared.bytes_to_backend.get(), 45);
        assert_eq!(shared.transaction_seconds.get_sample_count(), 1);
    }

    #[test]
    fn families_render_in_the_text_format_with_base_units() {
        let m = Metrics::new().unwrap();
        m.pod("pg-0").transactions.inc_by(3);
        m.client_rejected
            .with_label_values(&["rw", "too_many_connections"])
            .inc();
        let text = String::from_utf8(m.render(None)).unwrap();
        assert!(
            text.contains("pgsteer_transactions_total{pod=\"pg-0\"} 3"),
            "{text}"
        );
        assert!(text.contains("pgsteer_build_info{version="));
        assert!(text.contains("reason=\"too_many_connections\""));
    }

    #[test]
    fn two_proxies_in_one_process_have_separate_registries() {
        let a = Metrics::new().unwrap();
        let b = Metrics::new().unwrap();
        a.role_changes.inc();
        assert_eq!(b.role_changes.get(), 0);
    }
}
