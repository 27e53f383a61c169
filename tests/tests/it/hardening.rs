//! Bad input and limits: clear errors, nothing else disturbed.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::BytesMut;
use pgsteer_cluster::{DATABASE, TRUST_USER};
use pgsteer_protocol::backend::BackendMessage;
use pgsteer_protocol::frame::split_frame;
use pgsteer_protocol::startup::{CANCEL_REQUEST_CODE, SSL_REQUEST_CODE};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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
        let n = count(
            &killer,
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
            &[&pid],
        )
        .await;
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

// ---------------------------------------------------------------------------------------------
// Misbehaving clients against a running proxy: after each, a normal client still works and the
// proxy's sockets come back to their baseline.
//
// The proxy runs in this (multi-threaded, shared) test process, so "its descriptors" are the
// process's fds that are TCP sockets either accepted on this proxy's listeners or connected to
// this test's own servers (/proc/self/fd joined with /proc/self/net/tcp by inode): other tests'
// sockets do not disturb the count.
// ---------------------------------------------------------------------------------------------

/// TCP sockets in `/proc/self/net/tcp{,6}`: inode → (local port, remote port).
fn tcp_sockets() -> HashMap<u64, (u16, u16)> {
    let mut out = HashMap::new();
    for file in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = |addr: &str| {
                addr.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            if let (Some(local), Some(remote), Some(Ok(inode))) = (
                f.get(1).and_then(|a| port(a)),
                f.get(2).and_then(|a| port(a)),
                f.get(9).map(|i| i.parse::<u64>()),
            ) && inode != 0
            {
                out.insert(inode, (local, remote));
            }
        }
    }
    out
}

/// Open descriptors of this process that belong to `env`'s proxy: its listeners, the client
/// connections it accepted, and its connections to the cluster's servers.
fn proxy_fds(env: &Env) -> usize {
    let listeners: HashSet<u16> = [env.proxy.rw, env.proxy.ro]
        .into_iter()
        .flatten()
        .map(|a| a.port())
        .collect();
    let servers: HashSet<u16> = env.cluster.nodes().iter().map(|n| n.port).collect();
    let sockets = tcp_sockets();
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .filter_map(|inode: u64| sockets.get(&inode))
        .filter(|(local, remote)| listeners.contains(local) || servers.contains(remote))
        .count()
}

/// Waits until the proxy holds no more descriptors than `baseline`.
async fn fds_return_to(env: &Env, baseline: usize, after: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let now = proxy_fds(env);
        if now <= baseline {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after {after}: the proxy still holds {now} sockets, baseline {baseline}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The proxy's descriptor baseline, once the probe connections are settled.
async fn fd_baseline(env: &Env) -> usize {
    // A first normal session makes sure everything lazily opened is open.
    drop(connect(env.rw(), None).await);
    let mut last = proxy_fds(env);
    // Settled when two reads 200 ms apart agree.
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = proxy_fds(env);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// A normal client gets a normal answer, then leaves.
async fn a_normal_client_works(env: &Env) {
    let c = connect(env.rw(), None).await;
    let rows = c.simple_query("SELECT 41 + 1").await.expect("query");
    assert!(
        rows.iter().any(|m| matches!(m,
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("42"))),
        "unexpected answer: {rows:?}"
    );
}

/// A StartupMessage (3.0) for `user` on the test database.
fn startup_packet(user: &str) -> Vec<u8> {
    let mut body = 0x0003_0000u32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", DATABASE)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    p
}

/// One tagged message.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Reads one message from a raw connection (tag, body); `None` on close.
async fn read_message(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut header = [0u8; 5];
        s.read_exact(&mut header).await.ok()?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        assert!(
            (4..1 << 20).contains(&len),
            "bad length {len} from the proxy"
        );
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.ok()?;
        Some((header[0], body))
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the proxy answered in time")
}

/// A raw session of the trusted role, read up to its first ReadyForQuery.
async fn trusted_session(env: &Env) -> TcpStream {
    let mut s = raw(env.rw(), &startup_packet(TRUST_USER)).await;
    loop {
        match read_message(&mut s).await {
            Some((b'Z', _)) => return s,
            Some((b'E', body)) => panic!("startup failed: {}", String::from_utf8_lossy(&body)),
            Some(_) => {}
            None => panic!("closed during startup"),
        }
    }
}

/// A small deterministic generator (xorshift64*), so a failing case can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_a_valid_startup_gets_08p01_and_the_proxy_carries_on() {
    let env = Env::start(0).await;
    let baseline = fd_baseline(&env).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "negative length",
            [&b"Q"[..], &(-1i32).to_be_bytes()].concat(),
        ),
        ("length below 4", [&b"Q"[..], &2i32.to_be_bytes()].concat()),
        (
            "oversize length",
            [&b"Q"[..], &i32::MAX.to_be_bytes()].concat(),
        ),
        ("unknown message type", message(b'!', b"\0\0\0\0")),
        ("text", b"hello, is this thing on?\r\n".to_vec()),
        ("a second startup packet", startup_packet(TRUST_USER)),
    ];
    for (what, bytes) in cases {
        let mut s = trusted_session(&env).await;
        s.write_all(&bytes).await.expect("write");
        let e = read_error(&mut s)
            .await
            .unwrap_or_else(|| panic!("{what}: closed without an error"));
        assert_eq!(
            (e.severity.as_str(), e.code.as_str()),
            ("FATAL", "08P01"),
            "{what}: {e:?}"
        );
        assert!(closed(&mut s).await, "{what}: connection left open");
    }
    a_normal_client_works(&env).await;
    fds_return_to(&env, baseline, "garbage frames").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_an_ssl_request_is_refused_with_08p01() {
    use tokio::io::AsyncReadExt;
    let env = Env::start(0).await;
    let baseline = fd_baseline(&env).await;
    let mut ssl = 8i32.to_be_bytes().to_vec();
    ssl.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a TLS ClientHello",
            vec![0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03],
        ),
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("another SSLRequest", ssl.clone()),
        ("length 3", startup_with_len(3)),
        ("oversize length", startup_with_len(100_000)),
    ];
    for (what, bytes) in cases {
        let mut s = raw(env.rw(), &ssl).await;
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer)
            .await
            .expect("an answer to SSLRequest");
        assert_eq!(&answer, b"N", "{what}: no TLS is configured");
        s.write_all(&bytes).await.expect("write");
        let e = read_error(&mut s)
            .await
            .unwrap_or_else(|| panic!("{what}: closed without an error"));
        assert_eq!(e.code, "08P01", "{what}: {e:?}");
        assert!(closed(&mut s).await, "{what}: connection left open");
    }
    a_normal_client_works(&env).await;
    fds_return_to(&env, baseline, "SSLRequest then garbage").await;
}

