//! The relay's view of a message stream: header-only scanning with a streaming path.
//!
//! A [`Scanner`] walks the frames in whatever bytes were just read and says how
//! many of them can be forwarded now. Frames whose tag is in the caller's
//! [`TagSet`] are only forwarded once whole, and their body is shown to the
//! caller (ReadyForQuery's status, say). Every other frame is forwarded as its
//! bytes arrive: a 1 GiB `DataRow` or `CopyData` passes through a 16 KiB buffer
//! without ever being held whole. Memory per stream is therefore bounded by the
//! buffer, whatever the message sizes.

use crate::frame::{FrameError, HEADER_LEN, Header};

/// A set of message type bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TagSet([u64; 4]);

impl TagSet {
    /// The empty set.
    pub const EMPTY: TagSet = TagSet([0; 4]);

    /// The set of the given tags.
    pub const fn of(tags: &[u8]) -> TagSet {
        let mut set = [0u64; 4];
        let mut i = 0;
        while i < tags.len() {
            let t = tags[i] as usize;
            set[t / 64] |= 1 << (t % 64);
            i += 1;
        }
        TagSet(set)
    }

    /// The union of two sets.
    pub const fn with(self, other: TagSet) -> TagSet {
        TagSet([
            self.0[0] | other.0[0],
            self.0[1] | other.0[1],
            self.0[2] | other.0[2],
            self.0[3] | other.0[3],
        ])
    }

    /// Whether `tag` is in the set.
    #[inline]
    pub const fn contains(&self, tag: u8) -> bool {
        self.0[tag as usize / 64] & (1 << (tag as usize % 64)) != 0
    }
}

/// What the scanner shows the caller about one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// Message type byte.
    pub tag: u8,
    /// Length field as sent.
    pub len: u32,
    /// The whole body for inspected tags; `None` for frames that stream through.
    pub body: Option<&'a [u8]>,
}

/// The caller's answer after seeing a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep scanning.
    Continue,
    /// Stop right after this frame: it is forwarded, what follows is not scanned.
    Stop,
    /// Stop right before this frame: it is not forwarded and stays at the start of the
    /// unscanned bytes (whole if it was shown with a body, else as much of it as was read),
    /// for the caller to rewrite or drop; see [`Scanner::stream_rest`].
    Hold,
}

/// Result of one [`Scanner::scan`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// How many bytes from the start of the buffer may be forwarded now.
    pub forward: usize,
    /// Whether the caller asked to stop ([`Flow::Stop`] or [`Flow::Hold`]).
    pub stopped: bool,
    /// Whether the caller held a frame ([`Flow::Hold`]): it starts at `forward`.
    pub held: bool,
}

/// Frame-boundary state of one direction of a session.
#[derive(Debug, Clone)]
pub struct Scanner {
    limit: u32,
    max_inspect: usize,
    inspect: TagSet,
    /// Inspected frames larger than `max_inspect` stream through (shown without a body)
    /// instead of being an error.
    stream_oversize: bool,
    /// Body bytes of a streamed frame that have not been seen yet.
    body_left: usize,
}

impl Scanner {
    /// A scanner accepting frames up to `limit` bytes, buffering inspected
    /// frames (tags in `inspect`) up to `max_inspect` bytes whole.
    pub fn new(limit: u32, inspect: TagSet, max_inspect: usize) -> Scanner {
        Scanner {
            limit,
            max_inspect: max_inspect.max(HEADER_LEN + 1),
            inspect,
            stream_oversize: false,
            body_left: 0,
        }
    }

    /// Lets inspected frames larger than `max_inspect` stream through, shown without a body,
    /// instead of failing the scan: for callers that can do without a body they cannot hold.
    pub fn stream_oversize(mut self) -> Scanner {
        self.stream_oversize = true;
        self
    }

    /// Changes which tags are inspected (takes effect at the next frame).
    pub fn set_inspect(&mut self, inspect: TagSet) {
        self.inspect = inspect;
    }

    /// After the caller took a held frame's header and the first part of its body out of
    /// the stream itself, the next `n` bytes are the rest of that body: they stream through.
    pub fn stream_rest(&mut self, n: usize) {
        debug_assert!(self.body_left == 0, "not at a frame boundary");
        self.body_left = n;
    }

    /// Gives up the frame being streamed (what it was going to has gone): returns how many
    /// of its body bytes have not been seen yet, for the caller to skip; the scanner is at a
    /// frame boundary again.
    pub fn abandon(&mut self) -> usize {
        std::mem::take(&mut self.body_left)
    }

    /// Whether the stream is at a frame boundary (not inside a streamed body).
    pub fn at_boundary(&self) -> bool {
        self.body_left == 0
    }

