//! Passthrough authentication and cancel requests.

use std::time::Duration;

use pgsteer_cluster::{MD5_PASSWORD, MD5_USER, TRUST_USER};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_md5_and_trust_pass_through_and_wrong_passwords_fail() {
    let env = Env::start(1).await;
    for (user, pw) in [
        ("app", "app-secret"),
        (MD5_USER, MD5_PASSWORD),
        (TRUST_USER, ""),
    ] {
        let c = try_connect(env.rw(), user, pw, None)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        let who: String = c
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, user);
    }
    for (user, pw) in [("app", "wrong"), (MD5_USER, "wrong")] {
        let e = try_connect(env.rw(), user, pw, None)
            .await
            .expect_err("refused");
        let db = e.as_db_error().expect("the server's own error is relayed");
        assert_eq!(db.code().code(), "28P01", "{user}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_query_is_cancelled_through_the_proxy() {
    let env = Env::start(1).await;
    for addr in [env.rw(), env.ro()] {
        let c = connect(addr, None).await;
        // watch the backend directly, not through the proxy
        let port = server_port(&c).await;
        let direct = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let watcher = try_connect(direct, "app", "app-secret", None)
            .await
            .unwrap();
        let token = c.cancel_token();
        let sleeper = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(60)").await });
        wait_running(&watcher, "SELECT pg_sleep(60)").await;
        let started = std::time::Instant::now();
        cancel_ends(token, sleeper).await;
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
