//! `[runtime] threads = 2`: two event loops, each with its own socket on every passthrough
//! listener's address. New connections are spread over both by the kernel, sessions on either
//! loop are served, pooled ones on the first loop beside them, and a cancel request finds its
//! session from whichever loop it lands on.

use std::net::SocketAddr;

use crate::harness::{DEADLINE, cancel_ends, connect, count, wait_running};
use crate::pooled::Pooled;
use crate::pooled_state::metric;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_event_loops_share_the_listeners_and_serve_sessions_on_both() {
    let pooled = Pooled::start(1, |c| {
        c.runtime.threads = 2;
        c.listen.extra.push(pgsteer::config::ExtraListener {
            name: "direct".into(),
            address: ([127, 0, 0, 1], 0).into(),
            route: "primary".into(),
            pool_mode: Some(pgsteer::config::PoolMode::Passthrough),
        });
    })
    .await;
    let direct: SocketAddr = pooled.env.proxy.extra("direct").expect("direct listener");
    let setup = connect(pooled.rw(), None).await;
    setup
        .batch_execute("CREATE TABLE looped (client int, n int)")
        .await
        .unwrap();

    // 16 passthrough and 8 pooled clients at once, each with transactions of its own.
    let mut clients = Vec::new();
    for i in 0..24 {
        let addr = if i % 3 == 2 { pooled.rw() } else { direct };
        clients.push(tokio::spawn(async move {
            let c = connect(addr, None).await;
            for n in 0..5 {
                c.batch_execute(&format!(
                    "BEGIN; INSERT INTO looped VALUES ({i}, {n}); COMMIT"
                ))
                .await
                .unwrap_or_else(|e| panic!("client {i}, transaction {n}: {e:?}"));
            }
            c
        }));
    }
    let mut open = Vec::new();
    for c in clients {
        open.push(
            tokio::time::timeout(DEADLINE, c)
                .await
                .expect("every client is served")
                .unwrap(),
        );
    }
    let rows = count(&setup, "SELECT count(*) FROM looped", &[]).await;
    assert_eq!(rows, 24 * 5, "every transaction committed once");

    let first = metric(
        &pooled,
        "pgsteer_loop_connections_accepted_total{loop=\"0\"}",
    )
    .await;
    let second = metric(
        &pooled,
        "pgsteer_loop_connections_accepted_total{loop=\"1\"}",
    )
    .await;
    assert!(
        first > 0.0 && second > 0.0,
        "both loops accepted connections: {first} and {second}"
    );
    assert_eq!(
        first + second,
        25.0,
        "every connection (24 clients and the setup one) was counted by one loop: {first} + {second}"
    );

    // A cancel request is a new connection: it lands on either loop and still finds its
    // session, in both modes (clients 0, 1: passthrough; 2: pooled).
    for c in open.into_iter().take(3) {
        let token = c.cancel_token();
        let sleep = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await });
        wait_running(&setup, "SELECT pg_sleep(30)").await;
        cancel_ends(token, sleep).await;
    }
}
