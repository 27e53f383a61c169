//! Configuration: the TOML file, environment overrides and validation.
//!
//! Every key has a default except the member list. Environment variables
//! `PGSTEER_<SECTION>_<KEY>` override file values (`PGSTEER_LISTEN_RW`,
//! `PGSTEER_ROUTING_HOLD_TIMEOUT`, `PGSTEER_DISCOVERY_PROBE_USER`, …). Bad
//! configuration is a [`ConfigError`] with a one-line reason; `main` exits 64.
//!
//! This module holds plain settings and reads only the files whose contents are settings
//! (passwords, tokens). The certificate files of `[tls]` are loaded by `crate::tls`, which
//! depends on this module, not the other way round.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgsteer_discovery::kubernetes::AddressMode;
use serde::{Deserialize, Deserializer};

mod error;
mod peers;
mod pool;
mod switchover;
mod tls;
pub use error::ConfigError;
pub use peers::{PeerKubernetes, PeerMember, PeerTls, Peers};
pub use pool::{Auth, AuthMethod, ExtraListener, Pool, PoolMode};
pub use switchover::Switchover;
pub use tls::{ClientTlsMode, ServerTlsMode, Tls};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listening addresses.
    #[serde(default)]
    pub listen: Listen,
    /// Where the topology comes from.
    pub discovery: Discovery,
    /// Routing behaviour.
    #[serde(default)]
    pub routing: Routing,
    /// Connection limits and timeouts.
    #[serde(default)]
    pub limits: Limits,
    /// Draining and shutdown.
    #[serde(default)]
    pub drain: Drain,
    /// Runtime tuning.
    #[serde(default)]
    pub runtime: Runtime,
    /// Admin endpoint settings.
    #[serde(default)]
    pub admin: Admin,
    /// TLS towards clients and towards the servers.
    #[serde(default)]
    pub tls: Tls,
    /// Pooled mode.
    #[serde(default)]
    pub pool: Pool,
    /// Client authentication by pgsteer (pooled mode).
    #[serde(default)]
    pub auth: Auth,
    /// Other pgsteer processes, for cancel requests (`[listen] peer` turns peering on).
    #[serde(default)]
    pub peers: Peers,
    /// Switchovers led by pgsteer.
    #[serde(default)]
    pub switchover: Switchover,
}

/// `[admin]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// File holding a bearer token required by the admin POST endpoints
    /// (drain, undrain, pause, resume). Without it they are open to anyone
    /// who can reach the admin port.
    pub token_file: Option<PathBuf>,
}

impl Admin {
    /// The token, read from `token_file`.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        match &self.token_file {
            None => Ok(None),
            Some(f) => {
                const SETTING: &str = "admin.token_file";
                let t = std::fs::read_to_string(f).map_err(|source| ConfigError::SettingFile {
                    setting: SETTING,
                    path: f.clone(),
                    source,
                })?;
                let t = t.trim().to_owned();
                if t.is_empty() {
                    return Err(ConfigError::EmptyFile {
                        setting: SETTING,
                        path: f.clone(),
                    });
                }
                Ok(Some(t))
            }
        }
    }
}

/// `[listen]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Read-write listener: sessions go to the primary.
    pub rw: Option<SocketAddr>,
    /// Read-only listener: sessions go to a replica.
    pub ro: Option<SocketAddr>,
    /// Admin HTTP listener.
    pub admin: Option<SocketAddr>,
    /// Peer port: cancel requests forwarded by other pgsteer processes. Peering is off
    /// without it.
    pub peer: Option<SocketAddr>,
    /// More client listeners, each with its own route and pool mode.
    #[serde(default)]
    pub extra: Vec<ExtraListener>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            rw: Some(SocketAddr::from(([127, 0, 0, 1], 6432))),
            ro: Some(SocketAddr::from(([127, 0, 0, 1], 6433))),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 9930))),
            peer: None,
            extra: Vec::new(),
        }
    }
}

/// Which discovery source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A fixed member list checked by the SQL probe.
    Static,
    /// Pods from the Kubernetes API, roles from their labels (`[discovery.kubernetes]`).
    Kubernetes,
    /// Patroni's REST API (`[discovery.patroni]`).
    Patroni,
}

