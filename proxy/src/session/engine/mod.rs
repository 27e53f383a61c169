//! The epoll engine: beside each event loop, a thread that relays every plaintext session of
//! that loop (passthrough relays, and pooled sessions whole), with no tokio task, waker or
//! readiness lock per socket.
//!
//! tokio's readiness machinery costs, per read or write that finds a socket not ready, a
//! waker registration under a lock, and per wake-up a task poll: about a third of what the
//! proxy spent per transaction in user space (benches/RESULTS.md). Here a session's two
//! sockets are registered once, edge-triggered, in the engine's own epoll instance, and the
//! engine thread blocks in `epoll_wait` on it. For each ready socket it sets a flag and runs
//! the session that waits on it directly; a read or write that finds nothing clears the flag
//! (no syscall is made until the next event). The relay is the same code as in a task: the
//! engine only replaces what drives it. The control futures (drain orders, timers, shutdown)
//! still wake it, through a waker that queues the session (and wakes the thread when it is
//! woken from another one). A passthrough session's sockets keep their flags in the session
//! and their token names it (`owned.rs`); sockets that joined the engine for longer (a pooled
//! session's client, pooled server connections) are found by token in a table (`io.rs`).
//!
//! A thread of its own rather than a task on the loop: a task could only learn of the
//! engine's events through tokio's epoll, a nested `epoll_wait` per wake-up, which cost as
//! much kernel time as the engine saved in user space. The engine thread enters the loop's
//! runtime, so the relay's timers run on the loop's clock; it stops when that runtime does.
//!
//! A passthrough session starts its relay in its own task and enters the engine once it is
//! busy ([`run`]):
//! a connection used for one transaction would pay more for the move (its sockets leave
//! tokio's epoll for the engine's and come back, two cross-thread wake-ups) than the engine
//! saves it. It leaves when the relay ends; its sockets are handed back to tokio for closing.
//!
//! A pooled session is handed over whole, as a future, once it is busy between two
//! transactions ([`Handle::hop_when_busy`], [`hop`]): it borrows a server connection per
//! transaction, so its relay runs in short passes between lends that only the session's own
//! code strings together. Until then it runs in its task, like a passthrough session, so a
//! connection opened for one transaction (`pgbench -C`) pays no move. Its client socket joins
//! the engine when it moves, and a pooled server connection joins the engine when a session
//! there borrows it and goes back to tokio when a session in a task does ([`settle`]): a
//! connection lent from one engine session to the next changes hands with no syscall, and one
//! lent to a task is reported by that task's own loop (through the engine, each wait would
//! wake a second thread). The rare steps of a lend that wait on something else (opening a
//! connection, a pool's queue, a hold) are tokio futures polled from the engine thread; their
//! wakers queue the session like the control futures. Sessions with a TLS side stay in their
//! tasks (a pooled one moves only with `server_mode = "disable"`, where no server connection is
//! TLS). `[runtime] relay_engine = "tokio"` turns the engine off.

mod io;
mod owned;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use mio::{Events, Token};
use tokio::sync::oneshot;
use tracing::{error, warn};

use super::relay::{Event, Relay};
use super::stream::Stream;
use super::{SessionError, Side};
pub use io::AdoptedTcp;
use io::{ADOPTED, Sockets};
pub use owned::EngineTcp;
use std::os::fd::AsRawFd;

use mio::Interest;
use mio::unix::SourceFd;

/// A relay with its two sides, as handed to the engine and back.
pub struct Relaying {
    pub relay: Relay<'static>,
    pub client: Stream,
    pub server: Stream,
}

/// Readiness events taken per `epoll_wait`.
const EVENTS: usize = 256;

/// The token of the engine's own waker (sockets have their place in [`Sockets`]).
const WAKE: Token = Token(usize::MAX - 1);

/// What [`run`] gives back: the relay and its sides, and how it stopped.
pub type Outcome = (Relaying, Result<Event, SessionError>);

