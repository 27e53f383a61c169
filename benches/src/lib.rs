//! Benchmarks for pgsteer. Criterion and counting benches live in `benches/benches/`; the pgbench
//! comparison harness (`benches/run` → `src/bin/compare.rs`) is the [`compare`] module; the counting
//! allocator of the allocation benches is [`alloc`].
#![cfg_attr(not(test), deny(clippy::too_many_lines))]

pub mod alloc;
pub mod compare;
