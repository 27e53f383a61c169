//! pgsteer standing in for the server while a pooled client has no connection lent.
//!
//! Two cases, both so that a role change costs the client as little as possible:
//! - **A deferred `BEGIN`.** A Query that only opens a transaction block is answered here
//!   (`BEGIN`, status `T`) and sent to the server with the transaction's first statement. A
//!   transaction that has sent nothing but `BEGIN` when its primary goes therefore starts on
//!   the new one; one that ends at once (`BEGIN; COMMIT`) never needs a server. Odyssey calls
//!   this a virtual transaction.
//! - **A lost transaction.** When the server connection of a transaction in progress is lost
//!   (its primary was demoted or died), the client is told once and stays connected, in a
//!   failed transaction block, as Postgres would leave it after an error: its statements get
//!   `25P02` until it ends the block, and its `ROLLBACK` (or `COMMIT`) is answered
//!   `ROLLBACK`.
//!
//! Pure: the session feeds it the client's waiting bytes and does what [`Local`] says.

use bytes::BytesMut;
use pgsteer_protocol::backend::TxStatus;
use pgsteer_protocol::classify::{Effect, Tx, session_effects};
use pgsteer_protocol::encode::{self, ErrorInfo};
use pgsteer_protocol::frame::{HEADER_LEN, Header};
use pgsteer_protocol::frontend::tag as ftag;
use pgsteer_protocol::sqlstate::SqlState;

use super::state::TxEnd;

/// Bytes of a Query worth waiting for to see whether it is a transaction command.
const SMALL_QUERY: usize = 512;

/// What pgsteer owes a pooled client that has no server connection.
#[derive(Debug, Default, PartialEq, Eq)]
pub enum StandIn {
    /// Nothing: the client's next request goes to a server.
    #[default]
    Off,
    /// The client's `BEGIN` (its whole Query message) was answered here and not sent yet.
    Begun(Vec<u8>),
    /// The client's transaction was lost with its server connection: it is in a failed
    /// block. `error` is the ErrorResponse its next request gets when the loss was not
    /// reported yet (nothing was pending when it happened); otherwise it gets 25P02.
    Aborted {
        /// The loss, still to be reported.
        error: Option<Vec<u8>>,
    },
}

/// What to do with the client's waiting bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Local {
    /// Answered here: `consumed` bytes of the client's input are taken; the reply was
    /// written; the client's transaction status is now `tx`.
    Answer {
        /// Bytes of client input answered.
        consumed: usize,
        /// Status after the reply.
        tx: TxStatus,
    },
    /// The request is refused with the ErrorResponse written: the rest of it is discarded
    /// up to its end, which is answered ReadyForQuery with `tx`.
    Reject {
        /// Status after the request.
        tx: TxStatus,
    },
    /// Nothing can be decided before `n` bytes are waiting.
    Wait(usize),
    /// The first message (CopyData, CopyDone or CopyFail of a COPY whose connection was
    /// lost) is dropped, whole or as it arrives.
    DropFrame,
    /// The request needs a server. The deferred `BEGIN`, if any, runs there first.
    Server(Option<Vec<u8>>),
}

/// A transaction command that needs no server when nothing is open on one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Begin { read_only: bool },
    Commit,
    Rollback,
}

impl StandIn {
    /// [`StandIn::step_with`], deferring every kind of `BEGIN`.
    #[cfg(test)]
    pub fn step(&mut self, waiting: &[u8], out: &mut BytesMut) -> Local {
        self.step_with(waiting, out, true)
    }

    /// Decides what happens to `waiting` (the client's unread input, at a message
    /// boundary), writing any reply to `out`. `read_only_begin`: a `BEGIN … READ ONLY` may be
    /// deferred too (not for route `auto`, whose safety net sends a read-only transaction's
    /// messages again as the client sent them).
    pub fn step_with(
        &mut self,
        waiting: &[u8],
        out: &mut BytesMut,
        read_only_begin: bool,
    ) -> Local {
        let query = match first_message(waiting) {
            First::Query(sql, len) => Some((sql, len)),
            First::Other => None,
            // After a lost COPY, Postgres drops the client's copy messages: so does pgsteer.
            First::Copy => return Local::DropFrame,
            First::Incomplete(n) => return self.incomplete(waiting, n, out),
            // Not a message: left to the relay, which ends the session with a protocol error.
            First::Malformed => return self.give_up(out),
        };
        match std::mem::take(self) {
            StandIn::Off => match query.map(|(sql, len)| (command(sql), len)) {
                Some((Some(Command::Begin { read_only }), len))
                    if read_only_begin || !read_only =>
                {
                    *self = StandIn::Begun(waiting[..len].to_vec());
                    reply(out, "BEGIN", TxStatus::InTransaction, len)
                }
                _ => Local::Server(None),
            },
            StandIn::Begun(begin) => match query.map(|(sql, len)| (command(sql), len)) {
                Some((Some(Command::Commit), len)) => reply(out, "COMMIT", TxStatus::Idle, len),
                Some((Some(Command::Rollback), len)) => reply(out, "ROLLBACK", TxStatus::Idle, len),
                _ => Local::Server(Some(begin)),
            },
            StandIn::Aborted { error } => self.aborted(waiting, query, error, out),
        }
    }