/// `[discovery]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    /// The source.
    pub source: Source,
    /// How often the probe asks each member its role.
    #[serde(default = "default_probe_interval", deserialize_with = "duration")]
    pub probe_interval: Duration,
    /// Bound on one probe (connect + query).
    #[serde(default = "default_probe_timeout", deserialize_with = "duration")]
    pub probe_timeout: Duration,
    /// Probe credentials.
    pub probe: Option<Probe>,
    /// Static members.
    #[serde(default)]
    pub members: Vec<MemberConfig>,
    /// Kubernetes source settings.
    pub kubernetes: Option<KubernetesConfig>,
    /// Patroni source settings.
    pub patroni: Option<PatroniConfig>,
}

/// `source = "kubernetes"` in a build without the Kubernetes source.
#[cfg(not(feature = "kubernetes"))]
pub const KUBERNETES_NOT_BUILT: ConfigError = ConfigError::NotBuilt {
    setting: "discovery.source = \"kubernetes\"",
    feature: "kubernetes",
};

impl Discovery {
    /// `[discovery.probe]`, which the static source needs (the other sources may go without).
    pub fn static_probe(&self) -> Result<&Probe, ConfigError> {
        self.probe.as_ref().ok_or(ConfigError::NoProbe)
    }

    /// `[discovery.kubernetes]`, which `source = "kubernetes"` needs.
    pub fn kubernetes_section(&self) -> Result<&KubernetesConfig, ConfigError> {
        self.kubernetes.as_ref().ok_or(ConfigError::MissingSection {
            source_name: "kubernetes",
            section: "discovery.kubernetes",
        })
    }

    /// `[discovery.patroni]` with at least one endpoint, which `source = "patroni"` needs.
    pub fn patroni_section(&self) -> Result<&PatroniConfig, ConfigError> {
        match &self.patroni {
            None => Err(ConfigError::MissingSection {
                source_name: "patroni",
                section: "discovery.patroni",
            }),
            Some(p) if p.endpoints.is_empty() => Err(ConfigError::NoPatroniEndpoints),
            Some(p) => Ok(p),
        }
    }
}

/// `[discovery.kubernetes]`: pods watched through the API server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Namespace of the database pods (default: the pod's own namespace, else `default`).
    pub namespace: Option<String>,
    /// Label selector of the database pods, e.g. `cluster-name=pg`.
    pub selector: String,
    /// Postgres port on the pods, for pods that declare no container port named
    /// `postgresql` or `postgres` (a named port wins, like a Service's `targetPort`).
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Role labels: `patroni`, `spilo`, `cloudnativepg`, `crunchy`, or a custom table
    /// `{ label = "...", primary = [..], replica = [..] }`.
    pub preset: pgsteer_discovery::Preset,
    /// `ip` (default) or `dns` (`{pod}.{service}.{namespace}.svc`, needs `service`).
    #[serde(default = "default_address_mode")]
    pub address: String,
    /// Headless Service name for `address = "dns"`.
    pub service: Option<String>,
    /// Kubeconfig file; default: `KUBECONFIG` or `~/.kube/config` if present, else the
    /// in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
}

impl KubernetesConfig {
    /// How member addresses are formed, after checking the section: a selector is set and
    /// `address`/`service` name an [`AddressMode`].
    pub fn address_mode(&self) -> Result<AddressMode, ConfigError> {
        if self.selector.trim().is_empty() {
            return Err(ConfigError::EmptySelector);
        }
        AddressMode::parse(&self.address, self.service.as_deref())
            .map_err(ConfigError::KubernetesAddress)
    }
}

fn default_pg_port() -> u16 {
    5432
}

fn default_address_mode() -> String {
    "ip".into()
}

/// `[discovery.patroni]`: Patroni REST endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatroniConfig {
    /// Any members' REST API base URLs, e.g. `http://pg-0:8008`.
    pub endpoints: Vec<String>,
    /// How often `/cluster` is read.
    #[serde(default = "default_patroni_poll", deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// Bound on one request.
    #[serde(default = "default_patroni_timeout", deserialize_with = "duration")]
    pub request_timeout: Duration,
}

fn default_patroni_poll() -> Duration {
    Duration::from_millis(250)
}

fn default_patroni_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_probe_interval() -> Duration {
    Duration::from_millis(500)
}

fn default_probe_timeout() -> Duration {
    Duration::from_secs(2)
}

