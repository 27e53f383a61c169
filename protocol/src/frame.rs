//! Tagged frames: the 5-byte `(tag, len)` header and splitting whole frames off a buffer.
//!
//! `len` counts itself but not the tag, so a frame occupies `1 + len` bytes and
//! `len >= 4`. The header is validated against a limit before anything is
//! reserved; incomplete input is `Ok(None)`.

use bytes::{Buf, Bytes, BytesMut};

/// Bytes in a tagged frame header: one tag byte and a 4-byte length.
pub const HEADER_LEN: usize = 5;

/// Default largest tagged message accepted: 1 GiB, Postgres' large-message limit.
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = 1 << 30;

/// Framing errors: the stream cannot be trusted past this point.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A length below 4 (the length field counts itself), including negative values.
    #[error("invalid message length {len} for message type '{tag}'", tag = char::from(*.tag))]
    LengthTooShort {
        /// Message type byte.
        tag: u8,
        /// The length as sent, read as a signed 32-bit integer like Postgres does.
        len: i32,
    },
    /// A length above the configured limit.
    #[error("message type '{tag}' of {len} bytes exceeds the limit of {limit} bytes", tag = char::from(*.tag))]
    LengthTooLong {
        /// Message type byte.
        tag: u8,
        /// The length as sent.
        len: u32,
        /// The limit in force.
        limit: u32,
    },
    /// A message the caller needs to read whole is larger than it is willing to buffer.
    #[error("message type '{tag}' of {len} bytes is too large to inspect (at most {max})", tag = char::from(*.tag))]
    TooLargeToInspect {
        /// Message type byte.
        tag: u8,
        /// The length as sent.
        len: u32,
        /// The largest frame the caller buffers whole.
        max: usize,
    },
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type byte.
    pub tag: u8,
    /// Length field as sent: counts itself, not the tag. Always `>= 4`.
    pub len: u32,
}

impl Header {
    /// Reads and validates the header at the start of `buf`.
    ///
    /// `Ok(None)` if fewer than [`HEADER_LEN`] bytes are present.
    #[inline]
    pub fn parse(buf: &[u8], limit: u32) -> Result<Option<Header>, FrameError> {
        let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let tag = h[0];
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        if len < 4 || len > i32::MAX as u32 {
            return Err(FrameError::LengthTooShort {
                tag,
                len: len as i32,
            });
        }
        if len > limit {
            return Err(FrameError::LengthTooLong { tag, len, limit });
        }
        Ok(Some(Header { tag, len }))
    }

    /// Bytes the whole frame occupies, header included.
    #[inline]
    pub fn frame_len(&self) -> usize {
        1 + self.len as usize
    }

    /// Bytes of the body.
    #[inline]
    pub fn body_len(&self) -> usize {
        self.len as usize - 4
    }
}

/// One whole frame; the body shares the buffer it was split from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Message type byte.
    pub tag: u8,
    /// The body, without tag and length.
    pub body: Bytes,
}

/// Splits one whole frame off the front of `buf` without copying its body.
///
/// `Ok(None)` (and `buf` untouched) until the whole frame is present. The
/// header is checked before the caller could be tempted to reserve room for it.
#[inline]
pub fn split_frame(buf: &mut BytesMut, limit: u32) -> Result<Option<Frame>, FrameError> {
    let Some(h) = Header::parse(buf, limit)? else {
        return Ok(None);
    };
    if buf.len() < h.frame_len() {
        return Ok(None);
    }
    let mut frame = buf.split_to(h.frame_len());
    // Moving the start past the header is pointer arithmetic; `split_off` would take
    // (and later drop) one more reference to the shared buffer per frame.
    frame.advance(HEADER_LEN);
    Ok(Some(Frame {
        tag: h.tag,
        body: frame.freeze(),
    }))
}

/// The first whole frame of `buf`, borrowed: its header and its body.
///
/// `Ok(None)` until the frame is complete. Nothing is consumed, for a caller that
/// looks at a message before passing the bytes on as they are.
#[inline]
pub fn peek_frame(buf: &[u8], limit: u32) -> Result<Option<(Header, &[u8])>, FrameError> {
    let Some(h) = Header::parse(buf, limit)? else {
        return Ok(None);
    };
    Ok(buf.get(HEADER_LEN..h.frame_len()).map(|body| (h, body)))
}

/// Length of the longest prefix of `buf` made of whole frames.
///
/// This is the header-only walk a relay uses to forward a run of frames with
/// one `split_to`.
#[inline]
pub fn complete_prefix(buf: &[u8], limit: u32) -> Result<usize, FrameError> {
    let mut pos = 0;
    while let Some(h) = Header::parse(&buf[pos..], limit)? {
        let end = pos + h.frame_len();
        if end > buf.len() {
            break;
        }
        pos = end;
    }
    Ok(pos)
}

/// Bytes still needed before `buf` holds the first whole frame (0 if it does).
///
/// Lets a reader size its next read without guessing; never more than the
/// validated frame length.
pub fn needed(buf: &[u8], limit: u32) -> Result<usize, FrameError> {
    match Header::parse(buf, limit)? {
        None => Ok(HEADER_LEN - buf.len()),
        Some(h) => Ok(h.frame_len().saturating_sub(buf.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_frame_bodies_are_views_of_the_buffer_not_copies() {
        let mut buf = BytesMut::from(&b"Z\0\0\0\x05IQ\0\0\0\x0dSELECT 1\0"[..]);
        let base = buf.as_ptr() as usize;
        let z = split_frame(&mut buf, 1 << 20).unwrap().unwrap();
        let q = split_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!((z.tag, &z.body[..]), (b'Z', &b"I"[..]));
        assert_eq!((q.tag, &q.body[..]), (b'Q', &b"SELECT 1\0"[..]));
        assert_eq!(z.body.as_ptr() as usize, base + HEADER_LEN);
        assert_eq!(q.body.as_ptr() as usize, base + 6 + HEADER_LEN);
    }
}
