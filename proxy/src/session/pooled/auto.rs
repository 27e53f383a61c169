//! Route `auto`: each transaction of a pooled client goes to a replica when it only reads and
//! a replica has replayed the client's last write, else to the primary.
//!
//! The decision is made when the transaction's first message arrives and no server
//! connection is lent, from every complete message waiting then: Query strings and Parse'd
//! text through [`read_verdict`], a Bind of a named statement through the statement's cached
//! verdict. Anything else, an incomplete message or a Bind of an unknown statement, is the
//! primary's.
//!
//! Read-your-writes: after a transaction the classifier sent to the primary, pgsteer reads the
//! primary's WAL insert position on the same connection (`pg_current_wal_insert_lsn()`, at or
//! past the commit); the client's later reads go only to replicas whose replay position, as the probe
//! last saw it, is at or past that, and to the primary while none is.

use std::time::Instant;

use bytes::{BufMut, BytesMut};
use pgsteer_discovery::{Role, Topology};
use pgsteer_protocol::Flow;
use pgsteer_protocol::FrameRef;
use pgsteer_protocol::backend::{BackendMessage, TxStatus, tag as btag};
use pgsteer_protocol::classify::{Syntax, Verdict, Why, read_verdict};
use pgsteer_protocol::frontend::tag as ftag;
use pgsteer_protocol::sqlstate::SqlState;

use crate::metrics::Metrics;
use crate::pool::statements::{ClientStatements, Statement};
use crate::router::{Consistency, Request, Route};

/// Describe, Execute, Close and Flush: they follow the statement they name.
const NEUTRAL: &[u8] = b"DECH";

/// The query that reads the WAL position after a write.
///
/// The insert position, not `pg_current_wal_lsn()` (the write position): with
/// `synchronous_commit = off` a commit returns before its WAL is written, and the write
/// position can still be before it.
pub const WRITTEN_LSN_SQL: &str = "SELECT pg_current_wal_insert_lsn()::text";

/// Functions a deployment declares read-only (`[routing] read_only_functions`).
#[derive(Debug, Default)]
pub struct ReadOnlyFunctions(Vec<Box<[u8]>>);

impl ReadOnlyFunctions {
    /// From the configured names (lower-cased).
    pub fn new(names: &[String]) -> ReadOnlyFunctions {
        let mut v: Vec<Box<[u8]>> = names
            .iter()
            .map(|n| n.to_ascii_lowercase().into_bytes().into_boxed_slice())
            .collect();
        v.sort();
        v.dedup();
        ReadOnlyFunctions(v)
    }

    /// Whether `name` (lower-case, no schema) was declared read-only.
    pub fn contains(&self, name: &[u8]) -> bool {
        self.0.binary_search_by(|n| (**n).cmp(name)).is_ok()
    }

    /// The verdict for one query text.
    pub fn verdict(&self, sql: &[u8]) -> Verdict {
        read_verdict(sql, Syntax::default(), &|name| self.contains(name))
    }

    /// A prepared statement's verdict, computed once.
    fn statement(&self, s: &Statement) -> Verdict {
        *s.verdict.get_or_init(|| {
            let text = s.parse_rest.split(|&b| b == 0).next().unwrap_or(&[]);
            self.verdict(text)
        })
    }
}

/// Where one transaction went and why (`pgsteer_auto_transactions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A replica.
    Replica,
    /// The primary: the classifier saw (or could not rule out) a write.
    PrimaryClassifier,
    /// The primary: no replica has the client's last write yet (or `strong`).
    PrimaryFreshness,
    /// The primary: no replica can take reads.
    PrimaryNoReplica,
    /// The primary, after a replica refused the transaction with `25006`.
    SafetyNet,
}

impl Decision {
    /// Its place in [`crate::metrics::AUTO_DECISIONS`].
    fn index(self) -> usize {
        self as usize
    }
}