/// `[discovery.probe]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// Role the probe logs in as.
    pub user: String,
    /// Its password.
    pub password: Option<String>,
    /// Or a file holding it (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// Database to connect to.
    #[serde(default = "default_dbname")]
    pub dbname: String,
}

fn default_dbname() -> String {
    "postgres".into()
}

impl Probe {
    /// The password, reading `password_file` if set.
    pub fn resolve_password(&self) -> Result<Option<String>, ConfigError> {
        match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => Err(ConfigError::TwoProbePasswords),
            (Some(p), None) => Ok(Some(p.clone())),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_owned()))
                .map_err(|source| ConfigError::SettingFile {
                    setting: "discovery.probe.password_file",
                    path: f.clone(),
                    source,
                }),
            (None, None) => Ok(None),
        }
    }
}

/// `[[discovery.members]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Stable name (pod name).
    pub name: String,
    /// `host:port`.
    pub address: String,
}

/// `[routing]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    /// How long a new session waits for a backend for its route.
    #[serde(default = "default_hold_timeout", deserialize_with = "duration")]
    pub hold_timeout: Duration,
    /// Let `ro` sessions use the primary when no replica is available.
    #[serde(default)]
    pub replica_fallback: bool,
    /// Bound on one TCP connect to a backend.
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// A replica whose replay delay is over this gets no new reads (`ro` sessions, `auto`
    /// transactions) until it is back under half of it; 0 = no bound.
    #[serde(default, deserialize_with = "duration")]
    pub max_replica_lag: Duration,
    /// The same in bytes of WAL behind the primary; 0 = no bound.
    #[serde(default)]
    pub max_replica_lag_bytes: u64,
    /// Functions (besides the built-in list) that only read, so `auto` may send a query that
    /// calls them to a replica: lower-case names without schema.
    #[serde(default)]
    pub read_only_functions: Vec<String>,
}

fn default_hold_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            hold_timeout: default_hold_timeout(),
            replica_fallback: false,
            connect_timeout: default_connect_timeout(),
            max_replica_lag: Duration::ZERO,
            max_replica_lag_bytes: 0,
            read_only_functions: Vec::new(),
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Client connections served at once; more get `FATAL 53300`.
    #[serde(default = "default_max_clients")]
    pub max_client_connections: usize,
    /// A client must finish its startup packet within this.
    #[serde(default = "default_startup_timeout", deserialize_with = "duration")]
    pub startup_timeout: Duration,
    /// Largest protocol message accepted (bytes); larger streams through
    /// only when the proxy does not need to read it whole.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: u32,
}

fn default_max_clients() -> usize {
    10_000
}

fn default_startup_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_message() -> u32 {
    pgsteer_protocol::frame::DEFAULT_MAX_MESSAGE_LEN
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_client_connections: default_max_clients(),
            startup_timeout: default_startup_timeout(),
            max_message_bytes: default_max_message(),
        }
    }
}

/// `[drain]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drain {
    /// On SIGTERM, how long sessions may take to reach an idle point.
    #[serde(default = "default_shutdown_timeout", deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// How long a draining session may take to finish its transaction
    /// (replica removed or promoted, pod terminating, admin drain).
    #[serde(default = "default_grace", deserialize_with = "duration")]
    pub grace: Duration,
    /// The same for a session in a transaction on a primary that was demoted
    /// or vanished: writes there may be lost, so the default is 0 (terminate now).
    #[serde(default, deserialize_with = "duration")]
    pub demoted_primary_grace: Duration,
}

fn default_grace() -> Duration {
    Duration::from_secs(30)
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            shutdown_timeout: default_shutdown_timeout(),
            grace: default_grace(),
            demoted_primary_grace: Duration::ZERO,
        }
    }
}

/// `[runtime]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Event loops, each a single-threaded runtime on a thread of its own with its own socket
    /// on every passthrough listener's address (`SO_REUSEPORT`); a session stays on the loop
    /// that accepted it; pooled listeners stay on the first. 1 runs everything on one thread
    /// (fewest wake-ups).
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// What relays plaintext passthrough sessions: `epoll`, one engine thread per loop that
    /// drives every busy session of the loop from one epoll instance without a task per session
    /// (fewer instructions per message; a session moves there once busy), or `tokio`, each
    /// session in its own task. TLS and pooled sessions always relay in their tasks.
    #[serde(default)]
    pub relay_engine: RelayEngine,
}

