//! Benchmarks live in `benches/benches/`; the pgbench comparison harness in `benches/compare/`.
