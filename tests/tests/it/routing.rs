//! Where sessions land: listeners, overrides, pins, promotion, holding.

use pgsteer_cluster::StopMode;
use pgsteer_discovery::Role;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rw_lands_on_the_primary_and_ro_on_a_replica() {
    let env = Env::start(2).await;
    let rw = connect(env.rw(), None).await;
    let in_recovery: bool = rw
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!in_recovery, "rw session is on a replica");
    assert_eq!(server_port(&rw).await, env.port_of("pg-0"));

    let ro = connect(env.ro(), None).await;
    let in_recovery: bool = ro
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery, "ro session is on the primary");

    // psql, a libpq client, lands the same way.
    let (ok, out, err) = psql(env.rw(), None, "SELECT pg_is_in_recovery()").await;
    assert!(ok, "{err}");
    assert_eq!(out, "f");
    let (ok, out, err) = psql(env.ro(), None, "SELECT pg_is_in_recovery()").await;
    assert!(ok, "{err}");
    assert_eq!(out, "t");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ro_sessions_spread_over_replicas_by_fewest_sessions() {
    let env = Env::start(2).await;
    let a = connect(env.ro(), None).await;
    let b = connect(env.ro(), None).await;
    let (pa, pb) = (server_port(&a).await, server_port(&b).await);
    assert_ne!(
        pa, pb,
        "two sessions went to the same replica while another had none"
    );
    assert_ne!(pa, env.port_of("pg-0"));
    assert_ne!(pb, env.port_of("pg-0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_pin_a_pod_and_override_the_route_and_are_stripped() {
    let env = Env::start(2).await;
    let pinned = connect(env.rw(), Some("-c pgsteer.pod=pg-2")).await;
    assert_eq!(server_port(&pinned).await, env.port_of("pg-2"));

    let replica = connect(env.rw(), Some("-c pgsteer.route=replica")).await;
    let in_recovery: bool = replica
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery);

    let primary = connect(
        env.ro(),
        Some("-c pgsteer.route=primary -c application_name=kept"),
    )
    .await;
    assert_eq!(server_port(&primary).await, env.port_of("pg-0"));
    // our settings never reach Postgres; the client's own ones do
    let name: String = primary
        .query_one("SHOW application_name", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "kept");

    let (ok, out, err) = psql(
        env.rw(),
        Some("-c pgsteer.pod=pg-1"),
        "SELECT inet_server_port()",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, env.port_of("pg-1").to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_pgsteer_settings_and_pods_are_clear_fatal_errors() {
    let env = Env::start(1).await;
    let e = try_connect(
        env.rw(),
        "app",
        "app-secret",
        Some("-c pgsteer.rout=replica"),
    )
    .await
    .expect_err("unknown setting refused");
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "42704");
    assert!(db.message().contains("pgsteer.rout"), "{}", db.message());

    let e = try_connect(env.rw(), "app", "app-secret", Some("-c pgsteer.pod=pg-9"))
        .await
        .expect_err("unknown pod refused");
    let db = e.as_db_error().expect("a server error");
    assert!(db.message().contains("pg-9"), "{}", db.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoting_a_replica_by_hand_moves_new_rw_sessions_to_it() {
    let env = Env::start(1).await;
    let before = connect(env.rw(), None).await;
    assert_eq!(server_port(&before).await, env.port_of("pg-0"));

    let cluster = &env.cluster;
    tokio::task::block_in_place(|| {
        cluster.stop_node("pg-0", StopMode::Fast).unwrap();
        cluster.promote("pg-1").unwrap();
    });
    env.wait_topology("pg-1 is primary", |t| {
        t.primary().is_some_and(|m| m.name == "pg-1")
    })
    .await;
    let after = connect(env.rw(), None).await;
    assert_eq!(server_port(&after).await, env.port_of("pg-1"));
    after
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS promoted(x int); INSERT INTO promoted VALUES (1)",
        )
        .await
        .expect("writes work on the new primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_primary_new_rw_sessions_wait_then_get_57p03() {
    let env = Env::start_with(1, |c| {
        c.routing.hold_timeout = std::time::Duration::from_millis(800)
    })
    .await;
    let cluster = &env.cluster;
    tokio::task::block_in_place(|| cluster.stop_node("pg-0", StopMode::Immediate).unwrap());
    env.wait_topology("pg-0 unreachable", |t| {
        t.member("pg-0")
            .is_some_and(|m| m.role == Role::Unreachable)
    })
    .await;
    let started = std::time::Instant::now();
    let e = try_connect(env.rw(), "app", "app-secret", None)
        .await
        .expect_err("refused");
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "57P03");
    assert!(db.message().contains("primary"), "{}", db.message());
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(800),
        "did not hold"
    );
    // reads still work
    let ro = connect(env.ro(), None).await;
    assert_eq!(server_port(&ro).await, env.port_of("pg-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_rw_session_is_released_when_a_primary_appears() {
    let env = Env::start(1).await;
    let cluster = &env.cluster;
    tokio::task::block_in_place(|| cluster.stop_node("pg-0", StopMode::Fast).unwrap());
    env.wait_topology("no primary", |t| t.primary().is_none())
        .await;
    let addr = env.rw();
    let held = tokio::spawn(async move { try_connect(addr, "app", "app-secret", None).await });
    tokio::task::block_in_place(|| cluster.promote("pg-1").unwrap());
    let client = held
        .await
        .unwrap()
        .expect("held session connects once a primary exists");
    assert_eq!(server_port(&client).await, env.port_of("pg-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_endpoint_reports_members_roles_and_sessions() {
    let env = Env::start(1).await;
    let _s = connect(env.rw(), None).await;
    let body = http_get(env.admin(), "/topology").await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(v["generation"].as_u64().unwrap() >= 1);
    let members = v["members"].as_array().unwrap();
    let pg0 = members.iter().find(|m| m["name"] == "pg-0").unwrap();
    assert_eq!(pg0["role"], "primary");
    assert_eq!(pg0["sessions"], 1);
    assert_eq!(pg0["address"], format!("127.0.0.1:{}", env.port_of("pg-0")));
    let pg1 = members.iter().find(|m| m["name"] == "pg-1").unwrap();
    assert_eq!(pg1["role"], "replica");
    assert!(pg1["lag_bytes"].is_u64());
    for m in [pg0, pg1] {
        let rtt = m["probe_seconds"].as_f64().expect("probe round trip");
        assert!(rtt > 0.0 && rtt < 5.0, "{m}");
    }
    assert!(http_get(env.admin(), "/healthz").await.contains("ok"));
    assert!(http_get(env.admin(), "/readyz").await.contains("ready"));
}

/// A minimal HTTP/1.1 GET.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}
