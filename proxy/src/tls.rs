//! TLS: the rustls configurations of both sides, and certificate reload.
//!
//! Client side ([`ClientSide`]): a rustls `ServerConfig` built from `[tls]
//! cert_file`/`key_file` (and `client_ca_file`), held as `RwLock<Arc<_>>` and
//! read once per handshake. [`watch`] re-reads the files every
//! `reload_interval` and swaps in a new configuration when their contents
//! changed (cert-manager rotates a mounted Secret by swapping a symlink); a
//! pair that does not load keeps the old configuration and logs an error.
//!
//! Server side ([`ServerSide`]): a rustls `ClientConfig` for `server_mode`,
//! built once at start. `prefer` and `require` encrypt without verifying
//! (as libpq does), `verify-ca` checks the chain only, `verify-full` the chain
//! and the member's host name or IP address.
//!
//! Only TLS 1.2 and 1.3, with the `ring` provider passed explicitly (no
//! process-wide default), so two proxies in one process do not interfere.
//!
//! This module depends on `crate::config` for the plain settings (`[tls]`);
//! `config` knows nothing of it. Loading the files can fail with a
//! [`TlsError`], which `pgsteer run`/`check` report as a configuration error.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use crate::config::{self, ClientTlsMode, ConfigError, ServerTlsMode};

mod peer;
pub use peer::PeerConfigs;

/// Why the TLS configuration of a side could not be built. Each message names the setting
/// whose file is at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The settings do not fit together (normally caught when the configuration is parsed).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file named in `[tls]` could not be read.
    #[error("tls.{setting} {}: {source}", path.display())]
    Read {
        /// The setting naming the file (`cert_file`, `key_file`, `client_ca_file`, `server_ca_file`).
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file holds no valid PEM section of the kind expected (certificate or private key).
    #[error("tls.{setting}: {source}")]
    Pem {
        /// The setting naming the file.
        setting: &'static str,
        /// The PEM decoding error.
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate or CA file holds no certificate at all.
    #[error("tls.{setting} holds no PEM certificate")]
    NoCertificate {
        /// The setting naming the file.
        setting: &'static str,
    },
    /// A CA certificate that cannot be a trust anchor.
    #[error("tls.{setting}: {source}")]
    CaCertificate {
        /// The setting naming the file.
        setting: &'static str,
        /// Why rustls refused it.
        source: rustls::Error,
    },
    /// No certificate verifier could be built from a CA bundle.
    #[error("tls.{setting}: {source}")]
    Verifier {
        /// The setting naming the file.
        setting: &'static str,
        /// Why rustls refused it.
        source: rustls::server::VerifierBuilderError,
    },
    /// The certificate chain and the private key do not make a usable pair (a key that does
    /// not match, an unsupported key type).
    #[error("tls.cert_file/key_file: {0}")]
    KeyPair(#[source] rustls::Error),
    /// The crypto provider refused the protocol versions (TLS 1.2 and 1.3).
    #[error("tls: {0}")]
    Versions(#[source] rustls::Error),
    /// A member's host is not a name that a certificate can be checked against
    /// (`verify-full`).
    #[error("{host:?} is not a valid host name to verify: {source}")]
    HostName {
        /// The host part of the member's address.
        host: String,
        /// Why it is not a DNS name or IP address.
        source: rustls_pki_types::InvalidDnsNameError,
    },
}

/// The ALPN protocol name of PostgreSQL (required for direct TLS).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS state of a running proxy.
pub struct Tls {
    /// TLS towards clients, when `cert_file`/`key_file` are set.
    pub client: Option<ClientSide>,
    /// TLS towards the servers.
    pub server: ServerSide,
}

impl Tls {
    /// Reads the files named in `[tls]` and builds both sides; with `peer_ca` (`[peers]
    /// ca_file` of mutual TLS) the peer port's configurations too.
    pub fn load(config: &config::Tls, peer_ca: Option<&Path>) -> Result<Tls, TlsError> {
        let client = match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => Some(ClientSide::load(
                Files {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: config.client_ca_file.clone(),
                    peer_ca: peer_ca.map(Path::to_owned),
                },
                config.client_mode,
                config.reload_interval,
            )?),
            _ => None,
        };
        let server = ServerSide::load(config.server_mode, config.server_ca()?)?;
        Ok(Tls { client, server })
    }
}

/// The files the client-side configuration is built from.
#[derive(Debug, Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    peer_ca: Option<PathBuf>,
}

/// The files' contents, to notice a change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
    peer_ca: Option<Vec<u8>>,
}

impl Files {
    fn read(&self) -> Result<Contents, TlsError> {
        let read = |p: &Path, setting: &'static str| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                setting,
                path: p.to_owned(),
                source,
            })
        };
        Ok(Contents {
            cert: read(&self.cert, "cert_file")?,
            key: read(&self.key, "key_file")?,
            client_ca: match &self.client_ca {
                Some(p) => Some(read(p, "client_ca_file")?),
                None => None,
            },
            peer_ca: match &self.peer_ca {
                Some(p) => Some(read(p, "peers.ca_file")?),
                None => None,
            },
        })
    }
}

