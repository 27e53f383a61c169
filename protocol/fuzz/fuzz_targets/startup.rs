//! Startup-family packets over arbitrary bytes: `parse_startup` never panics, never takes
//! more than one bounded packet, and what it accepts encodes back to the same bytes.
//! The parameters are run through the `options` reader pgsteer uses on them.
//!
//! tests/fixtures/*.c2s.bin are good seeds: each begins with a real startup packet.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgsteer_protocol::encode;
use pgsteer_protocol::options;
use pgsteer_protocol::startup::{
    self, MAX_STARTUP_PACKET_LEN, ProtocolVersion, StartupPacket, parse_startup,
};

fn check_options(value: &str) {
    let _ = options::take_prefixed(value, "pgsteer.");
    let args = options::split(value);
    // Empty arguments (from a trailing backslash) cannot be written back; all others can.
    let non_empty: Vec<String> = args.iter().filter(|a| !a.is_empty()).cloned().collect();
    assert_eq!(options::split(&options::join(&args)), non_empty);
    if let Ok(switches) = options::parse(args) {
        for sw in switches {
            assert!(!sw.args.is_empty() && sw.args.len() <= 2);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let len = startup::startup_len(data);
    match parse_startup(&mut buf) {
        Ok(Some(packet)) => {
            let used = data.len() - buf.len();
            assert!((8..=MAX_STARTUP_PACKET_LEN).contains(&used));
            assert_eq!(len, Ok(Some(used)));
            let mut again = BytesMut::new();
            match &packet {
                StartupPacket::Startup(m) => {
                    for (name, value) in &m.params {
                        check_options(name);
                        check_options(value);
                    }
                    encode::startup_message(&mut again, m);
                    let mut m = m.clone();
                    let n = m.negotiate(ProtocolVersion::LATEST);
                    assert!(m.version <= ProtocolVersion::LATEST);
                    assert!(!m.params.iter().any(|(k, _)| k.starts_with("_pq_.")));
                    assert!(n.downgraded || n.unsupported_options.is_empty());
                }
                StartupPacket::SslRequest => encode::ssl_request(&mut again),
                StartupPacket::GssEncRequest => {
                    again.extend_from_slice(&data[..8]);
                }
                StartupPacket::Cancel(c) => {
                    assert!((4..=256).contains(&c.key.len()));
                    encode::cancel_request(&mut again, c.pid, &c.key);
                }
            }
            assert_eq!(&again[..], &data[..used], "re-encoding differs");
        }
        Ok(None) => {
            assert_eq!(buf.len(), data.len());
            match len {
                Ok(None) => assert!(data.len() < 4),
                Ok(Some(n)) => assert!(data.len() < n),
                Err(e) => panic!("startup_len failed ({e}) where parse_startup waits"),
            }
        }
        Err(_) => {}
    }
    if let Ok(s) = std::str::from_utf8(data) {
        check_options(s);
    }
});
