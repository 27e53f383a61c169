//! Local Postgres clusters (primary + streaming replicas) from the system binaries.
//!
//! [`Cluster::start`] runs `initdb`, `pg_ctl` and `pg_basebackup` from the PostgreSQL server binaries
//! (`PGSTEER_PG_BIN`, else the newest `/usr/lib/postgresql/{18,17,16,15}/bin`) to bring up a primary
//! and streaming replicas on free `127.0.0.1` ports, in a fresh directory under `/tmp` (or
//! `$PGSTEER_CLUSTER_DIR`). Postgres refuses to run as root, so when the current user is root every
//! server-side command runs as `postgres` through `runuser`. Dropping the [`Cluster`] stops every server
//! and removes the directory. Everything is synchronous (`std::process`); every wait has a deadline.
//! A process killed before it could drop its cluster leaves servers behind; the next
//! [`Cluster::start`] in the same base directory stops them and removes their directory.
//!
//! Used by `pgsteer demo`, the integration tests and the benchmark harness.
#![cfg_attr(not(test), deny(clippy::too_many_lines))]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

mod cluster;
mod exec;
mod files;
pub mod patroni;
pub mod tls;

pub use cluster::Cluster;

use std::fmt;
use std::path::PathBuf;

/// Owner of [`DATABASE`]; authenticates with SCRAM-SHA-256 over TCP.
pub const APP_USER: &str = "app";
/// Password of [`APP_USER`].
pub const APP_PASSWORD: &str = "app-secret";
/// A role whose password is stored as md5 and which authenticates with `md5` over TCP.
pub const MD5_USER: &str = "app_md5";
/// Password of [`MD5_USER`].
pub const MD5_PASSWORD: &str = "md5-secret";
/// A role that `pg_hba.conf` trusts over TCP (no password).
pub const TRUST_USER: &str = "app_trust";
/// The role pgsteer probes servers with (SCRAM-SHA-256; member of `pg_monitor`).
pub const PROBE_USER: &str = "pgsteer";
/// Password of [`PROBE_USER`].
pub const PROBE_PASSWORD: &str = "probe-secret";
/// The application database, owned by [`APP_USER`]. Every role may connect, and every role may create
/// objects in its `public` schema.
pub const DATABASE: &str = "app";

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Number of streaming replicas besides the primary (default 2).
    pub replicas: usize,
    /// `max_connections` of every server (default 200).
    pub max_connections: u32,
    /// Extra `postgresql.conf` lines, applied last (so they override the defaults here).
    pub extra_conf: Vec<String>,
    /// Node names are `<name_prefix>-0`, `<name_prefix>-1`, … (default `"pg"`); ASCII letters, digits,
    /// `-` and `_` only.
    pub name_prefix: String,
}

impl Default for Spec {
    fn default() -> Spec {
        Spec {
            replicas: 2,
            max_connections: 200,
            extra_conf: Vec::new(),
            name_prefix: "pg".to_owned(),
        }
    }
}

/// Why starting or driving a cluster failed. The message names the command or node, and includes the
/// end of the server log when a server did not start.
#[derive(Debug)]
pub struct Error(String);

impl Error {
    pub(crate) fn new(message: impl Into<String>) -> Error {
        Error(message.into())
    }

    /// This error with `what` in front.
    pub(crate) fn context(self, what: impl fmt::Display) -> Error {
        Error(format!("{what}: {}", self.0))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// How [`Cluster::stop_node`] shuts a server down (`pg_ctl stop -m …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect clients, checkpoint, exit (`-m fast`): a clean shutdown.
    Fast,
    /// Exit at once without a checkpoint (`-m immediate`): like a crash; recovery runs at the next start.
    Immediate,
}

/// One server of a [`Cluster`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `pg-0` (the first primary), `pg-1`, … (with the default prefix).
    pub name: String,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// The data directory.
    pub data_dir: PathBuf,
}

impl Node {
    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}
