//! SQL classification per query string, over the corpus of `corpus.rs`: pgbench's statements,
//! ORM-shaped SELECTs of 300 to 1,500 bytes, and a few writes.
//!
//! - `read_verdict/*`: the routing verdict of per-transaction read/write split, over the whole
//!   corpus, pgbench's select-only statement alone, and the ORM-shaped SELECTs alone;
//! - `session_effects/all`: the pooled-mode check `session_effects(sql).affects_session()`,
//!   which walks the same tokens, for scale.
//!
//! Criterion reports time per pass and queries per second (`elem/s`); the time per query is the
//! pass divided by the number of queries printed first. Before measuring, a counting allocator
//! checks that `read_verdict` allocates nothing over 1,000 passes (exits non-zero otherwise).
//!
//! `cargo bench -p pgsteer-benches --bench classify` (about 30 s).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use pgsteer_benches::alloc::{Counting, counters};
use pgsteer_protocol::classify::{Syntax, Verdict, read_verdict, session_effects};

include!("corpus.rs");

#[global_allocator]
static GLOBAL: Counting = Counting;

/// No function outside the built-in list is declared read-only.
fn none(_: &[u8]) -> bool {
    false
}

fn verdicts(queries: &[&str]) -> usize {
    queries
        .iter()
        .filter(|q| read_verdict(q.as_bytes(), Syntax::default(), &none) == Verdict::Replica)
        .count()
}

/// Every query gets the verdict the corpus expects, and no pass allocates.
fn check(all: &[&str]) {
    for (sql, replica) in QUERIES {
        let verdict = read_verdict(sql.as_bytes(), Syntax::default(), &none);
        assert_eq!(
            verdict == Verdict::Replica,
            *replica,
            "{verdict:?} for {sql}"
        );
    }
    let passes = 1_000;
    let (before, _) = counters();
    for _ in 0..passes {
        black_box(verdicts(black_box(all)));
    }
    let allocations = counters().0 - before;
    println!(
        "classify: {} query strings, {} bytes on average; read_verdict allocated {allocations} \
         times in {} calls",
        all.len(),
        all.iter().map(|q| q.len()).sum::<usize>() / all.len(),
        passes * all.len()
    );
    if allocations != 0 {
        eprintln!("classify: read_verdict allocates");
        std::process::exit(1);
    }
}

fn classify(c: &mut Criterion, all: &[&str]) {
    let orm: Vec<&str> = QUERIES
        .iter()
        .filter(|(q, replica)| *replica && q.len() >= 300)
        .map(|(q, _)| *q)
        .collect();
    let pgbench = [QUERIES[0].0];
    let mut g = c.benchmark_group("read_verdict");
    for (name, queries) in [("all", all), ("pgbench_select", &pgbench), ("orm", &orm)] {
        g.throughput(Throughput::Elements(queries.len() as u64));
        g.bench_function(name, |b| b.iter(|| verdicts(black_box(queries))));
    }
    g.finish();
    let mut g = c.benchmark_group("session_effects");
    g.throughput(Throughput::Elements(all.len() as u64));
    g.bench_function("all", |b| {
        b.iter(|| {
            black_box(all)
                .iter()
                .filter(|q| session_effects(q.as_bytes()).affects_session())
                .count()
        })
    });
    g.finish();
}

fn main() {
    let all: Vec<&str> = QUERIES.iter().map(|(q, _)| *q).collect();
    check(&all);
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    classify(&mut c, &all);
    c.final_summary();
}
