//! Graceful shutdown: finish the transaction, close at the idle point.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_transaction_commit_then_closes_the_session_with_57p01() {
    let env = Env::start(1).await;
    let c = connect(env.rw(), None).await;
    c.batch_execute("CREATE TABLE IF NOT EXISTS t(x int); BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let idle = connect(env.rw(), None).await;

    env.shutdown.drain.cancel();
    // the idle session is closed at once
    eventually("idle session closed", || async { idle.is_closed() }).await;
    // readiness goes away, new connections are refused
    eventually("listener closed", || async {
        tokio::net::TcpStream::connect(env.rw()).await.is_err()
    })
    .await;

    // the open transaction may finish
    c.batch_execute("INSERT INTO t VALUES (2); COMMIT")
        .await
        .expect("commit during drain");
    eventually("drained session closed", || async { c.is_closed() }).await;
    let check = try_connect(
        std::net::SocketAddr::from(([127, 0, 0, 1], env.port_of("pg-0"))),
        "app",
        "app-secret",
        None,
    )
    .await
    .unwrap();
    let n = count(&check, "SELECT count(*) FROM t", &[]).await;
    assert_eq!(n, 2, "the committed rows are there");
    tokio::time::timeout(DEADLINE, env.proxy.wait())
        .await
        .expect("proxy exits once sessions are gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_session_hears_57p01_at_its_idle_point() {
    let env = Env::start(1).await;
    let (c, conn) = connect_watched(env.rw(), None).await;
    c.batch_execute("BEGIN").await.unwrap();
    env.shutdown.drain.cancel();
    // still in the transaction: not closed yet
    c.batch_execute("SELECT 1")
        .await
        .expect("the transaction goes on during the drain");
    c.batch_execute("COMMIT").await.expect("and commits");
    let ended = tokio::time::timeout(DEADLINE, conn)
        .await
        .expect("closed at the idle point")
        .unwrap();
    let e = ended.expect_err("closed with an error the client can see");
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "57P01");
    assert_eq!(db.severity(), "FATAL");
    assert!(db.message().contains("shutting down"), "{}", db.message());
}
