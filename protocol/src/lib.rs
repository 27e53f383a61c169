//! The PostgreSQL v3 wire protocol, both directions, without IO.
//!
//! Everything here works on byte slices and `bytes` buffers: a proxy feeds
//! in what it read and gets back frames, typed views of the few messages it
//! acts on, or `Ok(None)` when more bytes are needed. Lengths are checked
//! against limits before any memory is reserved, so hostile input can neither
//! panic the caller nor make it allocate.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic),
    deny(clippy::too_many_lines)
)]

pub mod backend;
pub mod classify;
pub mod encode;
pub mod frame;
pub mod frontend;
pub mod options;
pub mod sqlstate;
pub mod startup;
pub mod stream;

pub use backend::{BackendMessage, TxStatus};
pub use frame::{Frame, FrameError, Header};
pub use frontend::{FrontendMessage, SaslInitialResponse};
pub use startup::{ProtocolVersion, StartupError, StartupMessage, StartupPacket};
pub use stream::{Flow, FrameRef, Scan, Scanner, TagSet};

/// Errors from decoding the body of a message whose framing was valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body ended before a field it must contain.
    #[error("message '{tag}' is truncated", tag = *.tag as char)]
    Truncated {
        /// Message type byte.
        tag: u8,
    },
    /// A string field had no NUL terminator.
    #[error("message '{tag}' has a string without its NUL terminator", tag = *.tag as char)]
    MissingNul {
        /// Message type byte.
        tag: u8,
    },
    /// The body is longer than its fields.
    #[error("message '{tag}' has {extra} trailing bytes", tag = *.tag as char)]
    TrailingBytes {
        /// Message type byte.
        tag: u8,
        /// How many bytes were left over.
        extra: usize,
    },
    /// A field holds a value the protocol does not allow.
    #[error("message '{tag}' has an invalid {what}", tag = *.tag as char)]
    Invalid {
        /// Message type byte.
        tag: u8,
        /// Which field.
        what: &'static str,
    },
}

/// A cursor over a message body: the small set of readers the views need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    tag: u8,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(tag: u8, buf: &'a [u8]) -> Self {
        Reader { tag, buf }
    }

    pub(crate) fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or(DecodeError::Truncated { tag: self.tag })?;
        self.buf = rest;
        Ok(b)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, DecodeError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated { tag: self.tag });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A NUL-terminated string, without its terminator.
    pub(crate) fn cstr(&mut self) -> Result<&'a [u8], DecodeError> {
        let end = memchr::memchr(0, self.buf).ok_or(DecodeError::MissingNul { tag: self.tag })?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// The error for a field of this message that has an impossible value.
    pub(crate) fn invalid(&self, what: &'static str) -> DecodeError {
        DecodeError::Invalid {
            tag: self.tag,
            what,
        }
    }

    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                tag: self.tag,
                extra: self.buf.len(),
            })
        }
    }
}
