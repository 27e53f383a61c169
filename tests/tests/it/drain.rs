//! Role changes without pain: fencing, draining at transaction boundaries,
//! holding, pause/resume and operator drains (static source; the Patroni and
//! Kubernetes modules cover their own role changes).

use std::net::SocketAddr;
use std::time::Duration;

use pgsteer_cluster::StopMode;

use crate::harness::*;
use crate::routing::http_get;

/// POST to the admin port; returns (status code, body).
pub async fn http_post(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        code,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    )
}

/// The member's own address (no proxy in between).
pub fn direct(env: &Env, member: &str) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], env.port_of(member)))
}

/// Waits for the connection task to end and returns the server's error.
pub async fn ended_with(
    conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) -> tokio_postgres::error::DbError {
    let ended = tokio::time::timeout(DEADLINE, conn)
        .await
        .expect("session closed in time")
        .unwrap();
    let e = ended.expect_err("closed with an error");
    e.as_db_error().expect("a server error").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_primary_session_is_closed_at_once_when_another_member_becomes_writable() {
    let env = Env::start(1).await;
    let (idle, conn) = connect_watched(env.rw(), None).await;
    assert_eq!(server_port(&idle).await, env.port_of("pg-0"));

    let cluster = &env.cluster;
    tokio::task::block_in_place(|| cluster.promote("pg-1").unwrap());
    let e = ended_with(conn).await;
    assert_eq!(e.code().code(), "57P01");
    assert_eq!(e.severity(), "FATAL");
    assert!(e.message().contains("pg-0"), "{}", e.message());
    assert!(e.message().contains("reconnect"), "{}", e.message());

    // a reconnect is held while two members claim the primary role, then
    // released to the one that is left
    let addr = env.rw();
    let reconnect = tokio::spawn(async move { try_connect(addr, "app", "app-secret", None).await });
    tokio::task::block_in_place(|| cluster.stop_node("pg-0", StopMode::Fast).unwrap());
    let c = reconnect.await.unwrap().expect("the reconnect succeeds");
    assert_eq!(server_port(&c).await, env.port_of("pg-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_on_a_demoted_primary_is_terminated_and_never_commits() {
    let env = Env::start(1).await;
    let (c, conn) = connect_watched(env.rw(), None).await;
    c.batch_execute("CREATE TABLE fenced(x int)").await.unwrap();
    c.batch_execute("BEGIN; INSERT INTO fenced VALUES (1)")
        .await
        .unwrap();
    let cluster = &env.cluster;
    tokio::task::block_in_place(|| cluster.promote("pg-1").unwrap());
    let e = ended_with(conn).await;
    assert_eq!(e.code().code(), "57P01");
    assert!(e.message().contains("terminating"), "{}", e.message());
    assert!(
        c.batch_execute("COMMIT").await.is_err(),
        "the commit must not go through"
    );
    let check = try_connect(direct(&env, "pg-0"), "app", "app-secret", None)
        .await
        .unwrap();
    let n = count(&check, "SELECT count(*) FROM fenced", &[]).await;
    assert_eq!(n, 0, "the fenced transaction was rolled back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_demoted_primary_grace_the_transaction_may_finish() {
    let env = Env::start_with(1, |c| {
        c.drain.demoted_primary_grace = Duration::from_secs(60)
    })
    .await;
    let (c, conn) = connect_watched(env.rw(), None).await;
    c.batch_execute("CREATE TABLE graced(x int)").await.unwrap();
    c.batch_execute("BEGIN; INSERT INTO graced VALUES (1)")
        .await
        .unwrap();
    let cluster = &env.cluster;
    tokio::task::block_in_place(|| cluster.promote("pg-1").unwrap());
    env.wait_topology("two primaries seen", |t| t.primaries().count() == 2)
        .await;
    c.batch_execute("INSERT INTO graced VALUES (2); COMMIT")
        .await
        .expect("the transaction finishes within the grace");
    let e = ended_with(conn).await;
    assert_eq!(e.code().code(), "57P01");
    let check = try_connect(direct(&env, "pg-0"), "app", "app-secret", None)
        .await
        .unwrap();
    let n = count(&check, "SELECT count(*) FROM graced", &[]).await;
    assert_eq!(n, 2);
}

/// A session on replica pg-1 with a transaction open, then `POST /drain/pg-1`.
async fn drain_pg1_mid_transaction(
    env: &Env,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (c, conn) = connect_watched(
        env.ro(),
        Some("-c pgsteer.pod=pg-1 -c pgsteer.route=replica"),
    )
    .await;
    c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let (code, body) = http_post(env.admin(), "/drain/pg-1", None).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("pg-1"), "{body}");
    (c, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_replica_lets_its_transaction_commit_then_closes_and_gets_no_new_sessions() {
    let env = Env::start(2).await;
    let (c, conn) = drain_pg1_mid_transaction(&env).await;
    env.wait_topology("pg-1 draining", |t| {
        t.member("pg-1").is_some_and(|m| m.draining)
    })
    .await;

    c.batch_execute("SELECT 2")
        .await
        .expect("the transaction goes on");
    c.batch_execute("COMMIT").await.expect("and commits");
    let e = ended_with(conn).await;
    assert_eq!(e.code().code(), "57P01");
    assert!(
        e.message().contains("pg-1 is being drained"),
        "{}",
        e.message()
    );

    for _ in 0..4 {
        let s = connect(env.ro(), None).await;
        assert_eq!(
            server_port(&s).await,
            env.port_of("pg-2"),
            "a new session went to the drained pg-1"
        );
    }
    let topo = http_get(env.admin(), "/topology").await;
    assert!(topo.contains("drained by an operator"), "{topo}");

    let (code, _) = http_post(env.admin(), "/undrain/pg-1", None).await;
    assert_eq!(code, 200);
    env.wait_topology("pg-1 back", |t| {
        t.member("pg-1").is_some_and(|m| !m.draining)
    })
    .await;
    let s = connect(env.ro(), Some("-c pgsteer.pod=pg-1")).await;
    assert_eq!(server_port(&s).await, env.port_of("pg-1"));
    assert_eq!(http_post(env.admin(), "/drain/pg-9", None).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_still_open_when_the_drain_grace_runs_out_is_terminated() {
    let env = Env::start_with(2, |c| c.drain.grace = Duration::from_millis(300)).await;
    let (_c, conn) = drain_pg1_mid_transaction(&env).await;
    // The client keeps the transaction open and says nothing more.
    let e = ended_with(conn).await;
    assert_eq!(e.code().code(), "57P01");
    assert!(
        e.message().contains("terminating connection") && e.message().contains("pg-1"),
        "{}",
        e.message()
    );
    eventually("the drain counted as terminated", || async {
        http_get(env.admin(), "/metrics")
            .await
            .contains("pgsteer_sessions_drained_total{outcome=\"terminated\"} 1")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_the_next_transaction_and_new_sessions_until_resume() {
    let env = Env::start(1).await;
    let c = connect(env.rw(), None).await;
    let watcher = try_connect(direct(&env, "pg-0"), "app", "app-secret", None)
        .await
        .unwrap();
    assert_eq!(http_post(env.admin(), "/pause", None).await.0, 200);

    let mut held = tokio::spawn(async move {
        let r = c
            .query_one("SELECT 'held-query'::text", &[])
            .await
            .map(|r| r.get::<_, String>(0));
        (c, r)
    });
    let addr = env.rw();
    let mut new_session =
        tokio::spawn(async move { try_connect(addr, "app", "app-secret", None).await });
    // Both stay held for as long as we care to look...
    let window = Duration::from_millis(500);
    assert!(
        tokio::time::timeout(window, &mut held).await.is_err(),
        "query ran while paused"
    );
    assert!(
        tokio::time::timeout(window, &mut new_session)
            .await
            .is_err(),
        "session opened while paused"
    );
    // ...and nothing reached Postgres.
    let reached = count(&watcher, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%held-query%' AND pid <> pg_backend_pid()", &[]).await;
    assert_eq!(reached, 0);

    assert_eq!(http_post(env.admin(), "/resume", None).await.0, 200);
    let (_c, r) = tokio::time::timeout(DEADLINE, held)
        .await
        .expect("released")
        .unwrap();
    assert_eq!(r.unwrap(), "held-query");
    let s = tokio::time::timeout(DEADLINE, new_session)
        .await
        .expect("released")
        .unwrap()
        .unwrap();
    assert_eq!(server_port(&s).await, env.port_of("pg-0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_controls_require_the_bearer_token_when_one_is_configured() {
    let dir = std::env::temp_dir().join(format!("pgsteer-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let tf = token_file.clone();
    let env = Env::start_with(1, move |c| c.admin.token_file = Some(tf)).await;
    assert_eq!(http_post(env.admin(), "/pause", None).await.0, 401);
    assert_eq!(http_post(env.admin(), "/pause", Some("wrong")).await.0, 401);
    assert_eq!(
        http_post(env.admin(), "/pause", Some("s3cret")).await.0,
        200
    );
    assert_eq!(
        http_post(env.admin(), "/resume", Some("s3cret")).await.0,
        200
    );
    // reads stay open
    assert!(
        http_get(env.admin(), "/topology")
            .await
            .contains("generation")
    );
    let _ = std::fs::remove_dir_all(dir);
}
