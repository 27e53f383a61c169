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
    /// Reads the files named in `[tls]` and builds both sides.
    pub fn load(config: &config::Tls) -> Result<Tls, ConfigError> {
        let client = match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => Some(ClientSide::load(
                Files {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: config.client_ca_file.clone(),
                },
                config.client_mode,
                config.reload_interval,
            )?),
            _ => None,
        };
        let server = ServerSide::load(config.server_mode, config.server_ca_file.as_deref())?;
        Ok(Tls { client, server })
    }
}

/// The files the client-side configuration is built from.
#[derive(Debug, Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

/// The files' contents, to notice a change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn read(&self) -> Result<Contents, String> {
        let read = |p: &Path, what: &str| {
            std::fs::read(p).map_err(|e| format!("tls.{what} {}: {e}", p.display()))
        };
        Ok(Contents {
            cert: read(&self.cert, "cert_file")?,
            key: read(&self.key, "key_file")?,
            client_ca: match &self.client_ca {
                Some(p) => Some(read(p, "client_ca_file")?),
                None => None,
            },
        })
    }
}

struct Current {
    config: Arc<ServerConfig>,
    contents: Contents,
    /// What failed last (contents that do not load, or a read error), so
    /// the error is reported once.
    failed: Option<Failure>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    Unusable(Contents),
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The files are as they were.
    Unchanged,
    /// A new certificate is in use for new connections.
    Reloaded,
    /// The files changed but do not load; the previous certificate stays.
    Failed(String),
}

impl ClientSide {
    fn load(
        files: Files,
        mode: ClientTlsMode,
        interval: Duration,
    ) -> Result<ClientSide, ConfigError> {
        let contents = files.read().map_err(ConfigError)?;
        let config = server_config(&contents).map_err(ConfigError)?;
        Ok(ClientSide {
            mode,
            files,
            interval,
            current: RwLock::new(Current {
                config: Arc::new(config),
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

    /// An acceptor with the configuration in force (one lock read).
    pub fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        TlsAcceptor::from(current.config.clone())
    }

    /// The `tls-server-end-point` channel-binding data of the certificate in force
    /// (RFC 5929), for SCRAM-SHA-256-PLUS; `None` where the hash is undefined.
    pub fn end_point(&self) -> Option<Vec<u8>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        let leaf = CertificateDer::pem_slice_iter(&current.contents.cert).next()?.ok()?;
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
                match server_config(&contents) {
                    Ok(config) => {
                        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
                        current.config = Arc::new(config);
                        current.contents = contents;
                        current.failed = None;
                        self.reloads.fetch_add(1, Ordering::Relaxed);
                        return Reload::Reloaded;
                    }
                    Err(e) => (Failure::Unusable(contents), e),
                }
            }
            Err(e) => (Failure::Unreadable(e.clone()), e),
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

/// Builds the client-facing configuration from PEM contents.
fn server_config(c: &Contents) -> Result<ServerConfig, String> {
    let chain = CertificateDer::pem_slice_iter(&c.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.cert_file: {e}"))?;
    if chain.is_empty() {
        return Err("tls.cert_file holds no PEM certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&c.key).map_err(|e| format!("tls.key_file: {e}"))?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match &c.client_ca {
        Some(pem) => {
            let roots = roots(pem, "client_ca_file")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("tls.client_ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls.cert_file/key_file: {e}"))?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    // Like PostgreSQL: no session resumption (libpq never resumes).
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

fn roots(pem: &[u8], what: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("tls.{what}: {e}"))?;
        roots.add(cert).map_err(|e| format!("tls.{what}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("tls.{what} holds no PEM certificate"));
    }
    Ok(roots)
}

/// TLS towards the servers.
pub struct ServerSide {
    mode: ServerTlsMode,
    config: Option<Arc<ClientConfig>>,
}

impl ServerSide {
    fn load(mode: ServerTlsMode, ca_file: Option<&Path>) -> Result<ServerSide, ConfigError> {
        let provider = provider();
        let verifier: Arc<dyn ServerCertVerifier> = match mode {
            ServerTlsMode::Disable => return Ok(ServerSide { mode, config: None }),
            ServerTlsMode::Prefer | ServerTlsMode::Require => Arc::new(NoVerification {
                algorithms: provider.signature_verification_algorithms,
            }),
            ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull => {
                let Some(path) = ca_file else {
                    return Err(ConfigError(format!(
                        "tls.server_mode = \"{}\" needs tls.server_ca_file",
                        mode.as_str()
                    )));
                };
                let pem = std::fs::read(path).map_err(|e| {
                    ConfigError(format!("tls.server_ca_file {}: {e}", path.display()))
                })?;
                let roots = roots(&pem, "server_ca_file").map_err(ConfigError)?;
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| ConfigError(format!("tls.server_ca_file: {e}")))?;
                if mode == ServerTlsMode::VerifyCa {
                    Arc::new(ChainOnly(webpki))
                } else {
                    webpki
                }
            }
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(VERSIONS)
            .map_err(|e| ConfigError(format!("tls: {e}")))?
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

    /// A connector, unless `server_mode = "disable"`.
    pub fn connector(&self) -> Option<TlsConnector> {
        self.config.clone().map(TlsConnector::from)
    }

    /// The name to verify and send as SNI for a member at `address`
    /// (`host:port`): an IP address is checked against IP SANs and sends no
    /// SNI. A host that is not a valid DNS name is an error only when the
    /// name is verified.
    pub fn server_name(&self, address: &str) -> Result<ServerName<'static>, String> {
        let host = address
            .rsplit_once(':')
            .map_or(address, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        match ServerName::try_from(host.to_owned()) {
            Ok(name) => Ok(name),
            Err(_) if self.mode != ServerTlsMode::VerifyFull => {
                Ok(ServerName::try_from("localhost").map_err(|e| e.to_string())?)
            }
            Err(e) => Err(format!("{host:?} is not a valid host name to verify: {e}")),
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
        };
        let e = server_config(&c).unwrap_err();
        assert!(e.contains("tls.cert_file"), "{e}");
    }
}
