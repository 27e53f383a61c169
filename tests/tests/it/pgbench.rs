//! pgbench, a real client with simple, extended and prepared protocol, through both listeners.

use crate::harness::*;

/// Runs pgbench with `args` against the libpq connection string `conn`: (success, output).
pub async fn pgbench(args: &[&str], conn: &str) -> (bool, String) {
    let out = tokio::process::Command::new("pgbench")
        .args(args)
        .arg(conn)
        .env("PGPASSWORD", pgsteer_cluster::APP_PASSWORD)
        .output()
        .await
        .expect("pgbench runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn processed(out: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|r| r.split('/').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_through_both_listeners_in_every_protocol_mode() {
    let env = Env::start(1).await;
    let rw = conn_str(env.rw(), "app", "app-secret", None);
    let ro = conn_str(env.ro(), "app", "app-secret", None);
    let (ok, out) = pgbench(&["-i", "-s", "1", "-q"], &rw).await;
    assert!(ok, "pgbench -i through rw: {out}");
    // the replica must have the tables before read-only runs
    eventually("pgbench tables replicated", || async {
        let c = try_connect(env.ro(), "app", "app-secret", None)
            .await
            .unwrap();
        c.query_one("SELECT count(*) FROM pgbench_accounts", &[])
            .await
            .is_ok()
    })
    .await;
    for mode in ["simple", "extended", "prepared"] {
        let (ok, out) = pgbench(&["-M", mode, "-c", "4", "-j", "2", "-t", "200"], &rw).await;
        assert!(ok, "TPC-B-like, {mode}, rw: {out}");
        assert_eq!(processed(&out), 800, "{out}");
        let (ok, out) = pgbench(&["-S", "-M", mode, "-c", "4", "-j", "2", "-t", "500"], &ro).await;
        assert!(ok, "select-only, {mode}, ro: {out}");
        assert_eq!(processed(&out), 2000, "{out}");
    }
    // a write through ro is refused by the replica itself
    let (ok, out) = pgbench(&["-c", "1", "-t", "1"], &ro).await;
    assert!(!ok, "{out}");
    assert!(out.contains("read-only transaction"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_per_transaction_pgbench_works() {
    let env = Env::start(1).await;
    let rw = conn_str(env.rw(), "app", "app-secret", None);
    let (ok, out) = pgbench(&["-i", "-s", "1", "-q"], &rw).await;
    assert!(ok, "{out}");
    let (ok, out) = pgbench(&["-S", "-C", "-c", "4", "-j", "2", "-t", "100"], &rw).await;
    assert!(ok, "{out}");
    assert_eq!(processed(&out), 400, "{out}");
}

/// The proxy's own runtime is current-thread (`[runtime] threads = 1`),
/// where the relay skips the `EAGAIN` read after a short read; run the same
/// traffic there.
#[tokio::test(flavor = "current_thread")]
async fn pgbench_through_a_current_thread_runtime_relays_every_transaction() {
    let env = Env::start(1).await;
    let rw = conn_str(env.rw(), "app", "app-secret", None);
    let (ok, out) = pgbench(&["-i", "-s", "1", "-q"], &rw).await;
    assert!(ok, "{out}");
    for mode in ["simple", "extended"] {
        let (ok, out) = pgbench(&["-S", "-M", mode, "-c", "8", "-j", "2", "-t", "500"], &rw).await;
        assert!(ok, "{mode}: {out}");
        assert_eq!(processed(&out), 4000, "{out}");
    }
    // a large result streams through in many reads
    let c = connect(env.rw(), None).await;
    let messages = c
        .simple_query("SELECT repeat('x', 1000) FROM generate_series(1, 5000)")
        .await
        .unwrap();
    let rows: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::len),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 5000);
    assert!(rows.iter().all(|&n| n == 1000));
}
