//! Cancel requests across pgsteer processes: a key names the process that made it, and a
//! process that gets a key it does not own forwards it to its owner over the peer port
//! (HMAC-SHA256 with a shared secret, optionally mutual TLS). Two proxies run in this test
//! process in front of one cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgsteer::config::{PeerMember, Peers};
use pgsteer::peers::wire::{PeerCancel, encode};
use pgsteer::{Config, Running, Shutdown};
use pgsteer_cluster::Cluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend_pid::client_key;
use crate::harness::*;
use crate::routing::http_get;

pub const SECRET: &str = "a shared secret of the test peers";
static FILES: AtomicU64 = AtomicU64::new(0);

/// A file holding `SECRET`, removed on drop.
pub struct SecretFile(pub PathBuf);

impl SecretFile {
    pub fn new() -> SecretFile {
        let n = FILES.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("pgsteer-peer-{}-{n}.secret", std::process::id()));
        std::fs::write(&path, format!("{SECRET}\n")).expect("write secret");
        SecretFile(path)
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A port free on `ip` now (bound, then released), for peers that must know each other's
/// addresses before they start.
///
/// Taken below the kernel's ephemeral range (32768 and up): the proxies of a test are told each
/// other's peer ports before they start, and an outgoing connection of another test (they run
/// in parallel) could otherwise take a port as its local one in between. Each test process
/// starts from its own place in the range, and no port is handed out twice in a process.
pub fn free_port(ip: &str) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip} between {LOW} and {}", LOW + SPAN)
}

/// Peering for `config`: id, peer port, static members, the secret.
pub fn peered(
    config: &mut Config,
    id: u16,
    port: SocketAddr,
    members: &[(u16, SocketAddr)],
    secret: &Path,
) {
    config.listen.peer = Some(port);
    config.peers = Peers {
        id: Some(id),
        secret_file: Some(secret.to_owned()),
        member: members
            .iter()
            .map(|&(id, a)| PeerMember {
                id,
                address: a.to_string(),
            })
            .collect(),
        ..Peers::default()
    };
}

/// A second proxy.
pub struct Proxy {
    pub running: Running,
    pub shutdown: Shutdown,
}

impl Proxy {
    pub async fn start(config: Config) -> Proxy {
        let shutdown = Shutdown::new();
        let running = pgsteer::start(config, shutdown.clone())
            .await
            .expect("proxy starts");
        wait_topology(running.topology(), DEADLINE, "primary probed", |t| {
            t.primary().is_some()
        })
        .await;
        Proxy { running, shutdown }
    }

    pub fn rw(&self) -> SocketAddr {
        self.running.rw.expect("rw")
    }

    pub async fn stop(self) {
        self.shutdown.now.cancel();
        tokio::time::timeout(DEADLINE, self.running.wait())
            .await
            .expect("proxy stops");
    }
}

/// A metric counter of a running proxy.
pub fn cancels(r: &Running, result: &str) -> u64 {
    r.shared
        .metrics
        .cancel_requests
        .with_label_values(&[result])
        .get()
}

pub fn peer_requests(r: &Running, result: &str) -> u64 {
    r.shared
        .metrics
        .peer_requests
        .with_label_values(&[result])
        .get()
}

/// A (cluster with one primary, proxy A id 1) and proxy B (id 2), peered statically;
/// `tweak` adjusts both configs.
pub async fn two_proxies(secret: &Path, tweak: impl Fn(&mut Config)) -> (Env, Proxy) {
    let spec = pgsteer_cluster::Spec {
        replicas: 0,
        ..Default::default()
    };
    two_proxies_on(cluster(spec).await, secret, tweak).await
}

/// The same in front of `cluster` (a primary alone).
pub async fn two_proxies_on(
    cluster: Cluster,
    secret: &Path,
    tweak: impl Fn(&mut Config),
) -> (Env, Proxy) {
    let a_peer = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let b_peer = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let members = [(1, a_peer), (2, b_peer)];
    let mut config = config_for(&cluster);
    peered(&mut config, 1, a_peer, &members, secret);
    tweak(&mut config);
    let env = Env::start_on(cluster, config, 0).await;
    let mut config = config_for(&env.cluster);
    peered(&mut config, 2, b_peer, &members, secret);
    tweak(&mut config);
    (env, Proxy::start(config).await)
}