/// An `auto` client's routing state.
#[derive(Debug)]
pub struct Auto {
    /// How fresh its reads must be.
    pub consistency: Consistency,
    /// The primary's WAL position after its last write (0: none yet; `u64::MAX`: a write
    /// whose position could not be read, so reads stay on the primary until the next one).
    pub written_lsn: u64,
    /// Where its current transaction went.
    pub current: Option<Decision>,
    /// The current replica transaction, ready to move to the primary.
    pub net: SafetyNet,
    /// The replay position to ask the lent replica for (read-your-writes ahead of the probe).
    check: Option<u64>,
    /// A replica's replay position as this client last asked it.
    seen_replay: Option<(String, u64)>,
    /// A replica was behind the client's last write when asked: not asked again before.
    behind_until: Option<Instant>,
    functions: ReadOnlyFunctions,
}

impl Auto {
    /// The state of a new client.
    pub fn new(consistency: Consistency, functions: ReadOnlyFunctions) -> Auto {
        Auto {
            consistency,
            written_lsn: 0,
            current: None,
            net: SafetyNet::default(),
            check: None,
            seen_replay: None,
            behind_until: None,
            functions,
        }
    }

    /// Decides where the transaction whose first messages are `waiting` goes, counts it, and
    /// gives the request to lend a connection for.
    pub fn route(
        &mut self,
        waiting: &[u8],
        statements: &ClientStatements,
        topology: &Topology,
        metrics: &Metrics,
    ) -> Request {
        let mut decision = if std::mem::take(&mut self.net.retry) {
            Decision::SafetyNet
        } else {
            let started = Instant::now();
            let verdict = verdict(waiting, statements, &self.functions);
            metrics
                .classify_seconds
                .inc_by(started.elapsed().as_secs_f64());
            decide(verdict, self.consistency, self.written_lsn, topology)
        };
        // The probe has not seen a replica replay the client's last write yet: ask the
        // replica the transaction is lent, which usually has (`caught_up`).
        self.check = (decision == Decision::PrimaryFreshness
            && self.consistency == Consistency::ReadYourWrites
            && self.written_lsn != u64::MAX
            && self.behind_until.is_none_or(|t| Instant::now() >= t))
        .then_some(self.written_lsn);
        if self.check.is_some() {
            decision = Decision::Replica;
        } else {
            count(metrics, decision);
        }
        if decision == Decision::Replica {
            self.net.arm(waiting);
        } else {
            self.net.disarm();
        }
        self.current = Some(decision);
        let (route, min_lsn) = match decision {
            Decision::Replica if self.check.is_none() => (Route::Replica, self.min_lsn()),
            Decision::Replica => (Route::Replica, 0),
            _ => (Route::Primary, 0),
        };
        Request {
            route,
            explicit_route: false,
            pin: None,
            consistency: self.consistency,
            min_lsn,
        }
    }

    /// The replay position a lent replica must have before the transaction may run there,
    /// and what is known of it: `None` when nothing needs checking, `Some(Ok(replay))` when
    /// this client saw that `member` has it already, else `Some(Err(need))`: ask the replica.
    pub fn check_for(&self, member: &str) -> Option<Result<u64, u64>> {
        let need = self.check?;
        Some(match &self.seen_replay {
            Some((m, lsn)) if m == member && *lsn >= need => Ok(*lsn),
            _ => Err(need),
        })
    }

    /// The check's outcome: `replay` is the lent replica's position (`None`: unknown).
    /// `true`: the transaction stays on the replica; `false`: it goes to the primary.
    pub fn checked(&mut self, member: &str, replay: Option<u64>, metrics: &Metrics) -> bool {
        let need = self.check.take().unwrap_or(0);
        if let Some(lsn) = replay {
            self.seen_replay = Some((member.to_owned(), lsn));
        }
        let fresh = replay.is_some_and(|lsn| lsn >= need);
        let decision = if fresh {
            self.behind_until = None;
            Decision::Replica
        } else {
            // Asked too soon: the next reads go to the primary without asking for a while,
            // so a replica that lags costs one round trip per interval, not one per read.
            self.behind_until = Some(Instant::now() + ASK_AGAIN_AFTER);
            self.net.disarm();
            Decision::PrimaryFreshness
        };
        self.current = Some(decision);
        count(metrics, decision);
        fresh
    }

    /// The request of a transaction a replica was not fresh enough for.
    pub fn primary(&self) -> Request {
        Request {
            route: Route::Primary,
            explicit_route: false,
            pin: None,
            consistency: self.consistency,
            min_lsn: 0,
        }
    }

