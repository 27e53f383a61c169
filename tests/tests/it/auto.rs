//! Route `auto` against a real primary and two replicas: reads on replicas, writes and
//! anything unsure on the primary, never a read that misses the client's own write, and
//! no reads on a replica past the lag bound.

use std::time::Duration;

use pgsteer_discovery::Topology;

use crate::harness::{DEADLINE, connect, count, eventually};
use crate::pooled::Pooled;

const AUTO: &str = "-c pgsteer.route=auto";

/// A pooled transaction-mode pgsteer in front of a primary and two replicas; `inet_server_port`
/// is declared read-only so that a query can say where it ran.
async fn start(tweak: impl FnOnce(&mut pgsteer::Config)) -> Pooled {
    let p = Pooled::start(2, |c| {
        c.pool.size = 8;
        c.routing.read_only_functions = vec!["inet_server_port".into()];
        tweak(c);
    })
    .await;
    p.env
        .cluster
        .wait_streaming(2, DEADLINE)
        .expect("replicas stream");
    p
}

/// Makes `replica` apply WAL `delay` late (`None`: on time again).
fn apply_delay(p: &Pooled, replica: &str, delay: Option<&str>) {
    let set = match delay {
        Some(d) => format!("ALTER SYSTEM SET recovery_min_apply_delay = '{d}'"),
        None => "ALTER SYSTEM RESET recovery_min_apply_delay".to_owned(),
    };
    // Two calls: ALTER SYSTEM cannot run inside the transaction one `psql -c` makes.
    p.env
        .cluster
        .psql(replica, &set)
        .and_then(|_| p.env.cluster.psql(replica, "SELECT pg_reload_conf()"))
        .expect("recovery_min_apply_delay");
}

