//! Cancel requests with TLS inside: mutual TLS between pgsteer peers, and TLS (as
//! `[tls] server_mode` says) on the cancel requests and the discovery probe pgsteer sends to
//! Postgres.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgsteer::Config;
use pgsteer::config::{ClientTlsMode, PeerTls, ServerTlsMode};
use pgsteer::peers::wire::{PeerCancel, encode};
use pgsteer_cluster::Spec;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::cancel_peers::*;
use crate::harness::*;
use crate::tls::{Pki, client_tls, proxy_leaf};

/// A cluster (one primary) serving TLS with a certificate for 127.0.0.1 from `pki`.
async fn tls_cluster(pki: &Pki) -> pgsteer_cluster::Cluster {
    let backend = pki.leaf(&["localhost", "127.0.0.1"], 7);
    cluster(Spec {
        replicas: 0,
        extra_conf: pki.server_conf(&backend),
        ..Spec::default()
    })
    .await
}

/// verify-full towards the servers, against `pki`'s CA.
fn verify_full(config: &mut Config, pki: &Pki) {
    config.tls.server_mode = ServerTlsMode::VerifyFull;
    config.tls.server_ca_file = Some(pki.ca_path());
}

/// A rustls client presenting `name`'s certificate of `pki`, trusting `trust`'s CA.
fn peer_client(pki: &Pki, name: &str, trust: &Pki) -> TlsConnector {
    let leaf = pki.leaf(&["127.0.0.1"], 40);
    let (cert, key) = pki.write(name, &leaf);
    let chain = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(trust.ca_path()).unwrap())
        .unwrap();
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
    TlsConnector::from(Arc::new(config))
}

/// Sends `msg` over TLS with `connector` (a refused client certificate shows only after the
/// TLS 1.3 handshake, in the server's alert) and waits for the server to close.
async fn send_tls(addr: SocketAddr, connector: &TlsConnector, msg: &[u8]) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let Ok(mut s) = connector.connect(name, tcp).await else {
        return;
    };
    let _ = s.write_all(msg).await;
    let _ = s.shutdown().await;
    let mut rest = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut rest);
    let _ = tokio::time::timeout(DEADLINE, read).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_crosses_peers_over_mutual_tls_and_reaches_a_tls_server() {
    let pki = Pki::new();
    let leaf = proxy_leaf(&pki);
    let secret = SecretFile::new();
    let cluster = tls_cluster(&pki).await;
    let (a, b) = two_proxies_on(cluster, &secret.0, |c| {
        client_tls(c, &pki, &leaf, ClientTlsMode::Allow);
        c.peers.tls = PeerTls::Mutual;
        c.peers.ca_file = Some(pki.ca_path());
        verify_full(c, &pki);
    })
    .await;
    let a_peer = a.proxy.peer.expect("peer port");
    let mut s = sleeper(&a.cluster, a.rw()).await;
    let genuine = encode(
        &PeerCancel {
            from: 2,
            to: 1,
            pid: s.pid,
            key: s.key.clone(),
        },
        SECRET.as_bytes(),
    );

    // Without TLS, or with a certificate of another CA, even a genuine request is refused.
    // (The TLS server answers plaintext with an alert, and closes.)
    send_and_read(a_peer, &genuine).await;
    let other = Pki::new();
    send_tls(a_peer, &peer_client(&other, "stranger", &pki), &genuine).await;
    eventually("both refusals counted", || async {
        peer_requests(&a.proxy, "tls_refused") == 2
    })
    .await;
    assert!(s.still_running(Duration::from_millis(300)).await);

    let started = Instant::now();
    s.cancel_via(b.rw()).await;
    let took = s.cancelled(started).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    counted("B sent it to A", 1, || cancels(&b.running, "to_peer")).await;
    counted("A forwarded it", 1, || peer_requests(&a.proxy, "forwarded")).await;

    // A peer with a certificate of the peers' CA is admitted.
    let s = sleeper(&a.cluster, a.rw()).await;
    let genuine = encode(
        &PeerCancel {
            from: 2,
            to: 1,
            pid: s.pid,
            key: s.key.clone(),
        },
        SECRET.as_bytes(),
    );
    let started = Instant::now();
    send_tls(a_peer, &peer_client(&pki, "peer", &pki), &genuine).await;
    s.cancelled(started).await;
    b.stop().await;
}

/// The first bytes of an SSLRequest (length 8, code 80877103).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

/// Forwards every connection on a new port to `target`, keeping the first 8 bytes each
/// connection sent: an SSLRequest for a connection that asked for TLS first.
async fn recorder(target: SocketAddr) -> (SocketAddr, Arc<std::sync::Mutex<Vec<[u8; 8]>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 8];
                if tokio::io::AsyncReadExt::read_exact(&mut client, &mut first)
                    .await
                    .is_err()
                {
                    return;
                }
                record.lock().unwrap().push(first);
                if let Ok(mut server) = TcpStream::connect(target).await
                    && server.write_all(&first).await.is_ok()
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_and_a_forwarded_cancel_reach_postgres_over_verify_full_tls() {
    let pki = Pki::new();
    let secret = SecretFile::new();
    let cluster = tls_cluster(&pki).await;
    let direct = SocketAddr::from(([127, 0, 0, 1], cluster.node("pg-0").port));
    let (via, seen) = recorder(direct).await;
    let (a, b) = two_proxies_on(cluster, &secret.0, |c| {
        verify_full(c, &pki);
        c.discovery.members[0].address = via.to_string();
    })
    .await;
    let s = sleeper(&a.cluster, a.rw()).await;
    let before = seen.lock().unwrap().len();
    let started = Instant::now();
    s.cancel_via(b.rw()).await;
    let took = s.cancelled(started).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    counted("A forwarded it", 1, || peer_requests(&a.proxy, "forwarded")).await;

    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.len() > before,
        "the cancel went to the server through the recorder"
    );
    assert!(
        seen.iter().all(|first| *first == SSL_REQUEST),
        "every connection to Postgres (probes, the session, the cancel) began with an SSLRequest: {seen:?}"
    );
    // As a superuser sees it: the probe connections of both proxies are encrypted.
    let sql = "SELECT count(*) || ' ' || coalesce(bool_and(s.ssl), false) FROM pg_stat_activity a \
               JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'pgsteer-probe'";
    let probes = tokio::task::block_in_place(|| a.cluster.psql("pg-0", sql)).expect("psql");
    assert_eq!(probes.trim(), "2 true", "both proxies' probes use TLS");
    b.stop().await;
}
