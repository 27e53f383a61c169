//! The process id a passthrough client is given is its backend's own: it matches
//! `pg_backend_pid()`, `pg_terminate_backend()` of it ends the client's own session, and the
//! NOTIFYs of a session carry it.

use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio_postgres::AsyncMessage;

use crate::harness::*;

/// The (process id, secret key) the client library holds for `c`, as it would send them in a
/// CancelRequest: the request is written into a pipe and read back.
pub async fn client_key(c: &tokio_postgres::Client) -> (i32, Vec<u8>) {
    let (ours, mut theirs) = tokio::io::duplex(64);
    c.cancel_token()
        .cancel_query_raw(ours, tokio_postgres::NoTls)
        .await
        .expect("cancel request written");
    let mut packet = Vec::new();
    theirs.read_to_end(&mut packet).await.expect("read back");
    assert_eq!(packet.len(), 16, "a protocol 3.0 CancelRequest");
    let pid = i32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
    (pid, packet[12..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_the_pid_the_client_library_reports_ends_that_very_connection() {
    let env = Env::start(1).await;
    for addr in [env.rw(), env.ro()] {
        let (c, conn) = connect_watched(addr, None).await;
        let (pid, _) = client_key(&c).await;
        assert_eq!(
            pid,
            backend_pid(&c).await,
            "BackendKeyData holds the real pid"
        );
        let other = connect(addr, None).await;
        let seen: i64 = other
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .expect("query")
            .get(0);
        assert_eq!(seen, 1, "pg_stat_activity lists the client's pid");
        let done: bool = other
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .expect("terminate")
            .get(0);
        assert!(done, "the pid names a live backend");
        let ended = tokio::time::timeout(DEADLINE, conn)
            .await
            .expect("the terminated client's connection ends")
            .expect("connection task");
        let e = ended.expect_err("the server ended the session");
        assert_eq!(
            e.as_db_error().map(|d| d.code().code()),
            Some("57P01"),
            "{e}"
        );
        assert_eq!(backend_pid(&other).await, client_key(&other).await.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_carries_the_pid_the_notifying_client_library_reports() {
    let env = Env::start(0).await;
    let (c, mut conn) = tokio_postgres::connect(
        &conn_str(
            env.rw(),
            pgsteer_cluster::APP_USER,
            pgsteer_cluster::APP_PASSWORD,
            None,
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect");
    let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send(n);
            }
        }
    });
    let (own, _) = client_key(&c).await;
    let notifier = connect(env.rw(), None).await;
    let (theirs, _) = client_key(&notifier).await;
    c.batch_execute("LISTEN pgsteer_pids")
        .await
        .expect("listen");
    c.batch_execute("NOTIFY pgsteer_pids, 'self'")
        .await
        .expect("notify");
    notifier
        .batch_execute("NOTIFY pgsteer_pids, 'other'")
        .await
        .expect("notify");
    let mut got = Vec::new();
    while got.len() < 2 {
        let n = tokio::time::timeout(DEADLINE, notes.recv())
            .await
            .expect("notification arrives")
            .expect("connection open");
        got.push((n.payload().to_owned(), n.process_id()));
    }
    got.sort();
    assert_eq!(
        got,
        vec![("other".to_owned(), theirs), ("self".to_owned(), own)],
        "an application can tell its own notifications by its pid"
    );
}
