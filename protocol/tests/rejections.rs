//! Malformed input of every shape is an error, never a panic, a wait for bytes that can't
//! come, or a reservation sized by the peer.

use bytes::BytesMut;
use pgsteer_protocol::DecodeError;
use pgsteer_protocol::backend::BackendMessage;
use pgsteer_protocol::frame::{self, FrameError, Header, complete_prefix, split_frame};
use pgsteer_protocol::frontend::FrontendMessage;
use pgsteer_protocol::startup::{
    CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, MAX_STARTUP_PACKET_LEN, ProtocolVersion,
    SSL_REQUEST_CODE, StartupError, StartupPacket, parse_startup, startup_len,
};
use pgsteer_protocol::stream::{Flow, Scanner, TagSet};

const LIMIT: u32 = 1 << 20;

fn header(tag: u8, len: u32) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&len.to_be_bytes());
    v
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = header(tag, (body.len() + 4) as u32);
    v.extend_from_slice(body);
    v
}

/// A startup-family packet whose length field says `len`, followed by `rest` (which may
/// be shorter or longer than that).
fn packet_with_len(len: i32, code: u32, rest: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(&code.to_be_bytes());
    b.extend_from_slice(rest);
    b
}

fn packet(code: u32, rest: &[u8]) -> BytesMut {
    packet_with_len((rest.len() + 8) as i32, code, rest)
}

fn startup(rest: &[u8]) -> BytesMut {
    packet(ProtocolVersion::V3_0.code(), rest)
}

/// Every tagged-frame entry point gives the same error for `bytes`.
fn all_reject_frame(bytes: &[u8], limit: u32, want: &FrameError) {
    let mut buf = BytesMut::from(bytes);
    assert_eq!(split_frame(&mut buf, limit).as_ref(), Err(want));
    assert_eq!(&buf[..], bytes, "the buffer must be left as it was");
    assert_eq!(complete_prefix(bytes, limit).as_ref(), Err(want));
    assert_eq!(frame::needed(bytes, limit).as_ref(), Err(want));
    assert_eq!(frame::peek_frame(bytes, limit).as_ref(), Err(want));
    assert_eq!(Header::parse(bytes, limit).as_ref(), Err(want));
    for inspect in [TagSet::EMPTY, TagSet::of(&bytes[..1])] {
        let mut s = Scanner::new(limit, inspect, 1024);
        assert_eq!(s.scan(bytes, |_| Flow::Continue).as_ref(), Err(want));
    }
}

#[test]
fn tagged_frame_lengths_below_four_are_rejected() {
    for len in 0..4u32 {
        all_reject_frame(
            &header(b'Q', len),
            LIMIT,
            &FrameError::LengthTooShort {
                tag: b'Q',
                len: len as i32,
            },
        );
    }
}

#[test]
fn negative_tagged_frame_lengths_are_rejected_as_postgres_reads_them() {
    for len in [-1i32, -4, i32::MIN, i32::MIN + 5] {
        all_reject_frame(
            &header(b'D', len as u32),
            u32::MAX,
            &FrameError::LengthTooShort { tag: b'D', len },
        );
    }
}

#[test]
fn tagged_frames_longer_than_the_limit_are_rejected_before_their_body_arrives() {
    for (len, limit) in [(LIMIT + 1, LIMIT), (5, 4), (i32::MAX as u32, 1 << 30)] {
        all_reject_frame(
            &header(b'd', len),
            limit,
            &FrameError::LengthTooLong {
                tag: b'd',
                len,
                limit,
            },
        );
    }
    // At the limit is fine: just incomplete.
    let mut buf = BytesMut::from(&header(b'd', LIMIT)[..]);
    assert_eq!(split_frame(&mut buf, LIMIT), Ok(None));
    assert_eq!(frame::needed(&buf, LIMIT), Ok(LIMIT as usize + 1 - 5));
}

