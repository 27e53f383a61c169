//! `[pool]` and `[auth]`: pooled mode (pgsteer owns the server connections) and how
//! pgsteer authenticates clients itself when it does.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, duration};

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError::Pooling(msg.into())
}

/// How a listener's sessions use server connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// One server connection per client, for its whole session; authentication passes
    /// through to Postgres.
    #[default]
    Passthrough,
    /// A pooled server connection lent for the whole client session, reset when it leaves.
    Session,
    /// A pooled server connection lent per transaction.
    Transaction,
}

impl PoolMode {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Passthrough => "passthrough",
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// `[pool]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Mode of the `rw` and `ro` listeners (and of extra listeners without their own).
    #[serde(default)]
    pub mode: PoolMode,
    /// Server connections per (member, database, user).
    #[serde(default = "default_size")]
    pub size: usize,
    /// Idle connections kept open however long idle.
    #[serde(default)]
    pub min_idle: usize,
    /// Idle connections beyond `min_idle` close after this ("0s": never).
    #[serde(default = "default_idle_timeout", deserialize_with = "duration")]
    pub server_idle_timeout: Duration,
    /// Connections close when given back after this ("0s": never).
    #[serde(default = "default_lifetime", deserialize_with = "duration")]
    pub server_lifetime: Duration,
    /// Bound on opening one server connection (TCP, TLS, login).
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// How long a client's query waits for a free connection before it fails with `53300`
    /// (the client stays connected).
    #[serde(default = "default_checkout_timeout", deserialize_with = "duration")]
    pub checkout_timeout: Duration,
    /// A client that sits idle inside a transaction this long is disconnected with `25P03`
    /// ("0s": never).
    #[serde(default, deserialize_with = "duration")]
    pub idle_transaction_timeout: Duration,
    /// Run on a connection a session-mode or pinned client gives back.
    #[serde(default = "default_reset_query")]
    pub reset_query: String,
    /// Prepared statements kept per server connection (least recently used closed first).
    #[serde(default = "default_max_prepared")]
    pub max_prepared_statements: usize,
}

fn default_size() -> usize {
    20
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_lifetime() -> Duration {
    Duration::from_secs(3600)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_checkout_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_reset_query() -> String {
    "DISCARD ALL".into()
}
fn default_max_prepared() -> usize {
    200
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            mode: PoolMode::default(),
            size: default_size(),
            min_idle: 0,
            server_idle_timeout: default_idle_timeout(),
            server_lifetime: default_lifetime(),
            connect_timeout: default_connect_timeout(),
            checkout_timeout: default_checkout_timeout(),
            idle_transaction_timeout: Duration::ZERO,
            reset_query: default_reset_query(),
            max_prepared_statements: default_max_prepared(),
        }
    }
}

/// How clients prove who they are to pgsteer in pooled modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// SCRAM-SHA-256 (and -PLUS over TLS) for everyone. Written `scram-sha-256`, as in
    /// `pg_hba.conf` and the README (kebab-case alone would make it `scram-sha256`).
    #[default]
    #[serde(rename = "scram-sha-256", alias = "scram-sha256")]
    ScramSha256,
    /// md5 for users whose secret is an md5 hash, SCRAM for the others.
    Md5,
    /// The password in clear, only over TLS (for LDAP-style setups); plaintext clients
    /// are refused.
    Password,
    /// No password asked, none sent to the servers (whose `pg_hba.conf` must trust pgsteer):
    /// for benchmarks and closed test networks only. Needs no `auth_file`.
    Trust,
}

/// `[auth]`: where pooled mode finds user secrets.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// What clients are asked for.
    #[serde(default)]
    pub method: AuthMethod,
    /// PgBouncer's `userlist.txt`: `"user" "secret"` lines, the secret plaintext, `md5…` or a
    /// SCRAM verifier. Re-read when it changes.
    pub auth_file: Option<PathBuf>,
    /// Secret lookup for users not in `auth_file`, run as `auth_user` on the primary with the
    /// user name as `$1`, answering `(usename, passwd)` (see `deploy/sql/auth_query.sql`).
    pub auth_query: Option<String>,
    /// Role `auth_query` runs as; its secret comes from `auth_file` or `auth_password_file`.
    pub auth_user: Option<String>,
    /// File holding `auth_user`'s password.
    pub auth_password_file: Option<PathBuf>,
    /// How long an `auth_query` answer is reused.
    #[serde(default = "default_cache_ttl", deserialize_with = "duration")]
    pub cache_ttl: Duration,
    /// File holding the key that derives SCRAM salts for unknown users and plaintext secrets
    /// (so every pgsteer replica and restart shows the same salt); generated per process when
    /// unset.
    pub salt_key_file: Option<PathBuf>,
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(60)
}

impl Pool {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.size == 0 {
            return Err(err("pool.size must be at least 1"));
        }
        if self.min_idle > self.size {
            return Err(err(format!(
                "pool.min_idle ({}) is larger than pool.size ({})",
                self.min_idle, self.size
            )));
        }
        if self.checkout_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(err(
                "pool.checkout_timeout and pool.connect_timeout must be above zero",
            ));
        }
        if self.max_prepared_statements == 0 {
            return Err(err("pool.max_prepared_statements must be at least 1"));
        }
        Ok(())
    }
}

impl Auth {
    /// Checks `[auth]` for a proxy whose listeners use `pooled` modes somewhere.
    pub(super) fn validate(&self, pooled: bool) -> Result<(), ConfigError> {
        if !pooled {
            return Ok(());
        }
        if self.method != AuthMethod::Trust && self.auth_file.is_none() && self.auth_query.is_none()
        {
            return Err(err(
                "pooled mode authenticates clients itself: set auth.auth_file or auth.auth_query",
            ));
        }
        if self.auth_query.is_some() && self.auth_user.is_none() {
            return Err(err("auth.auth_query needs auth.auth_user"));
        }
        if let Some(f) = &self.auth_file
            && let Err(e) = std::fs::metadata(f)
        {
            return Err(err(format!("auth.auth_file {}: {e}", f.display())));
        }
        Ok(())
    }
}

/// `[[listen.extra]]`: another client listener with its own route and pool mode.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraListener {
    /// Name in logs and metric labels (`listener="…"`).
    pub name: String,
    /// Address to listen on.
    pub address: std::net::SocketAddr,
    /// `primary` (read-write), `replica` (read-only) or `auto` (each transaction to a replica
    /// when it only reads; needs transaction pooling).
    pub route: String,
    /// Its pool mode (default: `[pool] mode`).
    pub pool_mode: Option<PoolMode>,
}

impl ExtraListener {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if matches!(self.name.as_str(), "" | "rw" | "ro" | "admin") {
            return Err(err(format!(
                "listen.extra: {:?} is not a usable listener name",
                self.name
            )));
        }
        if !matches!(self.route.as_str(), "primary" | "replica" | "auto") {
            return Err(err(format!(
                "listen.extra {}: route {:?}: expected primary, replica or auto",
                self.name, self.route
            )));
        }
        Ok(())
    }
}
