//! Integration tests: real PostgreSQL primary + streaming replicas, real
//! clients (psql, pgbench, tokio-postgres), pgsteer in-process.

mod auth;
mod auto;
mod backend_pid;
mod cancel_peers;
mod cancel_tls;
mod drain;
mod engine;
mod hardening;
mod harness;
mod kubernetes;
mod loops;
mod metrics;
mod patroni;
mod pgbench;
mod pooled;
mod pooled_auth;
mod pooled_login;
mod pooled_lost;
mod pooled_state;
mod routing;
mod shutdown;
mod switchover;
mod switchover_cnpg;
mod tls;
