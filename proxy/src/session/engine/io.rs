//! The engine's adopted sockets (a pooled session's client, pooled server connections):
//! nonblocking TCP registered once, edge-triggered, in one engine's epoll, with readiness flags the engine sets on an event and a read or write clears when it
//! finds nothing, and who to wake then: the engine session that last found the socket not
//! ready, or a task outside the engine.
//!
//! A socket may change hands inside its engine (a pooled server connection is lent to one
//! session after another), so the engine finds a socket's state by its token in a table, not
//! in the session that registered it. Inside the engine (a session being polled on its
//! thread) the flags are exact: events are applied between polls, on the same thread, so a
//! session parks on a flag without a syscall. Anywhere else (a task that uses a connection
//! the engine adopted without taking it back, such as the one that closes it) the flags
//! are not trusted: the caller tries the syscall, and on `EAGAIN` leaves its waker and tries
//! once more, so that an event in between is not lost.

use std::cell::Cell;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use mio::unix::SourceFd;
use mio::{Interest, Token};
use tokio::io::ReadBuf;

use super::{Shared, lock};

/// No engine session: the owner of a socket no session has waited on.
pub(super) const NOBODY: usize = usize::MAX;

/// The bit that marks the token of an adopted socket (its place in [`Sockets`] below it);
/// a passthrough session's sockets have `slot << 1 | side`.
pub(super) const ADOPTED: usize = 1 << (usize::BITS - 2);

thread_local! {
    /// While an engine polls one of its sessions on its thread: (the engine, the session's
    /// slot). `(0, NOBODY)` elsewhere.
    static POLLING: Cell<(usize, usize)> = const { Cell::new((0, NOBODY)) };
}

/// The identity of an engine, for [`POLLING`].
pub(super) fn engine_id(shared: &Arc<Shared>) -> usize {
    Arc::as_ptr(shared) as usize
}

/// Marks the calling thread as polling session `slot` of engine `id` until the guard drops.
pub(super) fn polling(id: usize, slot: usize) -> Polling {
    POLLING.set((id, slot));
    Polling
}

/// See [`polling`].
pub(super) struct Polling;

impl Drop for Polling {
    fn drop(&mut self) {
        POLLING.set((0, NOBODY));
    }
}

/// The session slot being polled now on engine `id`'s thread, if any.
#[inline]
pub(super) fn polled_here(id: usize) -> Option<usize> {
    let (engine, slot) = POLLING.get();
    (engine == id && slot != NOBODY).then_some(slot)
}

/// Whether the calling thread is polling a session of some engine.
pub(super) fn in_engine() -> bool {
    POLLING.get().1 != NOBODY
}

/// What the engine and the socket's users share about one socket.
pub(super) struct Readiness {
    /// Bytes or an end may be waiting: cleared inside the engine by a short read or `EAGAIN`.
    readable: AtomicBool,
    /// Room may be free in the send buffer: cleared inside the engine by a short write or
    /// `EAGAIN`.
    writable: AtomicBool,
    /// The peer closed its side, or the socket failed: reads never find nothing again, so
    /// `readable` stays set (a short read before the end does not mean "no more": the end
    /// raises no second edge).
    read_closed: AtomicBool,
    /// The socket can take no more writes (it failed, or the peer reset it): `writable` stays
    /// set, so the next write sees the error.
    write_closed: AtomicBool,
    /// The engine session that last found the socket not ready ([`NOBODY`]: none).
    owner: AtomicUsize,
    /// A task outside the engine waits for the socket.
    foreign_waiting: AtomicBool,
    foreign: Mutex<Option<Waker>>,
}

impl Readiness {
    /// Applies an event; gives back the session to poll ([`NOBODY`]: none), and the waker of
    /// a task outside the engine that waits, if any.
    pub(super) fn event(&self, ev: &mio::event::Event) -> (usize, Option<Waker>) {
        let failed = ev.is_error();
        if ev.is_read_closed() || failed {
            self.read_closed.store(true, Ordering::Relaxed);
        }
        if ev.is_write_closed() || failed {
            self.write_closed.store(true, Ordering::Relaxed);
        }
        if ev.is_readable() || ev.is_read_closed() || failed {
            self.readable.store(true, Ordering::SeqCst);
        }
        if ev.is_writable() || ev.is_write_closed() || failed {
            self.writable.store(true, Ordering::SeqCst);
        }
        let foreign = if self.foreign_waiting.load(Ordering::SeqCst)
            && self.foreign_waiting.swap(false, Ordering::SeqCst)
        {
            lock(&self.foreign).take()
        } else {
            None
        };
        (self.owner.load(Ordering::Relaxed), foreign)
    }