    /// Whether the transaction that just ended needs its WAL position read.
    pub fn needs_written_lsn(&self) -> bool {
        self.consistency == Consistency::ReadYourWrites
            && matches!(
                self.current,
                Some(Decision::PrimaryClassifier | Decision::SafetyNet)
            )
    }

    /// The replay position a replica needs for this client's reads.
    fn min_lsn(&self) -> u64 {
        match self.consistency {
            Consistency::ReadYourWrites => self.written_lsn,
            _ => 0,
        }
    }
}

/// Most client bytes a replica transaction may have for the safety net to keep them.
const NET_MAX: usize = 8 * 1024;

/// Server messages that come before a transaction's first row or result, held back while
/// the transaction may still move.
const PREAMBLE: &[u8] = b"123tnT";

/// The safety net of a replica transaction: if the replica refuses it with `25006` before
/// anything reached the client, it runs again on the primary. The client's messages are
/// kept as they came; the server's first answers (ParseComplete, BindComplete,
/// RowDescription, …) are held back until one shows the transaction ran (a row, a result,
/// another error), and then go to the client in order. Further client messages (a pipeline
/// that goes on) end the net: they reached the replica.
#[derive(Debug, Default)]
pub struct SafetyNet {
    /// The transaction's client messages (kept only while armed).
    saved: Vec<u8>,
    /// Client messages of `saved` the relay has not passed yet.
    frames_left: usize,
    armed: bool,
    /// Server messages held back, whole.
    stash: BytesMut,
    /// The replica answered `25006`.
    refused: bool,
    /// Run `saved` again on the primary.
    pub retry: bool,
}

impl SafetyNet {
    /// Arms the net for a transaction whose client messages are `waiting` (complete
    /// messages: the verdict read them all).
    fn arm(&mut self, waiting: &[u8]) {
        self.disarm();
        if waiting.len() > NET_MAX {
            return;
        }
        let mut frames = 0;
        let mut rest = waiting;
        while let Some((_, _, next)) = frame(rest) {
            frames += 1;
            rest = next;
        }
        self.saved.extend_from_slice(waiting);
        self.frames_left = frames;
        self.armed = true;
    }

    /// Forgets the transaction (it ended, or its server connection was lost).
    pub fn disarm(&mut self) {
        self.saved.clear();
        self.stash.clear();
        self.armed = false;
        self.refused = false;
    }

    /// Whether the transaction's client messages are all saved and nothing of the server's
    /// answer reached the client yet: it can run again elsewhere.
    pub fn untouched(&self) -> bool {
        self.armed
    }

    /// The client messages to send again (while [`SafetyNet::retry`]).
    pub fn saved(&self) -> &[u8] {
        &self.saved
    }

    /// Forgets the saved messages once they were sent again.
    pub fn sent_again(&mut self) {
        self.disarm();
    }

    /// A client message went to the server.
    pub fn client_frame(&mut self) {
        if self.armed {
            match self.frames_left.checked_sub(1) {
                Some(n) => self.frames_left = n,
                None => self.armed = false,
            }
        }
    }

    /// A server message: held back, or passed on (after what was held).
    pub fn server_frame(&mut self, f: &FrameRef<'_>, to_client: &mut BytesMut) -> Flow {
        if !self.armed {
            self.release(to_client);
            return Flow::Continue;
        }
        let hold = match f.tag {
            btag::READY_FOR_QUERY if self.refused => {
                let idle = f
                    .body
                    .and_then(|b| b.first())
                    .and_then(|&b| TxStatus::from_byte(b))
                    == Some(TxStatus::Idle);
                if idle {
                    // Nothing reached the client: run it all again on the primary.
                    self.stash.clear();
                    self.armed = false;
                    self.retry = true;
                    return Flow::Hold;
                }
                false
            }
            btag::ERROR_RESPONSE => {
                self.refused = f
                    .body
                    .and_then(|b| match BackendMessage::parse(f.tag, b) {
                        Ok(BackendMessage::ErrorResponse(e)) => e.code(),
                        _ => None,
                    })
                    .is_some_and(|c| c == SqlState::READ_ONLY_SQL_TRANSACTION.code());
                self.refused
            }
            t => self.refused || PREAMBLE.contains(&t),
        };
        match (hold, f.body) {
            (true, Some(body)) => {
                self.stash.put_u8(f.tag);
                self.stash.put_u32(f.len);
                self.stash.put_slice(body);
                Flow::Hold
            }
            _ => {
                self.armed = false;
                self.release(to_client);
                Flow::Continue
            }
        }
    }

