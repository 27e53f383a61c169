//! [`ConfigError`]: every way a configuration can be unusable, each message one line that
//! names the setting.

use std::io;
use std::path::PathBuf;

use pgsteer_discovery::kubernetes::AddressModeError;

use super::ServerTlsMode;

/// A configuration problem. Every message is one line and names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A `[pool]`, `[auth]` or `[[listen.extra]]` setting that does not fit.
    #[error("{0}")]
    Pooling(String),
    /// A `[peers]` setting that does not fit.
    #[error("{0}")]
    Peers(String),
    /// A setting that needs a cargo feature this build was made without.
    #[error("{setting}: this pgsteer was built without the `{feature}` feature")]
    NotBuilt {
        /// The setting, as written in the file.
        setting: &'static str,
        /// The cargo feature it needs.
        feature: &'static str,
    },
    /// The configuration file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The text is not TOML.
    #[error("invalid TOML: {}", .0.message().trim())]
    Toml(#[source] toml::de::Error),
    /// The TOML is not a configuration: an unknown key or section, a wrong type, a bad duration.
    #[error("invalid configuration: {}", .0.message().trim())]
    Shape(#[source] toml::de::Error),
    /// A `PGSTEER_*` variable that names no section (the variable without its prefix).
    #[error("unknown environment override PGSTEER_{0}")]
    UnknownOverride(String),
    /// A `PGSTEER_*` variable for a section the file sets to a plain value.
    #[error("PGSTEER_{var}: {section} is not a table")]
    OverrideNotTable {
        /// The variable, without its `PGSTEER_` prefix.
        var: String,
        /// The section it addresses.
        section: &'static str,
    },
    /// A file named by a setting (`admin.token_file`, `discovery.probe.password_file`) could not
    /// be read.
    #[error("{setting} {}: {source}", path.display())]
    SettingFile {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file named by a setting holds nothing.
    #[error("{setting} {} is empty", path.display())]
    EmptyFile {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A number or duration outside what it may be.
    #[error("{setting} must be {bound}")]
    OutOfRange {
        /// The setting.
        setting: &'static str,
        /// What it must be (`above zero`, `at least 1024`).
        bound: &'static str,
    },
    /// Neither `listen.rw` nor `listen.ro`.
    #[error("listen: set at least one of rw and ro")]
    NoListener,
    /// `source = "kubernetes"` or `"patroni"` without its section.
    #[error("discovery: source = \"{source_name}\" needs [{section}]")]
    MissingSection {
        /// The source (`kubernetes`, `patroni`).
        source_name: &'static str,
        /// The section it needs (`discovery.kubernetes`).
        section: &'static str,
    },
    /// The static source without `[[discovery.members]]`.
    #[error("discovery: the static source needs at least one [[discovery.members]]")]
    NoMembers,
    /// The static source without `[discovery.probe]`.
    #[error("discovery: the static source needs [discovery.probe] credentials")]
    NoProbe,
    /// A static member with an empty name.
    #[error("discovery.members: a member has an empty name")]
    EmptyMemberName,
    /// Two static members with one name.
    #[error("discovery.members: duplicate member name {0:?}")]
    DuplicateMember(String),
    /// A static member whose address is not `host:port`.
    #[error("discovery.members: member {name:?} has address {address:?}, expected host:port")]
    MemberAddress {
        /// The member.
        name: String,
        /// Its address as configured.
        address: String,
    },
    /// Both `password` and `password_file` in `[discovery.probe]`.
    #[error("discovery.probe: set either password or password_file, not both")]
    TwoProbePasswords,
    /// `[discovery.patroni]` with no endpoint.
    #[error("discovery.patroni.endpoints: list at least one REST API URL")]
    NoPatroniEndpoints,
    /// `[discovery.kubernetes]` with an empty selector.
    #[error("discovery.kubernetes.selector: give the label selector of the database pods")]
    EmptySelector,
    /// `[discovery.kubernetes]` `address`/`service` name no address mode.
    #[error("discovery.kubernetes: {0}")]
    KubernetesAddress(#[source] AddressModeError),
    /// Only one of `tls.cert_file` and `tls.key_file`.
    #[error("tls: set both cert_file and key_file, or neither")]
    TlsHalfPair,
    /// A client-side TLS setting without a certificate to serve (`setting` as written).
    #[error("{setting} needs tls.cert_file and tls.key_file")]
    TlsNeedsCertificate {
        /// The setting, e.g. `tls.client_mode = "require"`.
        setting: &'static str,
    },
    /// `tls.client_ca_file` while plaintext clients are allowed.
    #[error(
        "tls.client_ca_file: client certificates are only checked over TLS; \
         set tls.client_mode = \"require\" too"
    )]
    ClientCaWithoutRequire,
    /// `verify-ca` or `verify-full` without `tls.server_ca_file`.
    #[error("tls.server_mode = \"{}\" needs tls.server_ca_file", .0.as_str())]
    ServerCaMissing(ServerTlsMode),
    /// `tls.server_ca_file` with a mode that does not verify.
    #[error(
        "tls.server_ca_file is only used with server_mode = \"verify-ca\" or \"verify-full\" \
         (server_mode is \"{}\")",
        .0.as_str()
    )]
    ServerCaUnused(ServerTlsMode),
}
