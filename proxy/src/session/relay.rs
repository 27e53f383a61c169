//! The relay: both directions of an authenticated session in one task.
//!
//! Bytes are read into pooled buffers, walked header by header by a
//! [`Scanner`] and written on in whole runs, usually with one read and one
//! write syscall per burst. Only ReadyForQuery bodies are read (to know
//! whether the session is idle, in a transaction or failed) and only message
//! types are counted; everything else streams through. A drain request
//! closes the session at its next idle point.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pgsteer_protocol::backend::{TxStatus, tag as btag};
use pgsteer_protocol::frontend::tag as ftag;
use pgsteer_protocol::{Flow, Scanner, TagSet};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::buffer::{BUF_SIZE, Window};
use super::{SessionError, Side};

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
#[derive(Debug, Clone, Copy)]
pub struct End {
    /// Why.
    pub kind: EndKind,
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
    draining: bool,
    client_terminated: bool,
    last_server_tag: u8,
}

/// Futures that ask the relay to stop.
pub struct Signals<'a> {
    /// Resolves when the session should close at its next idle point.
    pub drain: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    /// Resolves when the session must close now.
    pub hard: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
}

struct Half {
    win: Window,
    scanner: Scanner,
    eof: bool,
    /// Stop reading: the relay is closing once approved bytes are written.
    stop: bool,
}

/// One relay run.
pub struct Relay<'a> {
    client: &'a mut TcpStream,
    server: &'a mut TcpStream,
    c2s: Half,
    s2c: Half,
    state: State,
    signals: Signals<'a>,
    drain_seen: bool,
}

/// Tags read whole on the server side: only ReadyForQuery.
const SERVER_INSPECT: TagSet = TagSet::of(&[btag::READY_FOR_QUERY]);

impl<'a> Relay<'a> {
    /// A relay over an authenticated session; `tx` is the status of the
    /// ReadyForQuery that ended authentication.
    pub fn new(
        client: &'a mut TcpStream,
        server: &'a mut TcpStream,
        limit: u32,
        tx: TxStatus,
        signals: Signals<'a>,
    ) -> Relay<'a> {
        Relay {
            client,
            server,
            c2s: Half {
                win: Window::default(),
                scanner: Scanner::new(limit, TagSet::EMPTY, BUF_SIZE),
                eof: false,
                stop: false,
            },
            s2c: Half {
                win: Window::default(),
                scanner: Scanner::new(limit, SERVER_INSPECT, BUF_SIZE),
                eof: false,
                stop: false,
            },
            state: State {
                pending: 0,
                tx,
                draining: false,
                client_terminated: false,
                last_server_tag: btag::READY_FOR_QUERY,
            },
            signals,
            drain_seen: false,
        }
    }

    /// Runs until one side closes, a drain completes or the hard deadline fires.
    pub async fn run(mut self) -> Result<End, SessionError> {
        std::future::poll_fn(|cx| self.poll(cx)).await
    }

    fn end(&self, kind: EndKind) -> End {
        End {
            kind,
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
        if self.signals.hard.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(self.end(EndKind::Terminated)));
        }
        if !self.drain_seen && self.signals.drain.as_mut().poll(cx).is_ready() {
            self.drain_seen = true;
            self.state.draining = true;
        }
        loop {
            let mut progress = false;
            progress |= self.poll_client_read(cx)?;
            progress |= poll_flush(&mut self.c2s, self.server, cx, Side::Server)?;
            progress |= self.poll_server_read(cx)?;
            progress |= poll_flush(&mut self.s2c, self.client, cx, Side::Client)?;

            if self.s2c.stop && self.s2c.win.approved().is_empty() {
                return Poll::Ready(Ok(self.end(EndKind::Drained)));
            }
            if self.state.draining && self.idle() {
                return Poll::Ready(Ok(self.end(EndKind::Drained)));
            }
            if self.c2s.eof && self.c2s.win.approved().is_empty() {
                return Poll::Ready(Ok(self.end(EndKind::ClientClosed)));
            }
            if self.s2c.eof && self.s2c.win.approved().is_empty() {
                return Poll::Ready(Ok(self.end(EndKind::ServerClosed)));
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    fn poll_client_read(&mut self, cx: &mut Context<'_>) -> Result<bool, SessionError> {
        let Some(n) = poll_fill(&mut self.c2s, self.client, cx, Side::Client)? else {
            return Ok(false);
        };
        if n == 0 {
            return Ok(true);
        }
        let state = &mut self.state;
        let scan = self
            .c2s
            .scanner
            .scan(self.c2s.win.unscanned(), |f| {
                match f.tag {
                    ftag::QUERY | ftag::SYNC | ftag::FUNCTION_CALL => state.pending += 1,
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
        let Some(n) = poll_fill(&mut self.s2c, self.server, cx, Side::Server)? else {
            return Ok(false);
        };
        if n == 0 {
            return Ok(true);
        }
        let state = &mut self.state;
        let scan = self
            .s2c
            .scanner
            .scan(self.s2c.win.unscanned(), |f| {
                state.last_server_tag = f.tag;
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
                state.pending = state.pending.saturating_sub(1);
                if state.draining && state.pending == 0 && state.tx == TxStatus::Idle {
                    Flow::Stop
                } else {
                    Flow::Continue
                }
            })
            .map_err(|e| SessionError::server_protocol(e.to_string()))?;
        self.s2c.win.approve(scan.forward);
        if scan.stopped {
            self.s2c.stop = true;
        }
        Ok(true)
    }
}

/// Reads what is available into a half's window. `Ok(None)`: nothing read
/// (not ready, no room, or closed); `Ok(Some(0))`: end of stream just seen.
fn poll_fill(
    half: &mut Half,
    from: &mut TcpStream,
    cx: &mut Context<'_>,
    side: Side,
) -> Result<Option<usize>, SessionError> {
    if half.eof || half.stop || !half.win.has_room() {
        return Ok(None);
    }
    let mut rb = ReadBuf::new(half.win.spare());
    match Pin::new(&mut *from).poll_read(cx, &mut rb) {
        Poll::Pending => {
            half.win.release();
            Ok(None)
        }
        Poll::Ready(Ok(())) => {
            let n = rb.filled().len();
            if n == 0 {
                half.eof = true;
                half.win.release();
            } else {
                half.win.filled(n);
            }
            Ok(Some(n))
        }
        Poll::Ready(Err(e)) => Err(SessionError::io(side, e)),
    }
}

/// Writes a half's approved bytes to the other side.
fn poll_flush(
    half: &mut Half,
    to: &mut TcpStream,
    cx: &mut Context<'_>,
    side: Side,
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
        progress = true;
    }
    Ok(progress)
}
