//! Real clusters: replication, logins over TCP, promotion, restart and teardown.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgsteer_cluster::{
    APP_PASSWORD, APP_USER, Cluster, DATABASE, MD5_PASSWORD, MD5_USER, Node, PROBE_PASSWORD,
    PROBE_USER, Spec, StopMode, TRUST_USER,
};

fn start(replicas: usize) -> Cluster {
    let spec = Spec {
        replicas,
        max_connections: 50,
        ..Spec::default()
    };
    Cluster::start(&spec).unwrap_or_else(|e| panic!("cluster did not start: {e}"))
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `psql` over TCP as `user`; Ok(trimmed output) or Err(stderr).
fn tcp_psql(node: &Node, user: &str, password: Option<&str>, sql: &str) -> Result<String, String> {
    let mut conninfo = format!(
        "host=127.0.0.1 port={} user={user} dbname={DATABASE} sslmode=disable connect_timeout=10",
        node.port
    );
    if let Some(password) = password {
        conninfo.push_str(&format!(" password={password}"));
    }
    let mut cmd = Command::new("psql");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .arg(conninfo)
        .args([
            "-X",
            "-w",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("psql runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Command lines of live processes that mention `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let is_pid = entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit());
        if !is_pid {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(cmdline);
        }
    }
    found
}

#[test]
fn a_one_replica_cluster_streams_writes_from_the_primary_to_the_replica() {
    let cluster = start(1);
    let names: Vec<&str> = cluster.nodes().iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["pg-0", "pg-1"]);
    let replica = cluster.node("pg-1");
    assert_eq!(replica.address(), format!("127.0.0.1:{}", replica.port));
    assert!(!cluster.is_in_recovery("pg-0").unwrap());
    assert!(cluster.is_in_recovery("pg-1").unwrap());
    assert_eq!(
        cluster
            .psql(
                "pg-0",
                "SELECT application_name, state FROM pg_stat_replication"
            )
            .unwrap(),
        "pg-1|streaming"
    );

    cluster
        .psql("pg-0", "CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
        .unwrap();
    let seen = eventually("the row on the replica", Duration::from_secs(20), || {
        cluster.psql("pg-1", "SELECT x FROM t").ok()
    });
    assert_eq!(seen, "42");
    let err = cluster
        .psql("pg-1", "INSERT INTO t VALUES (1)")
        .unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");

    let unknown = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cluster.node("pg-7")));
    assert!(unknown.is_err(), "node() must panic on an unknown name");
    assert!(cluster.psql("pg-7", "SELECT 1").is_err());
}

#[test]
fn every_test_role_logs_in_over_tcp_with_its_own_method() {
    let cluster = start(0);
    let primary = cluster.node("pg-0");

    let who = "SELECT current_user || '@' || current_database()";
    assert_eq!(
        tcp_psql(primary, APP_USER, Some(APP_PASSWORD), who).unwrap(),
        "app@app"
    );
    assert_eq!(
        tcp_psql(primary, MD5_USER, Some(MD5_PASSWORD), who).unwrap(),
        "app_md5@app"
    );
    assert_eq!(
        tcp_psql(primary, TRUST_USER, None, who).unwrap(),
        "app_trust@app"
    );
    assert_eq!(
        tcp_psql(
            primary,
            PROBE_USER,
            Some(PROBE_PASSWORD),
            "SELECT pg_is_in_recovery()"
        )
        .unwrap(),
        "f"
    );

    let wrong = tcp_psql(primary, APP_USER, Some("wrong"), who).unwrap_err();
    assert!(wrong.contains("password authentication failed"), "{wrong}");
    let wrong = tcp_psql(primary, MD5_USER, Some("wrong"), who).unwrap_err();
    assert!(wrong.contains("password authentication failed"), "{wrong}");

    let stored = cluster
        .psql(
            "pg-0",
            "SELECT rolname || ':' || CASE WHEN rolpassword LIKE 'SCRAM-SHA-256$%' THEN 'scram' \
             WHEN rolpassword LIKE 'md5%' THEN 'md5' ELSE 'other' END FROM pg_authid \
             WHERE rolname IN ('app', 'app_md5', 'pgsteer') ORDER BY rolname",
        )
        .unwrap();
    assert_eq!(stored, "app:scram\napp_md5:md5\npgsteer:scram");

    // The application role owns its database and can create tables in it.
    tcp_psql(
        primary,
        APP_USER,
        Some(APP_PASSWORD),
        "CREATE TABLE mine (id int)",
    )
    .unwrap();
    tcp_psql(primary, TRUST_USER, None, "CREATE TABLE theirs (id int)").unwrap();
}

#[test]
fn promoting_the_replica_after_stopping_the_primary_makes_it_writable() {
    let cluster = start(1);
    cluster.stop_node("pg-0", StopMode::Fast).unwrap();
    cluster.stop_node("pg-0", StopMode::Fast).unwrap(); // already down: nothing to do
    assert!(cluster.psql("pg-0", "SELECT 1").is_err());

    cluster.promote("pg-1").unwrap();
    assert!(!cluster.is_in_recovery("pg-1").unwrap());
    cluster
        .psql(
            "pg-1",
            "CREATE TABLE after_failover (id int); INSERT INTO after_failover VALUES (1)",
        )
        .unwrap();
    let node = cluster.node("pg-1");
    assert_eq!(
        tcp_psql(
            node,
            APP_USER,
            Some(APP_PASSWORD),
            "CREATE TABLE t (x int); SELECT 'ok'"
        )
        .unwrap(),
        "ok"
    );
}

#[test]
fn a_replica_stopped_immediately_streams_again_after_a_restart() {
    let cluster = start(1);
    cluster.stop_node("pg-1", StopMode::Immediate).unwrap();
    cluster.start_node("pg-1").unwrap();
    cluster.start_node("pg-1").unwrap(); // already up: nothing to do
    cluster.wait_streaming(1, Duration::from_secs(30)).unwrap();
    assert!(cluster.is_in_recovery("pg-1").unwrap());
}

#[test]
fn dropping_the_cluster_removes_its_directory_and_leaves_no_server_running() {
    let mut cluster = start(1);
    let dir = cluster.dir().to_path_buf();
    let needle = format!("{}/", dir.file_name().unwrap().to_string_lossy());
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port).collect();
    assert!(
        !processes_mentioning(&needle).is_empty(),
        "no server process mentions {needle}"
    );
    cluster.stop();
    cluster.stop(); // idempotent
    drop(cluster);

    assert!(!Path::new(&dir).exists(), "{} still exists", dir.display());
    let left = processes_mentioning(&needle);
    assert!(left.is_empty(), "still running: {left:?}");
    for port in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} open"
        );
    }
}