/// Relays `r` until it stops. With `use_engine`, plaintext on both sides and an engine on this
/// thread (started if need be), it starts in the calling task and moves to the engine once it
/// is busy (a session that ends after a round trip or two, one connection per transaction,
/// would pay more for the move than the engine saves it); otherwise it stays in the task.
/// Counted in `relayed` by where it ended. `Err`: the engine went away with the session (its
/// runtime is shutting down).
pub async fn run(
    mut r: Relaying,
    use_engine: bool,
    relayed: &prometheus::IntCounterVec,
) -> Result<Outcome, SessionError> {
    let plain = matches!((&r.client, &r.server), (Stream::Plain(_), Stream::Plain(_)));
    let engine = if use_engine && plain { handle() } else { None };
    let Some(engine) = engine else {
        relayed.with_label_values(&["task"]).inc();
        let res = to_end(&mut r).await;
        return Ok((r, res));
    };
    if let Some(res) = until_busy(&mut r).await {
        relayed.with_label_values(&["task"]).inc();
        return Ok((r, res));
    }
    relayed.with_label_values(&["epoll"]).inc();
    let client = into_engine(&mut r.client).map_err(|e| SessionError::io(Side::Client, e));
    let server = into_engine(&mut r.server).map_err(|e| SessionError::io(Side::Server, e));
    if let Err(e) = client.and(server) {
        return Ok((r, Err(e)));
    }
    let (done, rx) = oneshot::channel();
    engine.submit(Job::new(Kind::Relay(Box::new(r), done)));
    rx.await.map_err(|_| gone())
}

fn gone() -> SessionError {
    SessionError::quiet(
        Side::Internal,
        "the relay engine dropped the session (its runtime stopped, or its relay failed)",
    )
}

/// A passthrough session's plaintext stream taken from tokio for the engine (in place); the
/// engine registers it when it takes the session in.
fn into_engine(stream: &mut Stream) -> std::io::Result<()> {
    if let Stream::Plain(tcp) = std::mem::replace(stream, Stream::Detached) {
        *stream = Stream::Engine(EngineTcp::new(tcp.into_std()?));
    }
    Ok(())
}

/// One write of `bufs` to `sock` (a plain write for one slice).
#[inline]
fn write_bufs(sock: &std::net::TcpStream, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
    use std::io::Write;
    match bufs {
        [one] => (&*sock).write(one),
        _ => (&*sock).write_vectored(bufs),
    }
}

/// A passthrough session's stream handed back to tokio by `registry`'s engine (in place).
fn out_of_engine(stream: &mut Stream, registry: &mio::Registry) {
    let Stream::Engine(s) = std::mem::replace(stream, Stream::Detached) else {
        return;
    };
    let fd = s.sock.as_raw_fd();
    // Not registered (a failed admission) is fine: the socket leaves either way.
    let _ = registry.deregister(&mut SourceFd(&fd));
    back_to_tokio(stream, Ok(s.sock));
}

/// `sock`, left by the engine, becomes `stream` again; on failure it is closed (detached).
fn back_to_tokio(stream: &mut Stream, sock: std::io::Result<std::net::TcpStream>) {
    match sock.and_then(tokio::net::TcpStream::from_std) {
        Ok(t) => *stream = Stream::Plain(t),
        Err(e) => warn!(error = %e, "cannot hand a relayed socket back to the runtime"),
    }
}

/// Inside an engine session: a plaintext stream joins the engine (in place), for the rest of
/// its life or until [`release`]. Elsewhere, or if it cannot, it stays with tokio.
pub fn adopt(stream: &mut Stream) {
    if !matches!(stream, Stream::Plain(_)) || !io::in_engine() {
        return;
    }
    let Some(engine) = ENGINE.with(|e| e.borrow().clone()) else {
        return;
    };
    let Some(slot) = io::polled_here(io::engine_id(&engine.shared)) else {
        return;
    };
    let Stream::Plain(tcp) = std::mem::replace(stream, Stream::Detached) else {
        return;
    };
    match tcp
        .into_std()
        .and_then(|sock| AdoptedTcp::register(sock, &engine.shared, slot))
    {
        Ok(s) => *stream = Stream::Adopted(s),
        // The socket left tokio and could not join the engine: it is closed.
        Err(e) => warn!(error = %e, "cannot register a socket with the relay engine"),
    }
}

/// A stream joins the engine of the session polled now ([`adopt`]), or, outside an engine,
/// goes back to tokio ([`release`]).
pub fn settle(stream: &mut Stream) {
    if io::in_engine() {
        adopt(stream);
    } else {
        release(stream);
    }
}