#[test]
fn a_bad_header_after_good_frames_is_still_an_error() {
    let mut bytes = frame(b'Z', b"I");
    bytes.extend(header(b'Z', 2));
    assert_eq!(
        complete_prefix(&bytes, LIMIT),
        Err(FrameError::LengthTooShort { tag: b'Z', len: 2 })
    );
    let mut s = Scanner::new(LIMIT, TagSet::of(b"Z"), 64);
    let mut seen = 0;
    assert!(
        s.scan(&bytes, |_| {
            seen += 1;
            Flow::Continue
        })
        .is_err()
    );
    assert_eq!(seen, 1);
}

#[test]
fn an_inspected_frame_larger_than_the_scanner_buffers_is_rejected_from_its_header() {
    let mut s = Scanner::new(LIMIT, TagSet::of(b"E"), 64);
    assert_eq!(
        s.scan(&header(b'E', 100), |_| Flow::Continue),
        Err(FrameError::TooLargeToInspect {
            tag: b'E',
            len: 100,
            max: 64
        })
    );
}

#[test]
fn negative_and_short_startup_lengths_are_rejected() {
    for len in [i32::MIN, -1, 0, 1, 4, 7] {
        let mut buf = packet_with_len(len, ProtocolVersion::V3_0.code(), b"user\0a\0\0");
        assert_eq!(parse_startup(&mut buf), Err(StartupError::TooShort(len)));
        assert_eq!(startup_len(&buf), Err(StartupError::TooShort(len)));
        // Decided from the length alone.
        let mut four = BytesMut::from(&buf[..4]);
        assert_eq!(parse_startup(&mut four), Err(StartupError::TooShort(len)));
    }
}

#[test]
fn oversize_startup_lengths_are_rejected_before_the_body_arrives() {
    for len in [MAX_STARTUP_PACKET_LEN as i32 + 1, 1 << 20, i32::MAX] {
        let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
        assert_eq!(parse_startup(&mut buf), Err(StartupError::TooLong(len)));
    }
    // The longest allowed packet is accepted.
    let mut rest = b"user\0".to_vec();
    rest.resize(MAX_STARTUP_PACKET_LEN - 8 - 2, b'a');
    rest.extend_from_slice(b"\0\0");
    let mut buf = startup(&rest);
    assert_eq!(buf.len(), MAX_STARTUP_PACKET_LEN);
    assert!(matches!(
        parse_startup(&mut buf),
        Ok(Some(StartupPacket::Startup(_)))
    ));
}

#[test]
fn truncated_startup_packets_wait_and_short_ones_are_rejected() {
    let whole = startup(b"user\0app\0\0");
    for cut in 0..whole.len() {
        let mut buf = BytesMut::from(&whole[..cut]);
        assert_eq!(parse_startup(&mut buf), Ok(None), "cut at {cut}");
    }
    // A length that ends the packet inside its parameters: the terminator is missing.
    for len in 8..whole.len() as i32 {
        let mut buf = packet_with_len(len, ProtocolVersion::V3_0.code(), b"user\0app\0\0");
        assert!(parse_startup(&mut buf).is_err(), "length {len}");
    }
}

#[test]
fn unknown_protocol_versions_are_rejected() {
    for (major, minor) in [
        (2, 0),
        (4, 0),
        (1, 0),
        (0, 0),
        (0xffff, 0xffff),
        (1234, 5681),
    ] {
        let v = ProtocolVersion { major, minor };
        let mut buf = packet(v.code(), b"user\0a\0\0");
        assert_eq!(
            parse_startup(&mut buf),
            Err(StartupError::UnsupportedVersion(v))
        );
    }
    // Any 3.x is spoken (and negotiated down later).
    let mut buf = packet(
        ProtocolVersion { major: 3, minor: 7 }.code(),
        b"user\0a\0\0",
    );
    assert!(matches!(
        parse_startup(&mut buf),
        Ok(Some(StartupPacket::Startup(_)))
    ));
}

