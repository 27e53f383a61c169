//! Frame splitting over real traffic: the recorded pgbench sessions of
//! `protocol/tests/fixtures` (both directions), repeated to about 64 MiB.
//!
//! - `complete_prefix`: the header-only walk that finds the run of whole frames to forward;
//! - `scanner`: `stream::Scanner::scan` inspecting ReadyForQuery (`Z`), as the relay runs it,
//!   over the whole buffer and in 16 KiB reads;
//! - `split_frame`: splitting every frame off a `BytesMut` without copying its body.
//!
//! `cargo bench -p pgsteer-benches --bench frame_split` (about a minute on an idle machine).

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pgsteer_protocol::frame::{DEFAULT_MAX_MESSAGE_LEN, complete_prefix, split_frame};
use pgsteer_protocol::startup::startup_len;
use pgsteer_protocol::stream::{Flow, Scanner, TagSet};

const TARGET_LEN: usize = 64 << 20;
const READ_LEN: usize = 16 << 10;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("../../protocol/tests/fixtures/", $name))
    };
}

const SERVER_TO_CLIENT: &[&[u8]] = &[
    fixture!("pgbench_select_simple.s2c.bin"),
    fixture!("pgbench_select_extended.s2c.bin"),
    fixture!("pgbench_select_prepared.s2c.bin"),
    fixture!("pgbench_tpcb.s2c.bin"),
];

const CLIENT_TO_SERVER: &[&[u8]] = &[
    fixture!("pgbench_select_simple.c2s.bin"),
    fixture!("pgbench_select_extended.c2s.bin"),
    fixture!("pgbench_select_prepared.c2s.bin"),
    fixture!("pgbench_tpcb.c2s.bin"),
];

/// The tagged frames of the fixtures, repeated until about [`TARGET_LEN`] bytes.
fn stream(fixtures: &[&[u8]], client: bool) -> Vec<u8> {
    let mut one = Vec::new();
    for f in fixtures {
        // Client streams open with the untagged StartupMessage: only tagged frames repeat.
        let skip = if client {
            startup_len(f)
                .expect("valid startup packet")
                .expect("whole startup packet")
        } else {
            0
        };
        one.extend_from_slice(&f[skip..]);
    }
    let mut out = Vec::with_capacity(TARGET_LEN + one.len());
    while out.len() < TARGET_LEN {
        out.extend_from_slice(&one);
    }
    assert_eq!(
        complete_prefix(&out, DEFAULT_MAX_MESSAGE_LEN),
        Ok(out.len())
    );
    out
}

fn scan_all(data: &[u8]) -> usize {
    let mut scanner = Scanner::new(DEFAULT_MAX_MESSAGE_LEN, TagSet::of(b"Z"), 16 << 10);
    let mut idle = 0;
    let scan = scanner
        .scan(data, |f| {
            if let Some(body) = f.body {
                idle += usize::from(body == b"I");
            }
            Flow::Continue
        })
        .expect("valid stream");
    assert_eq!(scan.forward, data.len());
    idle
}

/// The relay's loop: each read appends up to 16 KiB; what the scan does not forward
/// (an incomplete header or ReadyForQuery) is scanned again with the next read.
fn scan_reads(data: &[u8]) -> usize {
    let mut scanner = Scanner::new(DEFAULT_MAX_MESSAGE_LEN, TagSet::of(b"Z"), 16 << 10);
    let mut idle = 0;
    let (mut start, mut end) = (0, 0);
    while end < data.len() {
        end = (end + READ_LEN).min(data.len());
        let scan = scanner
            .scan(&data[start..end], |f| {
                if let Some(body) = f.body {
                    idle += usize::from(body == b"I");
                }
                Flow::Continue
            })
            .expect("valid stream");
        start += scan.forward;
    }
    assert_eq!(start, data.len());
    idle
}

fn split_all(mut buf: BytesMut) -> usize {
    let mut frames = 0;
    while let Some(frame) = split_frame(&mut buf, DEFAULT_MAX_MESSAGE_LEN).expect("valid stream") {
        black_box(&frame);
        frames += 1;
    }
    assert!(buf.is_empty());
    frames
}

fn frame_split(c: &mut Criterion) {
    for (direction, data) in [
        ("server_to_client", stream(SERVER_TO_CLIENT, false)),
        ("client_to_server", stream(CLIENT_TO_SERVER, true)),
    ] {
        let mut g = c.benchmark_group(format!("frame_split/{direction}"));
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function("complete_prefix", |b| {
            b.iter(|| complete_prefix(black_box(&data), DEFAULT_MAX_MESSAGE_LEN))
        });
        g.bench_function("scanner", |b| b.iter(|| scan_all(black_box(&data))));
        g.bench_function("scanner_16k_reads", |b| {
            b.iter(|| scan_reads(black_box(&data)))
        });
        // About 0.1-0.3 s an iteration: leave room for 10 of them.
        g.measurement_time(Duration::from_secs(5));
        g.bench_function("split_frame", |b| {
            b.iter_batched(
                || BytesMut::from(&data[..]),
                split_all,
                BatchSize::PerIteration,
            )
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = frame_split
}
criterion_main!(benches);
