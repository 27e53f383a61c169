//! Integration tests: real PostgreSQL primary + streaming replicas, real
//! clients (psql, pgbench, tokio-postgres), pgsteer in-process.

mod auth;
mod hardening;
mod harness;
mod pgbench;
mod routing;
mod shutdown;
