//! Real sessions, byte for byte: psql and pgbench against PostgreSQL 15, recorded by
//! `fixtures/capture.py` (its docstring says how). Every fixture must decode whole, parse
//! into its typed views, need more bytes at every cut, and stream through the scanner.

use bytes::BytesMut;
use pgsteer_protocol::backend::{Authentication, BackendMessage, TxStatus};
use pgsteer_protocol::frame::{
    self, DEFAULT_MAX_MESSAGE_LEN, Frame, HEADER_LEN, complete_prefix, split_frame,
};
use pgsteer_protocol::frontend::FrontendMessage;
use pgsteer_protocol::options;
use pgsteer_protocol::startup::{self, StartupPacket, parse_startup};
use pgsteer_protocol::stream::{Flow, Scanner, TagSet};

/// Which side sent the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Client→server: one untagged startup-family packet, then tagged frames.
    ClientToServer,
    /// Server→client: tagged frames only.
    ServerToClient,
}

struct Fixture {
    name: &'static str,
    dir: Dir,
    bytes: &'static [u8],
}

macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        &[$(
            Fixture {
                name: concat!($name, ".c2s"),
                dir: Dir::ClientToServer,
                bytes: include_bytes!(concat!("fixtures/", $name, ".c2s.bin")),
            },
            Fixture {
                name: concat!($name, ".s2c"),
                dir: Dir::ServerToClient,
                bytes: include_bytes!(concat!("fixtures/", $name, ".s2c.bin")),
            },
        )*]
    };
}

static FIXTURES: &[Fixture] = fixtures![
    "psql_simple",
    "auth_scram",
    "auth_md5",
    "auth_md5_wrong_password",
    "psql_cancel_session",
    "psql_cancel_request",
    "pgbench_select_simple",
    "pgbench_select_extended",
    "pgbench_select_prepared",
    "pgbench_tpcb",
];

fn fixture(name: &str) -> &'static Fixture {
    FIXTURES
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

/// A fixture taken apart: the startup packet (client side) and the tagged frames after it.
struct Decoded {
    startup: Option<StartupPacket>,
    /// Offset of the first tagged frame.
    tagged_from: usize,
    frames: Vec<Frame>,
}

fn decode(f: &Fixture) -> Decoded {
    let mut buf = BytesMut::from(f.bytes);
    let startup = match f.dir {
        Dir::ClientToServer => Some(
            parse_startup(&mut buf)
                .unwrap_or_else(|e| panic!("{}: startup packet: {e}", f.name))
                .unwrap_or_else(|| panic!("{}: startup packet incomplete", f.name)),
        ),
        Dir::ServerToClient => None,
    };
    let tagged_from = f.bytes.len() - buf.len();
    let mut frames = Vec::new();
    while let Some(frame) = split_frame(&mut buf, DEFAULT_MAX_MESSAGE_LEN)
        .unwrap_or_else(|e| panic!("{}: frame {}: {e}", f.name, frames.len()))
    {
        frames.push(frame);
    }
    assert!(
        buf.is_empty(),
        "{}: {} bytes left after the last whole frame",
        f.name,
        buf.len()
    );
    Decoded {
        startup,
        tagged_from,
        frames,
    }
}

fn tags(frames: &[Frame]) -> Vec<u8> {
    frames.iter().map(|f| f.tag).collect()
}

fn startup_message(f: &Fixture) -> startup::StartupMessage {
    match decode(f).startup {
        Some(StartupPacket::Startup(m)) => m,
        other => panic!("{}: not a StartupMessage: {other:?}", f.name),
    }
}

const BACKEND_TYPED: &[u8] = b"RKSZENCGHWv";
const FRONTEND_TYPED: &[u8] = b"QPSHXp";

#[test]
fn every_fixture_is_present_and_not_trivially_small() {
    for f in FIXTURES {
        if f.name == "psql_cancel_request.s2c" {
            // The server answers a CancelRequest by closing the connection.
            assert!(f.bytes.is_empty());
        } else {
            assert!(
                f.bytes.len() >= 16,
                "{} has {} bytes",
                f.name,
                f.bytes.len()
            );
        }
    }
}

