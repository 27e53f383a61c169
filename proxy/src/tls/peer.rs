//! Mutual TLS on the peer port (`[peers] tls = "mutual"`): the certificate pair of `[tls]`
//! (reloaded with it) both serves the peer port and authenticates this process to other
//! peers; both ends verify the other's chain against `[peers] ca_file`. Peers are addressed by
//! pod IP, so names are not checked: the chain is what admits a peer.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{ChainOnly, Contents, TlsError, VERSIONS, provider, roots};

const SETTING: &str = "peers.ca_file";

/// Both ends of the peer port's TLS, from one certificate pair and CA bundle.
pub struct PeerConfigs {
    acceptor: Arc<ServerConfig>,
    connector: Arc<ClientConfig>,
}

impl PeerConfigs {
    /// For the peer port.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.acceptor.clone())
    }

    /// For requests to other peers.
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.connector.clone())
    }
}

/// Builds both ends from the `[tls]` pair in `c` and the peers' CA bundle `ca`.
pub(super) fn peer_configs(c: &Contents, ca: &[u8]) -> Result<PeerConfigs, TlsError> {
    let chain = CertificateDer::pem_slice_iter(&c.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            setting: "cert_file",
            source,
        })?;
    let key = PrivateKeyDer::from_pem_slice(&c.key).map_err(|source| TlsError::Pem {
        setting: "key_file",
        source,
    })?;
    let roots = Arc::new(roots(ca, SETTING)?);
    let provider = provider();
    let verify_error = |source| TlsError::Verifier {
        setting: SETTING,
        source,
    };
    let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(verify_error)?;
    let mut acceptor = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Versions)?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(TlsError::KeyPair)?;
    acceptor.session_storage = Arc::new(NoServerSessionStorage {});
    acceptor.send_tls13_tickets = 0;
    let servers = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(verify_error)?;
    let connector = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly(servers)))
        .with_client_auth_cert(chain, key)
        .map_err(TlsError::KeyPair)?;
    Ok(PeerConfigs {
        acceptor: Arc::new(acceptor),
        connector: Arc::new(connector),
    })
}
