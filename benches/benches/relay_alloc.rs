//! Does the relay allocate per message? A counting global allocator counts every allocation in
//! this process while a tokio-postgres client runs N round trips, once directly against Postgres
//! and once through an in-process pgsteer in front of the same server. The client allocates as
//! much either way, so the difference per round trip is what the proxy allocated: it should be
//! about zero.
//!
//! The proxy runs as `pgsteer run` runs it by default (`runtime.threads = 1`): a current-thread
//! runtime on its own thread. Its probe interval is an hour, so discovery sleeps while counting.
//!
//! `cargo bench -p pgsteer-benches --bench relay_alloc` (N = `PGSTEER_RELAY_ALLOC_N`, default
//! 10,000); exits non-zero when the proxy allocates more than 0.01 times per relayed message.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pgsteer::{Config, Shutdown};
use pgsteer_benches::alloc::{Counting, counters};
use pgsteer_cluster::{Cluster, DATABASE, Spec, TRUST_USER};
use tokio_postgres::{Client, NoTls};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One kind of round trip and how many protocol messages it relays (both directions).
struct Workload {
    name: &'static str,
    /// Messages per round trip: client → server plus server → client.
    messages: u64,
}

const WORKLOADS: [Workload; 3] = [
    // Q → T D C Z
    Workload {
        name: "simple SELECT 1",
        messages: 5,
    },
    // Q → T 100×D C Z
    Workload {
        name: "simple, 100 rows",
        messages: 104,
    },
    // B E S → 2 D C Z (a prepared statement: no Parse/Describe per round trip)
    Workload {
        name: "extended, prepared",
        messages: 7,
    },
];

async fn round_trip(client: &Client, w: usize, prepared: &tokio_postgres::Statement) {
    match w {
        0 => {
            client.simple_query("SELECT 1").await.expect("query");
        }
        1 => {
            client
                .simple_query("SELECT g FROM generate_series(1, 100) g")
                .await
                .expect("query");
        }
        _ => {
            client.query(prepared, &[]).await.expect("query");
        }
    }
}

/// Allocations and bytes over `n` round trips of workload `w` to `addr` (after a warm-up).
async fn measure(addr: SocketAddr, w: usize, n: u64) -> (u64, u64, Duration) {
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={} user={TRUST_USER} dbname={DATABASE} sslmode=disable",
            addr.ip(),
            addr.port()
        ),
        NoTls,
    )
    .await
    .expect("connect");
    let conn = tokio::spawn(conn);
    let prepared = client.prepare("SELECT 1").await.expect("prepare");
    for _ in 0..1_000 {
        round_trip(&client, w, &prepared).await;
    }
    let (a0, b0) = counters();
    let started = Instant::now();
    for _ in 0..n {
        round_trip(&client, w, &prepared).await;
    }
    let elapsed = started.elapsed();
    let (a1, b1) = counters();
    drop(client);
    let _ = conn.await;
    (a1 - a0, b1 - b0, elapsed)
}

/// Starts pgsteer on its own current-thread runtime (as `runtime.threads = 1` does) and returns
/// its rw address and the tokens that stop it.
fn start_proxy(cluster: &Cluster) -> (SocketAddr, Shutdown, std::thread::JoinHandle<()>) {
    let node = &cluster.nodes()[0];
    let text = format!(
        "[listen]\nrw = \"127.0.0.1:0\"\n\
         [discovery]\nsource = \"static\"\nprobe_interval = \"1h\"\n\
         [discovery.probe]\nuser = \"{}\"\npassword = \"{}\"\n\
         [[discovery.members]]\nname = \"{}\"\naddress = \"{}\"\n",
        pgsteer_cluster::PROBE_USER,
        pgsteer_cluster::PROBE_PASSWORD,
        node.name,
        node.address()
    );
    let config = Config::parse(&text, std::iter::empty()).expect("config");
    let shutdown = Shutdown::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = shutdown.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("proxy runtime");
        rt.block_on(async move {
            let running = pgsteer::start(config, stop).await.expect("proxy starts");
            let mut topology = running.topology();
            topology
                .wait_for(|t| t.primary().is_some())
                .await
                .expect("a primary");
            tx.send(running.rw.expect("rw")).expect("send");
            running.wait().await;
        });
    });
    let rw = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("proxy ready");
    (rw, shutdown, thread)
}

fn main() {
    let n: u64 = std::env::var("PGSTEER_RELAY_ALLOC_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let cluster = Cluster::start(&Spec {
        replicas: 0,
        ..Spec::default()
    })
    .expect("cluster");
    let direct: SocketAddr = cluster.nodes()[0].address().parse().expect("address");
    let (proxied, shutdown, proxy_thread) = start_proxy(&cluster);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");

    println!("relay_alloc: allocations in the whole process over {n} round trips per line");
    println!(
        "  {:<20} {:>12} {:>12} {:>12} {:>10} {:>14} {:>12}",
        "workload", "direct/rt", "proxied/rt", "proxy/rt", "msgs/rt", "proxy/msg", "proxy B/rt"
    );
    let mut worst: f64 = 0.0;
    for (w, workload) in WORKLOADS.iter().enumerate() {
        let (da, db, dt) = rt.block_on(measure(direct, w, n));
        let (pa, pb, pt) = rt.block_on(measure(proxied, w, n));
        let per = |x: u64| x as f64 / n as f64;
        let proxy_per_rt = per(pa) - per(da);
        let proxy_per_msg = proxy_per_rt / workload.messages as f64;
        worst = worst.max(proxy_per_msg);
        println!(
            "  {:<20} {:>12.3} {:>12.3} {:>12.3} {:>10} {:>14.5} {:>12.1}   ({:.1} vs {:.1} us/rt)",
            workload.name,
            per(da),
            per(pa),
            proxy_per_rt,
            workload.messages,
            proxy_per_msg,
            per(pb) - per(db),
            dt.as_secs_f64() * 1e6 / n as f64,
            pt.as_secs_f64() * 1e6 / n as f64,
        );
    }
    println!(
        "  proxy/rt = proxied/rt - direct/rt: what the relay allocated per round trip (target: ~0)"
    );
    shutdown.now.cancel();
    shutdown.drain.cancel();
    let _ = proxy_thread.join();
    drop(cluster);
    if worst > 0.01 {
        eprintln!("relay_alloc: the proxy allocates {worst:.4} times per relayed message");
        std::process::exit(1);
    }
}
