//! A pooled client whose server connection is lost keeps its connection to pgsteer: a
//! transaction in progress is rolled back and reported once, the client's view of it stays
//! consistent (a failed block until its ROLLBACK), and a transaction that has sent nothing
//! but BEGIN starts on another server connection; a route `auto` read whose replica stops
//! before it answered runs again on another. One cluster for every case.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::harness::{DEADLINE, connect, count, eventually, wait_running};
use crate::pooled::Pooled;

/// A forwarder between one client and pgsteer that can hold back the end of a client write,
/// so that pgsteer has seen only part of a message.
#[derive(Default)]
struct Split {
    /// Bytes to hold back at the end of the next read from the client (0: none).
    hold_back: AtomicUsize,
    /// Length of the read that was cut.
    cut_read: AtomicUsize,
    /// Signalled once the first part of a cut read was written to pgsteer.
    cut: Notify,
    /// Signal to write the part held back.
    release: Notify,
}

/// Starts a [`Split`] forwarder for one connection to `to`; returns where to connect.
async fn split_forwarder(to: SocketAddr) -> (SocketAddr, Arc<Split>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let split = Arc::new(Split::default());
    let s = split.clone();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.expect("accept");
        let server = TcpStream::connect(to).await.expect("connect to pgsteer");
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_server, mut to_server) = server.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
            let _ = to_client.shutdown().await;
        });
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let hold = s.hold_back.swap(0, Ordering::SeqCst).min(n);
            if to_server.write_all(&buf[..n - hold]).await.is_err() {
                break;
            }
            if hold > 0 {
                s.cut_read.store(n, Ordering::SeqCst);
                s.cut.notify_one();
                s.release.notified().await;
                if to_server.write_all(&buf[n - hold..n]).await.is_err() {
                    break;
                }
            }
        }
        let _ = to_server.shutdown().await;
    });
    (addr, split)
}

/// The SQLSTATE of a failed statement.
fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_else(|| format!("not a server error: {e}"))
}

