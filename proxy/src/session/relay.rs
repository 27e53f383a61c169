//! The relay: both directions of an authenticated session in one task.
//!
//! Bytes are read into pooled buffers, walked header by header by a
//! [`Scanner`] and written on in whole runs, usually with one read and one
//! write syscall per burst. Only ReadyForQuery bodies are read (to know
//! whether the session is idle, in a transaction or failed) and only message
//! types are counted; everything else streams through. Draining is the
//! [`DrainState`] of `drain.rs`: the relay feeds it orders, deadlines and
//! ReadyForQuery statuses, and closes when it says so.
//!
//! Either side may be TLS ([`Stream`]): a TLS write can leave bytes in the
//! rustls buffer, so a half that wrote to a TLS stream flushes it before it
//! counts as done. On plaintext TCP that flag is never set.
//!
//! The hot path touches nothing shared: metric counts go to a per-session
//! [`PodTally`] that is flushed every [`FLUSH_INTERVAL`], and the control
//! futures (drain order, hard stop, grace deadline, flush timer) are polled
//! with a waker of their own, only after it fired ([`Control`]), not on
//! every socket wake-up. A busy session ([`BUSY_READS`] reads in a flush
//! interval) keeps its buffers between reads; once an interval passes with
//! fewer, they go back to the pool, so an idle session, or one that runs a
//! query now and then, holds none.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

use pgsteer_protocol::backend::{TxStatus, tag as btag};
use pgsteer_protocol::frontend::tag as ftag;
use pgsteer_protocol::{Flow, Scanner, TagSet};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::buffer::{BUF_SIZE, Window};
use super::stream::Stream;
use super::{SessionError, Side};
use crate::drain::{Closing, DrainOrder, DrainState, Step};
use crate::metrics::{FLUSH_INTERVAL, PodTally};

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
}

impl State {
    /// Book-keeping for one ReadyForQuery: the answer to the oldest request.
    fn ready_for_query(&mut self, tally: &mut PodTally) {
        self.pending = self.pending.saturating_sub(1);
        if self.pending > 0 {
            return;
        }
        let now = Instant::now();
        if let Some(started) = self.query_start.take() {
            tally.query_seconds.observe((now - started).as_secs_f64());
        }
        if self.tx == TxStatus::Idle {
            tally.transactions += 1;
            if let Some(t) = self.tx_start.take() {
                tally.transaction_seconds.observe((now - t).as_secs_f64());
            }
        }
    }
}

/// Futures that ask the relay to stop or wait.
pub struct Signals<'a> {
    /// Resolves when the session should close at its next idle point.
    pub drain: Pin<Box<dyn Future<Output = DrainOrder> + Send + 'a>>,
    /// Resolves when the session must close now.
    pub hard: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    /// `true` while new transactions are held (`POST /pause`).
    pub paused: watch::Receiver<bool>,
}

type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The waker the control futures are polled with: it records that one of
/// them is ready to make progress, then wakes the session's task.
#[derive(Default)]
struct ControlWake {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ControlWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// What the control futures said when polled.
#[derive(Default)]
struct ControlEvents {
    hard: bool,
    order: Option<DrainOrder>,
    deadline: bool,
    flush: bool,
}

/// The futures that stop or pace the relay, and their own waker.
struct Control<'a> {
    signals: Signals<'a>,
    /// Fires when a draining session's grace is over.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Fires when the tally is due to be flushed (armed while it is dirty).
    flush: Option<Pin<Box<Sleep>>>,
    flush_armed: bool,
    /// A drain order was received: its future is done.
    ordered: bool,
    wake: Arc<ControlWake>,
    waker: Waker,
}