#[test]
fn every_fixture_decodes_fully_into_frames() {
    for f in FIXTURES {
        let d = decode(f);
        let framed: usize = d.frames.iter().map(|fr| HEADER_LEN + fr.body.len()).sum();
        assert_eq!(d.tagged_from + framed, f.bytes.len(), "{}", f.name);
        assert_eq!(
            complete_prefix(&f.bytes[d.tagged_from..], DEFAULT_MAX_MESSAGE_LEN),
            Ok(f.bytes.len() - d.tagged_from),
            "{}",
            f.name
        );
        // Every frame's bytes are exactly the fixture's bytes at its place.
        let mut pos = d.tagged_from;
        for fr in &d.frames {
            assert_eq!(f.bytes[pos], fr.tag);
            assert_eq!(
                &f.bytes[pos + HEADER_LEN..pos + HEADER_LEN + fr.body.len()],
                &fr.body[..]
            );
            pos += HEADER_LEN + fr.body.len();
        }
    }
}

#[test]
fn every_frame_with_a_typed_view_parses_into_it() {
    let mut typed = 0;
    for f in FIXTURES {
        for (i, fr) in decode(f).frames.iter().enumerate() {
            let what = format!("{} frame {i} '{}'", f.name, fr.tag as char);
            match f.dir {
                Dir::ServerToClient => {
                    let m = BackendMessage::parse(fr.tag, &fr.body)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    let is_other = matches!(m, BackendMessage::Other { .. });
                    assert_eq!(is_other, !BACKEND_TYPED.contains(&fr.tag), "{what}");
                    typed += usize::from(!is_other);
                }
                Dir::ClientToServer => {
                    let m = FrontendMessage::parse(fr.tag, &fr.body)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    let is_other = matches!(m, FrontendMessage::Other { .. });
                    assert_eq!(is_other, !FRONTEND_TYPED.contains(&fr.tag), "{what}");
                    typed += usize::from(!is_other);
                }
            }
        }
    }
    assert!(typed > 1000, "only {typed} typed frames");
}

#[test]
fn every_fixture_cut_at_every_offset_needs_more_bytes() {
    for f in FIXTURES {
        let d = decode(f);
        // The startup packet: Ok(None) with the buffer untouched until its last byte is in.
        for cut in 0..d.tagged_from {
            let mut buf = BytesMut::from(&f.bytes[..cut]);
            assert_eq!(parse_startup(&mut buf), Ok(None), "{} cut at {cut}", f.name);
            assert_eq!(buf.len(), cut, "{} cut at {cut}", f.name);
        }
        // Tagged frames: once the frames before a cut are split off, the frame the cut
        // falls into is Ok(None), with the buffer untouched and the missing bytes known.
        let mut start = d.tagged_from;
        for fr in &d.frames {
            let end = start + HEADER_LEN + fr.body.len();
            for cut in start..end {
                let what = format!("{} frame at {start} cut at {cut}", f.name);
                let part = &f.bytes[start..cut];
                let mut buf = BytesMut::from(part);
                assert_eq!(
                    split_frame(&mut buf, DEFAULT_MAX_MESSAGE_LEN),
                    Ok(None),
                    "{what}"
                );
                assert_eq!(&buf[..], part, "{what}");
                assert_eq!(
                    complete_prefix(part, DEFAULT_MAX_MESSAGE_LEN),
                    Ok(0),
                    "{what}"
                );
                let needed = frame::needed(part, DEFAULT_MAX_MESSAGE_LEN).unwrap();
                if part.len() >= HEADER_LEN {
                    assert_eq!(needed, end - cut, "{what}");
                } else {
                    assert_eq!(needed, HEADER_LEN - part.len(), "{what}");
                }
            }
            let mut buf = BytesMut::from(&f.bytes[start..end]);
            let whole = split_frame(&mut buf, DEFAULT_MAX_MESSAGE_LEN).unwrap();
            assert_eq!(whole.as_ref(), Some(fr), "{} frame at {start}", f.name);
            assert!(buf.is_empty());
            start = end;
        }
        assert_eq!(start, f.bytes.len());
    }
}

/// What a scan reports about one frame: tag, length and, if inspected, the body.
type Seen = (u8, u32, Option<Vec<u8>>);