    /// Scans `buf` (the unforwarded bytes of this direction, oldest first).
    ///
    /// Calls `visit` once per frame, in order, when its header is complete
    /// (inspected tags: when the whole frame is). Bytes past `forward` are an
    /// incomplete header or inspected frame: keep them and scan again with more.
    #[inline]
    pub fn scan<F>(&mut self, buf: &[u8], mut visit: F) -> Result<Scan, FrameError>
    where
        F: FnMut(FrameRef<'_>) -> Flow,
    {
        let mut pos = 0;
        if self.body_left > 0 {
            let n = self.body_left.min(buf.len());
            self.body_left -= n;
            pos = n;
            if self.body_left > 0 {
                return Ok(Scan {
                    forward: pos,
                    stopped: false,
                    held: false,
                });
            }
        }
        while let Some(h) = Header::parse(&buf[pos..], self.limit)? {
            let frame_len = h.frame_len();
            let avail = buf.len() - pos;
            let whole = self.inspect.contains(h.tag)
                && !(self.stream_oversize && frame_len > self.max_inspect);
            if whole && frame_len > self.max_inspect {
                return Err(FrameError::TooLargeToInspect {
                    tag: h.tag,
                    len: h.len,
                    max: self.max_inspect,
                });
            }
            if whole && avail < frame_len {
                break;
            }
            let body = whole.then(|| &buf[pos + HEADER_LEN..pos + frame_len]);
            let flow = visit(FrameRef {
                tag: h.tag,
                len: h.len,
                body,
            });
            if flow == Flow::Hold {
                return Ok(Scan {
                    forward: pos,
                    stopped: true,
                    held: true,
                });
            }
            if avail < frame_len {
                self.body_left = frame_len - avail;
                pos = buf.len();
            } else {
                pos += frame_len;
            }
            if flow == Flow::Stop {
                return Ok(Scan {
                    forward: pos,
                    stopped: true,
                    held: false,
                });
            }
            if self.body_left > 0 {
                break;
            }
        }
        Ok(Scan {
            forward: pos,
            stopped: false,
            held: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn large_uninspected_frames_stream_through_in_pieces() {
        let mut s = Scanner::new(1 << 30, TagSet::of(b"Z"), 64);
        let big = frame(b'D', &[7u8; 1000]);
        let mut stream = big.clone();
        stream.extend_from_slice(&frame(b'Z', b"I"));
        let mut seen = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut forwarded = Vec::new();
        for chunk in stream.chunks(100) {
            pending.extend_from_slice(chunk);
            let scan = s
                .scan(&pending, |f| {
                    seen.push((f.tag, f.body.map(<[u8]>::to_vec)));
                    Flow::Continue
                })
                .unwrap();
            forwarded.extend(pending.drain(..scan.forward));
            // never holds more than an incomplete inspected frame
            assert!(pending.len() < 6);
        }
        assert_eq!(forwarded, stream);
        assert_eq!(seen, vec![(b'D', None), (b'Z', Some(b"I".to_vec()))]);
    }

    #[test]
    fn an_abandoned_frame_leaves_its_rest_to_the_caller() {
        let mut s = Scanner::new(1 << 30, TagSet::of(b"Z"), 64);
        let big = frame(b'D', &[7u8; 100]);
        let scan = s.scan(&big[..30], |_| Flow::Continue).unwrap();
        assert_eq!(scan.forward, 30);
        assert!(!s.at_boundary());
        assert_eq!(s.abandon(), big.len() - 30);
        assert!(s.at_boundary());
        // What comes next is read as a new frame.
        let z = frame(b'Z', b"I");
        let mut seen = Vec::new();
        s.scan(&z, |f| {
            seen.push(f.tag);
            Flow::Continue
        })
        .unwrap();
        assert_eq!(seen, [b'Z']);
    }

    #[test]
    fn inspected_frame_longer_than_the_buffer_is_an_error() {
        let mut s = Scanner::new(1 << 30, TagSet::of(b"E"), 16);
        let e = frame(b'E', &[1u8; 100]);
        assert!(matches!(
            s.scan(&e, |_| Flow::Continue),
            Err(FrameError::TooLargeToInspect { tag: b'E', .. })
        ));
    }

    #[test]
    fn stop_forwards_up_to_and_including_the_frame() {
        let mut s = Scanner::new(1 << 30, TagSet::of(b"Z"), 64);
        let mut buf = frame(b'C', b"SELECT 1\0");
        buf.extend(frame(b'Z', b"I"));
        let end = buf.len();
        buf.extend(frame(b'T', b"\0\0"));
        let scan = s
            .scan(&buf, |f| {
                if f.tag == b'Z' {
                    Flow::Stop
                } else {
                    Flow::Continue
                }
            })
            .unwrap();
        assert_eq!(
            scan,
            Scan {
                forward: end,
                stopped: true,
                held: false
            }
        );
    }

    #[test]
    fn hold_stops_before_the_frame_and_leaves_it_whole() {
        let mut s = Scanner::new(1 << 30, TagSet::of(b"P"), 64);
        let mut buf = frame(b'Q', b"SELECT 1\0");
        let at = buf.len();
        buf.extend(frame(b'P', b"s1\0SELECT 2\0\0\0"));
        buf.extend(frame(b'S', b""));
        let mut seen = 0;
        let scan = s
            .scan(&buf, |f| {
                seen += 1;
                if f.tag == b'P' {
                    Flow::Hold
                } else {
                    Flow::Continue
                }
            })
            .unwrap();
        assert_eq!(
            scan,
            Scan {
                forward: at,
                stopped: true,
                held: true
            }
        );
        assert_eq!(seen, 2);
        assert!(s.at_boundary());
    }

    #[test]
    fn with_stream_oversize_a_large_inspected_frame_streams_without_a_body() {
        let mut s = Scanner::new(1 << 30, TagSet::of(b"Q"), 16).stream_oversize();
        let q = frame(b'Q', &[b'x'; 100]);
        let mut bodies = Vec::new();
        let scan = s
            .scan(&q[..50], |f| {
                bodies.push(f.body.map(<[u8]>::to_vec));
                Flow::Continue
            })
            .unwrap();
        assert_eq!(scan.forward, 50);
        assert_eq!(bodies, vec![None]);
        assert!(!s.at_boundary());
        let small = frame(b'Q', b"SELECT\0");
        let mut s = Scanner::new(1 << 30, TagSet::of(b"Q"), 16).stream_oversize();
        s.scan(&small, |f| {
            assert_eq!(f.body, Some(&b"SELECT\0"[..]));
            Flow::Continue
        })
        .unwrap();
    }
}
