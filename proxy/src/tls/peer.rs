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

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn the_peer_configs_are_built_from_the_tls_pair_and_the_peer_ca_and_a_bad_ca_is_named() {
        let (cert, key) = self_signed();
        let mut c = Contents {
            cert: cert.clone().into_bytes(),
            key: key.into_bytes(),
            client_ca: None,
            peer_ca: Some(cert.into_bytes()),
        };
        let (_, peer) = super::super::configs(&c).unwrap();
        assert!(peer.is_some(), "built with the pair, as a reload does");
        c.peer_ca = Some(b"not a certificate".to_vec());
        let e = super::super::configs(&c).err().unwrap().to_string();
        assert!(e.contains("peers.ca_file"), "{e}");
    }
}