    /// A client in a failed block sent `waiting`.
    fn aborted(
        &mut self,
        waiting: &[u8],
        query: Option<(&[u8], usize)>,
        error: Option<Vec<u8>>,
        out: &mut BytesMut,
    ) -> Local {
        if let Some((sql, len)) = query {
            match command(sql) {
                // The loss was not reported yet: the COMMIT fails with it, as a deferred
                // constraint would fail a COMMIT, and the block is over.
                Some(Command::Commit) if error.is_some() => {
                    refuse(out, error);
                    encode::ready_for_query(out, TxStatus::Idle);
                    return Local::Answer {
                        consumed: len,
                        tx: TxStatus::Idle,
                    };
                }
                Some(Command::Commit | Command::Rollback) => {
                    return reply(out, "ROLLBACK", TxStatus::Idle, len);
                }
                _ => {}
            }
            *self = StandIn::Aborted { error: None };
            refuse(out, error);
            encode::ready_for_query(out, TxStatus::Failed);
            return Local::Answer {
                consumed: len,
                tx: TxStatus::Failed,
            };
        }
        if let Some(consumed) = extended_rollback(waiting, error.as_deref(), out) {
            return Local::Answer {
                consumed,
                tx: TxStatus::Idle,
            };
        }
        *self = StandIn::Aborted { error: None };
        refuse(out, error);
        Local::Reject {
            tx: TxStatus::Failed,
        }
    }

    /// The first message is not all there yet (`n` bytes make it whole).
    fn incomplete(&mut self, waiting: &[u8], n: usize, out: &mut BytesMut) -> Local {
        match std::mem::take(self) {
            // Only a failed block must see its requests whole; it waits for small ones.
            StandIn::Aborted { error } if n <= SMALL_QUERY => {
                *self = StandIn::Aborted { error };
                Local::Wait(n)
            }
            StandIn::Aborted { error } => {
                *self = StandIn::Aborted { error: None };
                refuse(out, error);
                Local::Reject {
                    tx: TxStatus::Failed,
                }
            }
            StandIn::Begun(begin) => Local::Server(Some(begin)),
            StandIn::Off if n <= SMALL_QUERY && is_query(waiting) => Local::Wait(n),
            StandIn::Off => Local::Server(None),
        }
    }

    /// Input that is not a message: whatever is owed, the request goes on to where the relay
    /// reads it (and ends the session).
    fn give_up(&mut self, out: &mut BytesMut) -> Local {
        match std::mem::take(self) {
            StandIn::Aborted { error } => {
                refuse(out, error);
                Local::Reject {
                    tx: TxStatus::Failed,
                }
            }
            StandIn::Begun(begin) => Local::Server(Some(begin)),
            StandIn::Off => Local::Server(None),
        }
    }

    /// The client's transaction was lost. `reported`: the client got its error already (a
    /// request was in flight); otherwise `error` is its next request's answer.
    pub fn abort(&mut self, error: Vec<u8>, reported: bool) {
        *self = StandIn::Aborted {
            error: (!reported).then_some(error),
        };
    }
}

/// The SQL of a Query message the stand-in kept (ASCII: see [`command`]).
pub fn query_text(frame: &[u8]) -> &str {
    let body = frame.get(HEADER_LEN..).unwrap_or_default();
    std::str::from_utf8(body.strip_suffix(b"\0").unwrap_or(body)).unwrap_or_default()
}

/// The error a request in a failed block gets: the loss not reported yet, or 25P02.
fn refuse(out: &mut BytesMut, error: Option<Vec<u8>>) {
    match error {
        Some(e) => out.extend_from_slice(&e),
        None => encode::error_response(
            out,
            &ErrorInfo::error(
                SqlState::IN_FAILED_SQL_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            ),
        ),
    }
}

