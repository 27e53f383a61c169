//! What a pooled client carries from one server connection to the next: the settings it
//! asked for, the parameters it was shown, its prepared statements, and whether something
//! pinned it to the connection it has.

use std::sync::Arc;

use pgsteer_protocol::classify::Reason;
use pgsteer_protocol::startup::StartupMessage;
use prometheus::IntCounterVec;
use tracing::debug;

use crate::config::PoolMode;
use crate::pool::server::Settings;
use crate::pool::statements::{ClientStatements, Registry};
use crate::pool::{Pool, SettingsCache};

/// Startup parameters that are not settings: they choose the connection, not its state.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// A pooled client's session state.
pub struct ClientState {
    /// Transaction or session pooling.
    pub mode: PoolMode,
    /// Settings its server connection must have (startup parameters, then what it `SET`),
    /// shared with the clients that have the same.
    pub desired: Arc<Settings>,
    /// `fingerprint(desired)`, kept in step by [`ClientState::set_desired`].
    pub desired_fingerprint: u64,
    /// ParameterStatus values it has been shown (shared until they differ from others').
    pub seen: Arc<Settings>,
    /// The `reported_fingerprint` of a connection whose parameters `seen` agrees with.
    pub seen_fingerprint: u64,
    /// Its named prepared statements.
    pub statements: ClientStatements,
    /// Statements shared across sessions.
    pub registry: Arc<Registry>,
    /// What pinned it to its server connection, if anything did.
    pub pinned: Option<Reason>,
    /// A statement may have changed its settings: read them back before the connection goes.
    pub settings_changed: bool,
    /// Statements prepared again on a connection that lacked them.
    pub reprepared: u64,
    /// Whether the request being sent (up to its Sync) ends the transaction block: recorded
    /// with it in the pooled owner's queue.
    pub batch_end: TxEnd,
    /// The FATAL message the connection lent now sent before closing (kept from the client,
    /// which stays).
    pub server_fatal: Option<String>,
    /// The pool of the connection it has now.
    pub pool: Option<Arc<Pool>>,
    pins: IntCounterVec,
}

impl ClientState {
    /// The state of a new client, its settings from its startup packet and `-c` options.
    pub fn new(
        mode: PoolMode,
        message: &StartupMessage,
        cache: &SettingsCache,
        registry: Arc<Registry>,
        pins: IntCounterVec,
    ) -> Result<ClientState, String> {
        let mut desired = Settings::new();
        for (name, value) in &message.params {
            let name = name.to_ascii_lowercase();
            if !NOT_SETTINGS.contains(&name.as_str()) && !name.starts_with("_pq_.") {
                desired.insert(name, value.clone());
            }
        }
        if let Some(options) = message.options() {
            for (name, value) in option_settings(options)? {
                desired.insert(name, value);
            }
        }
        Ok(ClientState {
            mode,
            desired_fingerprint: crate::pool::server::fingerprint(&desired),
            desired: cache.intern(desired),
            seen: Arc::default(),
            seen_fingerprint: 0,
            statements: ClientStatements::default(),
            registry,
            pinned: None,
            settings_changed: false,
            reprepared: 0,
            batch_end: TxEnd::No,
            server_fatal: None,
            pool: None,
            pins,
        })
    }

    /// Replaces the settings the client's connections must have.
    pub fn set_desired(&mut self, settings: Arc<Settings>) {
        self.desired_fingerprint = crate::pool::server::fingerprint(&settings);
        self.desired = settings;
    }

    /// Pins the client to its server connection for the rest of its session.
    pub fn pin(&mut self, reason: Reason) {
        if self.pinned.is_some() {
            return;
        }
        self.pinned = Some(reason);
        self.pins.with_label_values(&[reason.as_str()]).inc();
        if let Some(pool) = &self.pool {
            pool.pin();
        }
        debug!(
            reason = reason.as_str(),
            "client pinned to its server connection"
        );
    }