/// Runs the scanner over `bytes` arriving in `chunk`-byte reads, forwarding what it allows.
fn scan_in_chunks(bytes: &[u8], chunk: usize, inspect: TagSet, max_inspect: usize) -> Vec<Seen> {
    let mut scanner = Scanner::new(DEFAULT_MAX_MESSAGE_LEN, inspect, max_inspect);
    let mut pending: Vec<u8> = Vec::new();
    let mut forwarded: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut seen = Vec::new();
    for piece in bytes.chunks(chunk) {
        pending.extend_from_slice(piece);
        let scan = scanner
            .scan(&pending, |f| {
                seen.push((f.tag, f.len, f.body.map(<[u8]>::to_vec)));
                Flow::Continue
            })
            .unwrap();
        assert!(!scan.stopped);
        forwarded.extend(pending.drain(..scan.forward));
        // Only an incomplete header or an incomplete inspected frame is held back.
        assert!(pending.len() < max_inspect, "held {} bytes", pending.len());
    }
    assert!(
        pending.is_empty(),
        "{} bytes never forwarded",
        pending.len()
    );
    assert!(scanner.at_boundary());
    assert!(forwarded == bytes, "forwarded bytes differ from the input");
    seen
}

fn expected_seen(frames: &[Frame], inspect: TagSet) -> Vec<Seen> {
    frames
        .iter()
        .map(|f| {
            let body = inspect.contains(f.tag).then(|| f.body.to_vec());
            (f.tag, (f.body.len() + 4) as u32, body)
        })
        .collect()
}

#[test]
fn scanner_fed_every_fixture_in_every_chunk_size_forwards_it_unchanged() {
    let all = TagSet::of(&std::array::from_fn::<u8, 256, _>(|i| i as u8));
    for f in FIXTURES {
        let d = decode(f);
        let tagged = &f.bytes[d.tagged_from..];
        let largest = d.frames.iter().map(|fr| HEADER_LEN + fr.body.len()).max();
        let largest = largest.unwrap_or(0);
        let cases = [
            (TagSet::of(b"Z"), 64),
            (TagSet::of(b"ZEKRSv"), 1024),
            (TagSet::EMPTY, 16),
            (all, largest + 1),
        ];
        for (inspect, max_inspect) in cases {
            let expected = expected_seen(&d.frames, inspect);
            for chunk in 1..=64 {
                let seen = scan_in_chunks(tagged, chunk, inspect, max_inspect);
                assert!(
                    seen == expected,
                    "{}: chunk {chunk}, inspect {inspect:?}: frames differ",
                    f.name
                );
            }
        }
    }
}

#[test]
fn scanner_stopped_at_every_ready_for_query_resumes_where_it_stopped() {
    for f in FIXTURES.iter().filter(|f| f.dir == Dir::ServerToClient) {
        let d = decode(f);
        let mut scanner = Scanner::new(DEFAULT_MAX_MESSAGE_LEN, TagSet::of(b"Z"), 64);
        let mut rest = f.bytes;
        let mut statuses = Vec::new();
        let mut tags_seen = Vec::new();
        while !rest.is_empty() {
            let scan = scanner
                .scan(rest, |fr| {
                    tags_seen.push(fr.tag);
                    match fr.body {
                        Some(body) => {
                            statuses.push(body.to_vec());
                            Flow::Stop
                        }
                        None => Flow::Continue,
                    }
                })
                .unwrap();
            assert!(scan.forward > 0 || scan.stopped, "{}: no progress", f.name);
            // A stop lands right after a ReadyForQuery.
            if scan.stopped {
                assert_eq!(rest[scan.forward - 6], b'Z', "{}", f.name);
            }
            rest = &rest[scan.forward..];
        }
        assert_eq!(tags_seen, tags(&d.frames), "{}", f.name);
        let expected: Vec<Vec<u8>> = d
            .frames
            .iter()
            .filter(|fr| fr.tag == b'Z')
            .map(|fr| fr.body.to_vec())
            .collect();
        assert_eq!(statuses, expected, "{}", f.name);
    }
}

fn ready_statuses(frames: &[Frame]) -> Vec<TxStatus> {
    frames
        .iter()
        .filter_map(|f| match BackendMessage::parse(f.tag, &f.body) {
            Ok(BackendMessage::ReadyForQuery(s)) => Some(s),
            _ => None,
        })
        .collect()
}

