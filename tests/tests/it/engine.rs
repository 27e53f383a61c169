//! `[runtime] relay_engine`: plaintext passthrough sessions relayed by the epoll engine (the
//! default) or each in its own task (`tokio`). Both must move large answers and large uploads
//! through full socket buffers, serve many sessions at once, and survive a client that leaves
//! in the middle of an answer; the metric says which engine relayed them (a session moves to
//! the epoll engine once it is busy).

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