    /// Whether its connection goes back to the pool at the end of each transaction.
    pub fn lends(&self) -> bool {
        self.mode == PoolMode::Transaction && self.pinned.is_none()
    }
}

/// The `-c name=value` / `--name=value` settings of a startup `options` string.
fn option_settings(options: &str) -> Result<Vec<(String, String)>, String> {
    let args = pgsteer_protocol::options::split(options);
    let switches = pgsteer_protocol::options::parse(args)?;
    switches
        .into_iter()
        .map(|s| match s.setting {
            Some((name, value)) => Ok((name.to_ascii_lowercase(), value)),
            None => Err(format!(
                "pooled mode takes only settings in options, not {:?}",
                s.args.join(" ")
            )),
        })
        .collect()
}

/// The statements that give a connection with `applied` the `desired` settings; empty when
/// they match. Values go through `set_config`, which reads them whole as a configuration
/// file would (a `SET` of a quoted list would make it one element).
pub fn sync_sql(desired: &Settings, applied: &Settings) -> String {
    let literal = crate::auth::store::literal;
    let sets: Vec<String> = desired
        .iter()
        .filter(|(name, value)| applied.get(*name) != Some(*value))
        .map(|(name, value)| {
            format!(
                "pg_catalog.set_config({}, {}, false)",
                literal(name),
                literal(value)
            )
        })
        .collect();
    let mut sql = String::new();
    if !sets.is_empty() {
        sql = format!("SELECT {};", sets.join(", "));
    }
    for name in applied.keys().filter(|n| !desired.contains_key(*n)) {
        sql.push_str(&format!("RESET {};", ident(name)));
    }
    sql
}

/// A setting name as SQL: each dotted part quoted.
fn ident(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// The query that reads back a connection's session-level settings.
pub const SESSION_SETTINGS_SQL: &str = "SELECT name, setting FROM pg_catalog.pg_settings \
     WHERE source = 'session' AND name NOT IN ('role', 'session_authorization', \
     'transaction_isolation', 'transaction_read_only', 'transaction_deferrable')";

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pool::server::settings_of as settings;

    #[test]
    fn startup_parameters_and_options_become_settings_but_user_and_database_do_not() {
        let m = StartupMessage::new(vec![
            ("user".into(), "app".into()),
            ("database".into(), "db".into()),
            ("application_name".into(), "psql".into()),
            ("DateStyle".into(), "ISO, DMY".into()),
            (
                "options".into(),
                "-c search_path=a,b --statement-timeout=5s".into(),
            ),
        ]);
        let c = ClientState::new(
            PoolMode::Transaction,
            &m,
            &SettingsCache::default(),
            Arc::new(Registry::default()),
            IntCounterVec::new(prometheus::Opts::new("x", "x"), &["reason"]).unwrap(),
        )
        .unwrap();
        assert_eq!(
            *c.desired,
            settings(&[
                ("application_name", "psql"),
                ("datestyle", "ISO, DMY"),
                ("search_path", "a,b"),
                ("statement_timeout", "5s"),
            ])
        );
        assert!(c.lends());
    }

    #[test]
    fn only_differences_are_set_and_what_the_client_lacks_is_reset() {
        let desired = settings(&[("search_path", "a"), ("myapp.user", "it's")]);
        let applied = settings(&[("search_path", "a"), ("work_mem", "4096")]);
        assert_eq!(
            sync_sql(&desired, &applied),
            "SELECT pg_catalog.set_config($pgsteer$myapp.user$pgsteer$, $pgsteer$it's$pgsteer$, false);\
             RESET \"work_mem\";"
        );
        assert_eq!(sync_sql(&desired, &desired), "");
    }
}

/// Whether a request ends its transaction block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TxEnd {
    /// It does not.
    #[default]
    No,
    /// `COMMIT`/`END` (or a statement bound to one).
    Commit,
    /// `ROLLBACK`/`ABORT`.
    Rollback,
}