/// See [`Runtime::relay_engine`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayEngine {
    /// One epoll engine per event loop.
    #[default]
    Epoll,
    /// A task per session.
    Tokio,
}

fn default_threads() -> usize {
    1
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            threads: default_threads(),
            relay_engine: RelayEngine::default(),
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
}

/// Section names that environment variables may address, longest first so
/// `DISCOVERY_PROBE_USER` finds `discovery.probe` before `discovery`.
const ENV_SECTIONS: &[&str] = &[
    "discovery.probe",
    "discovery.kubernetes",
    "discovery.patroni",
    "discovery",
    "peers.kubernetes",
    "peers",
    "listen",
    "routing",
    "limits",
    "drain",
    "runtime",
    "admin",
    "tls",
    "pool",
    "auth",
];

impl Config {
    /// Reads a file, applies `PGSTEER_*` overrides from `env`, and validates.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, env)
    }

    /// Parses TOML text, applies overrides and validates.
    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(ConfigError::Toml)?;
        for (k, v) in env {
            if let Some(rest) = k.strip_prefix("PGSTEER_") {
                apply_env(&mut table, rest, &v)?;
            }
        }
        let config: Config = Config::deserialize(table).map_err(ConfigError::Shape)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.rw.is_none() && self.listen.ro.is_none() && self.listen.extra.is_empty() {
            return Err(ConfigError::NoListener);
        }
        for x in &self.listen.extra {
            x.validate()?;
            if x.route == "auto" && x.pool_mode.unwrap_or(self.pool.mode) != PoolMode::Transaction {
                return Err(ConfigError::Pooling(format!(
                    "listen.extra {}: route auto needs pool_mode = \"transaction\"",
                    x.name
                )));
            }
        }
        self.pool.validate()?;
        self.auth.validate(self.pooled())?;
        let d = &self.discovery;
        match d.source {
            Source::Static => self.validate_static()?,
            Source::Kubernetes => {
                #[cfg(not(feature = "kubernetes"))]
                return Err(KUBERNETES_NOT_BUILT);
                #[cfg(feature = "kubernetes")]
                d.kubernetes_section()?.address_mode()?;
            }
            Source::Patroni => {
                d.patroni_section()?;
            }
        }
        if let Some(p) = &d.probe {
            p.resolve_password()?;
        }
        let ranges = [
            (
                "discovery.probe_interval",
                "above zero",
                !d.probe_interval.is_zero(),
            ),
            (
                "limits.max_client_connections",
                "above zero",
                self.limits.max_client_connections > 0,
            ),
            (
                "limits.max_message_bytes",
                "at least 1024",
                self.limits.max_message_bytes >= 1024,
            ),
            ("runtime.threads", "at least 1", self.runtime.threads > 0),
        ];
        if let Some(&(setting, bound, _)) = ranges.iter().find(|(_, _, ok)| !ok) {
            return Err(ConfigError::OutOfRange { setting, bound });
        }
        self.admin.token()?;
        self.tls.validate()?;
        self.peers
            .validate(self.listen.peer.is_some(), self.tls.client_enabled())?;
        Ok(())
    }

    /// The static source: uniquely named members with `host:port` addresses, and probe
    /// credentials.
    fn validate_static(&self) -> Result<(), ConfigError> {
        let d = &self.discovery;
        if d.members.is_empty() {
            return Err(ConfigError::NoMembers);
        }
        let mut names = std::collections::HashSet::new();
        for m in &d.members {
            if m.name.is_empty() {
                return Err(ConfigError::EmptyMemberName);
            }
            if !names.insert(m.name.as_str()) {
                return Err(ConfigError::DuplicateMember(m.name.clone()));
            }
            if m.address
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(ConfigError::MemberAddress {
                    name: m.name.clone(),
                    address: m.address.clone(),
                });
            }
        }
        d.static_probe()?;
        Ok(())
    }
}

impl Config {
    /// `[peers] ca_file` when the peer port runs mutual TLS.
    pub fn peer_ca(&self) -> Option<&Path> {
        let mutual = self.listen.peer.is_some() && self.peers.tls == PeerTls::Mutual;
        mutual.then_some(self.peers.ca_file.as_deref()).flatten()
    }