    /// Inside the engine: nothing more to read until the next event (unless it has ended).
    fn drained_reads(&self) {
        if !self.read_closed.load(Ordering::Relaxed) {
            self.readable.store(false, Ordering::Relaxed);
        }
    }

    /// Inside the engine: no room to write until the next event (unless it has failed).
    fn full_writes(&self) {
        if !self.write_closed.load(Ordering::Relaxed) {
            self.writable.store(false, Ordering::Relaxed);
        }
    }

    /// Sets the session the engine wakes on the next event.
    pub(super) fn set_owner(&self, slot: usize) {
        self.owner.store(slot, Ordering::Relaxed);
    }

    fn wait_foreign(&self, cx: &Context<'_>) {
        // No engine session uses the socket now (its users take turns): events need not
        // poll the slot that last did, which may hold another session by now.
        self.owner.store(NOBODY, Ordering::Relaxed);
        let mut w = lock(&self.foreign);
        match &mut *w {
            Some(old) if old.will_wake(cx.waker()) => {}
            other => *other = Some(cx.waker().clone()),
        }
        drop(w);
        self.foreign_waiting.store(true, Ordering::SeqCst);
    }
}

/// The table the engine finds a socket's [`Readiness`] in, by token.
#[derive(Default)]
pub(super) struct Sockets {
    slots: Vec<Option<Arc<Readiness>>>,
    free: Vec<usize>,
}

impl Sockets {
    /// The socket of an adopted token (with its [`ADOPTED`] bit).
    pub(super) fn get(&self, token: usize) -> Option<&Arc<Readiness>> {
        self.slots.get(token & !ADOPTED)?.as_ref()
    }

    fn insert(&mut self, io: Arc<Readiness>) -> usize {
        match self.free.pop() {
            Some(t) => {
                self.slots[t] = Some(io);
                t
            }
            None => {
                self.slots.push(Some(io));
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, token: usize) {
        if let Some(s) = self.slots.get_mut(token)
            && s.take().is_some()
        {
            self.free.push(token);
        }
    }
}

/// A socket's place in its engine: freed when dropped (after the socket, declared before
/// it in [`AdoptedTcp`], is closed or deregistered).
struct Registration {
    io: Arc<Readiness>,
    token: usize,
    engine: Arc<Shared>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.engine.sockets).remove(self.token);
    }
}

/// A nonblocking TCP socket that joined an epoll engine (edge-triggered) for the rest of its
/// life, whoever uses it: inside the engine, reading or writing it when it has not been reported ready since it last said "no
/// more" costs nothing, no syscall and no waker.
pub struct AdoptedTcp {
    sock: std::net::TcpStream,
    reg: Registration,
    /// [`engine_id`] of its engine, kept at hand for [`AdoptedTcp::here`].
    engine: usize,
}

