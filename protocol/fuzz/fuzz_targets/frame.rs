//! Tagged frames over arbitrary bytes with small limits: `split_frame`, `complete_prefix`,
//! `needed` and the relay's `Scanner` must agree, never panic, and never hold more than
//! an incomplete header or inspected frame.
//!
//! The last 4 bytes of the input choose the limits and the read size, so a recorded
//! stream (tests/fixtures/*.s2c.bin) is a good seed as it is.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgsteer_protocol::frame::{self, FrameError, HEADER_LEN, complete_prefix, split_frame};
use pgsteer_protocol::stream::{Flow, Scanner, TagSet};

fuzz_target!(|data: &[u8]| {
    let Some((stream, &[a, b, c, stop_tag])) = data.split_last_chunk::<4>() else {
        return;
    };
    // Small limits, so that limit errors and limit-sized frames are both reachable.
    let limit = u32::from(a) * 16;
    let max_inspect = usize::from(b) * 2;
    let chunk = usize::from(c % 64) + 1;
    let inspect = TagSet::of(&[b'Z', b'E', stop_tag]);

    // split_frame until it needs more bytes or fails.
    let mut buf = BytesMut::from(stream);
    let mut tags = Vec::new();
    let mut consumed = 0;
    let split = loop {
        match split_frame(&mut buf, limit) {
            Ok(Some(f)) => {
                assert!(f.body.len() + 4 <= limit as usize);
                consumed += HEADER_LEN + f.body.len();
                tags.push(f.tag);
            }
            Ok(None) => break Ok(consumed),
            Err(e) => break Err(e),
        }
    };
    assert_eq!(consumed + buf.len(), stream.len());
    assert_eq!(&buf[..], &stream[consumed..]);

    // The header-only walk finds the same boundary or the same error.
    assert_eq!(complete_prefix(stream, limit), split);
    if split.is_ok() {
        let needed = frame::needed(&buf, limit).expect("the rest has a valid header or none");
        assert!(needed > 0);
        assert!(buf.len() + needed <= (limit as usize + 1).max(HEADER_LEN));
    }

    // The scanner, fed in `chunk`-byte reads, forwards in order and holds back little.
    let mut scanner = Scanner::new(limit, inspect, max_inspect);
    let mut pending: Vec<u8> = Vec::new();
    let mut forwarded = 0;
    let mut seen = Vec::new();
    for piece in stream.chunks(chunk) {
        pending.extend_from_slice(piece);
        loop {
            let scan = scanner.scan(&pending, |f| {
                if let Some(body) = f.body {
                    assert_eq!(body.len() + 4, f.len as usize);
                }
                seen.push(f.tag);
                if f.tag == stop_tag {
                    Flow::Stop
                } else {
                    Flow::Continue
                }
            });
            let scan = match scan {
                Ok(scan) => scan,
                // It reads the same headers as the split loop, so it fails on the same one.
                Err(FrameError::TooLargeToInspect { .. }) => return,
                Err(e) => {
                    assert_eq!(split, Err(e));
                    return;
                }
            };
            assert!(scan.forward <= pending.len());
            forwarded += scan.forward;
            pending.drain(..scan.forward);
            if !scan.stopped {
                break;
            }
        }
        assert!(pending.len() < max_inspect.max(HEADER_LEN + 1));
    }
    assert_eq!(forwarded + pending.len(), stream.len());
    // Every whole frame was reported, plus at most the one whose body is still streaming.
    assert!(split.is_ok());
    assert_eq!(&seen[..tags.len()], &tags[..]);
    assert!(seen.len() <= tags.len() + 1);
    if scanner.at_boundary() {
        // Not inside a streamed body: exactly the whole frames went out.
        assert_eq!(forwarded, consumed);
    } else {
        assert_eq!(seen.len(), tags.len() + 1);
        assert!(pending.is_empty());
    }
});