    /// What was held back goes to the client.
    fn release(&mut self, to_client: &mut BytesMut) {
        if !self.stash.is_empty() {
            to_client.extend_from_slice(&self.stash);
            self.stash.clear();
        }
        if !self.armed {
            self.refused = false;
        }
    }
}

fn count(metrics: &Metrics, decision: Decision) {
    metrics.auto_decided[decision.index()].inc();
}

/// After a replica said it was behind, how long reads go to the primary without asking.
const ASK_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_millis(5);

/// The query that asks a replica how far it has replayed.
pub const REPLAY_LSN_SQL: &str = "SELECT pg_last_wal_replay_lsn()::text";

/// Where a transaction with `verdict` goes for a client whose last write was at
/// `written_lsn`. Pure.
pub fn decide(
    verdict: Verdict,
    consistency: Consistency,
    written_lsn: u64,
    t: &Topology,
) -> Decision {
    if verdict != Verdict::Replica {
        return Decision::PrimaryClassifier;
    }
    if consistency == Consistency::Strong {
        return Decision::PrimaryFreshness;
    }
    let need = match consistency {
        Consistency::ReadYourWrites => written_lsn,
        _ => 0,
    };
    let mut readable = t
        .replicas()
        .filter(|m| m.role == Role::Replica && m.routable && !m.draining && !m.lagging)
        .peekable();
    if readable.peek().is_none() {
        return Decision::PrimaryNoReplica;
    }
    if readable.any(|m| m.lsn.unwrap_or(0) >= need) {
        Decision::Replica
    } else {
        Decision::PrimaryFreshness
    }
}

/// The verdict for the client messages waiting at the start of a transaction: the replica
/// only when every complete message is understood to read and nothing is left over.
pub fn verdict(
    mut waiting: &[u8],
    statements: &ClientStatements,
    functions: &ReadOnlyFunctions,
) -> Verdict {
    let mut seen_any = false;
    // Statement names Parse'd in this batch (the unnamed one is the empty name); their
    // verdicts are already counted. Kept in a small inline list: batches are short.
    let mut parsed: [&[u8]; 8] = [&[]; 8];
    let mut n_parsed = 0;
    while !waiting.is_empty() {
        let Some((tag, body, rest)) = frame(waiting) else {
            return Verdict::Primary(Why::Unsure);
        };
        waiting = rest;
        let v = match tag {
            ftag::QUERY => functions.verdict(cstr(body).0),
            ftag::PARSE => {
                let (name, rest) = cstr(body);
                if n_parsed == parsed.len() {
                    return Verdict::Primary(Why::Unsure);
                }
                parsed[n_parsed] = name;
                n_parsed += 1;
                functions.verdict(cstr(rest).0)
            }
            ftag::BIND => {
                let name = cstr(cstr(body).1).0;
                if parsed[..n_parsed].contains(&name) {
                    Verdict::Replica
                } else if let Some(s) = statements.get(name).filter(|_| !name.is_empty()) {
                    functions.statement(s)
                } else {
                    Verdict::Primary(Why::Unsure)
                }
            }
            ftag::SYNC => {
                seen_any = true;
                continue;
            }
            t if NEUTRAL.contains(&t) => continue,
            _ => Verdict::Primary(Why::Unsure),
        };
        if v != Verdict::Replica {
            return v;
        }
        seen_any = true;
    }
    if seen_any {
        Verdict::Replica
    } else {
        Verdict::Primary(Why::Unsure)
    }
}

/// One complete message at the start of `buf`: (tag, body, what follows).
fn frame(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = buf.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let body = rest.get(4..len.checked_sub(4)?.checked_add(4)?)?;
    Some((tag, body, &rest[len..]))
}