impl AdoptedTcp {
    /// Registers `sock` (nonblocking) in `engine`'s epoll for reads and writes. Both
    /// directions count as ready until a call says otherwise; `owner` is woken by its events.
    pub(super) fn register(
        sock: std::net::TcpStream,
        engine: &Arc<Shared>,
        owner: usize,
    ) -> io::Result<AdoptedTcp> {
        let io = Arc::new(Readiness {
            readable: AtomicBool::new(true),
            writable: AtomicBool::new(true),
            read_closed: AtomicBool::new(false),
            write_closed: AtomicBool::new(false),
            owner: AtomicUsize::new(owner),
            foreign_waiting: AtomicBool::new(false),
            foreign: Mutex::new(None),
        });
        let token = lock(&engine.sockets).insert(io.clone());
        let reg = Registration {
            io,
            token,
            engine: engine.clone(),
        };
        let fd = sock.as_raw_fd();
        engine.registry.register(
            &mut SourceFd(&fd),
            Token(token | ADOPTED),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(AdoptedTcp {
            sock,
            engine: engine_id(&reg.engine),
            reg,
        })
    }

    /// Leaves the engine: the socket, deregistered, for tokio to take back.
    pub(super) fn deregister(self) -> io::Result<std::net::TcpStream> {
        let fd = self.sock.as_raw_fd();
        let out = self.reg.engine.registry.deregister(&mut SourceFd(&fd));
        let AdoptedTcp { sock, reg, .. } = self;
        drop(reg);
        out.map(|()| sock)
    }

    /// The session polled now, if this runs inside the socket's engine.
    #[inline]
    fn here(&self) -> Option<usize> {
        polled_here(self.engine)
    }

    /// Known to have nothing to read until the engine reports it ready again (inside the
    /// engine, after a short read or `EAGAIN`): the session polled now is woken by the next
    /// event. `false` where only a read can tell.
    #[inline]
    pub fn read_drained(&self) -> bool {
        match self.here() {
            Some(slot) if !self.reg.io.readable.load(Ordering::Relaxed) => {
                self.reg.io.set_owner(slot);
                true
            }
            _ => false,
        }
    }

    /// One syscall on the socket, `op`, for a direction that `ready` reports (the read or the
    /// write flag): inside the engine, a direction known not ready costs nothing, and
    /// `EAGAIN` clears its flag (`drained`) and parks the session polled now; outside, `EAGAIN`
    /// leaves the caller's waker and tries once more, so that an event in between is not lost.
    /// `op` is told whether it runs in the engine.
    fn attempt<T>(
        &self,
        cx: &Context<'_>,
        ready: &AtomicBool,
        drained: fn(&Readiness),
        mut op: impl FnMut(bool) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        let here = self.here();
        let io = &self.reg.io;
        if let Some(slot) = here
            && !ready.load(Ordering::Relaxed)
        {
            io.set_owner(slot);
            return Poll::Pending;
        }
        let mut waiting = false;
        loop {
            match op(here.is_some()) {
                Ok(v) => return Poll::Ready(Ok(v)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => match here {
                    Some(slot) => {
                        drained(io);
                        io.set_owner(slot);
                        return Poll::Pending;
                    }
                    None if !waiting => {
                        io.wait_foreign(cx);
                        waiting = true;
                    }
                    None => return Poll::Pending,
                },
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    // Out of line: the passthrough relay's `Stream` match stays small enough to inline.
    #[inline(never)]
    pub(crate) fn poll_read(
        &mut self,
        cx: &Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        use std::io::Read;
        let (io, sock) = (&self.reg.io, &self.sock);
        let room = buf.remaining();
        let n = std::task::ready!(self.attempt(
            cx,
            &io.readable,
            Readiness::drained_reads,
            |in_engine| {
                let n = (&*sock).read(buf.initialize_unfilled())?;
                // Edge-triggered: a read that did not fill the room took everything there was,
                // and new bytes raise a new event.
                if n > 0 && n < room && in_engine {
                    io.drained_reads();
                }
                Ok(n)
            }
        ))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }

    #[inline(never)]
    pub(crate) fn poll_write(
        &mut self,
        cx: &Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let (io, sock) = (&self.reg.io, &self.sock);
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        self.attempt(cx, &io.writable, Readiness::full_writes, |in_engine| {
            let n = super::write_bufs(sock, bufs)?;
            if n < len && in_engine {
                io.full_writes();
            }
            Ok(n)
        })
    }

    /// Looks at what is waiting without taking it: `Ok(0)` is the end of the stream.
    pub(crate) fn poll_peek(&self, cx: &Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let io = &self.reg.io;
        self.attempt(cx, &io.readable, Readiness::drained_reads, |_| {
            self.sock.peek(buf)
        })
    }

    /// Whether an idle socket has nothing waiting (no bytes, no end): inside the engine, a
    /// socket drained since its last event does without the syscall.
    pub(crate) fn quiet(&self) -> bool {
        // An engine that stopped reports nothing more: the connection cannot be used.
        if self.reg.engine.stopped.load(Ordering::Acquire) {
            return false;
        }
        if self.here().is_some() && !self.reg.io.readable.load(Ordering::Relaxed) {
            return true;
        }
        let mut b = [0u8; 1];
        matches!(self.sock.peek(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Shuts the sending side down.
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        match self.sock.shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
            _ => Ok(()),
        }
    }
}
