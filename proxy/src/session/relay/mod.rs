//! The relay: both directions of an authenticated session in one task.
//!
//! Bytes are read into pooled buffers, walked header by header by a
//! [`Scanner`] and written on in whole runs, usually with one read and one
//! write syscall per burst. Only ReadyForQuery bodies are read (to know
//! whether the session is idle, in a transaction or failed), plus what the
//! server side's [`Owner`] asks for; everything else streams through.
//! Draining is the [`DrainState`] of `drain.rs`: the relay feeds it orders,
//! deadlines and ReadyForQuery statuses, and closes when it says so.
//!
//! One relay core serves both kinds of session. A passthrough session runs it
//! once over its one backend. A pooled session runs it again and again: with
//! no server attached it returns [`Event::NeedServer`] as soon as the client
//! sends something, and when the owner lends per transaction it returns
//! [`Event::Idle`] at the end of each one, so the server connection can go
//! back to its pool. A held message ([`Flow::Hold`]) is rewritten by the
//! owner once everything before it is written: its replacement goes out
//! first, then the rest of the stream.
//!
//! Either side may be TLS ([`Stream`]): a TLS write can leave bytes in the
//! rustls buffer, so a half that wrote to a TLS stream flushes it before it
//! counts as done. On plaintext TCP that flag is never set.
//!
//! The hot path touches nothing shared: metric counts go to a per-session
//! [`PodTally`] that is flushed every flush interval, and the control
//! futures are polled with a waker of their own, only after it fired
//! ([`control`]), not on every socket wake-up. A busy session ([`BUSY_READS`]
//! reads in a flush interval) keeps its buffers between reads; once an
//! interval passes with fewer, they go back to the pool, so an idle session,
//! or one that runs a query now and then, holds none.

mod control;
mod half;
mod owner;
mod recover;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use pgsteer_protocol::backend::{TxStatus, tag as btag};
use pgsteer_protocol::frame::{HEADER_LEN, Header};
use pgsteer_protocol::frontend::tag as ftag;
use pgsteer_protocol::{Flow, Scanner, TagSet};
use std::time::Instant;

use super::buffer::BUF_SIZE;
use super::stream::Stream;
use super::{SessionError, Side};
use crate::drain::{Closing, DrainOrder, DrainState, Step};
use crate::metrics::PodTally;
pub use control::Signals;
use control::{Control, Wait};
use half::{Half, poll_fill, poll_flush};
pub use owner::{Owner, Passthrough};

/// Why the relay stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndKind {
    /// The client closed its side (after Terminate or not).
    ClientClosed,
    /// The server closed its side.
    ServerClosed,
    /// A drain was requested and the session reached an idle point.
    Drained,
    /// The hard deadline fired: closed wherever the session was.
    Terminated,
    /// The client sat idle inside a transaction longer than `idle_transaction_timeout`.
    IdleInTransaction,
}

/// How the relay ended, with what the caller needs to close both sides cleanly.
#[derive(Debug, Clone)]
pub struct End {
    /// Why.
    pub kind: EndKind,
    /// What a drained or terminated session is told.
    pub closing: Option<Closing>,
    /// The client sent Terminate.
    pub client_terminated: bool,
    /// The server stream is at a message boundary: a message may be appended.
    pub server_at_boundary: bool,
    /// The client stream is at a message boundary.
    pub client_at_boundary: bool,
    /// Type of the last message the server sent (`E` = it explained itself).
    pub last_server_tag: u8,
    /// Transaction status at the end.
    pub tx: TxStatus,
}

/// Why [`Relay::run`] returned.
#[derive(Debug)]
pub enum Event {
    /// The session is over.
    End(End),
    /// No server is attached and the client sent something: attach one and run again.
    NeedServer,
    /// The owner lends per transaction and the session is idle: detach the server.
    Idle,
}

