//! The comparison harness behind `benches/run` (binary `compare`): pgbench through pgsteer,
//! PgBouncer and HAProxy against direct Postgres, and the memory cost of idle and parked clients.

pub mod memory;
pub mod pgbench;
pub mod procfs;
pub mod report;
pub mod targets;
pub mod throughput;
pub mod wire;
pub mod workloads;