/// A stream that joined the engine with [`adopt`] goes back to tokio (in place).
pub fn release(stream: &mut Stream) {
    if !matches!(stream, Stream::Adopted(_)) {
        return;
    }
    if let Stream::Adopted(s) = std::mem::replace(stream, Stream::Detached) {
        back_to_tokio(stream, s.deregister());
    }
}

/// Moves the calling session into its engine when it runs under
/// [`Handle::hop_when_busy`]: it resumes there (one `Pending` in between, with nothing else
/// awaited meanwhile). Elsewhere, or already in an engine, it returns at once.
pub async fn hop() {
    let mut asked = false;
    std::future::poll_fn(|_| {
        if asked || io::in_engine() || !HOP_OFFERED.get() {
            return Poll::Ready(());
        }
        asked = true;
        HOP_WANTED.set(true);
        Poll::Pending
    })
    .await
}

/// Whether the caller runs inside an engine session (a task's runtime assumptions do not
/// hold there: the runtime's IO driver runs on another thread meanwhile).
pub fn in_engine() -> bool {
    io::in_engine()
}

/// The relay run in the session's own task, to its end.
async fn to_end(r: &mut Relaying) -> Result<Event, SessionError> {
    std::future::poll_fn(|cx| r.relay.poll_passthrough(cx, &mut r.client, &mut r.server)).await
}

/// The relay run in the session's own task, to its end, or until it is busy and has nothing
/// to do this moment (`None`): the point to move it.
async fn until_busy(r: &mut Relaying) -> Option<Result<Event, SessionError>> {
    std::future::poll_fn(
        |cx| match r.relay.poll_passthrough(cx, &mut r.client, &mut r.server) {
            Poll::Ready(res) => Poll::Ready(Some(res)),
            Poll::Pending if r.relay.busy() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        },
    )
    .await
}

thread_local! {
    /// The engine of this thread's loop, started by its first plaintext session (on an
    /// engine's own thread: that engine).
    static ENGINE: RefCell<Option<Handle>> = const { RefCell::new(None) };
    /// On an engine's thread: sessions woken from it, polled before it waits again.
    static WOKEN_HERE: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    /// `WOKEN_HERE` has something (looked at before anything else is).
    static WOKE_HERE: Cell<bool> = const { Cell::new(false) };
    /// On an engine's own thread: that engine's id (0 elsewhere).
    static HOME: Cell<usize> = const { Cell::new(0) };
    /// The task polling now would move its session to an engine if asked ([`hop`]).
    static HOP_OFFERED: Cell<bool> = const { Cell::new(false) };
    /// The session polled now asked to move.
    static HOP_WANTED: Cell<bool> = const { Cell::new(false) };
}

/// The engine kept in `slot` for sessions of several threads (pooled ones, whose server
/// connections join it while lent there), started from this thread if there is none or it stopped;
/// `None` if it cannot start.
pub fn shared_handle(slot: &Mutex<Option<Handle>>) -> Option<Handle> {
    let mut slot = lock(slot);
    if let Some(h) = slot.as_ref()
        && !h.shared.stopped.load(Ordering::Acquire)
    {
        return Some(h.clone());
    }
    *slot = handle();
    slot.clone()
}

/// This thread's engine, started for the current runtime if it has none (or its runtime has
/// gone); `None` if it cannot start (logged once per thread).
pub fn handle() -> Option<Handle> {
    ENGINE.with(|e| {
        let mut e = e.borrow_mut();
        if let Some(h) = e.as_ref()
            && !h.shared.stopped.load(Ordering::Acquire)
        {
            return Some(h.clone());
        }
        match Engine::start() {
            Ok(h) => {
                *e = Some(h.clone());
                Some(h)
            }
            Err(err) => {
                if e.is_none() {
                    warn!(error = %err, "cannot start the epoll relay engine; sessions relay in their tasks");
                }
                None
            }
        }
    })
}

