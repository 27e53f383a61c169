//! [`Stream`]: one side of a session, plaintext TCP or TLS over it.
//!
//! An enum rather than a trait object or generics: the relay stays one
//! monomorphic function and a plaintext read or write costs one branch.
//! While the epoll engine relays a session ([`super::engine`]), its sockets
//! are [`Stream::Engine`]: plain TCP whose readiness the engine tracks.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A client or server connection.
pub enum Stream {
    /// Plaintext TCP.
    Plain(TcpStream),
    /// TLS terminated by pgsteer (a client connection).
    Accepted(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS started by pgsteer (a server connection).
    Connected(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Nothing: the TCP stream was taken for a TLS handshake that did not
    /// finish. Reads see the end of the stream, writes fail.
    Detached,
    /// Plaintext TCP relayed by the epoll engine: read and written only from
    /// its task, which knows when the socket is ready.
    Engine(EngineTcp),
}

/// A nonblocking TCP socket registered with the epoll engine (edge-triggered): reading or
/// writing it when it has not been reported ready since it last said "no more" costs
/// nothing, no syscall and no waker.
pub struct EngineTcp {
    pub(super) sock: std::net::TcpStream,
    /// Bytes or an end may be waiting: cleared by a short read or `EAGAIN`, set by the engine
    /// on a readiness event.
    pub(super) readable: bool,
    /// Room may be free in the send buffer: cleared by a short write or `EAGAIN`.
    pub(super) writable: bool,
}

impl EngineTcp {
    /// `sock` must be nonblocking. Both directions count as ready until a call says otherwise.
    pub(super) fn new(sock: std::net::TcpStream) -> EngineTcp {
        EngineTcp {
            sock,
            readable: true,
            writable: true,
        }
    }

    fn poll_read(&mut self, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
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
                        self.readable = false;
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Poll::Pending;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write(&mut self, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        use std::io::Write;
        if !self.writable {
            return Poll::Pending;
        }
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        loop {
            let r = match bufs {
                [one] => (&self.sock).write(one),
                _ => (&self.sock).write_vectored(bufs),
            };
            match r {
                Ok(n) => {
                    if n < len {
                        self.writable = false;
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable = false;
                    return Poll::Pending;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Stream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Accepted(s) => Some(s.get_ref().0),
            Stream::Connected(s) => Some(s.get_ref().0),
            Stream::Detached | Stream::Engine(_) => None,
        }
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Accepted(_) | Stream::Connected(_))
    }

    /// After a read that did not fill the buffer, marks a plaintext socket as
    /// drained without another `read` that would only return `EAGAIN`: saves
    /// one syscall per direction per round trip.
    ///
    /// Only sound where the IO driver cannot run while the caller's task is
    /// being polled (the current-thread runtime, with the socket registered on
    /// that runtime's own driver): there no readiness event can arrive between
    /// the short read and this call, so none is lost.
    #[inline]
    pub fn mark_drained(&self) {
        if let Stream::Plain(s) = self {
            let _ = s.try_io(tokio::io::Interest::READABLE, || {
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
        }
    }

    /// Known to have nothing to read until its engine reports it ready again (an engine
    /// socket after a short read or `EAGAIN`); `false` where only a read can tell.
    #[inline]
    pub fn read_drained(&self) -> bool {
        matches!(self, Stream::Engine(s) if !s.readable)
    }

    /// The `tls-server-end-point` channel-binding data of the server's certificate on a
    /// TLS connection pgsteer opened (RFC 5929); `None` over plaintext.
    pub fn server_end_point(&self) -> Option<Vec<u8>> {
        let Stream::Connected(s) = self else {
            return None;
        };
        let leaf = s.get_ref().1.peer_certificates()?.first()?;
        crate::auth::endpoint::tls_server_end_point(leaf).ok()
    }

    /// Whether writes may sit in a TLS buffer until flushed.
    #[inline]
    pub fn buffers_writes(&self) -> bool {
        !matches!(self, Stream::Plain(_) | Stream::Engine(_))
    }
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection detached")
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Accepted(s) => Pin::new(&mut **s).poll_read(cx, buf),
            Stream::Connected(s) => Pin::new(&mut **s).poll_read(cx, buf),
            Stream::Detached => Poll::Ready(Ok(())),
            Stream::Engine(s) => s.poll_read(buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Accepted(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Stream::Connected(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
            Stream::Engine(s) => s.poll_write(&[io::IoSlice::new(buf)]),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Accepted(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
            Stream::Connected(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
            Stream::Detached => Poll::Ready(Err(detached())),
            Stream::Engine(s) => s.poll_write(bufs),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Accepted(s) => s.is_write_vectored(),
            Stream::Connected(s) => s.is_write_vectored(),
            Stream::Detached => false,
            Stream::Engine(_) => true,
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Accepted(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::Connected(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::Detached | Stream::Engine(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Accepted(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Stream::Connected(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Stream::Detached => Poll::Ready(Ok(())),
            Stream::Engine(s) => Poll::Ready(match s.sock.shutdown(std::net::Shutdown::Write) {
                Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
                _ => Ok(()),
            }),
        }
    }
}
