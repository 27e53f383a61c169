//! The Kubernetes source against the API fixture (`pgsteer_tests::kube_api`) over real HTTP,
//! with real Postgres behind the "pods": each fixture pod is one node of the harness cluster,
//! reached through its container port named `postgresql`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pgsteer::{Config, Running, Shutdown};
use pgsteer_cluster::{Cluster, Spec, StopMode};
use pgsteer_discovery::{Role, Topology};
use pgsteer_tests::kube_api::{FakePod, KubeApi};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{DEADLINE, cluster, connect, eventually, server_port, try_connect};
use crate::routing::http_get;

const NAMESPACE: &str = "db";

/// pgsteer in front of the fixture.
struct Proxy {
    running: Running,
    shutdown: Shutdown,
}

impl Proxy {
    /// Starts pgsteer with the kubernetes source reading `api`; `preset` is TOML
    /// (`"patroni"` or an inline table); `probe` adds the SQL probe; `hold` is the hold timeout.
    async fn start(api: &KubeApi, preset: &str, probe: bool, hold: &str) -> Proxy {
        let kubeconfig = api.write_kubeconfig(None);
        let probe_section = if probe {
            format!(
                "[discovery.probe]\nuser = \"{}\"\npassword = \"{}\"\n",
                pgsteer_cluster::PROBE_USER,
                pgsteer_cluster::PROBE_PASSWORD
            )
        } else {
            String::new()
        };
        let text = format!(
            "[listen]\nrw = \"127.0.0.1:0\"\nro = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             [discovery]\nsource = \"kubernetes\"\nprobe_interval = \"100ms\"\nprobe_timeout = \"1s\"\n\
             {probe_section}\
             [discovery.kubernetes]\nnamespace = \"{NAMESPACE}\"\nselector = \"app=pg\"\n\
             preset = {preset}\nkubeconfig = \"{}\"\n\
             [routing]\nhold_timeout = \"{hold}\"\n",
            kubeconfig.display()
        );
        let config = Config::parse(&text, std::iter::empty()).expect("test config parses");
        let shutdown = Shutdown::new();
        let running = pgsteer::start(config, shutdown.clone())
            .await
            .expect("proxy starts");
        Proxy { running, shutdown }
    }

    fn rw(&self) -> SocketAddr {
        self.running.rw.expect("rw")
    }

    fn ro(&self) -> SocketAddr {
        self.running.ro.expect("ro")
    }

    fn admin(&self) -> SocketAddr {
        self.running.admin.expect("admin")
    }

    async fn wait(&self, what: &str, pred: impl FnMut(&Topology) -> bool) -> Topology {
        crate::harness::wait_topology(self.running.topology(), DEADLINE, what, pred).await
    }

    async fn topology_json(&self) -> serde_json::Value {
        serde_json::from_str(&http_get(self.admin(), "/topology").await).expect("json")
    }

    async fn stop(self) {
        self.shutdown.now.cancel();
        tokio::time::timeout(DEADLINE, self.running.wait())
            .await
            .expect("proxy stops");
    }
}

/// A fixture pod for cluster node `name`: Running, Ready, `app=pg`, its port named `postgresql`.
/// pg-0 (primary) and pg-1 (replica), with their ports.
async fn primary_and_replica() -> (Cluster, u16, u16) {
    let cluster = cluster(Spec {
        replicas: 1,
        ..Spec::default()
    })
    .await;
    let (p0, p1) = (cluster.node("pg-0").port, cluster.node("pg-1").port);
    (cluster, p0, p1)
}

fn pod(cluster: &Cluster, name: &str) -> FakePod {
    FakePod::new(name)
        .label("app", "pg")
        .port(cluster.node(name).port)
}

fn primary_is(t: &Topology, name: &str) -> bool {
    t.primary().is_some_and(|m| m.name == name)
}

fn ready_replicas(t: &Topology) -> usize {
    t.replicas().count()
}

async fn rw_port(proxy: &Proxy) -> u16 {
    server_port(&connect(proxy.rw(), None).await).await
}

async fn ro_port(proxy: &Proxy) -> u16 {
    server_port(&connect(proxy.ro(), None).await).await
}

