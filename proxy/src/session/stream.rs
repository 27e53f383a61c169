//! [`Stream`]: one side of a session, plaintext TCP or TLS over it.
//!
//! An enum rather than a trait object or generics: the relay stays one
//! monomorphic function and a plaintext read or write costs one branch.
//! While the epoll engine relays a passthrough session ([`super::engine`]), its
//! sockets are [`Stream::Engine`]: plain TCP whose readiness the engine tracks;
//! sockets that joined the engine beyond one relay are [`Stream::Adopted`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub use super::engine::{AdoptedTcp, EngineTcp};

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
    /// Plaintext TCP of a passthrough session relayed by the epoll engine: read
    /// and written only by that relay, which knows when the socket is ready.
    Engine(EngineTcp),
    /// Plaintext TCP that joined the epoll engine beyond one relay (a pooled
    /// session's client, a pooled server connection lent there): its readiness
    /// is in the engine's table, whoever uses it.
    Adopted(AdoptedTcp),
}

impl Stream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Accepted(s) => Some(s.get_ref().0),
            Stream::Connected(s) => Some(s.get_ref().0),
            Stream::Detached | Stream::Engine(_) | Stream::Adopted(_) => None,
        }
    }

    /// Looks at the next bytes without taking them: `Ok(0)` is the end of the stream (a
    /// detached stream has ended). Under TLS, the encrypted bytes.
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Adopted(s) => std::future::poll_fn(|cx| s.poll_peek(cx, buf)).await,
            other => match other.tcp() {
                Some(tcp) => tcp.peek(buf).await,
                None => Ok(0),
            },
        }
    }

    /// Whether an idle connection has nothing waiting, neither bytes nor an end: it still
    /// looks usable. Never waits.
    pub fn quiet(&self) -> bool {
        match self {
            Stream::Adopted(s) => s.quiet(),
            other => other.tcp().is_some_and(|tcp| {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut byte = [0u8; 1];
                let mut buf = ReadBuf::new(&mut byte);
                tcp.poll_peek(&mut cx, &mut buf).is_pending()
            }),
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
        match self {
            Stream::Engine(s) => s.read_drained(),
            Stream::Adopted(s) => s.read_drained(),
            _ => false,
        }
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
        !matches!(
            self,
            Stream::Plain(_) | Stream::Engine(_) | Stream::Adopted(_)
        )
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
            Stream::Adopted(s) => s.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    // Always: the relay's hot write (one slice to an engine socket) is then a direct call.
    #[inline(always)]
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
            Stream::Adopted(s) => s.poll_write(cx, &[io::IoSlice::new(buf)]),
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
            Stream::Adopted(s) => s.poll_write(cx, bufs),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Accepted(s) => s.is_write_vectored(),
            Stream::Connected(s) => s.is_write_vectored(),
            Stream::Detached => false,
            Stream::Engine(_) | Stream::Adopted(_) => true,
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Accepted(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::Connected(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::Detached | Stream::Engine(_) | Stream::Adopted(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Accepted(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Stream::Connected(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Stream::Detached => Poll::Ready(Ok(())),
            Stream::Engine(s) => Poll::Ready(s.shutdown_write()),
            Stream::Adopted(s) => Poll::Ready(s.shutdown_write()),
        }
    }
}