#[test]
fn startup_parameters_without_their_nul_terminators_are_rejected() {
    for rest in [
        &b""[..],
        b"user",
        b"user\0",
        b"user\0app",
        b"user\0app\0",
        b"user\0app\0database",
        b"user\0app\0database\0db\0",
        b"user\0app\0\0extra",
        b"\0\0",
        b"\0user\0app\0\0",
    ] {
        let mut buf = startup(rest);
        let got = parse_startup(&mut buf);
        assert!(
            matches!(
                got,
                Err(StartupError::MissingTerminator | StartupError::MissingValue(_))
            ),
            "{rest:?}: {got:?}"
        );
    }
}

#[test]
fn startup_parameters_that_are_not_utf8_are_rejected() {
    for rest in [&b"us\xffer\0a\0\0"[..], b"user\0\xc3\0\0"] {
        assert_eq!(
            parse_startup(&mut startup(rest)),
            Err(StartupError::NotUtf8)
        );
    }
}

#[test]
fn ssl_and_gssenc_requests_of_any_length_but_eight_are_rejected() {
    for (code, what) in [
        (SSL_REQUEST_CODE, "SSL request"),
        (GSSENC_REQUEST_CODE, "GSSENC request"),
    ] {
        for extra in [1usize, 3, 4, 8, 100] {
            let mut buf = packet(code, &vec![0u8; extra]);
            assert_eq!(
                parse_startup(&mut buf),
                Err(StartupError::BadRequestLength {
                    what,
                    len: 8 + extra
                })
            );
        }
    }
    assert_eq!(
        parse_startup(&mut packet(SSL_REQUEST_CODE, b"")),
        Ok(Some(StartupPacket::SslRequest))
    );
    assert_eq!(
        parse_startup(&mut packet(GSSENC_REQUEST_CODE, b"")),
        Ok(Some(StartupPacket::GssEncRequest))
    );
}

#[test]
fn cancel_keys_shorter_than_4_or_longer_than_256_bytes_are_rejected() {
    let pid = 4242i32.to_be_bytes();
    for key_len in [0usize, 1, 2, 3, 257, 300, MAX_STARTUP_PACKET_LEN - 12] {
        let mut rest = pid.to_vec();
        rest.resize(4 + key_len, 0xab);
        let mut buf = packet(CANCEL_REQUEST_CODE, &rest);
        assert_eq!(
            parse_startup(&mut buf),
            Err(StartupError::BadCancelLength(12 + key_len)),
            "key of {key_len} bytes"
        );
    }
    // Without even a whole process id.
    for n in 0..4 {
        assert_eq!(
            parse_startup(&mut packet(CANCEL_REQUEST_CODE, &pid[..n])),
            Err(StartupError::BadCancelLength(8 + n))
        );
    }
    for key_len in [4usize, 32, 256] {
        let mut rest = pid.to_vec();
        rest.resize(4 + key_len, 0xab);
        assert!(matches!(
            parse_startup(&mut packet(CANCEL_REQUEST_CODE, &rest)),
            Ok(Some(StartupPacket::Cancel(c))) if c.key.len() == key_len && c.pid == 4242
        ));
    }
}

#[test]
fn backend_key_data_with_a_key_out_of_range_is_rejected() {
    let invalid = Err(DecodeError::Invalid {
        tag: b'K',
        what: "secret key length",
    });
    for key_len in [0usize, 1, 3, 257, 1000] {
        let mut body = 7i32.to_be_bytes().to_vec();
        body.resize(4 + key_len, 1);
        assert_eq!(BackendMessage::parse(b'K', &body), invalid, "{key_len}");
    }
    for n in 0..4 {
        assert_eq!(
            BackendMessage::parse(b'K', &[0u8; 4][..n]),
            Err(DecodeError::Truncated { tag: b'K' })
        );
    }
}