/// A client whose query sleeps 30 s, running by the time [`sleeper`] returns.
pub struct Sleeper {
    pub token: tokio_postgres::CancelToken,
    pub pid: i32,
    pub key: Vec<u8>,
    pub query: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

/// Starts a 30 s sleep through `via` and waits until the server runs it.
pub async fn sleeper(cluster: &Cluster, via: SocketAddr) -> Sleeper {
    let c = connect(via, None).await;
    let (pid, key) = client_key(&c).await;
    let token = c.cancel_token();
    let direct = SocketAddr::from(([127, 0, 0, 1], cluster.node("pg-0").port));
    let watcher = connect(direct, None).await;
    let query = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await.map(drop) });
    eventually("pg_sleep running", || async {
        let n: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active' \
                 AND query = 'SELECT pg_sleep(30)'",
                &[&pid],
            )
            .await
            .expect("query")
            .get(0);
        n == 1
    })
    .await;
    Sleeper {
        token,
        pid,
        key,
        query,
    }
}

impl Sleeper {
    /// Sends the client library's cancel request to `to` (any pgsteer process).
    pub async fn cancel_via(&self, to: SocketAddr) {
        let tcp = TcpStream::connect(to).await.expect("connect");
        self.token
            .cancel_query_raw(tcp, tokio_postgres::NoTls)
            .await
            .expect("cancel sent");
    }

    /// Waits for the query to end cancelled (57014) and returns how long that took.
    pub async fn cancelled(self, since: Instant) -> Duration {
        let r = tokio::time::timeout(DEADLINE, self.query)
            .await
            .expect("the query ended")
            .expect("query task");
        let e = r.expect_err("the query was cancelled");
        assert_eq!(
            e.as_db_error().map(|d| d.code().code()),
            Some("57014"),
            "{e}"
        );
        since.elapsed()
    }

    /// Whether the query is still running after the cancel paths had `wait` to act.
    pub async fn still_running(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, &mut self.query).await.is_err()
    }
}

/// Sends `bytes` to `addr` and returns what came back before the other side closed.
pub async fn send_and_read(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    let mut back = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut back))
        .await
        .expect("closed in time");
    back
}

/// Waits (up to the deadline) for a counter to reach `want`, then checks it is exactly `want`.
/// A proxy counts a cancel once its work is done (the backend's cancel connection closed), which
/// can be after the cancelled client has its error: checking at once raced with that.
pub async fn counted(what: &str, want: u64, count: impl Fn() -> u64) {
    eventually(what, || {
        let n = count();
        async move { n >= want }
    })
    .await;
    assert_eq!(count(), want, "{what}");
}

