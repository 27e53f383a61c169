//! What the relay asks of whoever owns the server side: which messages to read whole, which
//! to rewrite or drop, and whether the server connection may be given back between
//! transactions. Passthrough sessions answer "nothing, never" at no cost (the relay is
//! monomorphised per owner); pooled sessions rename prepared statements, replay settings and
//! lend their server connection per transaction.

use bytes::BytesMut;
use pgsteer_protocol::{Flow, FrameRef, TagSet};

use super::super::SessionError;

/// The server side's owner, as the relay sees it.
pub trait Owner {
    /// Client message types read whole and shown to [`Owner::client_frame`] with a body.
    const CLIENT_INSPECT: TagSet;
    /// Server message types read whole besides ReadyForQuery, which always is.
    const SERVER_INSPECT: TagSet;

    /// A client message was scanned (after the relay's own bookkeeping). [`Flow::Hold`]
    /// stops before it so that [`Owner::rewrite_client`] can replace it.
    #[inline]
    fn client_frame(&mut self, _f: &FrameRef<'_>) -> Flow {
        Flow::Continue
    }

    /// A server message was scanned (before the relay's own bookkeeping). [`Flow::Hold`]
    /// drops it: the client never sees it, and the relay does not count it, except a
    /// ReadyForQuery, which still answers the oldest request. `to_client` is written to the
    /// client before this message.
    #[inline]
    fn server_frame(&mut self, _f: &FrameRef<'_>, _to_client: &mut BytesMut) -> Flow {
        Flow::Continue
    }

    /// A held client message of type `tag` whose body is `body_len` bytes, of which `body`
    /// (the start) has been read: appends what goes to the server instead to `out` and says
    /// how many body bytes it took; the rest streams through unchanged after `out`.
    /// `Ok(None)`: more of the body is needed first.
    fn rewrite(
        &mut self,
        _tag: u8,
        _body: &[u8],
        _body_len: usize,
        _out: &mut BytesMut,
    ) -> Result<Option<usize>, SessionError> {
        Ok(Some(0))
    }

    /// Whether the server said it is closing the connection (a FATAL the owner kept): the
    /// relay stops at once instead of sending it more and waiting for the end of stream.
    #[inline]
    fn server_gone(&self) -> bool {
        false
    }

    /// Whether the server connection is given back at the next idle point
    /// ([`super::Event::Idle`]): nothing in flight, no transaction open.
    #[inline]
    fn lends(&self) -> bool {
        false
    }
}

/// A session glued to one backend: every byte passes untouched.
pub struct Passthrough;

impl Owner for Passthrough {
    const CLIENT_INSPECT: TagSet = TagSet::EMPTY;
    const SERVER_INSPECT: TagSet = TagSet::EMPTY;
}