#[test]
fn error_fields_without_their_nul_terminators_are_rejected() {
    for tag in [b'E', b'N'] {
        for body in [&b"SERROR"[..], b"SERROR\0C", b"SERROR\0Mboom"] {
            assert_eq!(
                BackendMessage::parse(tag, body),
                Err(DecodeError::MissingNul { tag }),
                "{body:?}"
            );
        }
        // The closing zero byte is missing.
        for body in [&b""[..], b"SERROR\0", b"SERROR\0Mboom\0"] {
            assert_eq!(
                BackendMessage::parse(tag, body),
                Err(DecodeError::Truncated { tag }),
                "{body:?}"
            );
        }
        assert_eq!(
            BackendMessage::parse(tag, b"SERROR\0\0junk"),
            Err(DecodeError::TrailingBytes { tag, extra: 4 })
        );
        assert!(BackendMessage::parse(tag, b"\0").is_ok());
    }
}

#[test]
fn queries_without_their_nul_terminator_are_rejected() {
    assert_eq!(
        FrontendMessage::parse(b'Q', b"SELECT 1"),
        Err(DecodeError::MissingNul { tag: b'Q' })
    );
    assert_eq!(
        FrontendMessage::parse(b'Q', b""),
        Err(DecodeError::MissingNul { tag: b'Q' })
    );
    assert_eq!(
        FrontendMessage::parse(b'Q', b"SELECT 1\0;\0"),
        Err(DecodeError::TrailingBytes {
            tag: b'Q',
            extra: 2
        })
    );
}

#[test]
fn parse_messages_with_missing_parts_are_rejected() {
    for body in [
        &b""[..],
        b"s1",
        b"s1\0SELECT 1",
        b"s1\0SELECT 1\0",
        b"s1\0SELECT 1\0\0",
        b"s1\0SELECT $1\0\0\x01\0\0\0",
        b"s1\0SELECT 1\0\0\0\0",
    ] {
        assert!(FrontendMessage::parse(b'P', body).is_err(), "{body:?}");
    }
    assert_eq!(
        FrontendMessage::parse(b'P', b"\0x\0\xff\xff"),
        Err(DecodeError::Invalid {
            tag: b'P',
            what: "parameter count"
        })
    );
}

#[test]
fn bodiless_frontend_messages_with_a_body_are_rejected() {
    for tag in [b'S', b'H', b'X'] {
        assert_eq!(
            FrontendMessage::parse(tag, b"x"),
            Err(DecodeError::TrailingBytes { tag, extra: 1 })
        );
    }
}

#[test]
fn malformed_typed_backend_bodies_are_rejected() {
    let cases: &[(u8, &[u8])] = &[
        (b'Z', b""),
        (b'Z', b"II"),
        (b'Z', b"X"),
        (b'S', b"name"),
        (b'S', b"name\0value"),
        (b'S', b"name\0value\0x"),
        (b'C', b"SELECT 1"),
        (b'R', b""),
        (b'R', b"\0\0\0"),
        (b'R', b"\0\0\0\0x"),
        (b'R', b"\0\0\0\x03x"),
        (b'R', b"\0\0\0\x05\x01\x02\x03"),
        (b'R', b"\0\0\0\x05\x01\x02\x03\x04\x05"),
        (b'R', b"\0\0\0\x0a"),
        (b'R', b"\0\0\0\x0aSCRAM-SHA-256\0"),
        (b'R', b"\0\0\0\x0aSCRAM-SHA-256"),
        (b'R', b"\0\0\0\x0aSCRAM-SHA-256\0\0x"),
        (b'G', b""),
        (b'G', b"\0\0"),
        (b'H', b"\0\xff\xff"),
        (b'H', b"\0\0\x02\0\0"),
        (b'W', b"\0\0\x01\0\0\0"),
        (b'v', b"\0\0\0\0"),
        (b'v', b"\0\0\0\0\xff\xff\xff\xff"),
        (b'v', b"\0\0\0\0\x7f\xff\xff\xff_pq_.a\0"),
        (b'v', b"\0\0\0\0\0\0\0\x01_pq_.a"),
        (b'v', b"\0\0\0\0\0\0\0\0x"),
    ];
    for (tag, body) in cases {
        assert!(
            BackendMessage::parse(*tag, body).is_err(),
            "'{}' {body:?}",
            *tag as char
        );
    }
}