/// Live state the session and drain logic look at.
#[derive(Debug, Clone, Copy)]
struct State {
    /// Requests (Query, Sync, FunctionCall) the server has not answered with ReadyForQuery yet.
    pending: u32,
    tx: TxStatus,
    client_terminated: bool,
    last_server_tag: u8,
    /// When the oldest unanswered request was sent.
    query_start: Option<Instant>,
    /// When the current transaction's first request was sent.
    tx_start: Option<Instant>,
    /// Extended-protocol messages went out since the last request (Sync, Query,
    /// FunctionCall): a batch is open.
    batch_open: bool,
}

impl State {
    /// Book-keeping for one client request.
    fn request(&mut self) {
        self.batch_open = false;
        if self.pending == 0 {
            let now = crate::clock::now();
            self.query_start = Some(now);
            if self.tx == TxStatus::Idle && self.tx_start.is_none() {
                self.tx_start = Some(now);
            }
        }
        self.pending += 1;
    }

    /// Book-keeping for one ReadyForQuery: the answer to the oldest request.
    fn ready_for_query(&mut self, tally: &mut PodTally) {
        self.pending = self.pending.saturating_sub(1);
        if self.pending > 0 {
            return;
        }
        let now = crate::clock::now();
        let query = self.query_start.take().map(|started| {
            // A relay stamped in its task before it moved mid-batch can be a little ahead
            // of the engine's stamp: that reads as zero.
            let took = now.saturating_duration_since(started).as_secs_f64();
            tally.query_seconds.observe(took);
            (started, took)
        });
        if self.tx == TxStatus::Idle {
            tally.transactions += 1;
            if let Some(t) = self.tx_start.take() {
                // Its first request is the one just answered (one statement in autocommit,
                // or one pipelined batch): the same span, measured once.
                let took = match query {
                    Some((started, took)) if started == t => took,
                    _ => now.saturating_duration_since(t).as_secs_f64(),
                };
                tally.transaction_seconds.observe(took);
            }
        }
    }
}

/// A session's relay state, kept across [`Relay::run`] calls.
pub struct Relay<'a> {
    c2s: Half,
    s2c: Half,
    state: State,
    control: Control<'a>,
    drain: DrainState,
    tally: PodTally,
    /// Resolves when a pause is lifted (only while one holds this session).
    resume: Option<Wait>,
    /// Skip the `EAGAIN` read after a short read (current-thread runtime only).
    short_read_drains: bool,
    /// Last value seen on `signals.paused`.
    paused: bool,
    /// The session was busy in the last flush interval: it keeps its
    /// buffers between reads instead of pooling them every time.
    hot: bool,
    /// Reads with data in the current flush interval.
    reads: u32,
    /// A request the session could not serve is being discarded (see [`Relay::reject`]).
    rejecting: Option<Rejecting>,
    /// `idle_transaction_timeout` (pooled sessions).
    idle_tx_limit: Option<std::time::Duration>,
    /// With no server attached: client bytes to wait for before asking for one (a pooled
    /// session answering a small message itself needs it whole).
    want_client: usize,
}

/// Discarding a refused request up to its end.
struct Rejecting {
    /// Body bytes of the message being discarded that have not arrived yet.
    skip_left: usize,
    /// Only one message is dropped, and nothing is answered.
    one_frame: bool,
}

/// Reads per flush interval from which a session counts as busy. A session
/// that runs a query now and then pools its buffers at once, as an idle one
/// does, so a crowd of mostly idle sessions holds no buffers.
const BUSY_READS: u32 = 8;

/// Whether a half can do nothing more until its source is ready again: its reads stopped
/// (not ready, or at the end), everything it read is scanned and written, nothing held.
/// (Bytes left unscanned behind a held message that was just let go need another pass: the
/// engine reports no event for bytes already read.)
#[inline]
fn settled(half: &Half, from: &Stream) -> bool {
    half.delivered()
        && !half.held
        && half.win.all_scanned()
        && (half.blocked || half.eof || from.read_drained())
}

/// Tags the relay itself reads whole on the server side: ReadyForQuery.
const SERVER_INSPECT: TagSet = TagSet::of(&[btag::READY_FOR_QUERY]);

