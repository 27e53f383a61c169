//! `[tls]`: TLS towards clients and towards the servers, as settings (the files are read by
//! `crate::tls`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, duration};

/// `[tls]`: TLS on both sides of the proxy.
///
/// Client side: with `cert_file` and `key_file`, SSLRequest is answered `S`
/// and TLS is terminated here (also Postgres 17 direct TLS). Server side:
/// `server_mode` follows libpq's `sslmode`. The certificate files are
/// re-read every `reload_interval`; a changed pair is used for new
/// connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain served to clients (leaf first).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// `allow` (plaintext or TLS) or `require` (plaintext startups get `FATAL 28000`).
    #[serde(default)]
    pub client_mode: ClientTlsMode,
    /// PEM CA bundle: clients must present a certificate it signed.
    pub client_ca_file: Option<PathBuf>,
    /// How often the certificate files are checked for a new pair.
    #[serde(default = "default_tls_reload", deserialize_with = "duration")]
    pub reload_interval: Duration,
    /// TLS towards the servers, as libpq's `sslmode`.
    #[serde(default)]
    pub server_mode: ServerTlsMode,
    /// PEM CA bundle the servers' certificates are verified against
    /// (`verify-ca`, `verify-full`).
    pub server_ca_file: Option<PathBuf>,
}

fn default_tls_reload() -> Duration {
    Duration::from_secs(5)
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            cert_file: None,
            key_file: None,
            client_mode: ClientTlsMode::default(),
            client_ca_file: None,
            reload_interval: default_tls_reload(),
            server_mode: ServerTlsMode::default(),
            server_ca_file: None,
        }
    }
}

/// Whether clients must use TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientTlsMode {
    /// Plaintext and TLS clients are both served.
    #[default]
    Allow,
    /// A plaintext StartupMessage is refused with `FATAL 28000`.
    Require,
}

/// TLS towards the servers, with libpq's `sslmode` semantics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    /// Plaintext only (no SSLRequest is sent).
    #[default]
    Disable,
    /// TLS if the server accepts the SSLRequest, else plaintext; no verification.
    Prefer,
    /// TLS or fail; the certificate is not verified.
    Require,
    /// TLS with the certificate chain verified against `server_ca_file`.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the member's host.
    VerifyFull,
}

impl ServerTlsMode {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerTlsMode::Disable => "disable",
            ServerTlsMode::Prefer => "prefer",
            ServerTlsMode::Require => "require",
            ServerTlsMode::VerifyCa => "verify-ca",
            ServerTlsMode::VerifyFull => "verify-full",
        }
    }
}

impl Tls {
    /// Whether TLS towards clients is configured.
    pub fn client_enabled(&self) -> bool {
        self.cert_file.is_some()
    }

    /// Checks that the settings fit together. The files are not read here: `crate::tls`
    /// loads them (and `crate::load` does so before anything starts).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(ConfigError::TlsHalfPair);
        }
        if !self.client_enabled() {
            if self.client_mode == ClientTlsMode::Require {
                return Err(ConfigError::TlsNeedsCertificate {
                    setting: "tls.client_mode = \"require\"",
                });
            }
            if self.client_ca_file.is_some() {
                return Err(ConfigError::TlsNeedsCertificate {
                    setting: "tls.client_ca_file",
                });
            }
        }
        if self.client_ca_file.is_some() && self.client_mode != ClientTlsMode::Require {
            return Err(ConfigError::ClientCaWithoutRequire);
        }
        if self.reload_interval.is_zero() {
            return Err(ConfigError::OutOfRange {
                setting: "tls.reload_interval",
                bound: "above zero",
            });
        }
        self.server_ca()?;
        Ok(())
    }

    /// The CA bundle the servers' certificates are verified against: `Some` exactly for
    /// `verify-ca` and `verify-full`, which need one; a bundle with another mode is a mistake.
    pub fn server_ca(&self) -> Result<Option<&Path>, ConfigError> {
        let verifies = matches!(
            self.server_mode,
            ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull
        );
        match (self.server_ca_file.as_deref(), verifies) {
            (None, true) => Err(ConfigError::ServerCaMissing(self.server_mode)),
            (Some(_), false) => Err(ConfigError::ServerCaUnused(self.server_mode)),
            (ca, _) => Ok(ca),
        }
    }
}
