//! `/metrics` after known traffic, and the exposition checked by promtool.

use std::time::Duration;

use crate::harness::*;
use crate::routing::http_get;

/// The value of one sample, e.g. `pgsteer_transactions_total{pod="pg-0"}`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn scrape(env: &Env) -> String {
    http_get(env.admin(), "/metrics").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_queries_and_sessions_show_up_on_the_pods_counters() {
    let env = Env::start(1).await;
    let c = connect(env.rw(), None).await;
    for _ in 0..25 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    c.batch_execute("BEGIN; SELECT 1; SELECT 2; COMMIT")
        .await
        .unwrap();
    // 25 autocommit queries + 1 explicit transaction (+ whatever tokio-postgres
    // sent while connecting, which is nothing for simple queries). Sessions
    // fold their counts in at most every `FLUSH_INTERVAL`, while still open.
    eventually("26 transactions counted on pg-0", || async {
        sample(
            &scrape(&env).await,
            "pgsteer_transactions_total{pod=\"pg-0\"}",
        ) == Some(26.0)
    })
    .await;
    let text = scrape(&env).await;
    let tx = sample(&text, "pgsteer_transactions_total{pod=\"pg-0\"}").expect("tx counter");
    assert_eq!(tx, 26.0, "{text}");
    let q = sample(&text, "pgsteer_queries_total{pod=\"pg-0\"}").unwrap();
    assert_eq!(q, 25.0 + 4.0);
    assert_eq!(
        sample(
            &text,
            "pgsteer_backend_sessions{pod=\"pg-0\",role=\"primary\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "pgsteer_client_connections{listener=\"rw\"}"),
        Some(1.0)
    );
    assert!(sample(&text, "pgsteer_backend_sent_bytes_total{pod=\"pg-0\"}").unwrap() > 0.0);
    assert!(sample(&text, "pgsteer_query_duration_seconds_count{pod=\"pg-0\"}").unwrap() >= 26.0);
    assert_eq!(
        sample(&text, "pgsteer_member_role{pod=\"pg-0\",role=\"primary\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "pgsteer_member_role{pod=\"pg-1\",role=\"replica\"}"),
        Some(1.0)
    );
    // Env::start waited until every member was probed: each has its probe's round trip.
    for pod in ["pg-0", "pg-1"] {
        let series = format!("pgsteer_probe_duration_seconds{{pod=\"{pod}\"}}");
        let rtt = sample(&text, &series).unwrap_or_else(|| panic!("no {series}:\n{text}"));
        assert!(rtt > 0.0 && rtt < 5.0, "{series} = {rtt}");
    }
    assert!(
        !text.contains("127.0.0.1"),
        "metrics must not be labelled by address"
    );
    drop(c);
    eventually("session gauge back to zero", || async {
        sample(
            &scrape(&env).await,
            "pgsteer_backend_sessions{pod=\"pg-0\",role=\"primary\"}",
        ) == Some(0.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_change_moves_the_role_gauges_and_counts_drains_and_reroutes() {
    let env = Env::start(1).await;
    let before = sample(&scrape(&env).await, "pgsteer_role_changes_total").unwrap_or(0.0);
    let (_idle, conn) = connect_watched(env.rw(), None).await;
    let cluster = &env.cluster;
    tokio::task::block_in_place(|| {
        cluster
            .stop_node("pg-0", pgsteer_cluster::StopMode::Immediate)
            .unwrap();
        cluster.promote("pg-1").unwrap();
    });
    env.wait_topology("pg-1 primary", |t| {
        t.primary().is_some_and(|m| m.name == "pg-1")
    })
    .await;
    let _ = tokio::time::timeout(DEADLINE, conn).await;
    let c = connect(env.rw(), None).await;
    assert_eq!(server_port(&c).await, env.port_of("pg-1"));
    let text = scrape(&env).await;
    assert!(sample(&text, "pgsteer_role_changes_total").unwrap() > before);
    assert_eq!(
        sample(&text, "pgsteer_member_role{pod=\"pg-1\",role=\"primary\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "pgsteer_member_role{pod=\"pg-0\",role=\"primary\"}"),
        Some(0.0)
    );
    assert!(
        sample(&text, "pgsteer_reroute_seconds_count").unwrap() >= 1.0,
        "{text}"
    );
    assert!(sample(&text, "pgsteer_topology_generation").unwrap() >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_holds_and_cancels_are_counted() {
    let env = Env::start_with(1, |c| {
        c.routing.hold_timeout = Duration::from_millis(300);
    })
    .await;
    let _ = try_connect(env.rw(), "app", "app-secret", Some("-c pgsteer.bogus=1")).await;
    let _ = try_connect(
        env.ro(),
        "app",
        "app-secret",
        Some("-c pgsteer.pod=pg-1 -c pgsteer.route=primary"),
    )
    .await;
    let c = connect(env.rw(), None).await;
    c.cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    let text = scrape(&env).await;
    assert_eq!(
        sample(
            &text,
            "pgsteer_client_connections_rejected_total{listener=\"rw\",reason=\"bad_startup\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "pgsteer_client_connections_rejected_total{listener=\"ro\",reason=\"no_backend\"}"
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, "pgsteer_refused_after_hold_total"), Some(1.0));
    assert_eq!(sample(&text, "pgsteer_held_seconds_count"), Some(1.0));
    // The cancel request is served after the client's write returns: wait for its count.
    eventually("the cancel request counted", || async {
        let text = scrape(&env).await;
        sample(&text, "pgsteer_cancel_requests_total{result=\"forwarded\"}") == Some(1.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exposition_passes_promtool_check_metrics() {
    let env = Env::start(1).await;
    let c = connect(env.rw(), None).await;
    c.simple_query("SELECT 1").await.unwrap();
    let text = scrape(&env).await;
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/test installs the Debian prometheus package)");
    use tokio::io::AsyncWriteExt;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .await
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{report}"
    );
    assert!(
        report.trim().is_empty(),
        "promtool lint findings:\n{report}"
    );
}