/// Expects a new session on `addr` to be held and then refused with 57P03.
async fn refused_with_57p03(addr: SocketAddr, options: Option<&str>) -> String {
    let Err(e) = try_connect(addr, "app", "app-secret", options).await else {
        panic!("session on {addr} was not refused");
    };
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "57P03", "{}", db.message());
    db.message().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_preset_routes_sessions_by_its_operators_role_labels() {
    let (cluster, p0, p1) = primary_and_replica().await;
    let custom = r#"{ label = "replicationRole", primary = ["primary"], replica = ["replica"] }"#;
    let cases: &[(&str, &str, &str, &str)] = &[
        ("\"patroni\"", "role", "primary", "replica"),
        ("\"patroni\"", "role", "master", "replica"),
        ("\"spilo\"", "spilo-role", "master", "replica"),
        (
            "\"cloudnativepg\"",
            "cnpg.io/instanceRole",
            "primary",
            "replica",
        ),
        ("\"cloudnativepg\"", "role", "primary", "replica"),
        (
            "\"crunchy\"",
            "postgres-operator.crunchydata.com/role",
            "master",
            "replica",
        ),
        (custom, "replicationRole", "primary", "replica"),
    ];
    for &(preset, key, primary, replica) in cases {
        let api = KubeApi::start(NAMESPACE).await;
        api.apply(pod(&cluster, "pg-0").label(key, primary));
        api.apply(pod(&cluster, "pg-1").label(key, replica));
        // Not selected: another cluster's pod labelled primary in the same namespace.
        api.apply(
            FakePod::new("other-0")
                .label("app", "other")
                .label(key, primary),
        );
        let proxy = Proxy::start(&api, preset, true, "10s").await;
        let t = proxy
            .wait(
                &format!("{preset} {key}: pg-0 primary, pg-1 replica"),
                |t| primary_is(t, "pg-0") && ready_replicas(t) == 1,
            )
            .await;
        assert_eq!(t.members.len(), 2, "{preset}: only selected pods");
        assert_eq!(t.members["pg-1"].address, format!("127.0.0.1:{p1}"));
        assert_eq!(rw_port(&proxy).await, p0, "{preset} {key}");
        assert_eq!(ro_port(&proxy).await, p1, "{preset} {key}");
        if preset == "\"cloudnativepg\"" && key == "cnpg.io/instanceRole" {
            // An old primary mid-failover is `unhealthy`: not routable.
            api.update("pg-1", |p| {
                p.labels.insert(key.into(), "unhealthy".into());
            });
            let t = proxy
                .wait("unhealthy pg-1 not routable", |t| {
                    t.member("pg-1").is_some_and(|m| !m.routable)
                })
                .await;
            let note = t.members["pg-1"].note.clone().unwrap_or_default();
            assert!(note.contains("unhealthy"), "{note}");
        }
        proxy.stop().await;
    }
}

