//! The static source against real PostgreSQL servers (`pgsteer-cluster`): roles as the servers
//! report them, a stopped primary, a promoted replica, and two primaries at once.

use std::time::Duration;

use pgsteer_cluster::{Cluster, PROBE_PASSWORD, PROBE_USER, Spec, StopMode};
use pgsteer_discovery::{
    ProbeConfig, ProbeHandle, Role, StaticMember, Topology, probe_once, spawn_static,
};
use tokio::sync::watch;
use tokio::task::{JoinHandle, block_in_place};
use tokio_util::sync::CancellationToken;

/// How long any one topology change may take to show (generous: two shared cores).
const DEADLINE: Duration = Duration::from_secs(60);

fn start_cluster() -> Cluster {
    let spec = Spec {
        replicas: 1,
        ..Default::default()
    };
    block_in_place(|| Cluster::start(&spec)).unwrap_or_else(|e| panic!("cluster start: {e}"))
}

fn members(cluster: &Cluster) -> Vec<StaticMember> {
    cluster
        .nodes()
        .iter()
        .map(|n| StaticMember::new(n.name.clone(), n.address()))
        .collect()
}

fn probe_config(interval: Duration) -> ProbeConfig {
    ProbeConfig {
        user: PROBE_USER.to_owned(),
        password: Some(PROBE_PASSWORD.to_owned()),
        dbname: "postgres".to_owned(),
        interval,
        timeout: Duration::from_secs(5),
        ..ProbeConfig::default()
    }
}

/// A running static source and what a test needs to drive and stop it.
struct Source {
    rx: watch::Receiver<Topology>,
    handle: ProbeHandle,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Source {
    fn spawn(cluster: &Cluster, interval: Duration) -> Source {
        let (tx, rx) = watch::channel(Topology::default());
        let cancel = CancellationToken::new();
        let (handle, task) =
            spawn_static(members(cluster), probe_config(interval), tx, cancel.clone());
        Source {
            rx,
            handle,
            cancel,
            task,
        }
    }

    /// The first published topology for which `done` holds, or a panic naming `what`.
    async fn wait_until(&mut self, what: &str, done: impl FnMut(&Topology) -> bool) -> Topology {
        let waited = tokio::time::timeout(DEADLINE, self.rx.wait_for(done))
            .await
            .map(|r| r.map(|t| t.clone()));
        match waited {
            Ok(Ok(topology)) => topology,
            Ok(Err(_)) => panic!("the source stopped while waiting for {what}"),
            Err(_) => panic!(
                "no topology with {what} within {DEADLINE:?}; last: {:#?}",
                *self.rx.borrow()
            ),
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the source stops when cancelled")
            .expect("the source does not panic");
    }
}

fn role_of(topology: &Topology, name: &str) -> Role {
    topology.member(name).map_or(Role::Unknown, |m| m.role)
}

fn primary_name(topology: &Topology) -> Option<&str> {
    topology.primary().map(|m| m.name.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topology_follows_a_stopped_primary_and_a_promoted_replica() {
    let cluster = start_cluster();

    let checked = probe_once(&members(&cluster), &probe_config(Duration::from_secs(1))).await;
    assert_eq!(role_of(&checked, "pg-0"), Role::Primary, "{checked:#?}");
    assert_eq!(role_of(&checked, "pg-1"), Role::Replica, "{checked:#?}");

    let mut source = Source::spawn(&cluster, Duration::from_millis(500));
    let up = source
        .wait_until("pg-0 primary and pg-1 replica", |t| {
            role_of(t, "pg-0") == Role::Primary && role_of(t, "pg-1") == Role::Replica
        })
        .await;
    assert_eq!(primary_name(&up), Some("pg-0"));
    let replica = up.member("pg-1").expect("pg-1");
    assert!(replica.routable);
    assert!(replica.lag_bytes.is_some(), "{replica:?}");
    assert_eq!(replica.address, cluster.node("pg-1").address());
    assert!(up.confirmed_at.is_some());

    block_in_place(|| cluster.stop_node("pg-0", StopMode::Fast)).expect("stop pg-0");
    let stopped = source
        .wait_until("pg-0 unreachable", |t| {
            role_of(t, "pg-0") == Role::Unreachable
        })
        .await;
    let old_primary = stopped.member("pg-0").expect("pg-0");
    assert!(!old_primary.routable);
    assert!(old_primary.note.is_some());
    assert_eq!(primary_name(&stopped), None);
    assert!(stopped.generation > up.generation);

    block_in_place(|| cluster.promote("pg-1")).expect("promote pg-1");
    let promoted = source
        .wait_until("pg-1 primary", |t| role_of(t, "pg-1") == Role::Primary)
        .await;
    assert_eq!(primary_name(&promoted), Some("pg-1"));
    assert_eq!(promoted.member("pg-1").and_then(|m| m.lag_seconds), None);
    assert_eq!(role_of(&promoted, "pg-0"), Role::Unreachable);

    source.stop().await;
    block_in_place(|| drop(cluster));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_promoted_beside_a_running_primary_leaves_no_primary_until_resolved() {
    let cluster = start_cluster();
    // Probes only at start and when asked: the re-probe is what shows the promotion.
    let mut source = Source::spawn(&cluster, Duration::from_secs(3600));
    source
        .wait_until("pg-0 primary and pg-1 replica", |t| {
            role_of(t, "pg-0") == Role::Primary && role_of(t, "pg-1") == Role::Replica
        })
        .await;

    block_in_place(|| cluster.promote("pg-1")).expect("promote pg-1");
    source.handle.reprobe();
    let split = source
        .wait_until("two primaries", |t| t.primaries().count() == 2)
        .await;
    assert_eq!(primary_name(&split), None, "two primaries must fail closed");
    for name in ["pg-0", "pg-1"] {
        let note = split.member(name).and_then(|m| m.note.clone());
        assert!(
            note.is_some_and(|n| n.contains("two members claim")),
            "{split:#?}"
        );
    }

    block_in_place(|| cluster.stop_node("pg-0", StopMode::Fast)).expect("stop pg-0");
    source.handle.reprobe();
    let resolved = source
        .wait_until("pg-1 the only primary", |t| primary_name(t) == Some("pg-1"))
        .await;
    assert_eq!(resolved.member("pg-1").and_then(|m| m.note.clone()), None);

    source.stop().await;
    block_in_place(|| drop(cluster));
}