impl<'a> Control<'a> {
    fn new(signals: Signals<'a>) -> Control<'a> {
        let wake = Arc::new(ControlWake::default());
        // Poll everything once to register the control waker.
        wake.fired.store(true, Ordering::Relaxed);
        Control {
            signals,
            deadline: None,
            flush: None,
            flush_armed: false,
            ordered: false,
            waker: Waker::from(wake.clone()),
            wake,
        }
    }

    /// Registers the task's waker; `true` if a control future fired since
    /// the last [`Control::poll`].
    fn due(&self, cx: &Context<'_>) -> bool {
        self.wake.task.register(cx.waker());
        self.wake.fired.swap(false, Ordering::Acquire)
    }

    fn poll(&mut self) -> ControlEvents {
        let mut cx = Context::from_waker(&self.waker);
        let mut ev = ControlEvents {
            hard: self.signals.hard.as_mut().poll(&mut cx).is_ready(),
            ..ControlEvents::default()
        };
        if !self.ordered
            && let Poll::Ready(order) = self.signals.drain.as_mut().poll(&mut cx)
        {
            self.ordered = true;
            ev.order = Some(order);
        }
        if let Some(d) = &mut self.deadline {
            ev.deadline = d.as_mut().poll(&mut cx).is_ready();
        }
        if self.flush_armed
            && let Some(f) = &mut self.flush
            && f.as_mut().poll(&mut cx).is_ready()
        {
            self.flush_armed = false;
            ev.flush = true;
        }
        ev
    }

    /// Starts the grace period of a drain order.
    fn start_grace(&mut self, grace: std::time::Duration) {
        let mut sleep = Box::pin(tokio::time::sleep(grace));
        let mut cx = Context::from_waker(&self.waker);
        if sleep.as_mut().poll(&mut cx).is_ready() {
            self.waker.wake_by_ref();
        }
        self.deadline = Some(sleep);
    }

    /// Makes sure a flush happens within [`FLUSH_INTERVAL`].
    fn arm_flush(&mut self) {
        if self.flush_armed {
            return;
        }
        let at = Instant::now() + FLUSH_INTERVAL;
        let sleep = self
            .flush
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        sleep.as_mut().reset(at);
        let mut cx = Context::from_waker(&self.waker);
        if sleep.as_mut().poll(&mut cx).is_ready() {
            self.waker.wake_by_ref();
        }
        self.flush_armed = true;
    }
}

struct Half {
    win: Window,
    scanner: Scanner,
    eof: bool,
    /// The last read in this poll came back empty: its waker is registered,
    /// so reading again before the task is woken would only retake the IO
    /// driver's lock. Cleared at the start of every poll.
    blocked: bool,
    /// Bytes were written to a TLS stream that has not been flushed since.
    unflushed: bool,
}

impl Half {
    fn new(limit: u32, inspect: TagSet) -> Half {
        Half {
            win: Window::default(),
            scanner: Scanner::new(limit, inspect, BUF_SIZE),
            eof: false,
            blocked: false,
            unflushed: false,
        }
    }

    /// Everything read has been written out (and flushed).
    fn delivered(&self) -> bool {
        self.win.approved().is_empty() && !self.unflushed
    }
}

/// One relay run.
pub struct Relay<'a> {
    client: &'a mut Stream,
    server: &'a mut Stream,
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
}

/// Reads per flush interval from which a session counts as busy. A session
/// that runs a query now and then pools its buffers at once, as an idle one
/// does, so a crowd of mostly idle sessions holds no buffers.
const BUSY_READS: u32 = 8;

/// Tags read whole on the server side: only ReadyForQuery.
const SERVER_INSPECT: TagSet = TagSet::of(&[btag::READY_FOR_QUERY]);

