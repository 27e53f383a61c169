//! Pooled mode against real Postgres: pgsteer authenticates clients itself (SCRAM with
//! ClientKey pass-through), lends server connections per transaction, keeps each client's
//! settings and prepared statements, pins what cannot move, and fences by topology.

use std::net::SocketAddr;
use std::path::PathBuf;

use pgsteer::Config;
use pgsteer_cluster::{APP_PASSWORD, APP_USER, Cluster, Spec};

use crate::harness::{self, DEADLINE, Env, config_for, connect, count, try_connect};

/// A cluster with pgsteer in front whose rw listener pools per transaction.
pub struct Pooled {
    pub env: Env,
    _dir: TempDir,
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The SCRAM verifier Postgres stores for `user`.
pub fn verifier(cluster: &Cluster, user: &str) -> String {
    cluster
        .psql(
            "pg-0",
            &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'"),
        )
        .expect("psql")
        .trim()
        .to_owned()
}

/// A userlist with the app user's verifier (so pgsteer logs in by ClientKey pass-through).
pub fn userlist(cluster: &Cluster, dir: &TempDir) -> PathBuf {
    let path = dir.0.join("userlist.txt");
    let text = format!("\"{APP_USER}\" \"{}\"\n", verifier(cluster, APP_USER));
    std::fs::write(&path, text).expect("write userlist");
    path
}

impl Pooled {
    /// `replicas` replicas; the rw listener in transaction mode with pool `size`.
    pub async fn start(replicas: usize, tweak: impl FnOnce(&mut Config)) -> Pooled {
        let cluster = harness::cluster(Spec {
            replicas,
            ..Spec::default()
        })
        .await;
        let dir = TempDir(std::env::temp_dir().join(format!(
            "pgsteer-pooled-{}-{}",
            std::process::id(),
            cluster.nodes()[0].port
        )));
        std::fs::create_dir_all(&dir.0).expect("temp dir");
        let mut config = config_for(&cluster);
        config.pool.mode = pgsteer::config::PoolMode::Transaction;
        config.pool.size = 4;
        config.auth.auth_file = Some(userlist(&cluster, &dir));
        tweak(&mut config);
        let env = Env::start_on(cluster, config, replicas).await;
        Pooled { env, _dir: dir }
    }

    pub fn rw(&self) -> SocketAddr {
        self.env.rw()
    }