fn reply(out: &mut BytesMut, tag: &str, tx: TxStatus, consumed: usize) -> Local {
    encode::command_complete(out, tag);
    encode::ready_for_query(out, tx);
    Local::Answer { consumed, tx }
}

fn is_query(waiting: &[u8]) -> bool {
    waiting.first() == Some(&ftag::QUERY)
}

/// What the first waiting message is.
enum First<'a> {
    /// A complete Query: its SQL and frame length.
    Query(&'a [u8], usize),
    /// A copy message (whole or not).
    Copy,
    /// A complete message of another kind.
    Other,
    /// `n` bytes make it whole.
    Incomplete(usize),
    /// Not a message.
    Malformed,
}

fn first_message(waiting: &[u8]) -> First<'_> {
    let h = match Header::parse(waiting, u32::MAX) {
        Ok(Some(h)) => h,
        Ok(None) => return First::Incomplete(HEADER_LEN),
        Err(_) => return First::Malformed,
    };
    if matches!(h.tag, b'd' | b'c' | b'f') {
        return First::Copy;
    }
    let len = h.frame_len();
    if waiting.len() < len {
        return First::Incomplete(len);
    }
    if h.tag != ftag::QUERY {
        return First::Other;
    }
    let body = &waiting[HEADER_LEN..len];
    First::Query(body.strip_suffix(b"\0").unwrap_or(body), len)
}

/// Whether `sql` (one statement) ends the transaction block.
pub fn tx_end(sql: &[u8]) -> TxEnd {
    match command(sql) {
        Some(Command::Commit) => TxEnd::Commit,
        Some(Command::Rollback) => TxEnd::Rollback,
        _ => TxEnd::No,
    }
}

/// The transaction command `sql` is, when it is one statement and nothing else.
fn command(sql: &[u8]) -> Option<Command> {
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    let word = sql.get(start..start + 3)?;
    // Cheap first: most transactions start with something else.
    const FIRST: [&[u8]; 6] = [b"beg", b"sta", b"com", b"end", b"rol", b"abo"];
    if !FIRST.iter().any(|f| word.eq_ignore_ascii_case(f)) || !sql.is_ascii() {
        return None;
    }
    // `… AND CHAIN` opens the next block at once: left to a server.
    if sql.windows(5).any(|w| w.eq_ignore_ascii_case(b"chain")) {
        return None;
    }
    let mut effects = session_effects(sql);
    let first = effects.next()?;
    if effects.next().is_some() {
        return None;
    }
    match first {
        Effect::Transaction(Tx::Begin { read_only }) => Some(Command::Begin { read_only }),
        Effect::Transaction(Tx::Commit) => Some(Command::Commit),
        Effect::Transaction(Tx::Rollback) => Some(Command::Rollback),
        _ => None,
    }
}

