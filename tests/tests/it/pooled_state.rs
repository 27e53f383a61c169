//! Pooled transaction mode and session state: pins (LISTEN, temporary tables), prepared
//! statements that outlive their server connection, cancel through the pool, waits for a
//! connection, clients that never log in, and the fence after a promotion.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use pgsteer_cluster::{APP_PASSWORD, APP_USER, StopMode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::AsyncMessage;

use crate::harness::{DEADLINE, backend_pid, conn_str, connect, count, eventually};
use crate::pooled::Pooled;
use crate::routing::http_get;

/// The `/pools` figures of the pool on `member` (`None`: no such pool).
async fn pool(p: &Pooled, member: &str) -> Option<serde_json::Value> {
    let body = http_get(p.env.admin(), "/pools").await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    v["pools"]
        .as_array()?
        .iter()
        .find(|x| x["member"] == member)
        .cloned()
}

/// The value of an unlabelled or labelled sample in `/metrics`.
pub async fn metric(p: &Pooled, series: &str) -> f64 {
    p.env.metric(series).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listening_client_is_pinned_and_gets_its_notifications() {
    let p = Pooled::start(0, |c| c.pool.size = 2).await;
    let (listener, mut conn) = tokio_postgres::connect(
        &conn_str(p.rw(), APP_USER, APP_PASSWORD, None),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect");
    let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await.unwrap();
    let pinned_pid = backend_pid(&listener).await;
    let other = connect(p.rw(), None).await;
    for _ in 0..5 {
        other.batch_execute("NOTIFY jobs, 'run'").await.unwrap();
        assert_eq!(
            backend_pid(&listener).await,
            pinned_pid,
            "the listener moved"
        );
    }
    for _ in 0..5 {
        let got = tokio::time::timeout(DEADLINE, notes.recv()).await.unwrap();
        assert_eq!(got, Some(("jobs".to_owned(), "run".to_owned())));
    }
    assert_eq!(
        metric(&p, "pgsteer_pool_pins_total{reason=\"listen\"}").await,
        1.0
    );
    let figures = pool(&p, "pg-0").await.expect("a pool on pg-0");
    assert_eq!(figures["pinned"], 1, "{figures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_table_pins_its_client_and_is_gone_for_the_next_one() {
    let p = Pooled::start(0, |c| c.pool.size = 1).await;
    let a = connect(p.rw(), None).await;
    a.batch_execute("CREATE TEMP TABLE scratch(x int); INSERT INTO scratch VALUES (1)")
        .await
        .unwrap();
    for _ in 0..3 {
        let n: i64 = a
            .query_one("SELECT count(*) FROM scratch", &[])
            .await
            .expect("the temporary table is still there")
            .get(0);
        assert_eq!(n, 1);
    }
    assert_eq!(
        metric(&p, "pgsteer_pool_pins_total{reason=\"temp_table\"}").await,
        1.0
    );
    drop(a);
    // The one connection comes back reset (DISCARD ALL) once a's session is over.
    eventually("a's connection back in the pool", || async {
        pool(&p, "pg-0")
            .await
            .is_some_and(|f| f["idle"] == 1 && f["pinned"] == 0)
    })
    .await;
    let b = connect(p.rw(), None).await;
    let e = b
        .query_one("SELECT count(*) FROM scratch", &[])
        .await
        .unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("42P01"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_outlive_their_server_connection() {
    let p = Pooled::start(0, |c| c.pool.size = 2).await;
    let c = connect(p.rw(), None).await;
    let stmt = c
        .prepare("SELECT $1::int + 1, pg_backend_pid()")
        .await
        .expect("prepare through the pool");
    let first: i32 = c.query_one(&stmt, &[&41]).await.unwrap().get(0);
    assert_eq!(first, 42);
    // Every pooled connection of the app user goes away under the client.
    let cluster = &p.env.cluster;
    tokio::task::block_in_place(|| {
        cluster
            .psql(
                "pg-0",
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'",
            )
            .unwrap();
    });
    eventually("the app user's backends gone", || async {
        let out = tokio::task::block_in_place(|| {
            cluster
                .psql(
                    "pg-0",
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
                )
                .unwrap()
        });
        out.trim() == "0"
    })
    .await;
    let before = metric(&p, "pgsteer_pool_reprepares_total").await;
    for i in 0..5 {
        let row = c
            .query_one(&stmt, &[&i])
            .await
            .expect("the statement works on a new connection");
        assert_eq!(row.get::<_, i32>(0), i + 1);
    }
    assert!(
        metric(&p, "pgsteer_pool_reprepares_total").await > before,
        "the statement was prepared again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_the_connection_running_the_query_and_the_client_goes_on() {
    let p = Pooled::start(0, |_| {}).await;
    let c = connect(p.rw(), None).await;
    let token = c.cancel_token();
    let started = std::time::Instant::now();
    let sleeping = tokio::spawn(async move {
        let r = c.simple_query("SELECT pg_sleep(30)").await;
        (c, r)
    });
    let sleeping_seen = || async {
        let out = tokio::task::block_in_place(|| {
            p.env
                .cluster
                .psql(
                    "pg-0",
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active'",
                )
                .unwrap()
        });
        out.trim() == "1"
    };
    eventually("the sleep running", sleeping_seen).await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel sent");
    let (c, r) = tokio::time::timeout(DEADLINE, sleeping)
        .await
        .unwrap()
        .unwrap();
    let e = r.unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("57014"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(25));
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the client goes on after its cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_waits_past_checkout_timeout_gets_53300_and_stays_connected() {
    let p = Pooled::start(0, |c| {
        c.pool.size = 1;
        c.pool.checkout_timeout = Duration::from_millis(500);
    })
    .await;
    let holder = connect(p.rw(), None).await;
    // BEGIN alone takes no connection (pgsteer answers it): the first statement does.
    holder.batch_execute("BEGIN").await.unwrap();
    holder.batch_execute("SELECT 1").await.unwrap();
    let waiter = connect(p.rw(), None).await;
    let e = waiter.query_one("SELECT 1", &[]).await.unwrap_err();
    let db = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "53300", "{db}");
    assert!(db.message().contains("no server connection free"), "{db}");
    assert_eq!(
        metric(&p, "pgsteer_pool_checkout_timeouts_total").await,
        1.0
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let one: i32 = waiter.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the refused client stays connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_authentication_holds_no_server_connection() {
    let p = Pooled::start(0, |_| {}).await;
    let mut stalled = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(p.rw()).await.unwrap();
        let mut m = bytes::BytesMut::new();
        let startup = pgsteer_protocol::startup::StartupMessage::new(vec![
            ("user".into(), APP_USER.into()),
            ("database".into(), pgsteer_cluster::DATABASE.into()),
        ]);
        pgsteer_protocol::encode::startup_message(&mut m, &startup);
        s.write_all(&m).await.unwrap();
        stalled.push(s);
    }
    // pgsteer asks for the password and waits; nothing has reached Postgres.
    let ok = connect(p.rw(), None).await;
    let n = count(&ok, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend'", &[]).await;
    assert_eq!(
        n, 1,
        "only the logged-in client's transaction has a backend"
    );
    let figures = pool(&p, "pg-0").await.expect("pool");
    assert_eq!(figures["clients"], 1, "{figures}");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_promotion_writes_go_to_the_new_primary_and_the_old_pools_are_gone() {
    let p = Pooled::start(1, |_| {}).await;
    let c = connect(p.rw(), None).await;
    let port: i32 = c
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(port as u16, p.env.port_of("pg-0"));
    let cluster = &p.env.cluster;
    tokio::task::block_in_place(|| {
        cluster.stop_node("pg-0", StopMode::Fast).unwrap();
        cluster.promote("pg-1").unwrap();
    });
    p.env
        .wait_topology("pg-1 is primary", |t| {
            t.primary().is_some_and(|m| m.name == "pg-1")
        })
        .await;
    // The idle client keeps its connection; its next transaction runs on pg-1.
    let row = c
        .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
        .await
        .expect("the idle client goes on");
    assert_eq!(row.get::<_, i32>(0) as u16, p.env.port_of("pg-1"));
    assert!(!row.get::<_, bool>(1));
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS after_promotion(x int); INSERT INTO after_promotion VALUES (1)",
    )
    .await
    .expect("writes work on the new primary");
    eventually("no pool left on pg-0", || async {
        pool(&p, "pg-0").await.is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_only_began_a_block_stays_when_its_last_primary_goes() {
    let p = Pooled::start(1, |_| {}).await;
    let c = connect(p.rw(), None).await;
    // A transaction on pg-0 leaves the session bound to pg-0's drain; its next BEGIN is
    // answered by pgsteer and holds no server connection.
    c.batch_execute("CREATE TABLE began_before (x int)")
        .await
        .unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    let cluster = &p.env.cluster;
    tokio::task::block_in_place(|| cluster.stop_node("pg-0", StopMode::Fast).unwrap());
    p.env
        .wait_topology("pg-0 is no longer the primary", |t| {
            t.member("pg-0")
                .is_none_or(|m| m.role != pgsteer_discovery::Role::Primary || !m.routable)
        })
        .await;
    // pg-0 vanished with `demoted_primary_grace` 0: a session with a transaction open there
    // ends at once. This one had none there, so it stays, and its block runs on pg-1.
    tokio::task::block_in_place(|| cluster.promote("pg-1").unwrap());
    p.env
        .wait_topology("pg-1 is primary", |t| {
            t.primary().is_some_and(|m| m.name == "pg-1")
        })
        .await;
    c.batch_execute("INSERT INTO began_before VALUES (1)")
        .await
        .expect("the block goes on, on pg-1");
    c.batch_execute("COMMIT").await.expect("and commits");
    let row = c
        .query_one("SELECT count(*), inet_server_port() FROM began_before", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(row.get::<_, i32>(1) as u16, p.env.port_of("pg-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_on_a_pool_whose_member_changes_role_routes_again() {
    // One connection per pool, and a checkout wait far longer than the test: a waiter left
    // on the retired pool (nothing is ever given back to it) would only fail at the deadline.
    let p = Pooled::start(1, |c| {
        c.pool.size = 1;
        c.pool.checkout_timeout = Duration::from_secs(3600);
        c.routing.hold_timeout = Duration::from_secs(120);
        c.routing.replica_fallback = true;
    })
    .await;
    let busy = connect(p.env.ro(), None).await;
    let waiter = connect(p.env.ro(), None).await;
    // `busy` holds pg-1's only connection in a transaction; `waiter` queues behind it.
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let read = tokio::spawn(async move {
        let row = waiter
            .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
            .await;
        (waiter, row)
    });
    eventually("the second client waits on pg-1's pool", || async {
        pool(&p, "pg-1").await.is_some_and(|v| v["waiting"] == 1)
    })
    .await;
    // pg-1 is promoted while `busy` is still in its transaction there: pg-1's pool is retired
    // and will never hand out that connection again. The waiter must route again at once:
    // with two primaries it is held (fail closed), then served by pg-1 once pg-0 has gone.
    let cluster = &p.env.cluster;
    tokio::task::block_in_place(|| cluster.promote("pg-1").unwrap());
    eventually("the waiter left the retired pool", || async {
        pool(&p, "pg-1").await.is_none_or(|v| v["waiting"] == 0)
    })
    .await;
    tokio::task::block_in_place(|| cluster.stop_node("pg-0", StopMode::Fast).unwrap());
    let (_waiter, row) = tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the waiter is served without waiting out its checkout timeout")
        .unwrap();
    let row = row.expect("the waiter's read runs");
    assert_eq!(row.get::<_, i32>(0) as u16, p.env.port_of("pg-1"));
    assert!(!row.get::<_, bool>(1), "on the promoted pg-1");
    drop(busy);
}

/// A TCP forwarder to `to` that, while `refuse` is set, closes each new connection at once
/// (a server that accepted and went away before its greeting). Returns where to connect.
fn refusing_forwarder(to: &str, refuse: Arc<AtomicBool>) -> std::net::SocketAddr {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("address");
    let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
    let to = to.to_owned();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            if refuse.load(Ordering::SeqCst) {
                continue;
            }
            let to = to.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(&to).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_failed_one_server_connection_is_tried_again_while_the_probe_finds_it_well() {
    // The hold outlasts the test: a client that waited for a topology change (none comes:
    // the probe's connection, opened before, stays up) would fail only at the deadline.
    let refuse = Arc::new(AtomicBool::new(false));
    let gate = refuse.clone();
    let p = Pooled::start(0, move |c| {
        c.routing.hold_timeout = Duration::from_secs(3600);
        let to = c.discovery.members[0].address.clone();
        c.discovery.members[0].address = refusing_forwarder(&to, gate).to_string();
    })
    .await;
    let busy = connect(p.rw(), None).await;
    let next = connect(p.rw(), None).await;
    // `busy` keeps the one open server connection in a transaction: `next` needs a new one.
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();
    refuse.store(true, Ordering::SeqCst);
    let read = tokio::spawn(async move {
        let row = next.query_one("SELECT 1 + 1", &[]).await;
        (next, row)
    });
    eventually("pgsteer failed to open a server connection", || async {
        metric(&p, "pgsteer_backend_connect_failures_total{pod=\"pg-0\"}").await >= 1.0
    })
    .await;
    refuse.store(false, Ordering::SeqCst);
    let (_next, row) = tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the client is served once pg-0 takes connections again")
        .unwrap();
    let two: i32 = row.expect("the read runs").get(0);
    assert_eq!(two, 2);
    busy.batch_execute("COMMIT").await.expect("busy goes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_idle_in_a_transaction_past_the_timeout_is_closed_and_frees_its_connection() {
    let p = Pooled::start(0, |c| {
        c.pool.size = 1;
        c.pool.idle_transaction_timeout = Duration::from_millis(300);
    })
    .await;
    let (idle, conn) = tokio_postgres::connect(
        &conn_str(p.rw(), APP_USER, APP_PASSWORD, None),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect");
    let ended = tokio::spawn(conn);
    idle.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let result = tokio::time::timeout(DEADLINE, ended)
        .await
        .expect("closed in time")
        .unwrap();
    let e = result.expect_err("closed with an error");
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("25P03"),
        "{e}"
    );
    let next = connect(p.rw(), None).await;
    let one: i32 = next.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the one connection is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_one_connection_per_client_and_resets_it_when_the_client_leaves() {
    let p = Pooled::start(0, |c| {
        c.pool.mode = pgsteer::config::PoolMode::Session;
        c.pool.size = 1;
    })
    .await;
    let a = connect(p.rw(), None).await;
    let pid = backend_pid(&a).await;
    a.batch_execute("SET work_mem = '7MB'; PREPARE q AS SELECT 1")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(backend_pid(&a).await, pid, "session mode moved the client");
    }
    drop(a);
    let b = connect(p.rw(), None).await;
    assert_eq!(
        backend_pid(&b).await,
        pid,
        "the one pooled connection is reused"
    );
    let work_mem: String = b
        .query_one("SELECT current_setting('work_mem')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(work_mem, "4MB", "the reset query ran between the clients");
    let e = b.batch_execute("EXECUTE q").await.unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("26000"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_ro_listener_lends_replica_connections() {
    let p = Pooled::start(1, |_| {}).await;
    let c = connect(p.env.ro(), None).await;
    for _ in 0..3 {
        let row = c
            .query_one("SELECT pg_is_in_recovery(), inet_server_port()", &[])
            .await
            .unwrap();
        assert!(
            row.get::<_, bool>(0),
            "a read-only pooled transaction ran on the primary"
        );
        assert_eq!(row.get::<_, i32>(1) as u16, p.env.port_of("pg-1"));
    }
    assert!(pool(&p, "pg-1").await.is_some());
}