struct Current {
    config: Arc<ServerConfig>,
    /// The peer port's, with `[peers] tls = "mutual"`.
    peer: Option<Arc<PeerConfigs>>,
    contents: Contents,
    /// What failed last (contents that do not load, or a read error), so
    /// the error is reported once.
    failed: Option<Failure>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    Unusable(Contents),
    /// The read error's message: the same message again is the same failure.
    Unreadable(String),
}

/// TLS towards clients: the configuration in force and how to renew it.
pub struct ClientSide {
    mode: ClientTlsMode,
    files: Files,
    interval: Duration,
    current: RwLock<Current>,
    reloads: AtomicU64,
    failures: AtomicU64,
}

/// What [`ClientSide::reload`] found.
#[derive(Debug)]
pub enum Reload {
    /// The files are as they were.
    Unchanged,
    /// A new certificate is in use for new connections.
    Reloaded,
    /// The files changed but do not load; the previous certificate stays.
    Failed(TlsError),
}

impl ClientSide {
    fn load(files: Files, mode: ClientTlsMode, interval: Duration) -> Result<ClientSide, TlsError> {
        let contents = files.read()?;
        let (config, peer) = configs(&contents)?;
        Ok(ClientSide {
            mode,
            files,
            interval,
            current: RwLock::new(Current {
                config: Arc::new(config),
                peer,
                contents,
                failed: None,
            }),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// Whether plaintext sessions are refused.
    pub fn mode(&self) -> ClientTlsMode {
        self.mode
    }

    /// The peer port's TLS in force, with `[peers] tls = "mutual"`.
    pub fn peer(&self) -> Option<Arc<PeerConfigs>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.peer.clone()
    }

    /// An acceptor with the configuration in force (one lock read).
    pub fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        TlsAcceptor::from(current.config.clone())
    }

    /// The `tls-server-end-point` channel-binding data of the certificate in force
    /// (RFC 5929), for SCRAM-SHA-256-PLUS; `None` where the hash is undefined.
    pub fn end_point(&self) -> Option<Vec<u8>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        let leaf = CertificateDer::pem_slice_iter(&current.contents.cert)
            .next()?
            .ok()?;
        crate::auth::endpoint::tls_server_end_point(&leaf).ok()
    }

    /// Certificate pairs taken into use since start.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Changes to the files that could not be used (each logged as an error).
    pub fn reload_failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Re-reads the files and swaps in a new configuration if they changed
    /// and load. A failure is reported once: the same unusable contents or
    /// the same read error again count as unchanged.
    pub fn reload(&self) -> Reload {
        let (failure, message) = match self.files.read() {
            Ok(contents) => {
                {
                    let current = self.current.read().unwrap_or_else(|e| e.into_inner());
                    if contents == current.contents {
                        return Reload::Unchanged;
                    }
                }
                match configs(&contents) {
                    Ok((config, peer)) => {
                        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
                        current.config = Arc::new(config);
                        current.peer = peer;
                        current.contents = contents;
                        current.failed = None;
                        self.reloads.fetch_add(1, Ordering::Relaxed);
                        return Reload::Reloaded;
                    }
                    Err(e) => (Failure::Unusable(contents), e),
                }
            }
            Err(e) => (Failure::Unreadable(e.to_string()), e),
        };
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.failed.as_ref() == Some(&failure) {
            return Reload::Unchanged;
        }
        current.failed = Some(failure);
        Reload::Failed(message)
    }

    fn forget_failure(&self) {
        self.current
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .failed = None;
    }
}

/// Re-reads the client-side certificate files every `reload_interval` until
/// `stop` fires. A pair that does not load is looked at again shortly after
/// (a symlink swap or two separate writes can be caught half-way) before the
/// error is logged; it is logged once per distinct content.
pub async fn watch(tls: Arc<Tls>, stop: CancellationToken) {
    let Some(side) = &tls.client else { return };
    let mut tick = tokio::time::interval(side.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut outcome = side.reload();
        if let Reload::Failed(e) = &outcome {
            debug!(error = %e, "tls files changed but do not load; looking again shortly");
            side.forget_failure();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            outcome = side.reload();
        }
        match outcome {
            Reload::Unchanged => {}
            Reload::Reloaded => {
                info!(cert_file = %side.files.cert.display(), "tls certificate reloaded")
            }
            Reload::Failed(e) => {
                side.failures.fetch_add(1, Ordering::Relaxed);
                error!(
                    error = %e,
                    "tls certificate files changed but cannot be used; keeping the previous certificate"
                )
            }
        }
    }
}

/// Builds the client-facing configuration and the peer port's (when asked for) from PEM
/// contents.
fn configs(c: &Contents) -> Result<(ServerConfig, Option<Arc<PeerConfigs>>), TlsError> {
    let config = server_config(c)?;
    let peer = match &c.peer_ca {
        Some(ca) => Some(Arc::new(peer::peer_configs(c, ca)?)),
        None => None,
    };
    Ok((config, peer))
}

