//! The writers: pooled and passthrough clients that write through every phase and count what failed.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    Pooled,
    Passthrough,
}

impl Kind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Kind::Pooled => "pooled",
            Kind::Passthrough => "passthrough",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Style {
    /// One autocommit INSERT per transaction.
    Autocommit,
    /// `BEGIN`, `INSERT`, `COMMIT` in separate round trips.
    Block,
}

/// What one writer saw during one phase.
#[derive(Debug, Default, Clone)]
pub(super) struct Tally {
    /// `(seq, port, when)` of every acknowledged write.
    pub(super) acked: Vec<(i32, u16, Instant)>,
    pub(super) failed: u32,
    /// The client found its connection gone (and opened a new one).
    pub(super) disconnects: u32,
    pub(super) read_only: u32,
    /// Connection attempts that failed.
    pub(super) refused: u32,
    /// A `ROLLBACK` after a failed statement in a block was not answered with success.
    pub(super) rollback_errors: u32,
    /// Failures by step and SQLSTATE (or `closed`, `io`, `stuck`): `insert 40001`.
    pub(super) codes: BTreeMap<String, u32>,
    /// The first few error messages.
    pub(super) messages: Vec<String>,
    pub(super) longest_wait: Duration,
    /// Longest time between two acknowledged writes.
    pub(super) longest_gap: Duration,
}

impl Tally {
    /// One line: the counters, the failures' SQLSTATEs and first messages.
    pub(super) fn summary(&self) -> String {
        format!(
            "failed {} disconnects {} 25006 {} refused connects {} unanswered rollbacks {} \
             acked {} longest wait {} ms gap {} ms codes {:?} {:?}",
            self.failed,
            self.disconnects,
            self.read_only,
            self.refused,
            self.rollback_errors,
            self.acked.len(),
            self.longest_wait.as_millis(),
            self.longest_gap.as_millis(),
            self.codes,
            self.messages
        )
    }

    /// Counts a failed transaction; `lost`: the client found its connection gone.
    pub(super) fn failed_with(&mut self, f: &Failure, lost: bool) {
        self.failed += 1;
        *self
            .codes
            .entry(format!("{} {}", f.step, f.code))
            .or_default() += 1;
        if f.code == "25006" {
            self.read_only += 1;
        }
        if lost {
            self.disconnects += 1;
        } else if f.rollback_failed {
            self.rollback_errors += 1;
        }
        self.note(f.message.clone());
    }

    /// Keeps the first few error messages.
    pub(super) fn note(&mut self, message: String) {
        if self.messages.len() < 5 {
            self.messages.push(message);
        }
    }
}

/// One writing client.
pub(super) struct Writer {
    pub(super) id: i32,
    pub(super) kind: Kind,
    pub(super) style: Style,
    /// One tally per phase.
    pub(super) tallies: Mutex<Vec<Tally>>,
}

impl Writer {
    pub(super) fn record(&self, phase: usize, f: impl FnOnce(&mut Tally)) {
        let mut tallies = self.tallies.lock().expect("tallies");
        if tallies.len() <= phase {
            tallies.resize_with(phase + 1, Tally::default);
        }
        f(&mut tallies[phase]);
    }

    pub(super) fn tally(&self, phase: usize) -> Tally {
        let tallies = self.tallies.lock().expect("tallies");
        tallies.get(phase).cloned().unwrap_or_default()
    }

    pub(super) fn name(&self) -> String {
        let style = match self.style {
            Style::Autocommit => "autocommit",
            Style::Block => "block",
        };
        format!("{}#{} ({style})", self.kind.as_str(), self.id)
    }
}

/// The phase the writers record into, and when they stop.
pub(super) struct Run {
    pub(super) phase: AtomicUsize,
    pub(super) stop: CancellationToken,
}

impl Run {
    pub(super) fn phase(&self) -> usize {
        self.phase.load(Ordering::SeqCst)
    }
}

/// How one transaction failed.
pub(super) struct Failure {
    /// The round trip that failed: `statement` (autocommit), `begin`, `insert` (in the block),
    /// `commit`, `connect`.
    pub(super) step: &'static str,
    pub(super) code: String,
    pub(super) message: String,
    /// The error itself says the connection is gone.
    pub(super) lost: bool,
    pub(super) rollback_failed: bool,
}

