//! What a pooled client sees at login (the parameters a direct connection would show) and
//! who may log in (the auth_file, reloaded while pgsteer runs).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::BytesMut;
use pgsteer::config::AuthMethod;
use pgsteer_cluster::{APP_USER, DATABASE, TRUST_USER};
use pgsteer_protocol::backend::BackendMessage;
use pgsteer_protocol::encode;
use pgsteer_protocol::frame::split_frame;
use pgsteer_protocol::startup::{ProtocolVersion, StartupMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{DEADLINE, eventually, try_connect};
use crate::pooled::{Pooled, verifier};

/// Logs in as `user` (trusted, no password) with `params` and collects the ParameterStatus
/// messages up to the first ReadyForQuery.
async fn parameters(
    addr: SocketAddr,
    user: &str,
    params: &[(&str, &str)],
) -> BTreeMap<String, String> {
    let mut all = vec![("user".to_owned(), user.to_owned())];
    all.push(("database".to_owned(), DATABASE.to_owned()));
    all.extend(
        params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let mut out = BytesMut::new();
    encode::startup_message(
        &mut out,
        &StartupMessage {
            version: ProtocolVersion::V3_0,
            params: all,
        },
    );
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&out).await.expect("startup");
    let mut found = BTreeMap::new();
    let mut buf = BytesMut::with_capacity(1024);
    let read = async {
        loop {
            while let Some(f) = split_frame(&mut buf, 1 << 20).expect("valid frames") {
                match BackendMessage::parse(f.tag, &f.body).expect("a backend message") {
                    BackendMessage::ParameterStatus { name, value } => {
                        found.insert(
                            String::from_utf8_lossy(name).into_owned(),
                            String::from_utf8_lossy(value).into_owned(),
                        );
                    }
                    BackendMessage::ReadyForQuery(_) => return,
                    BackendMessage::ErrorResponse(e) => panic!("login refused: {e:?}"),
                    _ => {}
                }
            }
            assert!(s.read_buf(&mut buf).await.expect("read") > 0, "closed");
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("logged in in time");
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_client_is_shown_the_parameters_a_direct_connection_shows() {
    let p = Pooled::start(0, |c| c.auth.method = AuthMethod::Trust).await;
    let direct = SocketAddr::from(([127, 0, 0, 1], p.env.port_of("pg-0")));
    let asked: &[(&str, &str)] = &[
        ("application_name", "billing"),
        ("DateStyle", "iso, dmy"),
        ("TimeZone", "Europe/Berlin"),
        ("client_encoding", "UTF8"),
        (
            "options",
            "-c IntervalStyle=iso_8601 -c statement_timeout=5s",
        ),
    ];
    let plain: &[(&str, &str)] = &[];
    let want = parameters(direct, TRUST_USER, asked).await;
    assert_eq!(want.get("DateStyle").map(String::as_str), Some("ISO, DMY"));
    assert_eq!(
        want.get("IntervalStyle").map(String::as_str),
        Some("iso_8601")
    );
    // The pool's first client opens its first connection; the next one, with settings the pool
    // has not seen, borrows a connection to learn how the server spells them; the last one is
    // shown what the pool remembered.
    assert_eq!(
        parameters(p.rw(), TRUST_USER, plain).await,
        parameters(direct, TRUST_USER, plain).await,
        "a client that asked for nothing"
    );
    for round in ["first", "second"] {
        let got = parameters(p.rw(), TRUST_USER, asked).await;
        assert_eq!(
            got, want,
            "{round} pooled client with settings against a direct connection"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_added_to_the_auth_file_can_log_in_without_a_restart() {
    let p = Pooled::start(0, |_| {}).await;
    let file = p.auth_file();
    assert!(
        try_connect(p.rw(), "reporting", "report-secret", None)
            .await
            .is_err(),
        "not in the auth_file yet"
    );
    p.env
        .cluster
        .psql(
            "pg-0",
            "CREATE ROLE reporting LOGIN PASSWORD 'report-secret'",
        )
        .expect("create role");
    let line = format!(
        "\"{APP_USER}\" \"{}\"\n\"reporting\" \"{}\"\n",
        verifier(&p.env.cluster, APP_USER),
        verifier(&p.env.cluster, "reporting")
    );
    std::fs::write(&file, line).expect("rewrite the auth_file");
    eventually("the new user logs in through the pool", || async {
        try_connect(p.rw(), "reporting", "report-secret", None)
            .await
            .is_ok()
    })
    .await;
    let c = try_connect(p.rw(), "reporting", "report-secret", None)
        .await
        .unwrap();
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "reporting");
    // A removed user is refused once the file no longer has it.
    std::fs::write(
        &file,
        format!(
            "\"{APP_USER}\" \"{}\"\n",
            verifier(&p.env.cluster, APP_USER)
        ),
    )
    .expect("rewrite the auth_file");
    eventually("the removed user is refused with 28P01", || async {
        try_connect(p.rw(), "reporting", "report-secret", None)
            .await
            .err()
            .and_then(|e| e.as_db_error().map(|d| d.code().code() == "28P01"))
            .unwrap_or(false)
    })
    .await;
}
