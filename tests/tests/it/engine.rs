//! `[runtime] relay_engine`: plaintext passthrough sessions relayed by the epoll engine (the
//! default) or each in its own task (`tokio`). Both must move large answers and large uploads
//! through full socket buffers, serve many sessions at once, and survive a client that leaves
//! in the middle of an answer; the metric says which engine relayed them (a session moves to
//! the epoll engine once it is busy). Plaintext pooled sessions run in the engine whole, and
//! the server connections they adopt there still serve TLS clients, whose sessions stay in
//! their tasks.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use pgsteer::config::RelayEngine;

use crate::harness::{DEADLINE, Env, backend_pid, connect, connect_watched, count, eventually};

/// Large answers, a large upload and 16 concurrent sessions through `env`'s rw listener.
async fn relays_everything(env: &Env) {
    let c = connect(env.rw(), None).await;
    // An answer of several MB: the relay stops reading the server while the client's socket
    // is full, and goes on when it drains.
    let rows = c
        .query(
            "SELECT i, md5(i::text) FROM generate_series(1, 100000) AS i",
            &[],
        )
        .await
        .expect("a large answer");
    assert_eq!(rows.len(), 100_000);
    let last: String = rows[99_999].get(1);
    let want: String = c
        .query_one("SELECT md5('100000')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(last, want, "the last row arrived intact");
    let wide: i32 = c
        .query_one(
            "SELECT length(string_agg(md5(i::text), '')) FROM generate_series(1, 40000) AS i",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(wide, 40_000 * 32);

    // An upload of 8 MB with COPY: the other direction through full buffers.
    c.batch_execute("CREATE TEMP TABLE up (n int, t text)")
        .await
        .unwrap();
    let sink = c.copy_in("COPY up FROM STDIN").await.expect("copy starts");
    futures_util::pin_mut!(sink);
    let line = "x".repeat(1000);
    for chunk in 0..64 {
        let mut data = String::with_capacity(130 * 1024);
        for i in 0..128 {
            data.push_str(&format!("{}\t{line}\n", chunk * 128 + i));
        }
        sink.send(Bytes::from(data)).await.expect("copy data");
    }
    let copied = sink.finish().await.expect("copy ends");
    assert_eq!(copied, 64 * 128);
    let (n, sum): (i64, i64) = {
        let r = c
            .query_one("SELECT count(*), sum(n)::bigint FROM up", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((n, sum), (8192, (0..8192).sum::<i64>()));

    // 16 sessions at once, each checking its own answers.
    let mut tasks = Vec::new();
    for i in 0..16i32 {
        let addr = env.rw();
        tasks.push(tokio::spawn(async move {
            let c = connect(addr, None).await;
            for n in 0..50i32 {
                let got: i32 = c
                    .query_one("SELECT $1::int * 1000 + $2::int", &[&i, &n])
                    .await
                    .unwrap_or_else(|e| panic!("session {i}, query {n}: {e:?}"))
                    .get(0);
                assert_eq!(got, i * 1000 + n, "session {i} got its own answer");
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(DEADLINE, t)
            .await
            .expect("every session is served")
            .unwrap();
    }

    // A client that leaves in the middle of a large answer: its session ends, its backend
    // goes away, the others go on.
    let (leaver, driver) = connect_watched(env.rw(), None).await;
    let pid = backend_pid(&leaver).await;
    let out = leaver
        .copy_out("COPY (SELECT repeat('y', 1000) FROM generate_series(1, 200000)) TO STDOUT")
        .await
        .expect("copy out starts");
    futures_util::pin_mut!(out);
    let first = out.next().await.expect("a first chunk").expect("copy data");
    assert!(!first.is_empty());
    driver.abort();
    drop(leaver);
    eventually("the leaving client's backend ends", || async {
        let n = count(
            &c,
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await;
        n == 0
    })
    .await;
    let alive: i32 = c.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(alive, 7, "the first session still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_epoll_engine_relays_busy_plaintext_passthrough_sessions() {
    let env = Env::start(0).await;
    let epoll = "pgsteer_relay_sessions_total{engine=\"epoll\"}";
    let task = "pgsteer_relay_sessions_total{engine=\"task\"}";
    // A session that runs one query and leaves (one connection per transaction) is not worth
    // the move: it ends in its task.
    {
        let c = connect(env.rw(), None).await;
        c.batch_execute("SELECT 1").await.unwrap();
    }
    eventually("the short session is counted", || async {
        env.metric(task).await == 1.0
    })
    .await;
    assert_eq!(env.metric(epoll).await, 0.0);

    relays_everything(&env).await;
    let (moved, stayed) = (env.metric(epoll).await, env.metric(task).await);
    // The first session and the 16 concurrent ones ran enough round trips to move (the
    // client that left may have gone before it was busy).
    assert!(
        moved >= 17.0,
        "busy sessions went through the engine: {moved}"
    );
    assert!(
        stayed <= 2.0,
        "only the short sessions stayed in their tasks: {stayed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_tokio_engine_sessions_relay_in_their_tasks() {
    let env = Env::start_with(0, |c| c.runtime.relay_engine = RelayEngine::Tokio).await;
    relays_everything(&env).await;
    let epoll = env
        .metric("pgsteer_relay_sessions_total{engine=\"epoll\"}")
        .await;
    let task = env
        .metric("pgsteer_relay_sessions_total{engine=\"task\"}")
        .await;
    assert!(task >= 18.0, "every session ran in its task: {task}");
    assert_eq!(epoll, 0.0, "none went through the engine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_sessions_in_the_engine_are_fenced_when_their_primary_is_demoted() {
    let env = Env::start(1).await;
    let (idle, idle_conn) = connect_watched(env.rw(), None).await;
    let (open, open_conn) = connect_watched(env.rw(), None).await;
    open.batch_execute("CREATE TABLE fenced_in_engine(x int)")
        .await
        .unwrap();
    // Enough round trips for both to move to the engine.
    for c in [&idle, &open] {
        for n in 0..50i32 {
            let got: i32 = c.query_one("SELECT $1::int", &[&n]).await.unwrap().get(0);
            assert_eq!(got, n);
        }
    }
    open.batch_execute("BEGIN; INSERT INTO fenced_in_engine VALUES (1)")
        .await
        .unwrap();

    let cluster = &env.cluster;
    tokio::task::block_in_place(|| cluster.promote("pg-1").unwrap());
    for conn in [idle_conn, open_conn] {
        let e = crate::drain::ended_with(conn).await;
        assert_eq!(e.code().code(), "57P01", "{}", e.message());
        assert!(e.message().contains("pg-0"), "{}", e.message());
    }
    assert!(
        open.batch_execute("COMMIT").await.is_err(),
        "the commit must not go through"
    );
    let check = connect(crate::drain::direct(&env, "pg-0"), None).await;
    let n = count(&check, "SELECT count(*) FROM fenced_in_engine", &[]).await;
    assert_eq!(n, 0, "the fenced transaction was rolled back");
    // Both were ended by the engine, not by a task.
    let epoll = env
        .metric("pgsteer_relay_sessions_total{engine=\"epoll\"}")
        .await;
    assert_eq!(epoll, 2.0, "both sessions ended in the engine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_pooled_sessions_move_to_the_engine_and_share_its_connections_with_tls_clients() {
    let pki = crate::tls::Pki::new();
    let leaf = crate::tls::proxy_leaf(&pki);
    let p = crate::pooled::Pooled::start(0, |c| {
        crate::tls::client_tls(c, &pki, &leaf, pgsteer::config::ClientTlsMode::Allow);
        c.pool.size = 1;
    })
    .await;
    // A plaintext client: its session starts in its task and moves to the engine once it is
    // busy (transactions in quick succession); the pool's one connection joins the engine
    // when it is lent there.
    let plain = connect(p.rw(), None).await;
    let epoll = || {
        p.env
            .metric("pgsteer_relay_sessions_total{engine=\"epoll\"}")
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while epoll().await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a busy plaintext pooled session moves to the engine"
        );
        for _ in 0..50 {
            plain.simple_query("SELECT 1").await.unwrap();
        }
    }
    let pid = backend_pid(&plain).await;
    // A TLS client's session runs in its task and borrows that same connection, which goes
    // back to the task's loop for it (a large answer: many reads that wait), then back to the
    // engine when the plaintext session borrows it again.
    let conn = crate::tls::libpq("127.0.0.1", p.rw().port(), "sslmode=require");
    let sql = "SELECT pg_backend_pid(), string_agg(md5(i::text), '') FROM generate_series(1, 200000) AS i";
    let (ok, out, err) = crate::tls::psql_conn(&conn, sql).await;
    assert!(ok, "psql over TLS: {err}");
    let (their_pid, answer) = out.split_once('|').expect("two columns");
    assert_eq!(
        their_pid,
        pid.to_string(),
        "the TLS client had the one connection"
    );
    assert_eq!(answer.len(), 200_000 * 32, "the whole answer arrived");
    // Back in the engine, the connection still answers, large and small.
    let big: i32 = plain
        .query_one(
            "SELECT length(string_agg(md5(i::text), '')) FROM generate_series(1, 200000) AS i",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(big, 200_000 * 32);
    assert_eq!(backend_pid(&plain).await, pid);
    let task = p
        .env
        .metric("pgsteer_relay_sessions_total{engine=\"task\"}")
        .await;
    assert!(
        task >= 1.0,
        "the TLS pooled session ran in its task: {task}"
    );
}