/// Waits until the proxy has seen every replica replay the primary's current position, so that
/// a new client's first reads may use them.
async fn replicas_caught_up(p: &Pooled) {
    let primary = p.env.port_of("pg-0");
    let c =
        crate::harness::connect(std::net::SocketAddr::from(([127, 0, 0, 1], primary)), None).await;
    let lsn: String = c
        // The insert position: with `synchronous_commit = off` (the test clusters) the write
        // position can still be behind a commit that has returned.
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let lsn = pgsteer_discovery::parse_lsn(&lsn).unwrap();
    p.env
        .wait_topology(
            "both replicas replayed the primary's position",
            |t: &Topology| t.replicas().filter(|m| m.lsn.unwrap_or(0) >= lsn).count() == 2,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_writes_reads_land_on_replicas() {
    let p = start(|_| {}).await;
    replicas_caught_up(&p).await;
    let c = connect(p.rw(), Some(AUTO)).await;
    let (mut on_replica, mut ports) = (0, std::collections::BTreeSet::new());
    for _ in 0..1000 {
        let row = c
            .query_one("SELECT pg_is_in_recovery(), inet_server_port()", &[])
            .await
            .expect("read");
        if row.get::<_, bool>(0) {
            on_replica += 1;
        }
        ports.insert(row.get::<_, i32>(1));
    }
    assert!(on_replica >= 900, "{on_replica} of 1000 reads on replicas");
    // The same through the extended protocol with a named statement, as drivers send it.
    let st = c
        .prepare("SELECT pg_is_in_recovery() FROM generate_series(1, $1::int)")
        .await
        .unwrap();
    let mut prepared_on_replica = 0;
    for _ in 0..200 {
        let rows = c.query(&st, &[&1i32]).await.unwrap();
        if rows[0].get::<_, bool>(0) {
            prepared_on_replica += 1;
        }
    }
    assert!(
        prepared_on_replica >= 180,
        "{prepared_on_replica} of 200 prepared reads on replicas"
    );
    // A BEGIN READ ONLY block runs on a replica; a plain BEGIN block on the primary.
    let rows = c
        .simple_query("BEGIN READ ONLY; SELECT pg_is_in_recovery()::text; COMMIT")
        .await
        .unwrap();
    assert!(text_values(&rows).contains(&"true".to_owned()), "{rows:?}");
    let rows = c
        .simple_query("BEGIN; SELECT pg_is_in_recovery()::text; COMMIT")
        .await
        .unwrap();
    assert!(text_values(&rows).contains(&"false".to_owned()), "{rows:?}");
}

fn text_values(rows: &[tokio_postgres::SimpleQueryMessage]) -> Vec<String> {
    rows.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_locking_reads_and_unknown_functions_reach_the_primary() {
    let p = start(|_| {}).await;
    let setup = connect(p.rw(), None).await;
    setup
        .batch_execute(
            "CREATE TABLE auto_w(id int); CREATE SEQUENCE auto_s; \
             CREATE FUNCTION auto_bump() RETURNS int LANGUAGE sql AS \
             'INSERT INTO auto_w VALUES (0) RETURNING id'",
        )
        .await
        .unwrap();
    replicas_caught_up(&p).await;
    // Each of these fails on a replica (25006 or "cannot execute … during recovery"): success
    // means it reached the primary.
    let statements = [
        "SELECT id FROM auto_w FOR UPDATE",
        "SELECT id FROM auto_w FOR SHARE",
        "SELECT nextval('auto_s')",
        "WITH x AS (INSERT INTO auto_w VALUES (1) RETURNING id) SELECT id FROM x",
        "SELECT 1 AS one INTO auto_into",
        "SELECT auto_bump()",
        "SELECT 1; INSERT INTO auto_w VALUES (2)",
        "SELECT pg_advisory_xact_lock(1)",
        "SELECT txid_current()",
    ];
    let c = connect(p.rw(), Some(AUTO)).await;
    for sql in statements {
        c.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let row = c
        .query_one("SELECT count(*), pg_is_in_recovery() FROM auto_w", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i64>(0),
        3,
        "the three inserts are there (read on a replica: {})",
        row.get::<_, bool>(1)
    );
    let decisions = crate::pooled_state::metric(
        &p,
        "pgsteer_auto_transactions_total{decision=\"primary_classifier\"}",
    )
    .await;
    assert!(
        decisions >= statements.len() as f64,
        "{decisions} transactions sent to the primary by the classifier"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_a_write_never_misses_it_with_a_delayed_replica() {
    write_then_read(AUTO).await;
}

/// 10,000 times: a write, then a read of it, through `options`. pg-2 applies WAL 2 s late and
/// pg-1 is drained, so a read sent to a replica too early misses the write.
async fn write_then_read(options: &str) {
    let p = start(|_| {}).await;
    let (code, _) = crate::drain::http_post(p.env.admin(), "/drain/pg-1", None).await;
    assert_eq!(code, 200);
    apply_delay(&p, "pg-2", Some("2s"));
    let c = connect(p.rw(), Some(options)).await;
    c.batch_execute("CREATE TABLE ryw(id int PRIMARY KEY)")
        .await
        .unwrap();
    let insert = c.prepare("INSERT INTO ryw VALUES ($1)").await.unwrap();
    let read = c
        .prepare("SELECT max(id), pg_is_in_recovery() FROM ryw")
        .await
        .unwrap();
    let mut on_replica = 0;
    for i in 1..=10_000i32 {
        c.execute(&insert, &[&i]).await.unwrap();
        let row = c.query_one(&read, &[]).await.unwrap();
        assert_eq!(
            row.get::<_, Option<i32>>(0),
            Some(i),
            "read {i} missed its own write"
        );
        if row.get::<_, bool>(1) {
            on_replica += 1;
        }
    }
    // With no further writes, reads move to the replica once it has replayed the last one.
    eventually(
        "a read after the last write lands on the replica",
        || async {
            let row = c.query_one(&read, &[]).await.unwrap();
            assert_eq!(row.get::<_, Option<i32>>(0), Some(10_000));
            row.get::<_, bool>(1)
        },
    )
    .await;
    eprintln!("write-then-read: {on_replica} of 10000 reads on a replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_past_the_lag_bound_gets_no_reads_until_it_catches_up() {
    let p = start(|c| c.routing.max_replica_lag = Duration::from_secs(1)).await;
    // pg-1 drained by an operator: pg-2 is the only replica reads may use.
    let (code, _) = crate::drain::http_post(p.env.admin(), "/drain/pg-1", None).await;
    assert_eq!(code, 200);
    let pg2 = i32::from(p.env.port_of("pg-2"));
    let reader = connect(
        p.rw(),
        Some("-c pgsteer.route=auto -c pgsteer.consistency=eventual"),
    )
    .await;
    let port = || async {
        reader
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap()
            .get::<_, i32>(0)
    };
    eventually("a read lands on pg-2", || async { port().await == pg2 }).await;
    let c = connect(p.rw(), None).await;
    c.batch_execute("CREATE TABLE lagged(id serial, at timestamptz DEFAULT now())")
        .await
        .unwrap();
    apply_delay(&p, "pg-2", Some("5s"));
    // Writes keep coming, so the delayed replica falls behind.
    let writer = tokio::spawn(async move {
        loop {
            if c.batch_execute("INSERT INTO lagged DEFAULT VALUES")
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    p.env
        .wait_topology("pg-2 is over the lag bound", |t: &Topology| {
            t.member("pg-2").is_some_and(|m| m.lagging)
        })
        .await;
    for _ in 0..200 {
        assert_ne!(port().await, pg2, "a read reached the lagging replica");
    }
    let lagging = crate::pooled_state::metric(&p, "pgsteer_replicas_lagging").await;
    assert_eq!(lagging, 1.0);
    apply_delay(&p, "pg-2", None);
    writer.abort();
    eventually("pg-2 caught up and a read lands on it again", || async {
        port().await == pg2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_classifier_missed_runs_again_on_the_primary() {
    // Declared read-only by mistake: it inserts.
    let p = start(|c| c.routing.read_only_functions.push("auto_sneaky".into())).await;
    let setup = connect(p.rw(), None).await;
    setup
        .batch_execute(
            "CREATE TABLE sneaky(id int); \
             CREATE FUNCTION auto_sneaky(i int) RETURNS int LANGUAGE sql AS \
             'INSERT INTO sneaky VALUES (i) RETURNING id'",
        )
        .await
        .unwrap();
    replicas_caught_up(&p).await;
    let c = connect(p.rw(), Some(AUTO)).await;
    let rows = c.simple_query("SELECT auto_sneaky(1)").await.unwrap();
    assert_eq!(text_values(&rows), ["1"], "simple protocol");
    // Its write made the client's reads wait for the replicas (read-your-writes).
    replicas_caught_up(&p).await;
    let st = c.prepare("SELECT auto_sneaky($1)").await.unwrap();
    let row = c.query_one(&st, &[&2i32]).await.unwrap();
    assert_eq!(
        row.get::<_, i32>(0),
        2,
        "extended protocol, named statement"
    );
    let n = count(&c, "SELECT count(*) FROM sneaky", &[]).await;
    assert_eq!(n, 2, "each insert ran once, on the primary");
    let retried = crate::pooled_state::metric(
        &p,
        "pgsteer_auto_transactions_total{decision=\"safety_net\"}",
    )
    .await;
    assert_eq!(retried, 2.0);
    // Inside a block the client opened read-only, the refusal is the client's answer.
    c.batch_execute("BEGIN READ ONLY").await.unwrap();
    let e = c
        .batch_execute("INSERT INTO sneaky VALUES (3)")
        .await
        .unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("25006"),
        "{e}"
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    let n = count(&c, "SELECT count(*) FROM sneaky", &[]).await;
    assert_eq!(n, 2);
}