/// One random connection: what it sends (then it closes its sending side).
fn random_case(rng: &mut Rng) -> Vec<u8> {
    let frontend_tags = b"QPBEDSHCXdcfFp";
    match rng.below(6) {
        // Anything.
        0 => {
            let n = rng.below(512) as usize;
            rng.bytes(n)
        }
        // A plausible startup length, then noise (often truncated).
        1 => {
            let len = 8 + rng.below(10_000) as u32;
            let n = rng.below(600) as usize;
            [&len.to_be_bytes()[..], &rng.bytes(n)].concat()
        }
        // SSLRequest, then noise.
        2 => {
            let mut v = 8i32.to_be_bytes().to_vec();
            v.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
            let n = rng.below(64) as usize;
            v.extend(rng.bytes(n));
            v
        }
        // A cancel request with a random key, sometimes with trailing bytes.
        3 => {
            let mut v = 16i32.to_be_bytes().to_vec();
            v.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
            let n = 8 + rng.below(3) as usize;
            v.extend(rng.bytes(n));
            v
        }
        // A valid startup, then noise for the relay and the server.
        4 => {
            let n = rng.below(256) as usize;
            [startup_packet(TRUST_USER), rng.bytes(n)].concat()
        }
        // A valid startup, then well-framed messages of frontend types with random bodies.
        _ => {
            let mut v = startup_packet(TRUST_USER);
            for _ in 0..1 + rng.below(4) {
                let tag = frontend_tags[rng.below(frontend_tags.len() as u64) as usize];
                let n = rng.below(48) as usize;
                v.extend(message(tag, &rng.bytes(n)));
            }
            // Sometimes cut the last message short.
            let cut = rng.below(4) as usize;
            v.truncate(v.len() - cut.min(v.len()));
            v
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_of_many_shapes_are_closed_cleanly_and_leave_nothing_behind() {
    let env = Env::start_with(0, |c| c.limits.startup_timeout = Duration::from_secs(3)).await;
    let baseline = fd_baseline(&env).await;
    let seed = 0x5eed_cafe_f00d_u64;
    let mut rng = Rng(seed);
    let rw = env.rw();
    for batch in 0..8 {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..25 {
            let bytes = random_case(&mut rng);
            tasks.spawn(async move {
                let mut s = TcpStream::connect(rw).await.expect("connect");
                // The proxy may refuse and close before everything is written.
                let _ = s.write_all(&bytes).await;
                let _ = s.shutdown().await;
                (batch * 25 + i, closed(&mut s).await, bytes)
            });
        }
        while let Some(r) = tasks.join_next().await {
            let (case, was_closed, bytes) = r.expect("case task");
            assert!(
                was_closed,
                "seed {seed:#x} case {case}: the proxy did not close; input {bytes:02x?}"
            );
        }
    }
    a_normal_client_works(&env).await;
    fds_return_to(&env, baseline, "random input").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_its_startup_one_byte_a_second_is_closed_by_startup_timeout() {
    let env = Env::start_with(0, |c| c.limits.startup_timeout = Duration::from_secs(1)).await;
    let baseline = fd_baseline(&env).await;
    let packet = startup_packet(TRUST_USER);
    let s = TcpStream::connect(env.rw()).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let started = std::time::Instant::now();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        for b in packet {
            if wr.write_all(&[b]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        sent
    });
    // Read the answer on the read half.
    let mut buf = BytesMut::new();
    let error = tokio::time::timeout(DEADLINE, async {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(f) = split_frame(&mut buf, 1 << 20).expect("valid frames")
                && let Ok(BackendMessage::ErrorResponse(e)) = BackendMessage::parse(f.tag, &f.body)
            {
                return Some((
                    e.code().unwrap_or_default().into_owned(),
                    e.message().unwrap_or_default().into_owned(),
                ));
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("closed in time");
    let elapsed = started.elapsed();
    let (code, message) = error.expect("an error before the close");
    assert_eq!(code, "08P01", "{message}");
    assert!(message.contains("startup packet"), "{message}");
    assert!(
        elapsed < Duration::from_secs(5),
        "closed only after {elapsed:?}"
    );
    writer.abort();
    a_normal_client_works(&env).await;
    fds_return_to(&env, baseline, "a slow client").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_vanish_mid_authentication_leave_nothing_behind() {
    let env = Env::start(0).await;
    let baseline = fd_baseline(&env).await;
    for i in 0..40 {
        let mut s = raw(env.rw(), &startup_packet(pgsteer_cluster::APP_USER)).await;
        let (tag, body) = read_message(&mut s)
            .await
            .expect("an authentication request");
        assert_eq!(tag, b'R');
        assert_eq!(&body[..4], &10u32.to_be_bytes(), "SASL");
        if i % 2 == 1 {
            // Half-way into SASL: the start of a SASLInitialResponse, then gone.
            let _ = s.write_all(b"p\0\0\0\x40SCRAM-SHA-256\0").await;
        }
        drop(s);
    }
    a_normal_client_works(&env).await;
    fds_return_to(&env, baseline, "clients vanishing mid-authentication").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_vanish_mid_query_leave_nothing_behind() {
    let env = Env::start(0).await;
    let baseline = fd_baseline(&env).await;
    {
        // The count sees a live session: the accepted client socket and the backend one.
        let _s = trusted_session(&env).await;
        let open = proxy_fds(&env);
        assert!(
            open >= baseline + 2,
            "{open} sockets with a session open, baseline {baseline}"
        );
    }
    for i in 0..20 {
        let mut s = trusted_session(&env).await;
        let sql = if i % 2 == 0 {
            // A long result: the relay is mid-stream when the client goes.
            "SELECT repeat('x', 100) FROM generate_series(1, 200000)\0"
        } else {
            "SELECT pg_sleep(0.3)\0"
        };
        s.write_all(&message(b'Q', sql.as_bytes()))
            .await
            .expect("query");
        if i % 2 == 0 {
            let _ = read_message(&mut s).await;
        }
        drop(s);
    }
    a_normal_client_works(&env).await;
    fds_return_to(&env, baseline, "clients vanishing mid-query").await;
}

/// How many descriptors one flood batch may use: a quarter of what the open-file limit leaves.
fn flood_batch() -> usize {
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))?
                .split_whitespace()
                .nth(3)?
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(1024);
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    // Each connection costs two descriptors here (client side and the proxy's side).
    (limit.saturating_sub(open) / 8).clamp(16, 500)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_ten_thousand_connections_leaves_no_descriptor_behind() {
    // scripts/test raises `ulimit -n`; with a low limit the batches get smaller, not the flood.
    let env = Env::start(0).await;
    let baseline = fd_baseline(&env).await;
    let total = 10_000;
    let batch = flood_batch();
    let startup = startup_packet(TRUST_USER);
    let started = std::time::Instant::now();
    let mut opened = 0;
    while opened < total {
        let n = batch.min(total - opened);
        let mut conns = Vec::with_capacity(n);
        for i in 0..n {
            let mut s = TcpStream::connect(env.rw()).await.expect("connect");
            match (opened + i) % 50 {
                // A full startup, then gone before the proxy answers.
                0 => {
                    let _ = s.write_all(&startup).await;
                }
                // Half a startup packet.
                1..=10 => {
                    let _ = s.write_all(&startup[..startup.len() / 2]).await;
                }
                // Nothing at all.
                _ => {}
            }
            conns.push(s);
        }
        opened += n;
        drop(conns);
    }
    let flood = started.elapsed();
    eprintln!("flood: {total} connections in batches of {batch} took {flood:?}");
    assert!(flood < Duration::from_secs(40), "the flood took {flood:?}");
    a_normal_client_works(&env).await;
    fds_return_to(&env, baseline, "a flood of 10,000 connections").await;
}