    /// The auth_file pgsteer was started with.
    pub fn auth_file(&self) -> PathBuf {
        self._dir.0.join("userlist.txt")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_client_logs_in_with_scram_and_runs_transactions_on_shared_connections() {
    let p = Pooled::start(0, |_| {}).await;
    let a = connect(p.rw(), None).await;
    let b = connect(p.rw(), None).await;
    for c in [&a, &b] {
        let row = c
            .query_one("SELECT current_user::text, 1 + 1", &[])
            .await
            .expect("query through the pool");
        assert_eq!(row.get::<_, String>(0), APP_USER);
        assert_eq!(row.get::<_, i32>(1), 2);
    }
    // Both clients' transactions ran on pooled connections: no more than the pool holds.
    let backends = count(&a, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend'", &[]).await;
    assert!(backends <= 4, "{backends} backends for the app user");
    let wrong = try_connect(p.rw(), APP_USER, "wrong", None)
        .await
        .unwrap_err();
    let db = wrong.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "28P01", "{db}");
    let unknown = try_connect(p.rw(), "nobody", "x", None).await.unwrap_err();
    let db2 = unknown.as_db_error().expect("an ErrorResponse");
    assert_eq!(db2.code().code(), "28P01");
    assert_eq!(
        db2.message().replace("nobody", "U"),
        db.message().replace(APP_USER, "U"),
        "an unknown user sees the same refusal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_follows_the_client_to_its_next_connection_and_does_not_leak_to_another() {
    let p = Pooled::start(0, |c| c.pool.size = 2).await;
    let a = connect(p.rw(), None).await;
    a.batch_execute("SET search_path = pg_catalog, public; SET application_name = 'client-a'")
        .await
        .unwrap();
    let b = connect(p.rw(), None).await;
    // Keep one connection busy in b's transaction so that a's next one may well be the other.
    b.batch_execute("BEGIN").await.unwrap();
    for _ in 0..5 {
        let row = a
            .query_one("SELECT current_setting('search_path'), current_setting('application_name'), pg_backend_pid()", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "pg_catalog, public");
        assert_eq!(row.get::<_, String>(1), "client-a");
    }
    b.batch_execute("COMMIT").await.unwrap();
    for _ in 0..5 {
        let row = b
            .query_one("SELECT current_setting('search_path')", &[])
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, String>(0),
            "\"$user\", public",
            "a's setting leaked to b"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_simple_extended_and_prepared_tpcb_with_200_clients_on_a_pool_of_10() {
    let p = Pooled::start(0, |c| c.pool.size = 10).await;
    let addr = p.rw();
    let init = pgbench(addr, &["-i", "-s", "2", "-q"]).await;
    assert!(init.0, "pgbench -i: {}", init.1);
    // pgbench prepares its statements synchronously per client (PQprepare): with several
    // clients per thread and fewer server connections than clients, a thread blocked in one
    // client's prepare holds its other clients' transactions open. One thread per client.
    for (mode, threads) in [("simple", "4"), ("extended", "4"), ("prepared", "200")] {
        let args = ["-M", mode, "-c", "200", "-j", threads, "-t", "20"];
        let (ok, out) = pgbench(addr, &args).await;
        assert!(ok, "pgbench -M {mode}: {out}");
        assert!(
            out.contains("number of transactions actually processed: 4000/4000"),
            "pgbench -M {mode}: {out}"
        );
        assert!(out.contains("number of failed transactions: 0"), "{out}");
    }
    let body = crate::routing::http_get(p.env.admin(), "/pools").await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let pools = v["pools"].as_array().expect("pools");
    assert!(!pools.is_empty());
    for pool in pools {
        assert!(pool["open"].as_u64().unwrap() <= 10, "{pool}");
    }
}

/// Runs pgbench through `addr` as the app user, within a generous deadline.
async fn pgbench(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let conn = harness::conn_str(addr, APP_USER, APP_PASSWORD, None);
    tokio::time::timeout(DEADLINE * 4, crate::pgbench::pgbench(args, &conn))
        .await
        .expect("pgbench finished in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_required_works_end_to_end_over_client_tls() {
    let pki = crate::tls::Pki::new();
    let leaf = crate::tls::proxy_leaf(&pki);
    let p = Pooled::start(0, |c| {
        crate::tls::client_tls(c, &pki, &leaf, pgsteer::config::ClientTlsMode::Allow)
    })
    .await;
    let port = p.rw().port();
    let conn = crate::tls::libpq("127.0.0.1", port, "sslmode=require channel_binding=require");
    let (ok, out, err) = crate::tls::psql_conn(&conn, "SELECT current_user").await;
    assert!(ok, "psql with channel_binding=require: {err}");
    assert_eq!(out, APP_USER);
    // A wrong password over TLS with binding is refused like any other.
    let bad = conn.replace(APP_PASSWORD, "wrong");
    let (ok, _, err) = crate::tls::psql_conn(&bad, "SELECT 1").await;
    assert!(!ok);
    assert!(err.contains("password authentication failed"), "{err}");
    // Cleartext-in-TLS is not offered: a plaintext client gets SCRAM without binding.
    let plain = crate::tls::libpq("127.0.0.1", port, "sslmode=disable");
    let (ok, out, err) = crate::tls::psql_conn(&plain, "SELECT 1").await;
    assert!(ok && out == "1", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_finds_users_missing_from_auth_file_and_refuses_wrong_passwords() {
    let cluster = harness::cluster(Spec {
        replicas: 0,
        ..Spec::default()
    })
    .await;
    tokio::task::block_in_place(|| {
        cluster
            .psql(
                "pg-0",
                "CREATE ROLE pgsteer_auth LOGIN PASSWORD 'auth-secret'",
            )
            .unwrap();
        let sql = include_str!("../../../deploy/sql/auth_query.sql");
        cluster.psql("pg-0", sql).unwrap();
    });
    let dir = TempDir(std::env::temp_dir().join(format!(
        "pgsteer-auth-query-{}-{}",
        std::process::id(),
        cluster.nodes()[0].port
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    let password_file = dir.0.join("auth-password");
    std::fs::write(&password_file, "auth-secret\n").unwrap();
    let mut config = config_for(&cluster);
    config.pool.mode = pgsteer::config::PoolMode::Transaction;
    config.auth.auth_user = Some("pgsteer_auth".into());
    config.auth.auth_password_file = Some(password_file);
    config.auth.auth_query = Some("SELECT uname, phash FROM pgsteer.user_lookup($1)".into());
    let env = Env::start_on(cluster, config, 0).await;
    let c = connect(env.rw(), None).await;
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, APP_USER);
    for (user, password) in [(APP_USER, "wrong"), ("nobody", "x"), ("postgres", "x")] {
        let e = try_connect(env.rw(), user, password, None)
            .await
            .unwrap_err();
        let code = e.as_db_error().map(|d| d.code().code().to_owned());
        assert_eq!(code.as_deref(), Some("28P01"), "{user}: {e}");
    }
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_is_asked_only_where_configured_and_logs_in_with_the_stored_hash() {
    use pgsteer_cluster::{MD5_PASSWORD, MD5_USER};
    let cluster = harness::cluster(Spec {
        replicas: 0,
        ..Spec::default()
    })
    .await;
    let dir = TempDir(std::env::temp_dir().join(format!(
        "pgsteer-md5-{}-{}",
        std::process::id(),
        cluster.nodes()[0].port
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    let md5 = verifier(&cluster, MD5_USER);
    assert!(md5.starts_with("md5"), "{md5}");
    let path = dir.0.join("userlist.txt");
    std::fs::write(&path, format!("\"{MD5_USER}\" \"{md5}\"\n")).unwrap();
    let mut config = config_for(&cluster);
    config.pool.mode = pgsteer::config::PoolMode::Transaction;
    config.auth.auth_file = Some(path);
    config.auth.method = pgsteer::config::AuthMethod::Md5;
    let env = Env::start_on(cluster, config, 0).await;
    let c = try_connect(env.rw(), MD5_USER, MD5_PASSWORD, None)
        .await
        .expect("md5 login through the pool");
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, MD5_USER);
    let e = try_connect(env.rw(), MD5_USER, "wrong", None)
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("28P01"));
    drop(dir);
}