/// An extended-protocol `ROLLBACK` or `COMMIT` (Parse, Bind, Describe, Execute, … Sync,
/// all waiting) in a failed block, answered as Postgres would: the bytes it took. A
/// `COMMIT` while the loss is still to be reported (`error`) fails with it.
fn extended_rollback(waiting: &[u8], error: Option<&[u8]>, out: &mut BytesMut) -> Option<usize> {
    let mut at = 0;
    let mut reply = BytesMut::new();
    let mut ends = None;
    let mut failed = false;
    loop {
        let rest = waiting.get(at..)?;
        let h = Header::parse(rest, u32::MAX).ok()??;
        let body = rest.get(HEADER_LEN..h.frame_len())?;
        at += h.frame_len();
        match h.tag {
            ftag::SYNC if ends.is_some() => {
                encode::ready_for_query(&mut reply, TxStatus::Idle);
                out.extend_from_slice(&reply);
                return Some(at);
            }
            // After an error, everything up to Sync is skipped.
            _ if failed => {}
            ftag::PARSE => {
                let mut parts = body.splitn(3, |&b| b == 0);
                let (_, sql) = (parts.next()?, parts.next()?);
                let c =
                    command(sql).filter(|c| matches!(c, Command::Commit | Command::Rollback))?;
                ends = Some(c);
                encode::frame(&mut reply, b'1', &[]);
            }
            ftag::BIND => encode::frame(&mut reply, b'2', &[]),
            b'D' if body.first() == Some(&b'S') => {
                encode::frame(&mut reply, b't', &[0, 0]);
                encode::frame(&mut reply, b'n', &[]);
            }
            b'D' => encode::frame(&mut reply, b'n', &[]),
            b'E' => match (ends, error) {
                (Some(Command::Commit), Some(e)) => {
                    reply.extend_from_slice(e);
                    failed = true;
                }
                _ => encode::command_complete(&mut reply, "ROLLBACK"),
            },
            b'C' => encode::frame(&mut reply, b'3', &[]),
            b'H' => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgsteer_protocol::backend::tag as btag;

    fn query(sql: &str) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode::query(&mut b, sql);
        b.to_vec()
    }

    fn tags(out: &[u8]) -> Vec<u8> {
        let mut tags = Vec::new();
        let mut at = 0;
        while let Ok(Some(h)) = Header::parse(&out[at..], u32::MAX) {
            tags.push(h.tag);
            at += h.frame_len();
        }
        tags
    }

    #[test]
    fn a_bare_begin_is_answered_and_sent_with_the_next_statement() {
        let mut s = StandIn::Off;
        let mut out = BytesMut::new();
        let begin = query("begin isolation level repeatable read");
        let step = s.step(&begin, &mut out);
        assert_eq!(
            step,
            Local::Answer {
                consumed: begin.len(),
                tx: TxStatus::InTransaction
            }
        );
        assert_eq!(tags(&out), [btag::COMMAND_COMPLETE, btag::READY_FOR_QUERY]);
        out.clear();
        let insert = query("INSERT INTO t VALUES (1)");
        assert_eq!(s.step(&insert, &mut out), Local::Server(Some(begin)));
        assert!(out.is_empty());
        assert_eq!(s, StandIn::Off);
    }

    #[test]
    fn begin_then_commit_or_rollback_needs_no_server() {
        for (end, tag) in [
            ("COMMIT", "COMMIT"),
            ("end;", "COMMIT"),
            ("abort", "ROLLBACK"),
        ] {
            let mut s = StandIn::Off;
            let mut out = BytesMut::new();
            s.step(&query("START TRANSACTION;"), &mut out);
            out.clear();
            let q = query(end);
            assert_eq!(
                s.step(&q, &mut out),
                Local::Answer {
                    consumed: q.len(),
                    tx: TxStatus::Idle
                },
                "{end}"
            );
            let mut expected = BytesMut::new();
            encode::command_complete(&mut expected, tag);
            encode::ready_for_query(&mut expected, TxStatus::Idle);
            assert_eq!(out, expected, "{end}");
        }
    }

    #[test]
    fn other_queries_and_begin_with_more_go_to_a_server() {
        for sql in [
            "SELECT 1",
            "BEGIN; INSERT INTO t VALUES (1)",
            "rollback and chain",
            "begin /* no end",
        ] {
            let mut s = StandIn::Off;
            let mut out = BytesMut::new();
            assert_eq!(s.step(&query(sql), &mut out), Local::Server(None), "{sql}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn a_read_only_begin_is_sent_on_when_the_caller_says_so() {
        let mut s = StandIn::Off;
        let mut out = BytesMut::new();
        let q = query("BEGIN READ ONLY");
        assert_eq!(s.step_with(&q, &mut out, false), Local::Server(None));
        assert!(out.is_empty());
        let q = query("BEGIN");
        assert!(matches!(
            s.step_with(&q, &mut out, false),
            Local::Answer { .. }
        ));
    }

    #[test]
    fn a_commit_after_an_unreported_loss_fails_with_it() {
        let mut lost = BytesMut::new();
        encode::error_response(
            &mut lost,
            &ErrorInfo::error(SqlState::SERIALIZATION_FAILURE, "lost"),
        );
        let mut s = StandIn::Off;
        s.abort(lost.to_vec(), false);
        let mut out = BytesMut::new();
        let commit = query("COMMIT");
        assert_eq!(
            s.step(&commit, &mut out),
            Local::Answer {
                consumed: commit.len(),
                tx: TxStatus::Idle
            }
        );
        let mut expected = lost.clone();
        encode::ready_for_query(&mut expected, TxStatus::Idle);
        assert_eq!(out, expected, "the COMMIT gets the loss, not ROLLBACK");

        // The same COMMIT in the extended protocol.
        let mut batch = BytesMut::new();
        encode::frame(&mut batch, ftag::PARSE, b"\0COMMIT\0\0\0");
        encode::frame(&mut batch, ftag::BIND, b"\0\0\0\0\0\0\0\0");
        encode::frame(&mut batch, b'E', b"\0\0\0\0\0");
        encode::frame(&mut batch, ftag::SYNC, b"");
        let mut s = StandIn::Off;
        s.abort(lost.to_vec(), false);
        out.clear();
        s.step(&batch, &mut out);
        assert_eq!(tags(&out), [b'1', b'2', btag::ERROR_RESPONSE, b'Z']);
    }

    #[test]
    fn malformed_input_and_copy_messages_are_not_waited_for() {
        let bad = [ftag::QUERY, 0, 0, 0, 0, b'x'];
        for mut s in [StandIn::Off, StandIn::Aborted { error: None }] {
            let mut out = BytesMut::new();
            let step = s.step(&bad, &mut out);
            assert!(
                matches!(step, Local::Server(None) | Local::Reject { .. }),
                "{step:?}"
            );
        }
        let mut copy = BytesMut::new();
        encode::frame(&mut copy, b'd', &[7; 100]);
        let mut s = StandIn::Aborted { error: None };
        let mut out = BytesMut::new();
        assert_eq!(s.step(&copy[..20], &mut out), Local::DropFrame);
        assert!(out.is_empty());
        assert_eq!(s, StandIn::Aborted { error: None });
    }

    #[test]
    fn a_small_query_cut_off_waits_for_the_rest() {
        let mut s = StandIn::Off;
        let q = query("BEGIN");
        let mut out = BytesMut::new();
        assert_eq!(s.step(&q[..3], &mut out), Local::Wait(HEADER_LEN));
        assert_eq!(s.step(&q[..7], &mut out), Local::Wait(q.len()));
    }

    #[test]
    fn a_failed_block_reports_the_loss_once_then_25p02_until_rollback() {
        let mut s = StandIn::Off;
        let mut lost = BytesMut::new();
        encode::error_response(
            &mut lost,
            &ErrorInfo::error(SqlState::SERIALIZATION_FAILURE, "lost"),
        );
        s.abort(lost.to_vec(), false);
        let mut out = BytesMut::new();
        let q = query("INSERT INTO t VALUES (1)");
        assert_eq!(
            s.step(&q, &mut out),
            Local::Answer {
                consumed: q.len(),
                tx: TxStatus::Failed
            }
        );
        assert!(out.starts_with(&lost));
        out.clear();
        s.step(&q, &mut out);
        assert!(
            out.windows(5).any(|w| w == b"25P02"),
            "the second statement gets 25P02"
        );
        out.clear();
        let commit = query("COMMIT");
        assert_eq!(
            s.step(&commit, &mut out),
            Local::Answer {
                consumed: commit.len(),
                tx: TxStatus::Idle
            }
        );
        let mut expected = BytesMut::new();
        encode::command_complete(&mut expected, "ROLLBACK");
        encode::ready_for_query(&mut expected, TxStatus::Idle);
        assert_eq!(out, expected);
        assert_eq!(s, StandIn::Off);
    }

    #[test]
    fn an_extended_rollback_in_a_failed_block_is_answered_and_other_batches_refused() {
        let mut batch = BytesMut::new();
        encode::frame(&mut batch, ftag::PARSE, b"\0ROLLBACK\0\0\0");
        encode::frame(&mut batch, ftag::BIND, b"\0\0\0\0\0\0\0\0");
        encode::frame(&mut batch, b'D', b"P\0");
        encode::frame(&mut batch, b'E', b"\0\0\0\0\0");
        encode::frame(&mut batch, ftag::SYNC, b"");
        let mut s = StandIn::Aborted { error: None };
        let mut out = BytesMut::new();
        assert_eq!(
            s.step(&batch, &mut out),
            Local::Answer {
                consumed: batch.len(),
                tx: TxStatus::Idle
            }
        );
        assert_eq!(tags(&out), [b'1', b'2', b'n', b'C', b'Z']);

        let mut select = BytesMut::new();
        encode::frame(&mut select, ftag::PARSE, b"\0SELECT 1\0\0\0");
        encode::frame(&mut select, ftag::SYNC, b"");
        let mut s = StandIn::Aborted { error: None };
        out.clear();
        assert_eq!(
            s.step(&select, &mut out),
            Local::Reject {
                tx: TxStatus::Failed
            }
        );
        assert_eq!(tags(&out), [btag::ERROR_RESPONSE]);
    }
}
