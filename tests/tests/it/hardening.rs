//! Bad input and limits: clear errors, nothing else disturbed.

use std::time::Duration;

use pgsteer_protocol::startup::{CANCEL_REQUEST_CODE, SSL_REQUEST_CODE};

use crate::harness::*;

fn startup_with_len(len: i32) -> Vec<u8> {
    let mut v = len.to_be_bytes().to_vec();
    v.extend_from_slice(&0x0003_0000u32.to_be_bytes());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_startup_packets_get_08p01_and_others_keep_working() {
    let env = Env::start(1).await;
    let mut garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    garbage.resize(64, b'x');
    let mut bad_version = 16i32.to_be_bytes().to_vec();
    bad_version.extend_from_slice(&0x0002_0000u32.to_be_bytes());
    bad_version.extend_from_slice(b"user\0\0\0\0");
    let mut no_terminator = 17i32.to_be_bytes().to_vec();
    no_terminator.extend_from_slice(&0x0003_0000u32.to_be_bytes());
    no_terminator.extend_from_slice(b"user\0app\0x");
    let mut odd_ssl = 12i32.to_be_bytes().to_vec();
    odd_ssl.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    odd_ssl.extend_from_slice(&[0, 0, 0, 0]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("oversize length", startup_with_len(1_000_000)),
        ("negative length", startup_with_len(-5)),
        ("tiny length", startup_with_len(3)),
        ("http garbage", garbage),
        ("protocol 2.0", bad_version),
        ("missing terminator", no_terminator),
        ("odd SSLRequest length", odd_ssl),
    ];
    for (what, bytes) in cases {
        let mut s = raw(env.rw(), &bytes).await;
        let e = read_error(&mut s)
            .await
            .unwrap_or_else(|| panic!("{what}: no error sent"));
        assert_eq!(e.severity, "FATAL", "{what}");
        assert_eq!(e.code, "08P01", "{what}: {e:?}");
        assert!(closed(&mut s).await, "{what}: connection left open");
    }
    let c = connect(env.rw(), None).await;
    assert_eq!(server_port(&c).await, env.port_of("pg-0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_user_name_is_refused_with_28000() {
    let env = Env::start(1).await;
    let mut pkt = Vec::new();
    let body = b"database\0app\0\0";
    pkt.extend_from_slice(&((8 + body.len()) as i32).to_be_bytes());
    pkt.extend_from_slice(&0x0003_0000u32.to_be_bytes());
    pkt.extend_from_slice(body);
    let mut s = raw(env.rw(), &pkt).await;
    let e = read_error(&mut s).await.expect("error");
    assert_eq!(e.code, "28000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_request_is_declined_so_sslmode_prefer_works() {
    let env = Env::start(1).await;
    let mut req = 8i32.to_be_bytes().to_vec();
    req.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    let mut s = raw(env.rw(), &req).await;
    let mut b = [0u8; 1];
    use tokio::io::AsyncReadExt;
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"N");
    let conn =
        conn_str(env.rw(), "app", "app-secret", None).replace("sslmode=disable", "sslmode=prefer");
    let out = tokio::process::Command::new("psql")
        .args([conn.as_str(), "-XAtc", "SELECT 1"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_finish_startup_are_closed_and_do_not_block_others() {
    let env = Env::start_with(1, |c| c.limits.startup_timeout = Duration::from_millis(500)).await;
    let mut idle = Vec::new();
    for i in 0..200 {
        // half send nothing, half send a partial startup packet
        let bytes: &[u8] = if i % 2 == 0 {
            b""
        } else {
            &[0, 0, 0, 40, 0, 3]
        };
        idle.push(raw(env.rw(), bytes).await);
    }
    // a normal client is served meanwhile
    let c = connect(env.rw(), None).await;
    assert_eq!(server_port(&c).await, env.port_of("pg-0"));
    for s in idle.iter_mut() {
        assert!(closed(s).await, "a stalled client was not closed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_beyond_the_cap_get_53300() {
    let env = Env::start_with(1, |c| c.limits.max_client_connections = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(env.rw(), None).await);
    }
    let e = try_connect(env.rw(), "app", "app-secret", None)
        .await
        .expect_err("over the cap");
    let db = e.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "53300");
    // psql (libpq) reads the early error too
    let (ok, _, err) = psql(env.rw(), None, "SELECT 1").await;
    assert!(!ok);
    assert!(err.contains("too many clients"), "{err}");
    drop(held.pop());
    eventually("a slot frees up", || async {
        try_connect(env.rw(), "app", "app-secret", None)
            .await
            .is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requests_with_unknown_keys_are_dropped_silently() {
    let env = Env::start(1).await;
    let mut pkt = 16i32.to_be_bytes().to_vec();
    pkt.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
    pkt.extend_from_slice(&[0, 0, 0, 1, 1, 2, 3, 4]);
    let mut s = raw(env.rw(), &pkt).await;
    assert_eq!(
        read_error(&mut s).await,
        None,
        "no answer to a cancel request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_query_gives_the_client_an_error_not_a_hang() {
    let env = Env::start(1).await;
    let c = connect(env.rw(), None).await;
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let q = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(60)").await });
    let killer = connect(env.rw(), None).await;
    eventually("sleeping", || async {
        let n: i64 = killer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        n == 1
    })
    .await;
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let r = tokio::time::timeout(DEADLINE, q)
        .await
        .expect("no hang")
        .unwrap();
    assert!(r.is_err(), "the query must fail");
}