/// Ends every server connection pgsteer holds for the app user, as a primary that shuts
/// down does, and waits until they are gone.
async fn end_server_connections(direct: &tokio_postgres::Client) {
    let sql = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
               WHERE usename = current_user AND pid <> pg_backend_pid() \
               AND backend_type = 'client backend'";
    direct.execute(sql, &[]).await.expect("terminate");
    eventually("the terminated server connections are gone", || async {
        let n: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = current_user \
                 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        n == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_client_stays_when_its_server_connection_is_lost() {
    let pooled = Pooled::start(2, |c| {
        c.routing.read_only_functions = vec!["inet_server_port".into()];
    })
    .await;
    let primary: SocketAddr = pooled.env.cluster.nodes()[0]
        .address()
        .parse()
        .expect("node address");
    let direct = connect(primary, None).await;
    direct
        .batch_execute("CREATE TABLE lost (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut client = connect(pooled.rw(), None).await;
    assert_eq!(pooled.env.cluster.nodes()[0].name, "pg-0");

    // 1. Idle inside a transaction block when the connection goes: the next statement is
    //    told (40001), the block stays failed (25P02) until ROLLBACK, and nothing committed.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("INSERT INTO lost VALUES (1)")
        .await
        .unwrap();
    end_server_connections(&direct).await;
    let e = client
        .batch_execute("INSERT INTO lost VALUES (2)")
        .await
        .expect_err("the transaction was lost");
    assert_eq!(code(&e), "40001", "{e:?}");
    let e = client
        .batch_execute("SELECT 1")
        .await
        .expect_err("the block is failed");
    assert_eq!(code(&e), "25P02");
    client.batch_execute("ROLLBACK").await.unwrap();
    let n = count(&client, "SELECT count(*) FROM lost", &[]).await;
    assert_eq!(n, 0, "the lost transaction did not commit");

    // 2. A statement in flight when the connection goes: its outcome is unknown (08007);
    //    the client carries on.
    let sleeper = tokio::spawn({
        let client = connect(pooled.rw(), None).await;
        async move {
            let r = client.batch_execute("SELECT pg_sleep(60)").await;
            (client, r)
        }
    });
    wait_running(&direct, "SELECT pg_sleep(60)").await;
    end_server_connections(&direct).await;
    let (sleeper, r) = sleeper.await.unwrap();
    let e = r.expect_err("the sleep's connection was lost");
    assert_eq!(code(&e), "08007", "{e:?}");
    assert!(
        e.as_db_error()
            .is_some_and(|d| d.message().contains("pg-0")),
        "the message names the member: {e:?}"
    );
    let one: i32 = sleeper.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    assert!(!sleeper.is_closed());

    // 3. BEGIN alone reaches no server: when the connections go after it, the transaction
    //    still runs whole, on a new connection.
    client.batch_execute("BEGIN").await.unwrap();
    end_server_connections(&direct).await;
    client
        .batch_execute("INSERT INTO lost VALUES (3)")
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    let ids: Vec<i32> = direct
        .query("SELECT id FROM lost ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [3]);

    // 4. After that COMMIT, the same client loses a transaction again and sends COMMIT: the
    //    COMMIT fails with the loss (it must not look like it worked), and nothing committed.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("INSERT INTO lost VALUES (4)")
        .await
        .unwrap();
    end_server_connections(&direct).await;
    let e = client
        .batch_execute("COMMIT")
        .await
        .expect_err("the COMMIT of a lost transaction fails");
    assert_eq!(code(&e), "40001", "{e:?}");
    let n = count(&direct, "SELECT count(*) FROM lost WHERE id = 4", &[]).await;
    assert_eq!(n, 0);

    // An empty transaction never needs a server.
    let tx = client.transaction().await.unwrap();
    tx.commit().await.unwrap();
    assert!(!client.is_closed());

    // 5. Route `auto`: a read on a replica that stops before answering runs again on the
    //    other replica, and the client sees only the answer.
    pooled
        .env
        .cluster
        .wait_streaming(2, crate::harness::DEADLINE)
        .expect("replicas stream");
    const EVENTUAL: &str = "-c pgsteer.route=auto -c pgsteer.consistency=eventual";
    let reader = connect(pooled.rw(), Some(EVENTUAL)).await;
    // Reads go to the least busy replica, ties broken by name: find where this one goes.
    let port: i32 = reader
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    let (name, other) = match u16::try_from(port).unwrap() {
        p if p == pooled.env.port_of("pg-1") => ("pg-1", pooled.env.port_of("pg-2")),
        p if p == pooled.env.port_of("pg-2") => ("pg-2", pooled.env.port_of("pg-1")),
        p => panic!("an eventual read ran on port {p}, not on a replica"),
    };
    // Sleeps there only: it is still running when that replica stops.
    let sql = format!(
        "SELECT pg_sleep(CASE WHEN inet_server_port() = {port} THEN 60 ELSE 0 END), \
         inet_server_port()"
    );
    let read = tokio::spawn(async move { (reader.query_one(&sql, &[]).await, reader) });
    let there: SocketAddr = ([127, 0, 0, 1], pooled.env.port_of(name)).into();
    let watcher = connect(there, None).await;
    eventually("the read sleeps on its replica", || async {
        let n = count(
            &watcher,
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(CASE%' \
                 AND state = 'active'",
            &[],
        )
        .await;
        n == 1
    })
    .await;
    drop(watcher);
    let cluster = &pooled.env.cluster;
    tokio::task::block_in_place(|| {
        cluster
            .stop_node(name, pgsteer_cluster::StopMode::Fast)
            .expect("the replica stops")
    });
    let (r, reader) = tokio::time::timeout(crate::harness::DEADLINE, read)
        .await
        .expect("the read finishes")
        .unwrap();
    let row = r.expect("the read was run again, not failed");
    assert_eq!(
        row.get::<_, i32>(1),
        i32::from(other),
        "it ran on the other replica"
    );
    assert!(!reader.is_closed());
    drop(reader);

    // 6. The client is half-way through a message when the connection goes (the Bind of a
    //    prepared INSERT, whose parameters stream on after pgsteer renamed its statement, and
    //    the Execute after it, cut short): the rest is skipped as it comes, the transaction
    //    is reported lost (40001), and the client stays.
    let (via, split) = split_forwarder(pooled.rw()).await;
    let cut = connect(via, None).await;
    cut.batch_execute("BEGIN").await.unwrap();
    cut.batch_execute("INSERT INTO lost VALUES (6)")
        .await
        .unwrap();
    let insert = cut.prepare("INSERT INTO lost VALUES ($1)").await.unwrap();
    // Bind, Execute (10 bytes), Sync (5 bytes) in one write: Execute's last 2 bytes and Sync
    // wait.
    split.hold_back.store(7, Ordering::SeqCst);
    let executed = tokio::spawn(async move {
        let r = cut.execute(&insert, &[&7i32]).await;
        (cut, r)
    });
    tokio::time::timeout(DEADLINE, split.cut.notified())
        .await
        .expect("the client's Bind went through the forwarder");
    assert!(
        split.cut_read.load(Ordering::SeqCst) > 15,
        "Bind, Execute and Sync came in one read, so Execute was cut"
    );
    end_server_connections(&direct).await;
    split.release.notify_one();
    let (cut, r) = tokio::time::timeout(DEADLINE, executed)
        .await
        .expect("the INSERT is answered")
        .unwrap();
    let e = r.expect_err("the transaction was lost");
    assert_eq!(code(&e), "40001", "{e:?}");
    cut.batch_execute("ROLLBACK").await.unwrap();
    let one: i32 = cut.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    assert!(!cut.is_closed(), "the client stays");
    let n = count(&direct, "SELECT count(*) FROM lost WHERE id IN (6, 7)", &[]).await;
    assert_eq!(n, 0, "the lost transaction did not commit");
}