impl<'a> Relay<'a> {
    /// A relay over an authenticated session; `tx` is the status of the
    /// ReadyForQuery that ended authentication.
    pub fn new(
        client: &'a mut Stream,
        server: &'a mut Stream,
        limit: u32,
        tx: TxStatus,
        signals: Signals<'a>,
        tally: PodTally,
    ) -> Relay<'a> {
        let paused = *signals.paused.borrow();
        Relay {
            client,
            server,
            c2s: Half::new(limit, TagSet::EMPTY),
            s2c: Half::new(limit, SERVER_INSPECT),
            state: State {
                pending: 0,
                tx,
                client_terminated: false,
                last_server_tag: btag::READY_FOR_QUERY,
                query_start: None,
                tx_start: None,
            },
            control: Control::new(signals),
            drain: DrainState::default(),
            tally,
            resume: None,
            paused,
            hot: false,
            reads: 0,
            short_read_drains: tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread),
        }
    }

    /// Runs until one side closes, a drain completes or the hard deadline fires.
    pub async fn run(mut self) -> Result<End, SessionError> {
        std::future::poll_fn(|cx| self.poll(cx)).await
    }

    fn end(&mut self, kind: EndKind) -> End {
        let closing = match kind {
            EndKind::Drained => Some(self.drain.closing(Step::Drain)),
            EndKind::Terminated => Some(self.drain.closing(Step::Terminate)),
            EndKind::ClientClosed | EndKind::ServerClosed => None,
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
            && self.c2s.win.is_empty()
            && self.s2c.win.is_empty()
            && self.s2c.scanner.at_boundary()
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<End, SessionError>> {
        if self.control.due(cx)
            && let Some(kind) = self.on_control()
        {
            return Poll::Ready(Ok(self.end(kind)));
        }
        self.c2s.blocked = false;
        self.s2c.blocked = false;
        loop {
            let mut progress = self.poll_client_read(cx)?;
            let keep = self.keeps_buffers();
            progress |= poll_flush(
                &mut self.c2s,
                self.server,
                cx,
                Side::Server,
                &mut self.tally.bytes_to_backend,
                keep,
            )?;
            progress |= self.poll_server_read(cx)?;
            progress |= poll_flush(
                &mut self.s2c,
                self.client,
                cx,
                Side::Client,
                &mut self.tally.bytes_from_backend,
                keep,
            )?;

            if self.drain.stopped() && self.s2c.delivered() {
                return Poll::Ready(Ok(self.end(EndKind::Drained)));
            }
            if let Some(kind) = ending(self.drain.check(self.idle())) {
                return Poll::Ready(Ok(self.end(kind)));
            }
            if self.c2s.eof && self.c2s.delivered() {
                return Poll::Ready(Ok(self.end(EndKind::ClientClosed)));
            }
            if self.s2c.eof && self.s2c.delivered() {
                return Poll::Ready(Ok(self.end(EndKind::ServerClosed)));
            }
            if !progress {
                if self.keeps_buffers() || self.tally.is_dirty() {
                    self.control.arm_flush();
                }
                return Poll::Pending;
            }
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

    fn poll_client_read(&mut self, cx: &mut Context<'_>) -> Result<bool, SessionError> {
        if self.held_by_pause(cx) {
            return Ok(false);
        }
        let keep = self.keeps_buffers();
        let Some(n) = poll_fill(
            &mut self.c2s,
            self.client,
            cx,
            Side::Client,
            self.short_read_drains,
            keep,
        )?
        else {
            return Ok(false);
        };
        if n == 0 {
            return Ok(true);
        }
        self.reads += 1;
        let state = &mut self.state;
        let scan = self
            .c2s
            .scanner
            .scan(self.c2s.win.unscanned(), |f| {
                match f.tag {
                    ftag::QUERY | ftag::SYNC | ftag::FUNCTION_CALL => {
                        if state.pending == 0 {
                            let now = Instant::now();
                            state.query_start = Some(now);
                            if state.tx == TxStatus::Idle && state.tx_start.is_none() {
                                state.tx_start = Some(now);
                            }
                        }
                        state.pending += 1;
                    }
                    ftag::TERMINATE => state.client_terminated = true,
                    _ => {}
                }
                Flow::Continue
            })
            .map_err(|e| SessionError::client_protocol(e.to_string()))?;
        self.c2s.win.approve(scan.forward);
        Ok(true)
    }

    fn poll_server_read(&mut self, cx: &mut Context<'_>) -> Result<bool, SessionError> {
        if self.drain.stopped() {
            // Closing at the drain's idle point once what was approved is written.
            return Ok(false);
        }
        let keep = self.keeps_buffers();
        let Some(n) = poll_fill(
            &mut self.s2c,
            self.server,
            cx,
            Side::Server,
            self.short_read_drains,
            keep,
        )?
        else {
            return Ok(false);
        };
        if n == 0 {
            return Ok(true);
        }
        self.reads += 1;
        let state = &mut self.state;
        let tally = &mut self.tally;
        let drain = &mut self.drain;
        let scan = self
            .s2c
            .scanner
            .scan(self.s2c.win.unscanned(), |f| {
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
                if drain.ready_for_query(state.tx, state.pending) {
                    Flow::Stop
                } else {
                    Flow::Continue
                }
            })
            .map_err(|e| SessionError::server_protocol(e.to_string()))?;
        self.s2c.win.approve(scan.forward);
        Ok(true)
    }
}

/// The end a drain step calls for, if any (a grace is started by the caller).
fn ending(step: Step) -> Option<EndKind> {
    match step {
        Step::Drain => Some(EndKind::Drained),
        Step::Terminate => Some(EndKind::Terminated),
        Step::Continue | Step::StartGrace(_) => None,
    }
}

/// Reads what is available into a half's window. `Ok(None)`: nothing read
/// (not ready, blocked earlier in this poll, no room, or closed);
/// `Ok(Some(0))`: end of stream just seen. While `keep` is set (the session
/// is busy) the buffer stays with the window when the socket has nothing;
/// otherwise it goes back to the pool, so idle sessions hold none.
fn poll_fill(
    half: &mut Half,
    from: &mut Stream,
    cx: &mut Context<'_>,
    side: Side,
    short_read_drains: bool,
    keep: bool,
) -> Result<Option<usize>, SessionError> {
    if half.eof || half.blocked || !half.win.has_room() {
        return Ok(None);
    }
    let spare = half.win.spare();
    let room = spare.len();
    let mut rb = ReadBuf::new(spare);
    match Pin::new(&mut *from).poll_read(cx, &mut rb) {
        Poll::Pending => {
            if !keep {
                half.win.release();
            }
            half.blocked = true;
            Ok(None)
        }
        Poll::Ready(Ok(())) => {
            let n = rb.filled().len();
            if n == 0 {
                half.eof = true;
                half.win.release();
            } else {
                half.win.filled(n);
                if short_read_drains && n < room {
                    from.mark_drained();
                }
            }
            Ok(Some(n))
        }
        Poll::Ready(Err(e)) => Err(SessionError::io(side, e)),
    }
}

/// Writes a half's approved bytes to the other side (and flushes a TLS stream).
fn poll_flush(
    half: &mut Half,
    to: &mut Stream,
    cx: &mut Context<'_>,
    side: Side,
    bytes: &mut u64,
    keep: bool,
) -> Result<bool, SessionError> {
    let mut progress = false;
    while !half.win.approved().is_empty() {
        let n = match Pin::new(&mut *to).poll_write(cx, half.win.approved()) {
            Poll::Pending => break,
            Poll::Ready(Ok(0)) => {
                return Err(SessionError::io(side, std::io::ErrorKind::WriteZero.into()));
            }
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Err(SessionError::io(side, e)),
        };
        half.win.consume(n);
        if !keep {
            half.win.release();
        }
        *bytes += n as u64;
        progress = true;
        half.unflushed = to.buffers_writes();
    }
    if half.unflushed {
        match Pin::new(&mut *to).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                half.unflushed = false;
                progress = true;
            }
            Poll::Pending => {}
            Poll::Ready(Err(e)) => return Err(SessionError::io(side, e)),
        }
    }
    Ok(progress)
}