/// A NUL-terminated string at the start of `b` and what follows it (all of `b` and nothing
/// when there is no NUL).
fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};
    use pgsteer_discovery::Role;

    use super::*;
    use crate::pool::statements::Registry;
    use crate::topology::topo;

    fn msg(out: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        out.put_u8(tag);
        out.put_u32(u32::try_from(len + 4).unwrap());
        for p in parts {
            out.put_slice(p);
        }
    }

    fn query(sql: &str) -> BytesMut {
        let mut b = BytesMut::new();
        msg(&mut b, b'Q', &[sql.as_bytes(), b"\0"]);
        b
    }

    fn extended(name: &str, sql: &str, parse: bool) -> BytesMut {
        let mut b = BytesMut::new();
        if parse {
            msg(
                &mut b,
                b'P',
                &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"],
            );
        }
        msg(&mut b, b'B', &[b"\0", name.as_bytes(), b"\0\0\0\0\0\0\0"]);
        msg(&mut b, b'E', &[b"\0\0\0\0\0"]);
        msg(&mut b, b'S', &[]);
        b
    }

    fn v(buf: &[u8], statements: &ClientStatements) -> Verdict {
        verdict(
            buf,
            statements,
            &ReadOnlyFunctions::new(&["my_report".into()]),
        )
    }

    #[test]
    fn every_complete_message_must_only_read() {
        let none = ClientStatements::default();
        assert_eq!(v(&query("SELECT 1"), &none), Verdict::Replica);
        assert_eq!(v(&query("SELECT my_report(1)"), &none), Verdict::Replica);
        assert_ne!(
            v(&query("INSERT INTO t VALUES (1)"), &none),
            Verdict::Replica
        );
        let mut two = query("SELECT 1");
        two.extend_from_slice(&query("DELETE FROM t"));
        assert_ne!(v(&two, &none), Verdict::Replica, "a pipelined write");
        let whole = query("SELECT 1");
        assert_ne!(
            v(&whole[..whole.len() - 1], &none),
            Verdict::Replica,
            "cut short"
        );
        assert_ne!(v(b"", &none), Verdict::Replica);
        assert_ne!(
            v(&[b'F', 0, 0, 0, 4], &none),
            Verdict::Replica,
            "FunctionCall"
        );
        assert_ne!(
            v(&[b'Q', 0, 0, 0, 1], &none),
            Verdict::Replica,
            "bad length"
        );
    }

    #[test]
    fn extended_batches_use_the_parse_text_or_the_statement_verdict() {
        let mut statements = ClientStatements::default();
        assert_eq!(
            v(&extended("", "SELECT 1", true), &statements),
            Verdict::Replica
        );
        assert_ne!(
            v(&extended("s1", "UPDATE t SET a = 1", true), &statements),
            Verdict::Replica
        );
        assert_ne!(
            v(&extended("s1", "", false), &statements),
            Verdict::Replica,
            "a statement the client never prepared"
        );
        let registry = Registry::default();
        statements.insert(b"s1", registry.intern(b"SELECT 1\0\0\0"));
        statements.insert(b"w1", registry.intern(b"DELETE FROM t\0\0\0"));
        assert_eq!(v(&extended("s1", "", false), &statements), Verdict::Replica);
        assert_ne!(v(&extended("w1", "", false), &statements), Verdict::Replica);
        assert_ne!(
            v(&extended("", "", false), &statements),
            Verdict::Replica,
            "the unnamed statement of an earlier transaction"
        );
    }

    fn replicas(lsns: &[(&str, Option<u64>, bool)]) -> Topology {
        let mut members = vec![("pg-0", Role::Primary)];
        members.extend(lsns.iter().map(|(n, _, _)| (*n, Role::Replica)));
        let mut t = topo(&members);
        for (n, lsn, lagging) in lsns {
            let m = t.members.get_mut(*n).unwrap();
            m.lsn = *lsn;
            m.lagging = *lagging;
        }
        t
    }

    #[test]
    fn reads_go_to_a_replica_that_has_the_clients_last_write() {
        use Consistency::{Eventual, ReadYourWrites, Strong};
        use Decision::{PrimaryClassifier, PrimaryFreshness, PrimaryNoReplica, Replica};
        let read = Verdict::Replica;
        let write = Verdict::Primary(Why::Writes);
        let t = replicas(&[("pg-1", Some(100), false), ("pg-2", Some(50), false)]);
        let table = [
            (write, ReadYourWrites, 0, &t, PrimaryClassifier),
            (read, ReadYourWrites, 0, &t, Replica),
            (read, ReadYourWrites, 100, &t, Replica),
            (read, ReadYourWrites, 101, &t, PrimaryFreshness),
            (read, ReadYourWrites, u64::MAX, &t, PrimaryFreshness),
            (read, Eventual, 101, &t, Replica),
            (read, Strong, 0, &t, PrimaryFreshness),
        ];
        for (verdict, consistency, written, t, want) in table {
            assert_eq!(
                decide(verdict, consistency, written, t),
                want,
                "{verdict:?} {consistency:?} written at {written}"
            );
        }
        let lagging = replicas(&[("pg-1", Some(100), true)]);
        assert_eq!(decide(read, Eventual, 0, &lagging), PrimaryNoReplica);
        let alone = replicas(&[]);
        assert_eq!(decide(read, ReadYourWrites, 0, &alone), PrimaryNoReplica);
    }

    #[test]
    fn a_read_ahead_of_the_probe_asks_the_replica_and_remembers_its_answer() {
        let metrics = Metrics::new().unwrap();
        let t = replicas(&[("pg-1", Some(100), false)]);
        let none = ClientStatements::default();
        let mut auto = Auto::new(Consistency::ReadYourWrites, ReadOnlyFunctions::new(&[]));
        auto.written_lsn = 101;
        let req = auto.route(&query("SELECT 1"), &none, &t, &metrics);
        assert_eq!((req.route, req.min_lsn), (Route::Replica, 0));
        assert_eq!(auto.check_for("pg-1"), Some(Err(101)));
        assert!(auto.checked("pg-1", Some(150), &metrics), "caught up");
        assert_eq!(auto.current, Some(Decision::Replica));
        auto.route(&query("SELECT 1"), &none, &t, &metrics);
        assert_eq!(auto.check_for("pg-1"), Some(Ok(150)), "remembered");
        assert_eq!(
            auto.check_for("pg-2"),
            Some(Err(101)),
            "another replica is asked"
        );
        assert!(!auto.checked("pg-2", Some(90), &metrics), "behind");
        assert_eq!(auto.current, Some(Decision::PrimaryFreshness));
        assert_eq!(auto.primary().route, Route::Primary);
        let req = auto.route(&query("SELECT 1"), &none, &t, &metrics);
        assert_eq!(req.route, Route::Primary, "not asked again at once");
        assert_eq!(auto.check_for("pg-1"), None);
        auto.behind_until = None;
        auto.route(&query("SELECT 1"), &none, &t, &metrics);
        assert!(
            !auto.checked("pg-1", None, &metrics),
            "no answer: the primary"
        );
        let decided = |d: &str| metrics.auto_decisions.with_label_values(&[d]).get();
        assert_eq!((decided("replica"), decided("primary_freshness")), (1, 3));
        // Strong never asks; an unknown write position never asks either.
        let mut strong = Auto::new(Consistency::Strong, ReadOnlyFunctions::new(&[]));
        assert_eq!(
            strong.route(&query("SELECT 1"), &none, &t, &metrics).route,
            Route::Primary
        );
        assert_eq!(strong.check_for("pg-1"), None);
        auto.written_lsn = u64::MAX;
        assert_eq!(
            auto.route(&query("SELECT 1"), &none, &t, &metrics).route,
            Route::Primary
        );
    }

    #[test]
    fn each_decision_counts_under_its_own_label() {
        use Decision::*;
        let labels = [
            (Replica, "replica"),
            (PrimaryClassifier, "primary_classifier"),
            (PrimaryFreshness, "primary_freshness"),
            (PrimaryNoReplica, "primary_no_replica"),
            (SafetyNet, "safety_net"),
        ];
        for (d, label) in labels {
            assert_eq!(crate::metrics::AUTO_DECISIONS[d.index()], label);
        }
    }
}