impl Failure {
    pub(super) fn at(step: &'static str, e: &tokio_postgres::Error) -> Failure {
        match e.as_db_error() {
            Some(db) => Failure {
                step,
                code: db.code().code().to_owned(),
                message: format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
                lost: matches!(db.severity(), "FATAL" | "PANIC"),
                rollback_failed: false,
            },
            None => Failure {
                step,
                code: if e.is_closed() { "closed" } else { "io" }.to_owned(),
                message: e.to_string(),
                lost: e.is_closed(),
                rollback_failed: false,
            },
        }
    }
}

pub(super) async fn autocommit(
    c: &tokio_postgres::Client,
    id: i32,
    seq: i32,
) -> Result<u16, Failure> {
    let row = c
        .query_one(INSERT, &[&id, &seq])
        .await
        .map_err(|e| Failure::at("statement", &e))?;
    Ok(row.get::<_, i32>(0) as u16)
}

/// `BEGIN; INSERT …; COMMIT` in three round trips; a failed INSERT is rolled back.
pub(super) async fn block(
    c: &mut tokio_postgres::Client,
    id: i32,
    seq: i32,
) -> Result<u16, Failure> {
    let tx = c
        .transaction()
        .await
        .map_err(|e| Failure::at("begin", &e))?;
    match tx.query_one(INSERT, &[&id, &seq]).await {
        Ok(row) => {
            tx.commit().await.map_err(|e| Failure::at("commit", &e))?;
            Ok(row.get::<_, i32>(0) as u16)
        }
        Err(e) => {
            let mut f = Failure::at("insert", &e);
            if let Err(rb) = tx.rollback().await {
                f.rollback_failed = true;
                let _ = write!(
                    f.message,
                    "; then ROLLBACK: {}",
                    Failure::at("rollback", &rb).message
                );
            }
            Err(f)
        }
    }
}

/// One writer: a transaction at a time on one connection until `run.stop`; a lost connection
/// is counted and replaced, never reopened silently.
pub(super) async fn write_loop(addr: SocketAddr, w: Arc<Writer>, run: Arc<Run>) {
    let mut session: Option<tokio_postgres::Client> = None;
    let mut seq = 0;
    let mut last_ack: Option<Instant> = None;
    while !run.stop.is_cancelled() {
        let started = Instant::now();
        let c = match session.take() {
            Some(c) => Some(c),
            None => open(addr, &w, &run).await,
        };
        let Some(mut c) = c else {
            tokio::time::sleep(PACE).await;
            continue;
        };
        seq += 1;
        let attempt = match w.style {
            Style::Autocommit => tokio::time::timeout(STUCK, autocommit(&c, w.id, seq)).await,
            Style::Block => tokio::time::timeout(STUCK, block(&mut c, w.id, seq)).await,
        };
        let outcome = attempt.unwrap_or_else(|_| {
            Err(Failure {
                step: "any",
                code: "stuck".into(),
                message: format!("no answer within {STUCK:?}"),
                lost: true,
                rollback_failed: false,
            })
        });
        // Give the connection task a moment to notice a closed socket.
        tokio::time::sleep(PACE).await;
        let now = Instant::now();
        w.record(run.phase(), |t| match &outcome {
            Ok(port) => {
                t.acked.push((seq, *port, now));
                t.longest_wait = t.longest_wait.max((now - started).saturating_sub(PACE));
                if let Some(last) = last_ack {
                    t.longest_gap = t.longest_gap.max(now - last);
                }
            }
            Err(f) => t.failed_with(f, f.lost || c.is_closed()),
        });
        match outcome {
            Ok(_) => {
                last_ack = Some(now);
                session = Some(c);
            }
            Err(f) if !(f.lost || c.is_closed()) => session = Some(c),
            Err(_) => {}
        }
    }
}

/// A new connection for writer `w`, or None (counted) if it cannot get one.
pub(super) async fn open(
    addr: SocketAddr,
    w: &Writer,
    run: &Run,
) -> Option<tokio_postgres::Client> {
    let connect = try_connect(addr, APP_USER, APP_PASSWORD, None);
    let why = match tokio::time::timeout(STUCK, connect).await {
        Ok(Ok(c)) => return Some(c),
        Ok(Err(e)) => Failure::at("connect", &e).message,
        Err(_) => format!("no answer within {STUCK:?}"),
    };
    w.record(run.phase(), |t| {
        t.refused += 1;
        t.note(format!("connect: {why}"));
    });
    None
}