/// Builds the client-facing configuration from PEM contents.
fn server_config(c: &Contents) -> Result<ServerConfig, TlsError> {
    let chain = CertificateDer::pem_slice_iter(&c.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            setting: "cert_file",
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            setting: "cert_file",
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&c.key).map_err(|source| TlsError::Pem {
        setting: "key_file",
        source,
    })?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Versions)?;
    let builder = match &c.client_ca {
        Some(pem) => {
            const SETTING: &str = "client_ca_file";
            let roots = roots(pem, SETTING)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::Verifier {
                    setting: SETTING,
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(TlsError::KeyPair)?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    // Like PostgreSQL: no session resumption (libpq never resumes).
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

fn roots(pem: &[u8], setting: &'static str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|source| TlsError::Pem { setting, source })?;
        roots
            .add(cert)
            .map_err(|source| TlsError::CaCertificate { setting, source })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate { setting });
    }
    Ok(roots)
}

/// TLS towards the servers.
pub struct ServerSide {
    mode: ServerTlsMode,
    config: Option<Arc<ClientConfig>>,
}

impl ServerSide {
    /// `ca_file` as [`config::Tls::server_ca`] returns it: set for the verifying modes.
    pub fn load(mode: ServerTlsMode, ca_file: Option<&Path>) -> Result<ServerSide, TlsError> {
        let provider = provider();
        let verifier: Arc<dyn ServerCertVerifier> = match mode {
            ServerTlsMode::Disable => return Ok(ServerSide { mode, config: None }),
            ServerTlsMode::Prefer | ServerTlsMode::Require => Arc::new(NoVerification {
                algorithms: provider.signature_verification_algorithms,
            }),
            ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull => {
                const SETTING: &str = "server_ca_file";
                let Some(path) = ca_file else {
                    return Err(ConfigError::ServerCaMissing(mode).into());
                };
                let pem = std::fs::read(path).map_err(|source| TlsError::Read {
                    setting: SETTING,
                    path: path.to_owned(),
                    source,
                })?;
                let roots = roots(&pem, SETTING)?;
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|source| TlsError::Verifier {
                            setting: SETTING,
                            source,
                        })?;
                if mode == ServerTlsMode::VerifyCa {
                    Arc::new(ChainOnly(webpki))
                } else {
                    webpki
                }
            }
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(VERSIONS)
            .map_err(TlsError::Versions)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(ServerSide {
            mode,
            config: Some(Arc::new(config)),
        })
    }

    /// The configured mode.
    pub fn mode(&self) -> ServerTlsMode {
        self.mode
    }

    /// The probe's TLS, as `server_mode` says.
    pub fn probe(&self) -> pgsteer_discovery::ProbeTls {
        match &self.config {
            None => pgsteer_discovery::ProbeTls::disabled(),
            Some(c) => pgsteer_discovery::ProbeTls::with(
                c.clone(),
                self.mode != ServerTlsMode::Prefer,
                self.mode == ServerTlsMode::VerifyFull,
            ),
        }
    }

    /// A connector, unless `server_mode = "disable"`.
    pub fn connector(&self) -> Option<TlsConnector> {
        self.config.clone().map(TlsConnector::from)
    }

    /// The name to verify and send as SNI for a member at `address`
    /// (`host:port`): an IP address is checked against IP SANs and sends no
    /// SNI. A host that is not a valid DNS name is an error only when the
    /// name is verified.
    pub fn server_name(&self, address: &str) -> Result<ServerName<'static>, TlsError> {
        let host = address
            .rsplit_once(':')
            .map_or(address, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let host_name = |host: &str, source| TlsError::HostName {
            host: host.to_owned(),
            source,
        };
        match ServerName::try_from(host.to_owned()) {
            Ok(name) => Ok(name),
            Err(_) if self.mode != ServerTlsMode::VerifyFull => {
                ServerName::try_from("localhost").map_err(|e| host_name("localhost", e))
            }
            Err(e) => Err(host_name(host, e)),
        }
    }
}

/// `prefer`/`require`: encrypt without checking who is at the other end (as
/// libpq does), but still check the handshake signatures.
#[derive(Debug)]
struct NoVerification {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the CA; the name is not checked.
/// webpki checks the chain before the name, so a name error means the
/// chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(mode: ServerTlsMode) -> ServerSide {
        ServerSide { mode, config: None }
    }

    #[test]
    fn the_server_name_is_the_host_of_the_address() {
        let s = side(ServerTlsMode::VerifyFull);
        assert_eq!(
            s.server_name("pg-0.pg.db.svc:5432").unwrap(),
            ServerName::try_from("pg-0.pg.db.svc").unwrap()
        );
        assert!(matches!(
            s.server_name("127.0.0.1:5432").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            s.server_name("[::1]:5432").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(s.server_name("bad_name!:5432").is_err());
        assert!(
            side(ServerTlsMode::Require)
                .server_name("bad_name!:5432")
                .is_ok()
        );
    }

    #[test]
    fn files_that_are_not_pem_are_refused_with_the_setting_named() {
        let c = Contents {
            cert: b"nothing here".to_vec(),
            key: b"nor here".to_vec(),
            client_ca: None,
            peer_ca: None,
        };
        let e = server_config(&c).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        assert!(e.to_string().contains("tls.cert_file"), "{e}");
    }
}