fn error_codes(frames: &[Frame]) -> Vec<(u8, String)> {
    frames
        .iter()
        .filter_map(|f| match BackendMessage::parse(f.tag, &f.body) {
            Ok(BackendMessage::ErrorResponse(e)) => Some((b'E', e.code()?.into_owned())),
            Ok(BackendMessage::NoticeResponse(e)) => Some((b'N', e.code()?.into_owned())),
            _ => None,
        })
        .collect()
}

#[test]
fn psql_session_shows_errors_notice_copy_and_transaction_states() {
    let s2c = decode(fixture("psql_simple.s2c")).frames;
    assert_eq!(
        error_codes(&s2c),
        vec![
            (b'E', "22012".into()),
            (b'E', "42601".into()),
            (b'N', "00000".into()),
            (b'E', "23505".into()),
            (b'E', "25P02".into()),
        ]
    );
    use TxStatus::{Failed as E, Idle as I, InTransaction as T};
    assert_eq!(
        ready_statuses(&s2c),
        vec![I, I, I, I, I, I, I, I, I, I, T, E, E, I, I]
    );
    let copy: Vec<_> = s2c
        .iter()
        .filter_map(|f| match BackendMessage::parse(f.tag, &f.body).unwrap() {
            BackendMessage::CopyInResponse(c) => {
                Some(('G', c.format, c.column_formats().collect()))
            }
            BackendMessage::CopyOutResponse(c) => {
                Some(('H', c.format, c.column_formats().collect()))
            }
            _ => None,
        })
        .collect::<Vec<(char, u8, Vec<i16>)>>();
    assert_eq!(copy, vec![('G', 0, vec![0, 0]), ('H', 0, vec![0, 0])]);

    let c2s = decode(fixture("psql_simple.c2s")).frames;
    let queries = c2s
        .iter()
        .filter_map(|f| match FrontendMessage::parse(f.tag, &f.body).unwrap() {
            FrontendMessage::Query { sql } => Some(sql),
            _ => None,
        })
        .count();
    assert_eq!(queries, 14);
    assert_eq!(tags(&c2s).last(), Some(&b'X'));
    assert!(tags(&c2s).windows(2).any(|w| w == b"dc"));
}

#[test]
fn psql_startup_options_yield_our_setting_and_keep_the_rest() {
    let m = startup_message(fixture("psql_simple.c2s"));
    assert_eq!(m.version, startup::ProtocolVersion::V3_0);
    assert_eq!(m.user(), Some("postgres"));
    assert_eq!(m.database(), Some("postgres"));
    assert_eq!(m.application_name(), Some("psql"));
    let taken = options::take_prefixed(m.options().unwrap(), "pgsteer.").unwrap();
    assert_eq!(
        taken.settings,
        vec![("pgsteer.route".to_string(), "replica".to_string())]
    );
    assert_eq!(
        taken.rest.as_deref(),
        Some(r"-c search_path=public,pg_catalog -c application_name=my\ app")
    );
}

#[test]
fn scram_exchange_offers_scram_sha_256_and_ends_in_sasl_final_then_ok() {
    let s2c = decode(fixture("auth_scram.s2c")).frames;
    let auth: Vec<_> = s2c
        .iter()
        .filter(|f| f.tag == b'R')
        .map(|f| match BackendMessage::parse(f.tag, &f.body).unwrap() {
            BackendMessage::Authentication(a) => a,
            other => panic!("{other:?}"),
        })
        .collect();
    let [
        Authentication::Sasl { mechanisms },
        Authentication::SaslContinue { data: first },
        Authentication::SaslFinal { data: last },
        Authentication::Ok,
    ] = &auth[..]
    else {
        panic!("unexpected exchange {auth:?}");
    };
    assert_eq!(
        mechanisms.iter().collect::<Vec<_>>(),
        vec![b"SCRAM-SHA-256"]
    );
    assert!(first.starts_with(b"r=") && first.ends_with(b",i=4096"));
    assert!(last.starts_with(b"v="));

    let c2s = decode(fixture("auth_scram.c2s")).frames;
    let FrontendMessage::Password { data } = FrontendMessage::parse(b'p', &c2s[0].body).unwrap()
    else {
        panic!("not a password message");
    };
    assert!(data.starts_with(b"SCRAM-SHA-256\0"));
    assert_eq!(tags(&c2s), b"ppQX");
}