/// What sessions and wakers share with the engine thread.
struct Shared {
    /// Sessions handed over, not yet registered.
    incoming: Mutex<Vec<Job>>,
    /// Sessions whose control futures fired.
    woken: Mutex<Vec<usize>>,
    /// Something was queued since the engine last looked: the thread has been woken.
    queued: AtomicBool,
    waker: mio::Waker,
    /// The engine has stopped, or is stopping: its runtime is gone.
    stopped: AtomicBool,
    /// Where each registered socket's readiness is, by token.
    sockets: Mutex<Sockets>,
    /// The engine's epoll, to register and deregister sockets from any thread.
    registry: mio::Registry,
}

impl Shared {
    /// Wakes the engine thread, once for everything queued before it looks.
    fn notify(&self) {
        if !self.queued.swap(true, Ordering::AcqRel)
            && let Err(e) = self.waker.wake()
        {
            warn!(error = %e, "cannot wake the relay engine");
        }
    }

    /// Drops the sessions still queued: their channels close, so they end instead of waiting
    /// for an engine that is gone.
    fn close_queue(&self) {
        // Dropped after the lock is let go: a session's drop code must not run under it.
        let queued = std::mem::take(&mut *lock(&self.incoming));
        drop(queued);
    }
}

/// An engine, to hand sessions to.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// Runs `session` in the engine, to its end; `Err` if the engine went away with it (its
    /// runtime stopped, or the session panicked).
    async fn spawn<T: Send + 'static>(
        &self,
        session: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, SessionError> {
        let (done, rx) = oneshot::channel();
        self.submit(Job::new(Kind::Task(Box::pin(async move {
            let _ = done.send(session.await);
        }))));
        rx.await.map_err(|_| gone())
    }

    /// Runs `session` in its task until it asks to move ([`hop`]: it is busy), then in the
    /// engine to its end; a session that never asks never moves (a connection used for one
    /// transaction pays no move). Counted in `relayed`: `epoll` when it moves, `task` when it
    /// ends in its task.
    ///
    /// Boxed by the caller, in the expression that builds it: an async fn keeps its arguments
    /// in its own state, so a session passed by value would take its room twice (an idle
    /// pooled client's memory).
    pub async fn hop_when_busy<T: Send + 'static>(
        &self,
        mut session: Pin<Box<dyn Future<Output = T> + Send + 'static>>,
        relayed: &prometheus::IntCounterVec,
    ) -> Result<T, SessionError> {
        let moved = std::future::poll_fn(|cx| {
            HOP_OFFERED.set(true);
            let polled = session.as_mut().poll(cx);
            HOP_OFFERED.set(false);
            match polled {
                Poll::Ready(out) => Poll::Ready(Some(out)),
                Poll::Pending if HOP_WANTED.replace(false) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match moved {
            Some(out) => {
                relayed.with_label_values(&["task"]).inc();
                Ok(out)
            }
            None => {
                relayed.with_label_values(&["epoll"]).inc();
                self.spawn(session).await
            }
        }
    }

    fn submit(&self, job: Job) {
        lock(&self.shared.incoming).push(job);
        self.shared.notify();
        if self.shared.stopped.load(Ordering::Acquire) {
            // Stopped meanwhile: nothing will take it.
            self.shared.close_queue();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One session in the engine.
struct Job {
    kind: Kind,
    /// Queues this session for a poll (its control futures are polled with it).
    waker: Waker,
    /// The batch of events in which it was last polled (one poll per batch).
    batch: u64,
}

/// What a session in the engine is. A relay is boxed, so that a slot costs little to the
/// crowd of idle pooled sessions.
enum Kind {
    /// A passthrough relay, handed back when it ends.
    Relay(Box<Relaying>, oneshot::Sender<Outcome>),
    /// A whole session (pooled), polled as a future.
    Task(Pin<Box<dyn Future<Output = ()> + Send>>),
}

impl Job {
    fn new(kind: Kind) -> Job {
        Job {
            kind,
            waker: Waker::noop().clone(),
            batch: 0,
        }
    }
}

/// Wakes one session of the engine.
struct JobWake {
    slot: usize,
    shared: Arc<Shared>,
}

impl Wake for JobWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Woken by another session of the engine (a pooled connection given back to a
        // waiter): queued on the thread, no lock and no wake-up.
        if HOME.get() == io::engine_id(&self.shared) {
            WOKEN_HERE.with(|w| w.borrow_mut().push(self.slot));
            WOKE_HERE.set(true);
            return;
        }
        lock(&self.shared.woken).push(self.slot);
        self.shared.notify();
    }
}

/// Stops the engine when dropped: held by a task on the engine's runtime (dropped when the
/// runtime shuts down) and by the engine thread (dropped when it ends, panicking or not).
struct Stop(Arc<Shared>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Release);
        let _ = self.0.waker.wake();
        self.0.close_queue();
    }
}

/// The engine thread's state.
struct Engine {
    poll: mio::Poll,
    events: Events,
    jobs: Vec<Option<Job>>,
    free: Vec<usize>,
    /// Sessions to poll in this batch (reused).
    ready: Vec<usize>,
    /// Woken sessions taken from the queue (reused).
    woken: Vec<usize>,
    batch: u64,
    shared: Arc<Shared>,
}

impl Engine {
    /// Starts an engine thread for the current runtime.
    fn start() -> std::io::Result<Handle> {
        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKE)?;
        let shared = Arc::new(Shared {
            incoming: Mutex::new(Vec::new()),
            woken: Mutex::new(Vec::new()),
            queued: AtomicBool::new(false),
            waker,
            stopped: AtomicBool::new(false),
            sockets: Mutex::new(Sockets::default()),
            registry: poll.registry().try_clone()?,
        });
        let engine = Engine {
            poll,
            events: Events::with_capacity(EVENTS),
            jobs: Vec::new(),
            free: Vec::new(),
            ready: Vec::with_capacity(EVENTS),
            woken: Vec::new(),
            batch: 0,
            shared: shared.clone(),
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
        let name = std::thread::current()
            .name()
            .map_or_else(|| "pgsteer-relay".to_string(), |n| format!("{n}-relay"));
        let stop = Stop(shared.clone());
        let own = Handle {
            shared: shared.clone(),
        };
        std::thread::Builder::new().name(name).spawn(move || {
            let _stop = stop;
            let _runtime = runtime.enter();
            HOME.set(io::engine_id(&own.shared));
            ENGINE.with(|e| *e.borrow_mut() = Some(own));
            engine.run();
            ENGINE.with(|e| e.borrow_mut().take());
        })?;
        let stop = Stop(shared.clone());
        tokio::spawn(async move {
            let _stop = stop;
            std::future::pending::<()>().await;
        });
        Ok(Handle { shared })
    }

    /// Waits for events and relays, until the runtime stops.
    fn run(mut self) {
        while !self.shared.stopped.load(Ordering::Acquire) {
            match self.poll.poll(&mut self.events, None) {
                Ok(()) => crate::clock::woke(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(error = %e, "the relay engine's epoll failed; its sessions end");
                    return;
                }
            }
            self.batch();
            self.intake();
            self.woken_here();
        }
    }

    /// Polls the sessions woken from the engine's own thread, until none is.
    fn woken_here(&mut self) {
        while WOKE_HERE.replace(false) {
            let mut woken = std::mem::take(&mut self.woken);
            WOKEN_HERE.with(|w| std::mem::swap(&mut woken, &mut *w.borrow_mut()));
            if woken.is_empty() {
                self.woken = woken;
                return;
            }
            for &slot in &woken {
                self.poll_job(slot);
            }
            woken.clear();
            self.woken = woken;
        }
    }

    /// Takes a new session in and polls it once.
    fn admit(&mut self, mut job: Job) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.jobs.push(None);
            self.jobs.len() - 1
        });
        job.waker = Waker::from(Arc::new(JobWake {
            slot,
            shared: self.shared.clone(),
        }));
        let mut failed = None;
        if let Kind::Relay(r, _) = &job.kind {
            let registry = self.poll.registry();
            let both = Interest::READABLE | Interest::WRITABLE;
            for (side, stream) in [(0, &r.client), (1, &r.server)] {
                let Stream::Engine(s) = stream else { continue };
                let fd = s.sock.as_raw_fd();
                let token = Token(slot << 1 | side);
                if let Err(e) = registry.register(&mut SourceFd(&fd), token, both) {
                    failed = Some((side, e));
                    break;
                }
            }
        }
        self.jobs[slot] = Some(job);
        if let Some((side, e)) = failed {
            let side = if side == 0 {
                Side::Client
            } else {
                Side::Server
            };
            self.finish(slot, Some(Err(SessionError::io(side, e))));
            return;
        }
        self.poll_job(slot);
    }

    /// Runs one session until it has nothing to do, or ends it.
    fn poll_job(&mut self, slot: usize) {
        let Some(Some(job)) = self.jobs.get_mut(slot) else {
            return;
        };
        let mut cx = Context::from_waker(&job.waker);
        let id = io::engine_id(&self.shared);
        // One session's bug must not end the others: a panic drops that session alone.
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &mut job.kind {
                Kind::Relay(r, _) => r
                    .relay
                    .poll_passthrough(&mut cx, &mut r.client, &mut r.server)
                    .map(Some),
                // Only a task adopts sockets or asks where it runs; a passthrough relay never.
                Kind::Task(f) => {
                    let _polling = io::polling(id, slot);
                    f.as_mut().poll(&mut cx).map(|()| None)
                }
            }));
        match polled {
            Ok(Poll::Pending) => {}
            Ok(Poll::Ready(res)) => self.finish(slot, res),
            Err(_) => {
                error!("a relayed session panicked; it is closed, the others go on");
                self.jobs[slot] = None;
                self.free.push(slot);
            }
        }
    }

    /// Takes a session out: a relay's sockets back to tokio and the outcome to its task
    /// (`res`); a finished task has sent its own.
    fn finish(&mut self, slot: usize, res: Option<Result<Event, SessionError>>) {
        let Some(job) = self.jobs[slot].take() else {
            return;
        };
        self.free.push(slot);
        if let (Kind::Relay(mut r, done), Some(res)) = (job.kind, res) {
            let registry = self.poll.registry();
            out_of_engine(&mut r.client, registry);
            out_of_engine(&mut r.server, registry);
            let _ = done.send((*r, res));
        }
    }

    /// Takes what other threads queued: new sessions and woken ones.
    fn intake(&mut self) {
        if !self.shared.queued.swap(false, Ordering::AcqRel) {
            return;
        }
        let jobs = std::mem::take(&mut *lock(&self.shared.incoming));
        for job in jobs {
            self.admit(job);
        }
        let mut woken = std::mem::take(&mut self.woken);
        std::mem::swap(&mut woken, &mut *lock(&self.shared.woken));
        for &slot in &woken {
            self.poll_job(slot);
        }
        woken.clear();
        self.woken = woken;
    }

    /// Polls the sessions the last `epoll_wait` named, and wakes the tasks outside the engine
    /// that wait on its adopted sockets.
    fn batch(&mut self) {
        let Engine {
            events,
            jobs,
            ready,
            batch,
            shared,
            ..
        } = self;
        *batch += 1;
        let mut foreign = Vec::new();
        let mut sockets = None;
        for ev in events.iter() {
            let token = ev.token().0;
            if token == WAKE.0 {
                continue;
            }
            if token & ADOPTED == 0 {
                // A passthrough session's socket: its flags are in the session.
                let slot = token >> 1;
                let Some(Some(job)) = jobs.get_mut(slot) else {
                    continue;
                };
                if let Kind::Relay(r, _) = &mut job.kind {
                    let stream = if token & 1 == 0 {
                        &mut r.client
                    } else {
                        &mut r.server
                    };
                    if let Stream::Engine(s) = stream {
                        s.event(ev);
                    }
                }
                if job.batch != *batch {
                    job.batch = *batch;
                    ready.push(slot);
                }
                continue;
            }
            let sockets = sockets.get_or_insert_with(|| lock(&shared.sockets));
            let Some(io) = sockets.get(token) else {
                continue;
            };
            let (slot, waker) = io.event(ev);
            foreign.extend(waker);
            if let Some(Some(job)) = jobs.get_mut(slot)
                && job.batch != *batch
            {
                job.batch = *batch;
                ready.push(slot);
            }
        }
        drop(sockets);
        for w in foreign {
            w.wake();
        }
        let mut ready = std::mem::take(&mut self.ready);
        for &slot in &ready {
            self.poll_job(slot);
        }
        ready.clear();
        self.ready = ready;
    }
}
