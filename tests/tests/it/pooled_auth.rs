//! pgsteer's own authentication (the pooled-mode building blocks in
//! `pgsteer::auth`) against a real Postgres: a client proves its password to
//! pgsteer's SCRAM server side, and pgsteer logs in to Postgres with the
//! recovered ClientKey and the verifier from `pg_authid` — over plaintext and
//! over TLS with channel binding — and with an md5 hash.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use pgsteer::auth::scram::{self, ClientBinding, SaltKey, ScramClient, ScramServer, ServerBinding};
use pgsteer::auth::{Credentials, LoginError, Secret, endpoint, md5};
use pgsteer_cluster::{APP_PASSWORD, APP_USER, Cluster, DATABASE, MD5_PASSWORD, MD5_USER, Spec};
use pgsteer_protocol::backend::{Authentication, BackendMessage};
use pgsteer_protocol::frame::split_frame;
use pgsteer_protocol::startup::{SSL_REQUEST_CODE, StartupMessage};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::harness::{DEADLINE, cluster, try_connect};

/// How a login to Postgres ended: the SASL mechanism used (if any) and
/// `current_user`, or the server's SQLSTATE, or pgsteer's own refusal.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    LoggedIn {
        mechanism: Option<String>,
        user: String,
    },
    Refused {
        code: String,
    },
    Login(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgsteer_logs_in_to_postgres_with_a_proven_clientkey_an_md5_hash_and_channel_binding() {
    let (ca, leaf_pem, leaf_key) = certificates();
    let dir = std::env::temp_dir().join(format!("pgsteer-pooled-auth-{}", std::process::id()));
    let tls_conf = pgsteer_cluster::tls::server_tls_conf(&dir, &leaf_pem, &leaf_key).unwrap();
    let cluster = Arc::new(
        cluster(Spec {
            replicas: 0,
            extra_conf: tls_conf,
            ..Spec::default()
        })
        .await,
    );
    let addr: SocketAddr = cluster.nodes()[0].address().parse().unwrap();

    // The verifier Postgres stores, read the way pooled mode will: auth_query as auth_user,
    // through the SECURITY DEFINER function shipped in deploy/sql.
    psql(
        &cluster,
        "CREATE ROLE pgsteer_auth LOGIN PASSWORD 'auth-secret'",
    )
    .await;
    psql(&cluster, include_str!("../../../deploy/sql/auth_query.sql")).await;
    let auth = try_connect(addr, "pgsteer_auth", "auth-secret", None)
        .await
        .unwrap();
    assert_eq!(lookup(&auth, "nobody").await, None, "unknown user");
    assert_eq!(
        lookup(&auth, "postgres").await,
        None,
        "superusers are not pooled"
    );
    let denied = auth.query("SELECT rolpassword FROM pg_authid", &[]).await;
    assert!(denied.is_err(), "auth_user cannot read pg_authid itself");
    let secret = lookup(&auth, APP_USER).await.expect("app has a password");
    assert!(matches!(secret, Secret::Scram(_)), "{secret:?}");
    let credentials = prove(APP_PASSWORD, &secret).expect("the right password is accepted");
    assert!(matches!(credentials, Credentials::Scram(_)));
    assert!(prove("wrong", &secret).is_none());

    // Pass-through over plaintext: SCRAM-SHA-256 with gs2 flag n.
    let plain = TcpStream::connect(addr).await.unwrap();
    let outcome = login(plain, APP_USER, &credentials, None).await;
    assert_eq!(outcome, logged_in(Some("SCRAM-SHA-256"), APP_USER));

    // Pass-through over TLS, bound to the server's certificate (signed with ECDSA-SHA-384, so the
    // binding hash is SHA-384): SCRAM-SHA-256-PLUS, checked by Postgres.
    let (tls, end_point) = tls_connect(addr, &ca).await;
    assert_eq!(
        end_point.len(),
        48,
        "tls-server-end-point of an ecdsa-with-SHA384 certificate"
    );
    let outcome = login(tls, APP_USER, &credentials, Some(end_point.clone())).await;
    assert_eq!(outcome, logged_in(Some("SCRAM-SHA-256-PLUS"), APP_USER));
    // With the wrong certificate hash (a man in the middle), Postgres refuses the binding.
    let (tls, _) = tls_connect(addr, &ca).await;
    let mut wrong = end_point.clone();
    wrong[0] ^= 1;
    assert_eq!(
        login(tls, APP_USER, &credentials, Some(wrong)).await,
        refused("28000")
    );

    // A ClientKey that does not belong to the verifier is refused by Postgres with 28P01.
    let Credentials::Scram(mut forged) = credentials.clone() else {
        unreachable!()
    };
    forged.client_key[0] ^= 1;
    let plain = TcpStream::connect(addr).await.unwrap();
    let outcome = login(plain, APP_USER, &Credentials::Scram(forged), None).await;
    assert_eq!(outcome, refused("28P01"));

    // md5: the hash from pg_authid answers Postgres's md5 challenge (pass-the-hash).
    let Some(Secret::Md5(hash)) = lookup(&auth, MD5_USER).await else {
        panic!("app_md5 has an md5 password");
    };
    assert_eq!(hash, md5::hash_password(MD5_PASSWORD.as_bytes(), MD5_USER));
    let plain = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        login(plain, MD5_USER, &Credentials::Md5(hash), None).await,
        logged_in(None, MD5_USER)
    );

    // The password changes on the server: the stale ClientKey fails clearly, before any proof.
    psql(&cluster, "ALTER ROLE app PASSWORD 'changed'").await;
    assert_ne!(
        lookup(&auth, APP_USER).await.as_ref(),
        Some(&secret),
        "a new salt"
    );
    let plain = TcpStream::connect(addr).await.unwrap();
    let outcome = login(plain, APP_USER, &credentials, None).await;
    assert_eq!(
        outcome,
        Outcome::Login(LoginError::VerifierChanged.to_string())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn logged_in(mechanism: Option<&str>, user: &str) -> Outcome {
    Outcome::LoggedIn {
        mechanism: mechanism.map(str::to_owned),
        user: user.to_owned(),
    }
}

fn refused(code: &str) -> Outcome {
    Outcome::Refused {
        code: code.to_owned(),
    }
}

/// The secret of `user` through auth_query.
async fn lookup(auth: &tokio_postgres::Client, user: &str) -> Option<Secret> {
    let row = auth
        .query_one("SELECT uname, phash FROM pgsteer.user_lookup($1)", &[&user])
        .await
        .unwrap();
    Secret::from_rolpassword(row.get::<_, Option<&str>>(1)).unwrap()
}

/// A real SCRAM client (postgres-protocol's) proves `password` to pgsteer's
/// server side; returns the credentials pgsteer recovers, or None if refused.
fn prove(password: &str, secret: &Secret) -> Option<Credentials> {
    let salt_key = SaltKey::generate().unwrap();
    let binding = ServerBinding::None;
    let ctx = scram::ServerContext {
        user: APP_USER,
        secret: Some(secret),
        binding: &binding,
        salt_key: &salt_key,
    };
    let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    let nonce = scram::new_nonce().unwrap();
    let (server, server_first) =
        ScramServer::start(ctx, scram::SCRAM_SHA_256, client.message(), &nonce).unwrap();
    client.update(&server_first).unwrap();
    let success = server.finish(client.message()).ok()?;
    client.finish(&success.server_final).unwrap();
    Some(success.credentials)
}

/// Logs in to Postgres as `user` with `credentials` the way pooled mode
/// will, then asks for `current_user`.
async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    user: &str,
    credentials: &Credentials,
    end_point: Option<Vec<u8>>,
) -> Outcome {
    let mut out = BytesMut::new();
    let params = vec![
        ("user".into(), user.into()),
        ("database".into(), DATABASE.into()),
    ];
    pgsteer_protocol::encode::startup_message(&mut out, &StartupMessage::new(params));
    s.write_all(&out).await.unwrap();
    let (mut buf, mut mechanism, mut scram, mut scram_final) = (BytesMut::new(), None, None, None);
    loop {
        let frame = match split_frame(&mut buf, 1 << 20).unwrap() {
            Some(frame) => frame,
            None => {
                let n = tokio::time::timeout(DEADLINE, s.read_buf(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(n > 0, "the server closed the connection");
                continue;
            }
        };
        let mut reply = BytesMut::new();
        match BackendMessage::parse(frame.tag, &frame.body).unwrap() {
            BackendMessage::Authentication(Authentication::Sasl { mechanisms }) => {
                let offered: Vec<String> = mechanisms
                    .iter()
                    .map(|m| String::from_utf8_lossy(m).into_owned())
                    .collect();
                let binding =
                    ClientBinding::negotiate(offered.iter().map(String::as_str), end_point.clone())
                        .unwrap();
                let client =
                    ScramClient::new(credentials, binding, &scram::new_nonce().unwrap()).unwrap();
                mechanism = Some(client.mechanism().to_owned());
                sasl_initial_response(&mut reply, client.mechanism(), client.client_first());
                scram = Some(client);
            }
            BackendMessage::Authentication(Authentication::SaslContinue { data }) => {
                match scram.take().unwrap().server_first(data) {
                    Ok((waiting, client_final)) => {
                        password_message(&mut reply, &client_final);
                        scram_final = Some(waiting);
                    }
                    Err(e) => return Outcome::Login(e.to_string()),
                }
            }
            BackendMessage::Authentication(Authentication::SaslFinal { data }) => {
                if let Err(e) = scram_final.take().unwrap().server_final(data) {
                    return Outcome::Login(e.to_string());
                }
            }
            BackendMessage::Authentication(Authentication::Md5Password { salt }) => {
                let answer = md5::client_response(credentials, user, salt).unwrap();
                password_message(&mut reply, &[answer.as_bytes(), b"\0"].concat());
            }
            BackendMessage::Authentication(Authentication::Ok) => {}
            BackendMessage::ReadyForQuery(_) => {
                let user = current_user(&mut s, &mut buf).await;
                return Outcome::LoggedIn { mechanism, user };
            }
            BackendMessage::ErrorResponse(e) => {
                return Outcome::Refused {
                    code: e.code().unwrap_or_default().into_owned(),
                };
            }
            _ => {}
        }
        s.write_all(&reply).await.unwrap();
    }
}

/// `SELECT current_user` on a logged-in connection.
async fn current_user<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, buf: &mut BytesMut) -> String {
    let mut out = BytesMut::new();
    pgsteer_protocol::encode::query(&mut out, "SELECT current_user");
    s.write_all(&out).await.unwrap();
    loop {
        while let Some(frame) = split_frame(buf, 1 << 20).unwrap() {
            if frame.tag == b'D' {
                // DataRow: int16 column count, int32 length, the value.
                return String::from_utf8(frame.body[6..].to_vec()).unwrap();
            }
        }
        let n = tokio::time::timeout(DEADLINE, s.read_buf(buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the server closed the connection");
    }
}

/// SASLInitialResponse: mechanism, then the length-prefixed client-first-message.
fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    out.put_u8(b'p');
    out.put_i32((4 + mechanism.len() + 1 + 4 + data.len()) as i32);
    out.put_slice(mechanism.as_bytes());
    out.put_u8(0);
    out.put_i32(data.len() as i32);
    out.put_slice(data);
}

/// SASLResponse or PasswordMessage: `p` and the bytes as they are.
fn password_message(out: &mut BytesMut, data: &[u8]) {
    out.put_u8(b'p');
    out.put_i32((4 + data.len()) as i32);
    out.put_slice(data);
}

async fn psql(cluster: &Arc<Cluster>, sql: &'static str) -> String {
    let c = Arc::clone(cluster);
    let name = c.nodes()[0].name.clone();
    tokio::task::spawn_blocking(move || c.psql(&name, sql))
        .await
        .unwrap()
        .unwrap()
}

/// A P-384 CA (so its signatures are ecdsa-with-SHA384) and a leaf for
/// localhost: (CA certificate, leaf certificate PEM, leaf key PEM).
fn certificates() -> (CertificateDer<'static>, String, String) {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "pgsteer auth test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.der().clone(), leaf.pem(), key.serialize_pem())
}

/// SSLRequest and a TLS handshake; returns the stream and the
/// `tls-server-end-point` data of the certificate the server presented.
async fn tls_connect(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
) -> (tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>) {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut request = 8i32.to_be_bytes().to_vec();
    request.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    tcp.write_all(&request).await.unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S", "the server speaks TLS");
    let name = ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let end_point = endpoint::tls_server_end_point(&cert).unwrap();
    (tls, end_point)
}