#[test]
fn md5_exchange_sends_a_salt_and_an_md5_hash() {
    let s2c = decode(fixture("auth_md5.s2c")).frames;
    assert!(matches!(
        BackendMessage::parse(b'R', &s2c[0].body).unwrap(),
        BackendMessage::Authentication(Authentication::Md5Password { .. })
    ));
    assert_eq!(
        BackendMessage::parse(b'R', &s2c[1].body).unwrap(),
        BackendMessage::Authentication(Authentication::Ok)
    );
    let c2s = decode(fixture("auth_md5.c2s")).frames;
    // "md5" + 32 hex digits + NUL
    assert_eq!(c2s[0].tag, b'p');
    assert_eq!(c2s[0].body.len(), 36);
    assert!(c2s[0].body.starts_with(b"md5"));

    let failed = decode(fixture("auth_md5_wrong_password.s2c")).frames;
    assert_eq!(tags(&failed), b"RE");
    let BackendMessage::ErrorResponse(e) = BackendMessage::parse(b'E', &failed[1].body).unwrap()
    else {
        panic!("not an error");
    };
    assert_eq!(e.severity().as_deref(), Some("FATAL"));
    assert_eq!(e.code().as_deref(), Some("28P01"));
}

#[test]
fn cancel_request_carries_the_key_the_session_was_given() {
    let Some(StartupPacket::Cancel(cancel)) = decode(fixture("psql_cancel_request.c2s")).startup
    else {
        panic!("not a cancel request");
    };
    let session = decode(fixture("psql_cancel_session.s2c")).frames;
    let key = session
        .iter()
        .find_map(|f| match BackendMessage::parse(f.tag, &f.body).unwrap() {
            BackendMessage::BackendKeyData(k) => Some((k.pid, k.key.to_vec())),
            _ => None,
        })
        .unwrap();
    assert_eq!((cancel.pid, cancel.key), key);
    assert_eq!(error_codes(&session), vec![(b'E', "57014".into())]);
}

#[test]
fn pgbench_runs_have_one_ready_for_query_per_transaction() {
    for (name, per_txn, txns) in [
        ("pgbench_select_simple", 1, 200),
        ("pgbench_select_extended", 1, 200),
        ("pgbench_select_prepared", 1, 200),
        ("pgbench_tpcb", 7, 30),
    ] {
        let s2c = decode(fixture(&format!("{name}.s2c"))).frames;
        let statuses = ready_statuses(&s2c);
        // One after authentication, then per statement (simple) or per Sync (extended).
        let extra = usize::from(name == "pgbench_select_prepared");
        assert_eq!(statuses.len(), 1 + extra + per_txn * txns, "{name}");
        assert!(error_codes(&s2c).is_empty(), "{name}");
        let c2s = decode(fixture(&format!("{name}.c2s")));
        let Some(StartupPacket::Startup(m)) = &c2s.startup else {
            panic!("{name}: no startup message");
        };
        assert_eq!(m.application_name(), Some("pgbench"), "{name}");
    }
    let prepared = decode(fixture("pgbench_select_prepared.c2s")).frames;
    let parses: Vec<_> = prepared
        .iter()
        .filter_map(|f| match FrontendMessage::parse(f.tag, &f.body).unwrap() {
            FrontendMessage::Parse { name, .. } => Some(name.to_vec()),
            _ => None,
        })
        .collect();
    assert_eq!(parses, vec![b"P_0".to_vec()]);
    let extended = decode(fixture("pgbench_select_extended.c2s")).frames;
    let unnamed = extended
        .iter()
        .filter(|f| {
            matches!(
                FrontendMessage::parse(f.tag, &f.body),
                Ok(FrontendMessage::Parse {
                    name: b"",
                    param_types: 0,
                    ..
                })
            )
        })
        .count();
    assert_eq!(unnamed, 200);
}

#[test]
fn startup_length_of_every_client_fixture_is_read_from_its_first_four_bytes() {
    for f in FIXTURES.iter().filter(|f| f.dir == Dir::ClientToServer) {
        let d = decode(f);
        assert_eq!(
            startup::startup_len(f.bytes),
            Ok(Some(d.tagged_from)),
            "{}",
            f.name
        );
        for cut in 0..4 {
            assert_eq!(startup::startup_len(&f.bytes[..cut]), Ok(None));
        }
    }
}
