//! TLS on both sides: SSLRequest and direct TLS from clients, client_mode,
//! server_mode verification, certificate rotation, SCRAM channel binding.
//! Certificates come from a throwaway CA made with rcgen for each test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pgsteer::Config;
use pgsteer::config::{ClientTlsMode, ServerTlsMode};
use pgsteer_cluster::{APP_PASSWORD, APP_USER, DATABASE, Spec, TRUST_USER};
use pgsteer_protocol::backend::{Authentication, BackendMessage};
use pgsteer_protocol::frame::split_frame;
use pgsteer_protocol::startup::{SSL_REQUEST_CODE, StartupMessage};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::harness::*;

/// A throwaway CA and the files made from it, removed on drop.
pub struct Pki {
    dir: PathBuf,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its key.
pub struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

static PKI_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Pki {
    pub fn new() -> Pki {
        let n = PKI_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pgsteer-tls-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "pgsteer test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&key).unwrap();
        let pki = Pki {
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
            dir,
        };
        std::fs::write(pki.ca_path(), &pki.ca_pem).unwrap();
        pki
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A certificate for `sans` (IP addresses become IP SANs) with `serial`.
    pub fn leaf(&self, sans: &[&str], serial: u64) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.serial_number = Some(SerialNumber::from(serial));
        params
            .distinguished_name
            .push(DnType::CommonName, sans.first().copied().unwrap_or("leaf"));
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Writes a leaf as `<name>.crt` and `<name>.key`.
    pub fn write(&self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, &leaf.cert_pem).unwrap();
        std::fs::write(&key, &leaf.key_pem).unwrap();
        (cert, key)
    }

    /// `postgresql.conf` lines for a server using `leaf`.
    pub fn server_conf(&self, leaf: &Leaf) -> Vec<String> {
        pgsteer_cluster::tls::server_tls_conf(
            &self.dir.join("server"),
            &leaf.cert_pem,
            &leaf.key_pem,
        )
        .expect("server TLS files")
    }

    /// A rustls client trusting this CA, offering `alpn`.
    fn client(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A proxy certificate for 127.0.0.1 and localhost.
pub fn proxy_leaf(pki: &Pki) -> Leaf {
    pki.leaf(&["localhost", "127.0.0.1"], 1)
}

/// Client-side TLS with `leaf`.
pub fn client_tls(config: &mut Config, pki: &Pki, leaf: &Leaf, mode: ClientTlsMode) {
    let (cert, key) = pki.write("proxy", leaf);
    config.tls.cert_file = Some(cert);
    config.tls.key_file = Some(key);
    config.tls.client_mode = mode;
}

/// Starts `spec` with a proxy configured by `tweak`.
async fn start(spec: Spec, tweak: impl FnOnce(&mut Config)) -> Env {
    let cluster = cluster(spec).await;
    let mut config = config_for(&cluster);
    tweak(&mut config);
    proxy_for(cluster, config).await
}

async fn proxy_for(cluster: pgsteer_cluster::Cluster, config: Config) -> Env {
    let shutdown = pgsteer::Shutdown::new();
    let proxy = pgsteer::start(config, shutdown.clone())
        .await
        .expect("proxy starts");
    let env = Env {
        proxy,
        shutdown,
        cluster,
    };
    env.wait_topology("the primary probed", |t| {
        t.primary().is_some() && t.members.values().all(|m| m.routable)
    })
    .await;
    env
}

fn primary_only() -> Spec {
    Spec {
        replicas: 0,
        ..Spec::default()
    }
}

/// A libpq connection string to `host:port` as the SCRAM app user, plus `extra`.
pub fn libpq(host: &str, port: u16, extra: &str) -> String {
    format!(
        "host={host} port={port} user={APP_USER} password='{APP_PASSWORD}' dbname={DATABASE} \
         connect_timeout=20 {extra}"
    )
}

/// Runs `psql -XAtc sql` with a connection string: (success, stdout, stderr).
pub async fn psql_conn(conn: &str, sql: &str) -> (bool, String, String) {
    let out = tokio::process::Command::new("psql")
        .args([conn, "-XAtc", sql])
        .output()
        .await
        .expect("psql runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

/// `ssl` of pg_stat_ssl for the session: whether the backend connection is TLS.
const BACKEND_SSL: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

fn ssl_request() -> Vec<u8> {
    let mut v = 8i32.to_be_bytes().to_vec();
    v.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    v
}

fn startup(user: &str) -> BytesMut {
    let mut buf = BytesMut::new();
    pgsteer_protocol::encode::startup_message(
        &mut buf,
        &StartupMessage::new(vec![
            ("user".into(), user.into()),
            ("database".into(), DATABASE.into()),
        ]),
    );
    buf
}

/// SSLRequest, `S`, then a TLS handshake for `localhost`.
async fn tls_via_ssl_request(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(&ssl_request()).await?;
    let mut b = [0u8; 1];
    tcp.read_exact(&mut b).await?;
    assert_eq!(&b, b"S", "SSLRequest answered");
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// The certificate a proxy serves after an SSLRequest.
async fn served_cert(addr: SocketAddr, pki: &Pki) -> CertificateDer<'static> {
    let s = tls_via_ssl_request(addr, &pki.client(&[b"postgresql"]))
        .await
        .expect("handshake");
    s.get_ref().1.peer_certificates().expect("a certificate")[0].clone()
}

/// Reads backend messages until ReadyForQuery, an error or `first_auth` is
/// seen; returns the tags seen and the first authentication request.
async fn read_until_ready<S: AsyncRead + Unpin>(s: &mut S) -> (Vec<u8>, Option<i32>) {
    let mut buf = BytesMut::with_capacity(1024);
    let mut tags = Vec::new();
    let mut auth = None;
    let read = async {
        loop {
            while let Some(f) = split_frame(&mut buf, 1 << 20).expect("valid frames") {
                tags.push(f.tag);
                match BackendMessage::parse(f.tag, &f.body).expect("valid message") {
                    BackendMessage::Authentication(a) => {
                        let code = match a {
                            Authentication::Ok => 0,
                            Authentication::Sasl { .. } => 10,
                            Authentication::Md5Password { .. } => 5,
                            _ => -1,
                        };
                        auth.get_or_insert(code);
                        if code == 10 {
                            return;
                        }
                    }
                    BackendMessage::ReadyForQuery(_) | BackendMessage::ErrorResponse(_) => return,
                    _ => {}
                }
            }
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("answered in time");
    (tags, auth)
}

/// Whether the other side closes (or fails) the stream without sending anything more.
async fn closes<S: AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(DEADLINE, s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn write_all<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) {
    s.write_all(bytes).await.expect("write");
    s.flush().await.expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_ssl_request_direct_tls_and_plaintext_share_one_port() {
    let pki = Pki::new();
    let leaf = proxy_leaf(&pki);
    let env = start(primary_only(), |c| {
        client_tls(c, &pki, &leaf, ClientTlsMode::Allow);
        // The servers have no TLS: prefer falls back to plaintext.
        c.tls.server_mode = ServerTlsMode::Prefer;
    })
    .await;
    let port = env.rw().port();
    let ca = pki.ca_path();

    // libpq with full verification against our CA, by name and by IP address.
    for host in ["localhost", "127.0.0.1"] {
        let conn = libpq(
            host,
            port,
            &format!("sslmode=verify-full sslrootcert={}", ca.display()),
        );
        let (ok, out, err) =
            psql_conn(&conn, "SELECT current_user || ' ' || inet_server_port()").await;
        assert!(ok, "verify-full to {host}: {err}");
        assert_eq!(out, format!("{APP_USER} {}", env.port_of("pg-0")));
    }
    // The backend connection fell back to plaintext (server_mode = prefer, no TLS there).
    let conn = libpq("localhost", port, "sslmode=require");
    assert_eq!(psql_conn(&conn, BACKEND_SSL).await.1, "f");

    // Plaintext clients are still served (client_mode = allow).
    let (ok, _, err) = psql(env.rw(), None, "SELECT 1").await;
    assert!(ok, "plaintext: {err}");

    // Postgres 17 direct TLS: a ClientHello first, ALPN "postgresql", then the startup.
    let direct = pki.client(&[b"postgresql"]);
    for (user, want_auth) in [(TRUST_USER, 0), (APP_USER, 10)] {
        let tcp = TcpStream::connect(env.rw()).await.unwrap();
        let mut s = direct
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("direct TLS handshake");
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
        write_all(&mut s, &startup(user)).await;
        let (tags, auth) = read_until_ready(&mut s).await;
        assert_eq!(auth, Some(want_auth), "{user}: {tags:?}");
        if want_auth == 0 {
            assert_eq!(
                tags.last(),
                Some(&b'Z'),
                "{user}: ReadyForQuery ends the startup"
            );
        }
    }
    // Direct TLS without ALPN is refused, as Postgres 17 does; a wrong ALPN fails the handshake.
    let tcp = TcpStream::connect(env.rw()).await.unwrap();
    let mut s = pki
        .client(&[])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the handshake itself completes");
    let _ = s.write_all(&startup(TRUST_USER)).await;
    let _ = s.flush().await;
    assert!(closes(&mut s).await, "direct TLS without ALPN was served");
    let tcp = TcpStream::connect(env.rw()).await.unwrap();
    let wrong = pki
        .client(&[b"http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await;
    assert!(wrong.is_err(), "ALPN http/1.1 was accepted");

    // The SSLRequest path with ALPN works too, and so does a session over it.
    let mut s = tls_via_ssl_request(env.rw(), &direct).await.unwrap();
    write_all(&mut s, &startup(TRUST_USER)).await;
    assert_eq!(read_until_ready(&mut s).await.1, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mode_require_refuses_plaintext_with_28000() {
    let pki = Pki::new();
    let leaf = proxy_leaf(&pki);
    let env = start(primary_only(), |c| {
        client_tls(c, &pki, &leaf, ClientTlsMode::Require)
    })
    .await;
    let (ok, _, err) = psql(env.rw(), None, "SELECT 1").await;
    assert!(!ok);
    assert!(err.contains("pgsteer: TLS required"), "{err}");
    let mut s = raw(env.rw(), &startup(APP_USER)).await;
    let e = read_error(&mut s).await.expect("an error");
    assert_eq!(
        (e.severity.as_str(), e.code.as_str()),
        ("FATAL", "28000"),
        "{e:?}"
    );
    assert!(e.message.contains("TLS required"), "{e:?}");

    // sslmode=prefer (libpq's default) and require both get TLS and are served.
    for mode in ["prefer", "require"] {
        let conn = libpq("127.0.0.1", env.rw().port(), &format!("sslmode={mode}"));
        let (ok, out, err) = psql_conn(&conn, "SELECT 1").await;
        assert!(ok && out == "1", "sslmode={mode}: {err}");
    }
    let m = env
        .proxy
        .shared
        .metrics
        .client_rejected
        .with_label_values(&["rw", "bad_startup"]);
    assert!(m.get() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_handshakes_end_within_the_startup_timeout_and_do_not_disturb_others() {
    let pki = Pki::new();
    let leaf = proxy_leaf(&pki);
    let env = start(primary_only(), |c| {
        client_tls(c, &pki, &leaf, ClientTlsMode::Allow);
        c.limits.startup_timeout = Duration::from_millis(800);
    })
    .await;

    // Plaintext stuffed after the SSLRequest, before the answer (CVE-2021-23222): refused.
    let mut stuffed = ssl_request();
    stuffed.extend_from_slice(&startup(TRUST_USER));
    let mut s = raw(env.rw(), &stuffed).await;
    let e = read_error(&mut s).await.expect("an error");
    assert_eq!(e.code, "08P01", "{e:?}");

    // 'S', then plaintext instead of a ClientHello: the handshake fails, the connection closes.
    let mut s = raw(env.rw(), &ssl_request()).await;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"S");
    s.write_all(&startup(TRUST_USER)).await.unwrap();
    assert!(closed(&mut s).await);

    // Clients that stall: after 'S', halfway through a ClientHello, or silent.
    let mut stalled = Vec::new();
    for i in 0..60 {
        let s = match i % 3 {
            0 => raw(env.rw(), &ssl_request()).await,
            1 => raw(env.rw(), &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await,
            _ => raw(env.rw(), b"").await,
        };
        stalled.push(s);
    }
    let started = Instant::now();
    // Meanwhile a TLS client is served.
    let conn = libpq(
        "localhost",
        env.rw().port(),
        &format!(
            "sslmode=verify-full sslrootcert={}",
            pki.ca_path().display()
        ),
    );
    let (ok, _, err) = psql_conn(&conn, "SELECT 1").await;
    assert!(ok, "{err}");
    for s in stalled.iter_mut() {
        assert!(closed(s).await, "a stalled client was not closed");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // A GSSENCRequest is still declined.
    let mut gss = 8i32.to_be_bytes().to_vec();
    gss.extend_from_slice(&pgsteer_protocol::startup::GSSENC_REQUEST_CODE.to_be_bytes());
    let mut s = raw(env.rw(), &gss).await;
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"N");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_verify_full_checks_the_member_host_name() {
    let pki = Pki::new();
    // The server's certificate names only "localhost".
    let backend = pki.leaf(&["localhost"], 7);
    let spec = Spec {
        replicas: 0,
        extra_conf: pki.server_conf(&backend),
        ..Spec::default()
    };
    let cluster = cluster(spec).await;
    let port = cluster.node("pg-0").port;
    let mut wrong = config_for(&cluster);
    wrong.tls.server_mode = ServerTlsMode::VerifyFull;
    wrong.tls.server_ca_file = Some(pki.ca_path());
    let mut right = wrong.clone();
    for m in &mut right.discovery.members {
        m.address = format!("localhost:{port}");
    }
    let mut chain_only = wrong.clone();
    chain_only.tls.server_mode = ServerTlsMode::VerifyCa;

    // The probe verifies as sessions do: pg-0 never becomes the primary, /topology names the
    // certificate error, and a client is refused after the hold with the reason.
    wrong.routing.hold_timeout = Duration::from_millis(500);
    let shutdown = pgsteer::Shutdown::new();
    let proxy = pgsteer::start(wrong, shutdown.clone()).await.unwrap();
    wait_topology(
        proxy.topology(),
        DEADLINE,
        "the probe's certificate error",
        |t| {
            t.members
                .get("pg-0")
                .and_then(|m| m.note.as_deref())
                .is_some_and(|n| n.contains("not valid for name"))
        },
    )
    .await;
    let (ok, _, err) = psql(proxy.rw.unwrap(), None, "SELECT 1").await;
    assert!(!ok);
    assert!(
        err.contains("not valid for name") && err.contains("127.0.0.1"),
        "{err}"
    );
    let e = try_connect(proxy.rw.unwrap(), APP_USER, APP_PASSWORD, None)
        .await
        .expect_err("refused");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("57P03"));

    let shutdown = pgsteer::Shutdown::new();
    for (what, config) in [("verify-full by name", right), ("verify-ca", chain_only)] {
        let proxy = pgsteer::start(config, shutdown.clone()).await.unwrap();
        let rw = proxy.rw.unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (ok, out, err) = psql(rw, None, BACKEND_SSL).await;
            if ok {
                assert_eq!(out, "t", "{what}");
                break;
            }
            assert!(Instant::now() < deadline, "{what}: {err}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    shutdown.drain.cancel();
    drop(cluster);
}

/// Points `dir/tls.crt` and `dir/tls.key` at `dir/..data`, a symlink to
/// `dir/<version>`, swapped atomically as a mounted Kubernetes Secret is.
fn secret_version(dir: &Path, version: &str, cert_pem: &str, key_pem: &str) {
    let vdir = dir.join(version);
    std::fs::create_dir_all(&vdir).unwrap();
    std::fs::write(vdir.join("tls.crt"), cert_pem).unwrap();
    std::fs::write(vdir.join("tls.key"), key_pem).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        let link = dir.join(f);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), &link).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_to_new_connections_without_restart() {
    let pki = Pki::new();
    let secret = pki.dir.join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    let v1 = pki.leaf(&["localhost", "127.0.0.1"], 101);
    secret_version(&secret, "v1", &v1.cert_pem, &v1.key_pem);
    let secret_dir = secret.clone();
    let env = start(primary_only(), move |c| {
        c.tls.cert_file = Some(secret_dir.join("tls.crt"));
        c.tls.key_file = Some(secret_dir.join("tls.key"));
        c.tls.reload_interval = Duration::from_millis(100);
    })
    .await;
    assert_eq!(served_cert(env.rw(), &pki).await, v1.der);
    // A session opened before the rotation lives on.
    let conn = libpq("localhost", env.rw().port(), "sslmode=require");
    let before = connect(env.rw(), None).await;

    let v2 = pki.leaf(&["localhost", "127.0.0.1", "rotated.pgsteer.test"], 102);
    secret_version(&secret, "v2", &v2.cert_pem, &v2.key_pem);
    let tls = env.proxy.shared.tls.clone();
    eventually("the new certificate is served", || {
        let (tls, pki, rw, v2) = (&tls, &pki, env.rw(), &v2.der);
        async move { tls.client.as_ref().unwrap().reloads() >= 1 && served_cert(rw, pki).await == *v2 }
    })
    .await;
    let (ok, _, err) = psql_conn(&conn, "SELECT 1").await;
    assert!(ok, "{err}");
    assert_eq!(server_port(&before).await, env.port_of("pg-0"));

    // A broken pair (the key of another certificate) keeps the current one.
    let other = pki.leaf(&["localhost"], 103);
    let v3 = pki.leaf(&["localhost"], 104);
    secret_version(&secret, "v3", &v3.cert_pem, &other.key_pem);
    let side = tls.client.as_ref().unwrap();
    eventually("the broken pair is noticed", || async {
        side.reload_failures() >= 1
    })
    .await;
    assert_eq!(side.reloads(), 1);
    assert_eq!(served_cert(env.rw(), &pki).await, v2.der);
    let (ok, _, err) = psql_conn(&conn, "SELECT 1").await;
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_channel_binding_is_removed_and_its_failures_are_explained() {
    let pki = Pki::new();
    let backend = pki.leaf(&["localhost", "127.0.0.1"], 9);
    let leaf = proxy_leaf(&pki);
    let spec = Spec {
        replicas: 0,
        extra_conf: pki.server_conf(&backend),
        ..Spec::default()
    };
    let cluster = cluster(spec).await;
    let mut plain_backend = config_for(&cluster);
    client_tls(&mut plain_backend, &pki, &leaf, ClientTlsMode::Allow);
    let mut tls_backend = plain_backend.clone();
    tls_backend.tls.server_mode = ServerTlsMode::Require;
    let env = proxy_for(cluster, tls_backend).await;

    // The server itself offers SCRAM-SHA-256-PLUS over TLS.
    let direct = libpq(
        "127.0.0.1",
        env.port_of("pg-0"),
        "sslmode=require channel_binding=require",
    );
    let (ok, _, err) = psql_conn(&direct, "SELECT 1").await;
    assert!(ok, "direct channel binding: {err}");

    let port = env.rw().port();
    // require: libpq's own message, since pgsteer offers no -PLUS mechanism.
    let require = libpq("localhost", port, "sslmode=require channel_binding=require");
    let (ok, _, err) = psql_conn(&require, "SELECT 1").await;
    assert!(!ok, "channel_binding=require cannot work through pgsteer");
    assert!(
        err.contains("channel binding is required, but server did not offer"),
        "{err}"
    );
    // prefer over TLS on both sides: the server would refuse the client's `y`
    // flag as a downgrade; pgsteer explains instead.
    let prefer = libpq("localhost", port, "sslmode=require channel_binding=prefer");
    let (ok, _, err) = psql_conn(&prefer, "SELECT 1").await;
    assert!(!ok);
    assert!(
        err.contains("channel binding cannot work through pgsteer"),
        "{err}"
    );
    // disable works, and the backend connection is TLS.
    let disable = libpq("localhost", port, "sslmode=require channel_binding=disable");
    let (ok, out, err) = psql_conn(&disable, BACKEND_SSL).await;
    assert!(ok, "channel_binding=disable: {err}");
    assert_eq!(out, "t", "the backend connection is TLS");
    // A plaintext client sends `n`: fine.
    let c = connect(env.rw(), None).await;
    assert_eq!(server_port(&c).await, env.port_of("pg-0"));

    // With a plaintext server connection, channel_binding=prefer (libpq's default) works.
    let shutdown = pgsteer::Shutdown::new();
    let proxy = pgsteer::start(plain_backend, shutdown.clone())
        .await
        .unwrap();
    let prefer = libpq(
        "localhost",
        proxy.rw.unwrap().port(),
        "sslmode=require channel_binding=prefer",
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (ok, out, err) = psql_conn(&prefer, BACKEND_SSL).await;
        if ok {
            assert_eq!(out, "f");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "channel_binding=prefer, plaintext server: {err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.drain.cancel();
}

#[test]
fn unusable_tls_settings_are_refused_with_the_setting_named() {
    let pki = Pki::new();
    let leaf = proxy_leaf(&pki);
    let (cert, _) = pki.write("proxy", &leaf);
    let other = pki.leaf(&["localhost"], 2);
    let (_, wrong_key) = pki.write("other", &other);
    let base = String::from(
        "[listen]\nrw = \"127.0.0.1:0\"\nro = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
         [discovery]\nsource = \"static\"\n[discovery.probe]\nuser = \"x\"\n\
         [[discovery.members]]\nname = \"pg-0\"\naddress = \"127.0.0.1:1\"\n[tls]\n",
    );
    let cases = [
        (
            format!("cert_file = {cert:?}\n"),
            "both cert_file and key_file",
        ),
        (
            format!("cert_file = {cert:?}\nkey_file = {wrong_key:?}\n"),
            "tls.cert_file/key_file",
        ),
        (
            "client_mode = \"require\"\n".to_owned(),
            "needs tls.cert_file",
        ),
        (
            "server_mode = \"verify-full\"\n".to_owned(),
            "needs tls.server_ca_file",
        ),
        (
            "server_mode = \"verify-ca\"\nserver_ca_file = \"/nonexistent/ca.crt\"\n".to_owned(),
            "/nonexistent/ca.crt",
        ),
    ];
    for (tls, needle) in cases {
        // What `pgsteer run` and `check` do: the settings, then the files they name.
        let e = pgsteer::load::text(&format!("{base}{tls}"), std::iter::empty())
            .expect_err(needle)
            .to_string();
        assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        assert!(!e.contains('\n'), "{e:?} spans lines");
    }
}

#[tokio::test]
async fn start_refuses_a_certificate_file_that_does_not_exist() {
    let text = "[listen]\nrw = \"127.0.0.1:0\"\nro = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
                [discovery]\nsource = \"static\"\n[discovery.probe]\nuser = \"x\"\n\
                [[discovery.members]]\nname = \"pg-0\"\naddress = \"127.0.0.1:1\"\n\
                [tls]\ncert_file = \"/nonexistent/tls.crt\"\nkey_file = \"/nonexistent/tls.key\"\n";
    // The settings are consistent; the file is only read when the proxy is made runnable.
    let config = Config::parse(text, std::iter::empty()).expect("the settings are valid");
    let e = pgsteer::start(config, pgsteer::Shutdown::new())
        .await
        .err()
        .expect("start fails");
    assert!(matches!(e, pgsteer::StartError::Tls(_)), "{e}");
    assert!(
        e.to_string().contains("tls.cert_file /nonexistent/tls.crt"),
        "{e}"
    );
}