/// Accepts on `listen` and forwards every connection to `target`; counts connections.
async fn forwarder(listen: &str, target: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(listen).await.expect("bind forwarder");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relabels_recreated_pods_and_terminating_pods_steer_new_sessions() {
    let cluster = cluster(Spec::default()).await;
    let port = |n: &str| cluster.node(n).port;
    let api = KubeApi::start(NAMESPACE).await;
    api.apply(pod(&cluster, "pg-0").label("role", "primary"));
    api.apply(pod(&cluster, "pg-1").label("role", "replica"));
    api.apply(pod(&cluster, "pg-2").label("role", "replica"));
    // Labels only (no probe): the labels alone decide, which shows they are followed.
    let proxy = Proxy::start(&api, "\"patroni\"", false, "1500ms").await;
    proxy
        .wait("pg-0 primary, two replicas", |t| {
            primary_is(t, "pg-0") && ready_replicas(t) == 2
        })
        .await;

    // Relabel during a live session: new sessions follow the labels.
    let live = connect(proxy.rw(), None).await;
    assert_eq!(server_port(&live).await, port("pg-0"));
    api.update("pg-0", |p| {
        p.labels.insert("role".into(), "replica".into());
    });
    api.update("pg-2", |p| {
        p.labels.insert("role".into(), "primary".into());
    });
    proxy
        .wait("pg-2 labelled primary", |t| primary_is(t, "pg-2"))
        .await;
    assert_eq!(rw_port(&proxy).await, port("pg-2"));
    api.update("pg-2", |p| {
        p.labels.insert("role".into(), "replica".into());
    });
    api.update("pg-0", |p| {
        p.labels.insert("role".into(), "primary".into());
    });
    proxy
        .wait("pg-0 primary again", |t| {
            primary_is(t, "pg-0") && ready_replicas(t) == 2
        })
        .await;
    assert_eq!(rw_port(&proxy).await, port("pg-0"));
    drop(live);

    // pg-1 is recreated (new uid) with a new pod IP and port: same member name, new address.
    let target = SocketAddr::from(([127, 0, 0, 1], port("pg-1")));
    let (moved, used) = forwarder("127.0.0.2:0", target).await;
    api.recreate(
        pod(&cluster, "pg-1")
            .label("role", "replica")
            .ip("127.0.0.2")
            .port(moved.port()),
    );
    let t = proxy
        .wait("pg-1 at its new address", |t| {
            t.member("pg-1")
                .is_some_and(|m| m.address == moved.to_string() && m.routable)
        })
        .await;
    assert_eq!(t.members.len(), 3);
    let pinned = connect(proxy.ro(), Some("-c pgsteer.pod=pg-1")).await;
    assert_eq!(server_port(&pinned).await, port("pg-1"));
    assert!(
        used.load(Ordering::SeqCst) >= 1,
        "went through the new pod IP"
    );
    let json = proxy.topology_json().await;
    let pg1 = json["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "pg-1")
        .unwrap()
        .clone();
    assert_eq!(pg1["address"], moved.to_string());
    drop(pinned);

    // A terminating pod: draining, announced, and no new sessions.
    api.update("pg-1", |p| p.terminating = true);
    let t = proxy
        .wait("pg-1 draining", |t| {
            t.member("pg-1").is_some_and(|m| m.draining)
        })
        .await;
    assert!(
        t.pending_change
            .as_deref()
            .is_some_and(|c| c.contains("pg-1")),
        "{:?}",
        t.pending_change
    );
    for _ in 0..4 {
        assert_eq!(
            ro_port(&proxy).await,
            port("pg-2"),
            "no new sessions on pg-1"
        );
    }
    let json = proxy.topology_json().await;
    let pg1 = json["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "pg-1")
        .unwrap()
        .clone();
    assert_eq!(pg1["draining"], true, "{json}");
    refused_with_57p03(proxy.ro(), Some("-c pgsteer.pod=pg-1")).await;
    // Gone for good: the member disappears.
    api.delete("pg-1");
    proxy
        .wait("pg-1 removed", |t| {
            t.member("pg-1").is_none() && t.pending_change.is_none()
        })
        .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_keeps_routing_shows_staleness_and_recovers_and_410_relists() {
    let (cluster, p0, p1) = primary_and_replica().await;
    let api = KubeApi::start(NAMESPACE).await;
    api.apply(pod(&cluster, "pg-0").label("spilo-role", "master"));
    api.apply(pod(&cluster, "pg-1").label("spilo-role", "replica"));
    api.apply(
        FakePod::new("pg-2-gone")
            .label("app", "pg")
            .label("spilo-role", "replica")
            .port(1),
    );
    let proxy = Proxy::start(&api, "\"spilo\"", true, "10s").await;
    proxy
        .wait("pg-0 primary, pg-1 replica", |t| {
            primary_is(t, "pg-0") && t.member("pg-1").is_some_and(|m| m.routable)
        })
        .await;
    let live = connect(proxy.rw(), None).await;
    live.batch_execute("CREATE TABLE IF NOT EXISTS k8s_outage(x int)")
        .await
        .unwrap();

    // Outage: connections cut, port closed.
    api.stop().await;
    proxy
        .wait("source error shown", |t| t.source_error.is_some())
        .await;
    // Staleness grows while the API server is away.
    let mut json = proxy.topology_json().await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while json["source_stale_seconds"].as_f64().unwrap_or_default() < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "staleness never grew: {json}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        json = proxy.topology_json().await;
    }
    assert!(json["source_error"].is_string(), "{json}");
    let stale = json["source_stale_seconds"].as_f64().unwrap_or_default();
    assert!(stale >= 1.0, "staleness grows during the outage: {json}");
    assert_eq!(json["primary"], "pg-0", "last topology kept: {json}");
    // Routing goes on, and the live session was not dropped.
    assert_eq!(rw_port(&proxy).await, p0);
    assert_eq!(ro_port(&proxy).await, p1);
    live.batch_execute("INSERT INTO k8s_outage VALUES (1)")
        .await
        .expect("live session survives the outage");

    // A change made while the API is unreachable from pgsteer arrives after the restart.
    api.update("pg-1", |p| p.ready = false);
    api.start_again().await;
    let t = proxy
        .wait("recovered with the change", |t| {
            t.source_error.is_none() && t.member("pg-1").is_some_and(|m| !m.routable)
        })
        .await;
    assert!(
        t.staleness(std::time::SystemTime::now()).unwrap() < Duration::from_secs(2),
        "fresh again"
    );
    let json = proxy.topology_json().await;
    assert!(json["source_error"].is_null(), "{json}");
    assert!(
        json["source_stale_seconds"].as_f64().unwrap() < 2.0,
        "{json}"
    );
    api.update("pg-1", |p| p.ready = true);
    proxy
        .wait("pg-1 ready again", |t| {
            t.member("pg-1").is_some_and(|m| m.routable)
        })
        .await;

    // A quiet outage (no pod changes): the re-established watch alone clears the error, with
    // no relist.
    let lists = api.stats().lists;
    api.stop().await;
    proxy
        .wait("source error again", |t| t.source_error.is_some())
        .await;
    api.start_again().await;
    proxy
        .wait("recovered without any pod event", |t| {
            t.source_error.is_none()
        })
        .await;
    assert_eq!(api.stats().lists, lists, "resumed from its resourceVersion");

    // 410: while pgsteer is cut off, history is compacted and a pod is deleted; the re-watch
    // gets 410 Gone and the relist replaces the snapshot (pg-2-gone disappears).
    let before = api.stats();
    api.stop().await;
    api.delete("pg-2-gone");
    api.expire_history();
    api.start_again().await;
    proxy
        .wait("relisted without pg-2-gone", |t| {
            t.member("pg-2-gone").is_none() && t.source_error.is_none()
        })
        .await;
    let after = api.stats();
    assert!(after.expired > before.expired, "{before:?} → {after:?}");
    assert!(
        after.lists > before.lists,
        "relisted: {before:?} → {after:?}"
    );
    assert_eq!(rw_port(&proxy).await, p0);
    live.batch_execute("INSERT INTO k8s_outage VALUES (2)")
        .await
        .expect("live session survives the relist");

    // Streams that end mid-way are resumed without a relist.
    let lists = api.stats().lists;
    let watches = api.stats().watches;
    api.drop_watches();
    eventually("the watcher watches again", || async {
        api.stats().watches > watches
    })
    .await;
    api.update("pg-1", |p| {
        p.labels.insert("spilo-role".into(), "unknown".into());
    });
    proxy
        .wait("event after the re-watch", |t| {
            t.member("pg-1").is_some_and(|m| !m.routable)
        })
        .await;
    assert_eq!(api.stats().lists, lists, "no relist for a clean re-watch");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_overrules_labels_that_disagree_with_the_servers() {
    let (cluster, p0, p1) = primary_and_replica().await;
    let api = KubeApi::start(NAMESPACE).await;
    api.apply(pod(&cluster, "pg-0").label("role", "primary"));
    api.apply(pod(&cluster, "pg-1").label("role", "replica"));
    let proxy = Proxy::start(&api, "\"patroni\"", true, "1s").await;
    proxy
        .wait("confirmed primary pg-0", |t| primary_is(t, "pg-0"))
        .await;
    assert_eq!(rw_port(&proxy).await, p0);

    // Labels swapped, servers not: pg-1 is labelled primary but in recovery, pg-0 is writable
    // without the label (a zombie).
    api.update("pg-0", |p| {
        p.labels.insert("role".into(), "replica".into());
    });
    api.update("pg-1", |p| {
        p.labels.insert("role".into(), "primary".into());
    });
    let t = proxy
        .wait("pg-0 fenced as a zombie, no primary", |t| {
            t.primary().is_none()
                && t.member("pg-0").is_some_and(|m| {
                    !m.routable && m.note.as_deref().is_some_and(|n| n.contains("zombie"))
                })
                && t.member("pg-1")
                    .is_some_and(|m| m.note.as_deref().is_some_and(|n| n.contains("in recovery")))
        })
        .await;
    assert_eq!(t.members["pg-0"].role, Role::Unknown);
    let message = refused_with_57p03(proxy.rw(), None).await;
    assert!(message.contains("primary"), "{message}");
    let json = proxy.topology_json().await;
    assert!(json["primary"].is_null(), "{json}");
    assert!(json.to_string().contains("zombie"), "{json}");

    // Two pods labelled primary: no primary at all, whatever the probe says.
    api.update("pg-0", |p| {
        p.labels.insert("role".into(), "primary".into());
    });
    let t = proxy
        .wait("label conflict", |t| {
            t.member("pg-0").is_some_and(|m| {
                m.note
                    .as_deref()
                    .is_some_and(|n| n.contains("two pods labelled primary"))
            })
        })
        .await;
    assert!(t.primary().is_none());
    refused_with_57p03(proxy.rw(), None).await;
    assert_eq!(
        ro_port_or_refused(&proxy).await,
        None,
        "pg-1 is no replica now"
    );

    // Labels fixed: writes flow again.
    api.update("pg-1", |p| {
        p.labels.insert("role".into(), "replica".into());
    });
    proxy
        .wait("pg-0 primary again", |t| {
            primary_is(t, "pg-0") && ready_replicas(t) == 1
        })
        .await;
    assert_eq!(rw_port(&proxy).await, p0);
    assert_eq!(ro_port(&proxy).await, p1);

    // A real failover: pg-0 stops, pg-1 is promoted and is a zombie until the labels follow;
    // then it is confirmed at once (the probe already saw it writable).
    tokio::task::block_in_place(|| {
        cluster.stop_node("pg-0", StopMode::Fast).unwrap();
        cluster.promote("pg-1").unwrap();
    });
    proxy
        .wait("promoted pg-1 fenced while labelled replica", |t| {
            t.primary().is_none()
                && t.member("pg-1")
                    .is_some_and(|m| m.note.as_deref().is_some_and(|n| n.contains("zombie")))
        })
        .await;
    let started = Instant::now();
    api.update("pg-0", |p| {
        p.labels.insert("role".into(), "replica".into());
    });
    api.update("pg-1", |p| {
        p.labels.insert("role".into(), "primary".into());
    });
    proxy
        .wait("pg-1 confirmed primary", |t| primary_is(t, "pg-1"))
        .await;
    println!(
        "kubernetes failover: relabel events -> probe-confirmed primary in {:?}",
        started.elapsed()
    );
    assert_eq!(rw_port(&proxy).await, p1);
    proxy.stop().await;
}

/// The status code of `GET path` on an admin port.
async fn http_status(addr: SocketAddr, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect to admin");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write request");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read response");
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {out:?}"))
}

/// No Postgres needed: nothing is selected, so nothing is probed or routed to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_matching_no_pods_is_ready_and_refuses_held_sessions_with_57p03() {
    let api = KubeApi::start(NAMESPACE).await;
    // Another cluster's pod, labelled primary, in the same namespace: not selected.
    api.apply(
        FakePod::new("other-0")
            .label("app", "other")
            .label("role", "primary")
            .port(1),
    );
    let proxy = Proxy::start(&api, "\"patroni\"", true, "300ms").await;
    let t = proxy
        .wait("the first (empty) pod list confirmed", |t| {
            t.confirmed_at.is_some()
        })
        .await;
    assert!(t.members.is_empty(), "{t:?}");
    assert_eq!(t.source_error, None);
    eventually("/readyz is 200 with no pods", || async {
        http_status(proxy.admin(), "/readyz").await == 200
    })
    .await;

    // Ready, but there is nowhere to go: held for hold_timeout, then refused.
    let started = Instant::now();
    let message = refused_with_57p03(proxy.rw(), None).await;
    assert!(message.contains("primary"), "{message}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "held for hold_timeout first, refused after {:?}",
        started.elapsed()
    );
    refused_with_57p03(proxy.ro(), None).await;

    // The watch goes on: a pod that starts matching later shows up.
    api.apply(FakePod::new("pg-0").label("app", "pg").port(1));
    proxy
        .wait("pg-0 listed", |t| t.member("pg-0").is_some())
        .await;
    assert_eq!(http_status(proxy.admin(), "/readyz").await, 200);
    proxy.stop().await;
}

/// The replica an ro session lands on, or `None` if it is refused.
async fn ro_port_or_refused(proxy: &Proxy) -> Option<u16> {
    match try_connect(proxy.ro(), "app", "app-secret", None).await {
        Ok(c) => Some(server_port(&c).await),
        Err(_) => None,
    }
}

/// Watch event → the router's topology: measured over many relabels (no Postgres needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relabel_reaches_the_router_well_under_100_ms() {
    let api = KubeApi::start(NAMESPACE).await;
    api.apply(FakePod::new("pg-0").label("app", "pg").port(1));
    api.apply(
        FakePod::new("pg-1")
            .label("app", "pg")
            .label("role", "replica")
            .port(2),
    );
    let proxy = Proxy::start(&api, "\"patroni\"", false, "1s").await;
    proxy
        .wait("listed", |t| t.members.len() == 2 && ready_replicas(t) == 1)
        .await;
    let mut rx = proxy.running.topology();
    let mut samples = Vec::new();
    for i in 0..40 {
        let role = if i % 2 == 0 { "primary" } else { "replica" };
        rx.borrow_and_update();
        let started = Instant::now();
        api.update("pg-1", |p| {
            p.labels.insert("role".into(), role.into());
        });
        let want_primary = role == "primary";
        tokio::time::timeout(
            DEADLINE,
            rx.wait_for(|t| t.primary().is_some() == want_primary),
        )
        .await
        .expect("in time")
        .expect("alive");
        samples.push(started.elapsed());
    }
    samples.sort();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    println!(
        "kubernetes watch event → router topology over {} relabels: p50 {:?}, p95 {:?}, max {:?}",
        samples.len(),
        pct(50),
        pct(95),
        samples[samples.len() - 1]
    );
    assert!(pct(95) < Duration::from_millis(100), "p95 {:?}", pct(95));
    proxy.stop().await;
}

/// Every `pgsteer.toml` under `deploy/kustomize` is a valid configuration for the kubernetes
/// source (the probe password file is mounted from a Secret in the cluster; a temp file here).
#[test]
fn the_shipped_kustomize_configs_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kustomize");
    let password = std::env::temp_dir().join(format!("pgsteer-probe-pw-{}", std::process::id()));
    std::fs::write(&password, "secret\n").unwrap();
    let peer_secret =
        std::env::temp_dir().join(format!("pgsteer-peer-secret-{}", std::process::id()));
    std::fs::write(&peer_secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    let mut dirs = vec![root.join("base")];
    let mut overlays: Vec<_> = std::fs::read_dir(root.join("overlays"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    overlays.sort();
    dirs.extend(overlays);
    assert!(dirs.len() >= 5, "{dirs:?}");
    for dir in dirs {
        let path = dir.join("pgsteer.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let env = [
            (
                "PGSTEER_DISCOVERY_PROBE_PASSWORD_FILE".to_owned(),
                password.display().to_string(),
            ),
            (
                "PGSTEER_PEERS_SECRET_FILE".to_owned(),
                peer_secret.display().to_string(),
            ),
        ];
        let config =
            Config::parse(&text, env).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let settings = pgsteer::discovery::kubernetes_settings(&config)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!settings.selector.is_empty());
        assert!(config.discovery.probe.is_some(), "{}", path.display());
        // Peering on, with pgsteer's own pods (the Deployment's label) as peers.
        assert!(config.listen.peer.is_some(), "{}", path.display());
        let peers = config.peers.kubernetes.as_ref().expect("peers.kubernetes");
        assert_eq!(peers.selector, "app.kubernetes.io/name=pgsteer");
    }
    let _ = std::fs::remove_file(password);
    let _ = std::fs::remove_file(peer_secret);
}

#[test]
fn kubernetes_config_mistakes_are_one_line_errors() {
    let base = |k8s: &str| {
        format!("[discovery]\nsource = \"kubernetes\"\n[discovery.kubernetes]\n{k8s}\n")
    };
    let settings = |text: &str| {
        Config::parse(text, std::iter::empty())
            .and_then(|c| pgsteer::discovery::kubernetes_settings(&c))
            .map(|_| ())
    };
    settings(&base("selector = \"app=pg\"\npreset = \"cloudnativepg\"")).expect("valid");
    settings(&base(
        "selector = \"app=pg\"\npreset = { label = \"r\", primary = [\"p\"], replica = [\"s\"] }",
    ))
    .expect("custom preset");
    for (k8s, needle) in [
        (
            "selector = \"app=pg\"\npreset = \"stolon\"",
            "unknown preset \"stolon\"",
        ),
        (
            "selector = \"app=pg\"\npreset = { label = \"r\", primary = [] , replica = [] }",
            "primary value",
        ),
        (
            "selector = \"app=pg\"\npreset = \"spilo\"\naddress = \"dns\"",
            "service",
        ),
        (
            "selector = \"app=pg\"\npreset = \"spilo\"\naddress = \"fqdn\"",
            "\"ip\" or \"dns\"",
        ),
        ("selector = \"\"\npreset = \"spilo\"", "selector"),
    ] {
        let e = settings(&base(k8s)).unwrap_err().to_string();
        assert!(e.contains(needle), "{k8s}: {e:?} lacks {needle:?}");
        assert!(!e.contains('\n'), "{e:?}");
    }
}
