//! A passthrough session's sockets in the engine: owned by the one relay that registered them
//! for as long as it stays, so their readiness lives in them and their token names the session
//! (`slot << 1 | side`): an event sets a flag in place, and a read or write asks nothing else.

use std::io;
use std::task::Poll;

use tokio::io::ReadBuf;

/// A nonblocking TCP socket registered with the epoll engine (edge-triggered) for one relay:
/// reading or writing it when it has not been reported ready since it last said "no more"
/// costs nothing, no syscall and no waker.
pub struct EngineTcp {
    pub(super) sock: std::net::TcpStream,
    /// Bytes or an end may be waiting: cleared by a short read or `EAGAIN`, set by the engine
    /// on a readiness event.
    readable: bool,
    /// Room may be free in the send buffer: cleared by a short write or `EAGAIN`.
    writable: bool,
    /// The peer closed its side, or the socket failed: `readable` stays set (a short read
    /// before the end is not "no more": the end raises no second edge).
    read_closed: bool,
    /// No more writes can go (failed or reset): `writable` stays set for the error to show.
    write_closed: bool,
}

impl EngineTcp {
    /// `sock` must be nonblocking. Both directions count as ready until a call says otherwise.
    pub(super) fn new(sock: std::net::TcpStream) -> EngineTcp {
        EngineTcp {
            sock,
            readable: true,
            writable: true,
            read_closed: false,
            write_closed: false,
        }
    }

    /// Applies a readiness event.
    #[inline]
    pub(super) fn event(&mut self, ev: &mio::event::Event) {
        self.readable |= ev.is_readable();
        self.writable |= ev.is_writable();
        // Ends and failures are rare: looked at apart from the common edges.
        if ev.is_read_closed() | ev.is_write_closed() | ev.is_error() {
            let failed = ev.is_error();
            let read_closed = ev.is_read_closed() || failed;
            let write_closed = ev.is_write_closed() || failed;
            self.read_closed |= read_closed;
            self.write_closed |= write_closed;
            self.readable |= read_closed;
            self.writable |= write_closed;
        }
    }

    /// Known to have nothing to read until the engine reports it ready again.
    #[inline]
    pub fn read_drained(&self) -> bool {
        !self.readable
    }

    pub(crate) fn poll_read(&mut self, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        use std::io::Read;
        if !self.readable {
            return Poll::Pending;
        }
        let room = buf.remaining();
        loop {
            match (&self.sock).read(buf.initialize_unfilled()) {
                Ok(n) => {
                    // Edge-triggered: a read that did not fill the room took everything there
                    // was, and new bytes raise a new event.
                    if n > 0 && n < room {
                        self.readable = self.read_closed;
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = self.read_closed;
                    return Poll::Pending;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    pub(crate) fn poll_write(&mut self, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if !self.writable {
            return Poll::Pending;
        }
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        loop {
            match super::write_bufs(&self.sock, bufs) {
                Ok(n) => {
                    if n < len {
                        self.writable = self.write_closed;
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable = self.write_closed;
                    return Poll::Pending;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Shuts the sending side down.
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        match self.sock.shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
            _ => Ok(()),
        }
    }
}