    /// Whether any listener runs a pooled mode.
    pub fn pooled(&self) -> bool {
        let listeners =
            (self.listen.rw.is_some() || self.listen.ro.is_some()).then_some(self.pool.mode);
        let extra = self
            .listen
            .extra
            .iter()
            .map(|x| x.pool_mode.unwrap_or(self.pool.mode));
        listeners
            .into_iter()
            .chain(extra)
            .any(|m| m != PoolMode::Passthrough)
    }
}

fn apply_env(table: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let lower = var.to_ascii_lowercase();
    for section in ENV_SECTIONS {
        let prefix = format!("{}_", section.replace('.', "_"));
        let Some(key) = lower.strip_prefix(&prefix) else {
            continue;
        };
        let mut t = &mut *table;
        for part in section.split('.') {
            t = t
                .entry(part)
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .ok_or_else(|| ConfigError::OverrideNotTable {
                    var: var.to_owned(),
                    section,
                })?;
        }
        t.insert(key.to_owned(), env_value(value));
        return Ok(());
    }
    Err(ConfigError::UnknownOverride(var.to_owned()))
}

/// Reads an override as a TOML scalar when it is one (numbers, booleans),
/// else as a string.
fn env_value(v: &str) -> toml::Value {
    if let Ok(b) = v.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if let Ok(i) = v.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    toml::Value::String(v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
        [discovery]
        source = "static"
        [discovery.probe]
        user = "pgsteer"
        password = "x"
        [[discovery.members]]
        name = "pg-0"
        address = "127.0.0.1:5432"
    "#;

    #[test]
    fn defaults_fill_everything_but_the_members() {
        let c = Config::parse(MIN, []).unwrap();
        assert_eq!(c.routing.hold_timeout, Duration::from_secs(10));
        assert_eq!(c.discovery.probe_interval, Duration::from_millis(500));
        assert_eq!(c.limits.max_client_connections, 10_000);
        assert!(!c.routing.replica_fallback);
        assert_eq!(c.listen.rw.unwrap().port(), 6432);
    }

    #[test]
    fn environment_overrides_file_values() {
        let c = Config::parse(
            MIN,
            [
                ("PGSTEER_LISTEN_RW".into(), "0.0.0.0:7000".into()),
                ("PGSTEER_ROUTING_HOLD_TIMEOUT".into(), "2s".into()),
                ("PGSTEER_ROUTING_REPLICA_FALLBACK".into(), "true".into()),
                ("PGSTEER_DISCOVERY_PROBE_USER".into(), "other".into()),
                ("HOME".into(), "/root".into()),
            ],
        )
        .unwrap();
        assert_eq!(c.listen.rw.unwrap().port(), 7000);
        assert_eq!(c.routing.hold_timeout, Duration::from_secs(2));
        assert!(c.routing.replica_fallback);
        assert_eq!(c.discovery.probe.unwrap().user, "other");
    }

    #[test]
    fn auth_methods_have_the_names_the_readme_gives() {
        for (name, method) in [
            ("scram-sha-256", AuthMethod::ScramSha256),
            ("md5", AuthMethod::Md5),
            ("password", AuthMethod::Password),
            ("trust", AuthMethod::Trust),
        ] {
            let text = format!("{MIN}\n[auth]\nmethod = \"{name}\"");
            let c = Config::parse(&text, []).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.auth.method, method);
        }
    }

    #[test]
    fn mistakes_are_reported_in_one_line() {
        for (text, needle) in [
            (
                MIN.replace("source = \"static\"", "source = \"zk\""),
                "unknown variant",
            ),
            (
                MIN.replace("127.0.0.1:5432", "nowhere"),
                "expected host:port",
            ),
            (
                format!("{MIN}\n[routing]\nhold_timeout = \"soon\""),
                "invalid duration",
            ),
            (
                format!("{MIN}\n[routing]\nholdtimeout = \"1s\""),
                "unknown field",
            ),
        ] {
            let e = Config::parse(&text, []).unwrap_err().to_string();
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
            assert!(!e.contains('\n'), "{e:?} spans lines");
        }
        let e = Config::parse(MIN, [("PGSTEER_BOGUS_X".into(), "1".into())]).unwrap_err();
        assert!(e.to_string().contains("PGSTEER_BOGUS_X"));
    }
}