/// A CancelRequest packet.
pub fn cancel_packet(pid: i32, key: &[u8]) -> Vec<u8> {
    let mut p = ((16 + key.len() - 4) as i32).to_be_bytes().to_vec();
    p.extend_from_slice(&80877102i32.to_be_bytes());
    p.extend_from_slice(&pid.to_be_bytes());
    p.extend_from_slice(key);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_the_other_pgsteer_stops_the_query_within_a_second() {
    let secret = SecretFile::new();
    let (a, b) = two_proxies(&secret.0, |_| {}).await;
    let s = sleeper(&a.cluster, a.rw()).await;
    let started = Instant::now();
    s.cancel_via(b.rw()).await;
    let took = s.cancelled(started).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    counted("B sent it to A", 1, || cancels(&b.running, "to_peer")).await;
    counted("A forwarded it", 1, || peer_requests(&a.proxy, "forwarded")).await;
    // The owner serves its own keys directly, as before.
    let s = sleeper(&a.cluster, b.rw()).await;
    let started = Instant::now();
    s.cancel_via(b.rw()).await;
    s.cancelled(started).await;
    counted("B forwarded its own", 1, || {
        cancels(&b.running, "forwarded")
    })
    .await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_and_forged_peer_requests_are_dropped_silently_and_counted() {
    let secret = SecretFile::new();
    let (a, b) = two_proxies(&secret.0, |_| {}).await;
    let a_peer = a.proxy.peer.expect("peer port");
    let mut s = sleeper(&a.cluster, a.rw()).await;

    // A key A never made, though it names A: B forwards it, A drops it.
    let guess = pgsteer::cancel::KeyMaker::owned(1, SECRET.as_bytes()).make(s.pid, 4);
    assert!(
        send_and_read(b.rw(), &cancel_packet(s.pid, &guess))
            .await
            .is_empty()
    );
    // Random keys: dropped by B (no peer owns them) or by A.
    for k in [[0u8, 0, 0, 0], [1, 2, 3, 4], [255; 4]] {
        assert!(
            send_and_read(b.rw(), &cancel_packet(s.pid, &k))
                .await
                .is_empty()
        );
    }
    // The real key under a wrong secret, garbage, a cut request: dropped by A's peer port.
    let real = PeerCancel {
        from: 2,
        to: 1,
        pid: s.pid,
        key: s.key.clone(),
    };
    let forged = encode(&real, b"not the shared secret, but long");
    assert!(send_and_read(a_peer, &forged).await.is_empty());
    assert!(
        send_and_read(a_peer, b"GET / HTTP/1.1\r\n\r\n")
            .await
            .is_empty()
    );
    let genuine = encode(&real, SECRET.as_bytes());
    assert!(send_and_read(a_peer, &genuine[..40]).await.is_empty());
    let not_ours = encode(
        &PeerCancel {
            to: 7,
            ..real.clone()
        },
        SECRET.as_bytes(),
    );
    assert!(send_and_read(a_peer, &not_ours).await.is_empty());
    eventually("every drop counted", || async {
        peer_requests(&a.proxy, "bad_hmac") == 1
            && peer_requests(&a.proxy, "malformed") == 2
            && peer_requests(&a.proxy, "not_ours") == 1
            && peer_requests(&a.proxy, "unknown") >= 1
    })
    .await;
    assert!(
        s.still_running(Duration::from_millis(300)).await,
        "nothing cancelled the query"
    );
    assert_eq!(peer_requests(&a.proxy, "forwarded"), 0);

    // The genuine request cancels, once: its replay is refused.
    let started = Instant::now();
    assert!(send_and_read(a_peer, &genuine).await.is_empty());
    s.cancelled(started).await;
    assert!(send_and_read(a_peer, &genuine).await.is_empty());
    eventually("the replay counted", || async {
        peer_requests(&a.proxy, "replayed") == 1
    })
    .await;
    counted("A forwarded it once", 1, || {
        peer_requests(&a.proxy, "forwarded")
    })
    .await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_its_peer_down_a_pgsteer_still_cancels_its_own_keys_and_keeps_serving() {
    let secret = SecretFile::new();
    let (a, b) = two_proxies(&secret.0, |_| {}).await;
    let on_b = sleeper(&a.cluster, b.rw()).await;
    let b_key = (on_b.pid, on_b.key.clone());
    let started = Instant::now();
    on_b.cancel_via(b.rw()).await;
    on_b.cancelled(started).await;
    b.stop().await;

    let s = sleeper(&a.cluster, a.rw()).await;
    let started = Instant::now();
    s.cancel_via(a.rw()).await;
    s.cancelled(started).await;
    // A key of B's reaches A while B is down: dropped, counted, A goes on.
    assert!(
        send_and_read(a.rw(), &cancel_packet(b_key.0, &b_key.1))
            .await
            .is_empty()
    );
    eventually("the unreachable peer counted", || async {
        cancels(&a.proxy, "peer_unreachable") == 1
    })
    .await;
    let c = connect(a.rw(), None).await;
    c.simple_query("SELECT 1").await.expect("A keeps serving");
}

/// A port free on both 127.0.0.2 and 127.0.0.3 (two "pods" with one peer port).
fn port_on_two_ips() -> u16 {
    loop {
        let port = free_port("127.0.0.2");
        if std::net::TcpListener::bind(("127.0.0.3", port)).is_ok() {
            return port;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_are_found_as_pgsteer_pods_as_they_come_and_go() {
    use pgsteer::config::PeerKubernetes;
    use pgsteer::peers::peer_id_of;
    use pgsteer_tests::kube_api::{FakePod, KubeApi};

    let api = KubeApi::start("edge").await;
    let kubeconfig = api.write_kubeconfig(None);
    let secret = SecretFile::new();
    let port = port_on_two_ips();
    let (id_a, id_b) = (peer_id_of("pgsteer-a"), peer_id_of("pgsteer-b"));
    assert_ne!(id_a, id_b);
    let pod_peers = |c: &mut Config, id: u16, ip: [u8; 4]| {
        peered(c, id, SocketAddr::from((ip, port)), &[], &secret.0);
        c.peers.kubernetes = Some(PeerKubernetes {
            selector: "app.kubernetes.io/name=pgsteer".into(),
            namespace: Some("edge".into()),
            port,
            kubeconfig: Some(kubeconfig.clone()),
        });
    };
    let a = Env::start_with(0, |c| pod_peers(c, id_a, [127, 0, 0, 2])).await;
    let mut config = config_for(&a.cluster);
    pod_peers(&mut config, id_b, [127, 0, 0, 3]);
    let b = Proxy::start(config).await;
    // What an operator sees: GET /peers on the admin port.
    let b_admin = b.running.admin.expect("admin");
    let peers_of_b = || async move {
        let v: serde_json::Value =
            serde_json::from_str(&http_get(b_admin, "/peers").await).expect("json");
        assert_eq!(v["id"], id_b);
        v["peers"].as_object().cloned().unwrap_or_default()
    };

    // No pods yet: B does not know A, and drops A's keys.
    let mut s = sleeper(&a.cluster, a.rw()).await;
    s.cancel_via(b.rw()).await;
    eventually("the cancel dropped by B", || async {
        cancels(&b.running, "unknown") == 1
    })
    .await;
    assert!(s.still_running(Duration::from_millis(300)).await);

    let pod = |name: &str, ip: &str| {
        FakePod::new(name)
            .label("app.kubernetes.io/name", "pgsteer")
            .ip(ip)
    };
    api.apply(pod("pgsteer-a", "127.0.0.2"));
    api.apply(pod("pgsteer-b", "127.0.0.3"));
    api.apply(FakePod::new("pg-0").label("app", "pg").ip("127.0.0.9"));
    let a_there = format!("127.0.0.2:{port}");
    eventually("B found A's pod", || async {
        peers_of_b().await.get(&id_a.to_string()) == Some(&a_there.clone().into())
    })
    .await;
    let peers = peers_of_b().await;
    assert_eq!(peers.len(), 1, "only the other pgsteer pod: {peers:?}");
    let started = Instant::now();
    s.cancel_via(b.rw()).await;
    let took = s.cancelled(started).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");

    api.delete("pgsteer-a");
    eventually("B forgot A's pod", || async {
        !peers_of_b().await.contains_key(&id_a.to_string())
    })
    .await;
    let mut s = sleeper(&a.cluster, a.rw()).await;
    s.cancel_via(b.rw()).await;
    eventually("the cancel dropped by B again", || async {
        cancels(&b.running, "unknown") == 2
    })
    .await;
    assert!(s.still_running(Duration::from_millis(300)).await);
    let started = Instant::now();
    s.cancel_via(a.rw()).await;
    s.cancelled(started).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_is_rate_limited_per_source_address() {
    let secret = SecretFile::new();
    let (a, b) = two_proxies(&secret.0, |c| c.peers.forward_rate = 2).await;
    let keys = pgsteer::cancel::KeyMaker::owned(1, SECRET.as_bytes());
    for pid in 1..=6 {
        let key = keys.make(pid, 4);
        assert!(
            send_and_read(b.rw(), &cancel_packet(pid, &key))
                .await
                .is_empty()
        );
    }
    eventually("all six counted", || async {
        cancels(&b.running, "to_peer") + cancels(&b.running, "rate_limited") == 6
    })
    .await;
    assert!(cancels(&b.running, "to_peer") >= 2, "the burst passes");
    assert!(
        cancels(&b.running, "rate_limited") >= 3,
        "the excess is dropped"
    );
    eventually("A dropped what arrived", || async {
        peer_requests(&a.proxy, "unknown") == cancels(&b.running, "to_peer")
    })
    .await;
    b.stop().await;
}
