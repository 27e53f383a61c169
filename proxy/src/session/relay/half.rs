//! One direction of a relay: its buffer window, its scanner, what the owner injected, and
//! the reads and writes that move its bytes.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use pgsteer_protocol::Scanner;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::super::buffer::Window;
use super::super::stream::Stream;
use super::super::{SessionError, Side};

pub(super) struct Half {
    pub win: Window,
    pub scanner: Scanner,
    /// Bytes the owner put in place of a held message; written before `win`'s.
    pub inject: BytesMut,
    /// The scan stopped before a message the owner holds (at the start of the unscanned bytes).
    pub held: bool,
    pub eof: bool,
    /// The last read in this poll came back empty: its waker is registered,
    /// so reading again before the task is woken would only retake the IO
    /// driver's lock. Cleared at the start of every poll.
    pub blocked: bool,
    /// Bytes were written to a TLS stream that has not been flushed since.
    pub unflushed: bool,
}

/// Injection buffers larger than this are freed once written.
const INJECT_KEEP: usize = 8 * 1024;

impl Half {
    pub fn new(scanner: Scanner) -> Half {
        Half {
            win: Window::default(),
            scanner,
            inject: BytesMut::new(),
            held: false,
            eof: false,
            blocked: false,
            unflushed: false,
        }
    }

    /// Everything read has been written out (and flushed).
    pub fn delivered(&self) -> bool {
        self.win.approved().is_empty() && self.inject.is_empty() && !self.unflushed
    }

    /// Nothing read, held or waiting to be written.
    pub fn empty(&self) -> bool {
        self.win.is_empty() && self.inject.is_empty() && !self.held && self.scanner.at_boundary()
    }
}

/// Reads what is available into a half's window. `Ok(None)`: nothing read
/// (not ready, blocked earlier in this poll, no room, or closed);
/// `Ok(Some(0))`: end of stream just seen. While `keep` is set (the session
/// is busy) the buffer stays with the window when the socket has nothing;
/// otherwise it goes back to the pool, so idle sessions hold none.
pub(super) fn poll_fill(
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
    // Nothing to read: the buffer goes back unless the session is busy, and this poll reads
    // this side no more.
    let block = |half: &mut Half| {
        if !keep {
            half.win.release();
        }
        half.blocked = true;
        Ok(None)
    };
    if from.read_drained() {
        // The engine knows there is nothing: no buffer, no call.
        return block(half);
    }
    let spare = half.win.spare();
    let room = spare.len();
    let mut rb = ReadBuf::new(spare);
    match Pin::new(&mut *from).poll_read(cx, &mut rb) {
        Poll::Pending => block(half),
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

/// Writes a half's injected bytes, then its approved bytes, to the other
/// side (and flushes a TLS stream).
pub(super) fn poll_flush(
    half: &mut Half,
    to: &mut Stream,
    cx: &mut Context<'_>,
    side: Side,
    bytes: &mut u64,
    keep: bool,
) -> Result<bool, SessionError> {
    let mut progress = false;
    loop {
        let (inject, approved) = (half.inject.len(), half.win.approved().len());
        if inject + approved == 0 {
            break;
        }
        // Injected bytes go first; with a socket that takes both in one call, together.
        let written = if inject > 0 && approved > 0 && to.is_write_vectored() {
            let bufs = [
                IoSlice::new(&half.inject),
                IoSlice::new(half.win.approved()),
            ];
            Pin::new(&mut *to).poll_write_vectored(cx, &bufs)
        } else if inject > 0 {
            Pin::new(&mut *to).poll_write(cx, &half.inject)
        } else {
            Pin::new(&mut *to).poll_write(cx, half.win.approved())
        };
        let n = match written {
            Poll::Pending => break,
            Poll::Ready(Ok(0)) => {
                return Err(SessionError::io(side, std::io::ErrorKind::WriteZero.into()));
            }
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Err(SessionError::io(side, e)),
        };
        let from_inject = n.min(inject);
        if from_inject > 0 {
            half.inject.advance(from_inject);
            if half.inject.is_empty() && half.inject.capacity() > INJECT_KEEP {
                half.inject = BytesMut::new();
            }
        }
        if n > from_inject {
            half.win.consume(n - from_inject);
            if !keep {
                half.win.release();
            }
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