/// The two sides of one [`Relay::run`].
struct Sides<'s, O> {
    client: &'s mut Stream,
    server: Option<&'s mut Stream>,
    owner: &'s mut O,
}

impl<'a> Relay<'a> {
    /// A relay for a session whose server side `O` owns; `tx` is the status
    /// of the ReadyForQuery that ended authentication.
    pub fn new<O: Owner>(
        limit: u32,
        tx: TxStatus,
        signals: Signals<'a>,
        tally: PodTally,
    ) -> Relay<'a> {
        let paused = *signals.paused.borrow();
        let mut client = Scanner::new(limit, O::CLIENT_INSPECT, BUF_SIZE);
        if O::CLIENT_INSPECT != TagSet::EMPTY {
            // A message too large to hold is shown without a body: the owner decides.
            client = client.stream_oversize();
        }
        let server = Scanner::new(limit, SERVER_INSPECT.with(O::SERVER_INSPECT), BUF_SIZE);
        Relay {
            c2s: Half::new(client),
            s2c: Half::new(server),
            state: State {
                pending: 0,
                tx,
                client_terminated: false,
                last_server_tag: btag::READY_FOR_QUERY,
                query_start: None,
                tx_start: None,
                batch_open: false,
            },
            control: Control::new(signals),
            drain: DrainState::default(),
            tally,
            resume: None,
            paused,
            hot: false,
            reads: 0,
            rejecting: None,
            idle_tx_limit: None,
            want_client: 0,
            // Relays are built in their session's task (see `driven_off_thread`).
            short_read_drains: tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread),
        }
    }

    /// From now on the relay is driven from another thread than its runtime's IO driver (a
    /// pooled session moved to the engine): a short read no longer marks a tokio stream
    /// drained, since readiness the driver sets between the read and the mark would be lost.
    pub fn driven_off_thread(&mut self) {
        self.short_read_drains = false;
    }

    /// Relays between `client` and `server` (none: not attached) until the
    /// session ends or, for a pooled session, needs or can give back a server.
    pub async fn run<O: Owner>(
        &mut self,
        client: &mut Stream,
        server: Option<&mut Stream>,
        owner: &mut O,
    ) -> Result<Event, SessionError> {
        let mut sides = Sides {
            client,
            server,
            owner,
        };
        std::future::poll_fn(|cx| self.poll(cx, &mut sides)).await
    }

    /// Whether the session has been busy lately (it keeps its buffers between reads).
    pub fn busy(&self) -> bool {
        self.keeps_buffers()
    }

    /// One poll of a passthrough session: relays what can be relayed now
    /// (the epoll engine drives it without a task of its own).
    pub fn poll_passthrough(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut Stream,
        server: &mut Stream,
    ) -> Poll<Result<Event, SessionError>> {
        let mut sides = Sides {
            client,
            server: Some(server),
            owner: &mut Passthrough,
        };
        self.poll(cx, &mut sides)
    }

    /// A new server connection is attached to a pooled session (or it was given back):
    /// its drain order replaces the previous one, and its pod's counters too when the pod
    /// changed (`None`: same pod; the counts so far are flushed first).
    pub fn rebind(
        &mut self,
        drain: Pin<Box<dyn std::future::Future<Output = DrainOrder> + Send + 'a>>,
        tally: Option<PodTally>,
    ) {
        self.control.set_drain(drain);
        self.drain = DrainState::default();
        if let Some(tally) = tally {
            self.tally.flush();
            self.tally = tally;
        }
    }

    /// Counts what follows on another pod's counters (the counts so far are flushed).
    pub fn retally(&mut self, tally: PodTally) {
        self.tally.flush();
        self.tally = tally;
    }

    /// Ends the session when its client sits idle inside a transaction for `limit`.
    pub fn set_idle_transaction_timeout(&mut self, limit: std::time::Duration) {
        self.idle_tx_limit = (!limit.is_zero()).then_some(limit);
    }

    /// The transaction status the client last saw.
    pub fn tx(&self) -> TxStatus {
        self.state.tx
    }

    /// The client's bytes not relayed yet (a pooled session with no server
    /// attached looks at them: a Terminate needs no server).
    pub fn client_unscanned(&self) -> &[u8] {
        self.c2s.win.unscanned()
    }

    /// Bytes to send the client before anything the server sends next
    /// (ParameterStatus changes of a newly lent connection).
    pub fn client_inject(&mut self) -> &mut BytesMut {
        &mut self.s2c.inject
    }

    /// Puts `bytes` back in front of the client's unread input, as if the client had sent
    /// them again (a transaction a replica refused, run again elsewhere); `false` when they
    /// do not fit or the client's input is not empty.
    pub fn replay_client(&mut self, bytes: &[u8]) -> bool {
        let win = &mut self.c2s.win;
        if !win.unscanned().is_empty() || !win.approved().is_empty() {
            return false;
        }
        let spare = win.spare();
        let Some(room) = spare.get_mut(..bytes.len()) else {
            return false;
        };
        room.copy_from_slice(bytes);
        win.filled(bytes.len());
        true
    }

    /// The client's pending request cannot be served (no server for it): it gets
    /// `error` now; its messages are discarded up to the end of the request (a
    /// Query or FunctionCall, or up to Sync), which is answered ReadyForQuery.
    /// Runs while no server is attached.
    pub fn reject(&mut self, error: &[u8]) {
        self.s2c.inject.extend_from_slice(error);
        self.rejecting = Some(Rejecting {
            skip_left: 0,
            one_frame: false,
        });
    }

    /// Discards what [`Relay::reject`] refused; `true` if anything was.
    fn discard_rejected(&mut self) -> Result<bool, SessionError> {
        let Some(rej) = &mut self.rejecting else {
            return Ok(false);
        };
        let win = &mut self.c2s.win;
        let mut progress = false;
        loop {
            if rej.skip_left > 0 {
                let n = rej.skip_left.min(win.unscanned().len());
                if n == 0 {
                    return Ok(progress);
                }
                win.skip(n);
                rej.skip_left -= n;
                progress = true;
                if rej.one_frame && rej.skip_left == 0 {
                    self.rejecting = None;
                    return Ok(true);
                }
                continue;
            }
            let Some(h) = Header::parse(win.unscanned(), u32::MAX).map_err(client_error)? else {
                return Ok(progress);
            };
            if h.tag == ftag::TERMINATE {
                // Left for the session: the client is leaving.
                self.rejecting = None;
                return Ok(true);
            }
            let have = win.unscanned().len().min(h.frame_len());
            win.skip(have);
            rej.skip_left = h.frame_len() - have;
            progress = true;
            if rej.one_frame {
                if rej.skip_left == 0 {
                    self.rejecting = None;
                    return Ok(true);
                }
                continue;
            }
            if matches!(h.tag, ftag::QUERY | ftag::FUNCTION_CALL | ftag::SYNC) && rej.skip_left == 0
            {
                pgsteer_protocol::encode::ready_for_query(&mut self.s2c.inject, self.state.tx);
                self.rejecting = None;
                return Ok(true);
            }
        }
    }

    fn end(&mut self, kind: EndKind) -> End {
        let closing = match kind {
            EndKind::Drained => Some(self.drain.closing(Step::Drain)),
            EndKind::Terminated => Some(self.drain.closing(Step::Terminate)),
            EndKind::ClientClosed | EndKind::ServerClosed | EndKind::IdleInTransaction => None,
        };
        End {
            kind,
            closing,
            client_terminated: self.state.client_terminated,
            server_at_boundary: self.s2c.scanner.at_boundary(),
            client_at_boundary: self.c2s.scanner.at_boundary(),
            last_server_tag: self.state.last_server_tag,
            tx: self.state.tx,
        }
    }

    /// Idle: nothing in flight either way and no transaction open.
    fn idle(&self) -> bool {
        self.state.pending == 0
            && self.state.tx == TxStatus::Idle
            && self.c2s.empty()
            && self.s2c.empty()
    }

    fn poll<O: Owner>(
        &mut self,
        cx: &mut Context<'_>,
        sides: &mut Sides<'_, O>,
    ) -> Poll<Result<Event, SessionError>> {
        if self.control.due(cx)
            && let Some(kind) = self.on_control()
        {
            return Poll::Ready(Ok(Event::End(self.end(kind))));
        }
        self.c2s.blocked = false;
        self.s2c.blocked = false;
        loop {
            let mut progress = self.poll_client_read(cx, sides.client)?;
            let Some(server) = sides.server.as_deref_mut() else {
                progress |= self.discard_rejected()?;
                progress |= poll_flush(
                    &mut self.s2c,
                    sides.client,
                    cx,
                    Side::Client,
                    &mut self.tally.bytes_from_backend,
                    false,
                )?;
                if self.c2s.eof && self.c2s.win.is_empty() {
                    return Poll::Ready(Ok(Event::End(self.end(EndKind::ClientClosed))));
                }
                if self.rejecting.is_none() && !self.c2s.win.is_empty() && self.s2c.delivered() {
                    let waiting = self.c2s.win.unscanned().len();
                    if waiting >= self.want_client || self.c2s.eof || !self.c2s.win.has_room() {
                        self.want_client = 0;
                        return Poll::Ready(Ok(Event::NeedServer));
                    }
                }
                if !progress {
                    self.arm_flush();
                    return Poll::Pending;
                }
                continue;
            };
            progress |= self.scan_client(sides.owner)?;
            let keep = self.keeps_buffers();
            progress |= poll_flush(
                &mut self.c2s,
                server,
                cx,
                Side::Server,
                &mut self.tally.bytes_to_backend,
                keep,
            )?;
            progress |= self.take_held_client(sides.owner)?;
            progress |= self.poll_server_read(cx, server, sides.owner)?;
            progress |= poll_flush(
                &mut self.s2c,
                sides.client,
                cx,
                Side::Client,
                &mut self.tally.bytes_from_backend,
                keep,
            )?;
            progress |= self.drop_held_server();
            if let Some(event) = self.event(sides.owner) {
                return Poll::Ready(Ok(event));
            }
            // Another pass would find what this one left: nothing to read, write or hand on.
            let settled = progress
                && self.rejecting.is_none()
                && settled(&self.c2s, sides.client)
                && settled(&self.s2c, server);
            if !progress || settled {
                self.arm_flush();
                return Poll::Pending;
            }
        }
    }

    /// Whether the loop must stop now, and why.
    fn event<O: Owner>(&mut self, owner: &O) -> Option<Event> {
        let end = |r: &mut Self, kind| Some(Event::End(r.end(kind)));
        if self.drain.stopped() && self.s2c.delivered() {
            return end(self, EndKind::Drained);
        }
        if let Some(kind) = ending(self.drain.check(self.idle())) {
            return end(self, kind);
        }
        if self.c2s.eof && self.c2s.delivered() {
            return end(self, EndKind::ClientClosed);
        }
        if (self.s2c.eof || owner.server_gone()) && self.s2c.delivered() {
            return end(self, EndKind::ServerClosed);
        }
        (owner.lends() && self.idle()).then_some(Event::Idle)
    }

    /// Keeps the metric flush timer armed while there is something to flush.
    fn arm_flush(&mut self) {
        if self.keeps_buffers() || self.tally.is_dirty() {
            self.control.arm_flush();
        }
        if self.idle_tx_limit.is_some() {
            let waiting = self.state.pending == 0
                && self.state.tx != TxStatus::Idle
                && self.c2s.win.is_empty();
            self.control
                .idle_in_transaction(self.idle_tx_limit.filter(|_| waiting));
        }
    }

    /// Whether buffers stay with the session between reads.
    fn keeps_buffers(&self) -> bool {
        self.hot || self.reads >= BUSY_READS
    }

    /// Acts on what the control futures report; `Some` ends the relay.
    fn on_control(&mut self) -> Option<EndKind> {
        let ev = self.control.poll();
        if ev.hard {
            return Some(EndKind::Terminated);
        }
        if ev.flush {
            self.tally.flush();
            self.hot = self.reads >= BUSY_READS;
            self.reads = 0;
            if !self.hot {
                // Quiet or nearly so for a whole interval: give the buffers back.
                self.c2s.win.release();
                self.s2c.win.release();
            }
        }
        if let Some(order) = ev.order {
            match self.drain.order(order, self.idle()) {
                Step::StartGrace(g) => self.control.start_grace(g),
                step => {
                    if let Some(kind) = ending(step) {
                        return Some(kind);
                    }
                }
            }
        }
        if ev.deadline {
            return ending(self.drain.deadline(self.idle()));
        }
        if ev.idle_in_transaction
            && self.state.pending == 0
            && self.state.tx != TxStatus::Idle
            && self.c2s.win.is_empty()
        {
            return Some(EndKind::IdleInTransaction);
        }
        None
    }

    /// Whether a pause holds this session at its transaction boundary now.
    fn held_by_pause(&mut self, cx: &mut Context<'_>) -> bool {
        // `has_changed` is one atomic load; `borrow` would take the channel's
        // lock on every pass of the relay loop.
        if self.control.signals.paused.has_changed().unwrap_or(false) {
            self.paused = *self.control.signals.paused.borrow_and_update();
        }
        if !self.paused || !self.idle() {
            self.resume = None;
            return false;
        }
        let resume = self.resume.get_or_insert_with(|| {
            let mut rx = self.control.signals.paused.clone();
            Box::pin(async move {
                let _ = rx.wait_for(|paused| !*paused).await;
            })
        });
        if resume.as_mut().poll(cx).is_ready() {
            self.resume = None;
            return false;
        }
        true
    }

    fn poll_client_read(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut Stream,
    ) -> Result<bool, SessionError> {
        if self.held_by_pause(cx) {
            return Ok(false);
        }
        let n = self.fill(Side::Client, client, cx)?;
        Ok(n.is_some())
    }

    /// Reads what `from` (the client or the server side) has into its half, counting the
    /// read towards the session's busyness.
    fn fill(
        &mut self,
        side: Side,
        from: &mut Stream,
        cx: &mut Context<'_>,
    ) -> Result<Option<usize>, SessionError> {
        let keep = self.keeps_buffers();
        let half = match side {
            Side::Client => &mut self.c2s,
            _ => &mut self.s2c,
        };
        let n = poll_fill(half, from, cx, side, self.short_read_drains, keep)?;
        if n.is_some_and(|n| n > 0) {
            self.reads += 1;
        }
        Ok(n)
    }

    /// Scans what the client sent into approval for the server, up to a
    /// message the owner holds.
    fn scan_client<O: Owner>(&mut self, owner: &mut O) -> Result<bool, SessionError> {
        if self.c2s.held || self.c2s.win.unscanned().is_empty() {
            return Ok(false);
        }
        let state = &mut self.state;
        let scan = self
            .c2s
            .scanner
            .scan(self.c2s.win.unscanned(), |f| {
                let flow = owner.client_frame(&f);
                if flow != Flow::Hold {
                    match f.tag {
                        ftag::QUERY | ftag::SYNC | ftag::FUNCTION_CALL => state.request(),
                        ftag::TERMINATE => state.client_terminated = true,
                        _ => state.batch_open = true,
                    }
                }
                flow
            })
            .map_err(|e| SessionError::client_protocol(e.to_string()))?;
        self.c2s.win.approve(scan.forward);
        self.c2s.held = scan.held;
        Ok(scan.forward > 0)
    }

    /// Once everything before a held client message is written, lets the
    /// owner replace it (the replacement goes first; a body the owner did not
    /// take streams on).
    fn take_held_client<O: Owner>(&mut self, owner: &mut O) -> Result<bool, SessionError> {
        let half = &mut self.c2s;
        if !half.held || !half.win.approved().is_empty() || !half.inject.is_empty() {
            return Ok(false);
        }
        let un = half.win.unscanned();
        let Some(h) = Header::parse(un, u32::MAX).map_err(client_error)? else {
            return Ok(false);
        };
        let body_len = h.frame_len() - HEADER_LEN;
        let have = un.len().saturating_sub(HEADER_LEN).min(body_len);
        let body = un.get(HEADER_LEN..HEADER_LEN + have).unwrap_or_default();
        let Some(taken) = owner.rewrite(h.tag, body, body_len, &mut half.inject)? else {
            // The owner needs more of the message before it can rewrite it.
            return Ok(false);
        };
        let taken = taken.min(have);
        match h.tag {
            ftag::QUERY | ftag::SYNC | ftag::FUNCTION_CALL => self.state.request(),
            ftag::TERMINATE => self.state.client_terminated = true,
            _ => self.state.batch_open = true,
        }
        half.win.skip(HEADER_LEN + taken);
        if taken < body_len {
            half.scanner.stream_rest(body_len - taken);
        }
        half.held = false;
        Ok(true)
    }

    /// Drops a server message the owner held (the answer to something it
    /// sent on its own), once everything before it is written.
    fn drop_held_server(&mut self) -> bool {
        let half = &mut self.s2c;
        if !half.held || !half.win.approved().is_empty() {
            return false;
        }
        let Ok(Some(h)) = Header::parse(half.win.unscanned(), u32::MAX) else {
            return false;
        };
        if half.win.unscanned().len() < h.frame_len() {
            return false;
        }
        half.win.skip(h.frame_len());
        half.held = false;
        true
    }

    fn poll_server_read<O: Owner>(
        &mut self,
        cx: &mut Context<'_>,
        server: &mut Stream,
        owner: &mut O,
    ) -> Result<bool, SessionError> {
        if self.drain.stopped() {
            // Closing at the drain's idle point once what was approved is written.
            return Ok(false);
        }
        let n = self.fill(Side::Server, server, cx)?;
        let scanned = self.scan_server(owner)?;
        Ok(n.is_some() || scanned)
    }

    fn scan_server<O: Owner>(&mut self, owner: &mut O) -> Result<bool, SessionError> {
        if self.s2c.held || self.s2c.win.unscanned().is_empty() {
            return Ok(false);
        }
        let state = &mut self.state;
        let tally = &mut self.tally;
        let drain = &mut self.drain;
        let half = &mut self.s2c;
        let scan = half
            .scanner
            .scan(half.win.unscanned(), |f| {
                let flow = owner.server_frame(&f, &mut half.inject);
                if flow == Flow::Hold && f.tag != btag::READY_FOR_QUERY {
                    return Flow::Hold;
                }
                state.last_server_tag = f.tag;
                if f.tag == btag::COMMAND_COMPLETE {
                    tally.queries += 1;
                }
                if f.tag != btag::READY_FOR_QUERY {
                    return Flow::Continue;
                }
                if let Some(tx) = f
                    .body
                    .and_then(|b| b.first())
                    .and_then(|&b| TxStatus::from_byte(b))
                {
                    state.tx = tx;
                }
                state.ready_for_query(tally);
                if flow == Flow::Hold {
                    // Answered, but not to the client (the owner sends the request again).
                    Flow::Hold
                } else if drain.ready_for_query(state.tx, state.pending) {
                    Flow::Stop
                } else {
                    Flow::Continue
                }
            })
            .map_err(|e| SessionError::server_protocol(e.to_string()))?;
        self.s2c.win.approve(scan.forward);
        self.s2c.held = scan.held;
        Ok(scan.forward > 0)
    }
}

fn client_error(e: pgsteer_protocol::FrameError) -> SessionError {
    SessionError::client_protocol(e.to_string())
}

/// The end a drain step calls for, if any (a grace is started by the caller).
fn ending(step: Step) -> Option<EndKind> {
    match step {
        Step::Drain => Some(EndKind::Drained),
        Step::Terminate => Some(EndKind::Terminated),
        Step::Continue | Step::StartGrace(_) => None,
    }
}
