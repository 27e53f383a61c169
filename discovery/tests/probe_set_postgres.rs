//! `ProbeSet` against a real PostgreSQL server (`pgsteer-cluster`): a lane follows a member to
//! its new address, and a removed lane leaves no probe connection behind.

use std::collections::BTreeMap;
use std::time::Duration;

use pgsteer_cluster::{Cluster, PROBE_PASSWORD, PROBE_USER, Spec};
use pgsteer_discovery::{Observation, ProbeConfig, ProbeSet};
use tokio::sync::mpsc;
use tokio::task::block_in_place;
use tokio_util::sync::CancellationToken;

/// How long any one change may take to show (generous: two shared cores).
const DEADLINE: Duration = Duration::from_secs(60);

/// An address that refuses connections: a port that was just free.
fn refusing_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

fn probe_config() -> ProbeConfig {
    ProbeConfig {
        user: PROBE_USER.to_owned(),
        password: Some(PROBE_PASSWORD.to_owned()),
        dbname: "postgres".to_owned(),
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(5),
        ..ProbeConfig::default()
    }
}

/// Open probe connections on `node`, as `pg_stat_activity` shows them.
fn probe_connections(cluster: &Cluster, node: &str) -> usize {
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgsteer-probe'";
    let count = block_in_place(|| cluster.psql(node, sql)).expect("psql");
    count.parse().expect("a count")
}

/// Receives observations until one of `name` matches `wanted`.
async fn observe_until(
    rx: &mut mpsc::Receiver<(String, Observation)>,
    name: &str,
    what: &str,
    wanted: impl Fn(&Observation) -> bool,
) {
    let found = async {
        while let Some((member, observation)) = rx.recv().await {
            if member == name && wanted(&observation) {
                return;
            }
        }
        panic!("the probe lanes stopped while waiting for {what}");
    };
    tokio::time::timeout(DEADLINE, found)
        .await
        .unwrap_or_else(|_| panic!("no observation of {what} within {DEADLINE:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_whose_address_changes_probes_the_new_address_and_removal_closes_it() {
    let spec = Spec {
        replicas: 0,
        ..Default::default()
    };
    let cluster =
        block_in_place(|| Cluster::start(&spec)).unwrap_or_else(|e| panic!("cluster start: {e}"));
    let real = cluster.node("pg-0").address();

    let (out, mut rx) = mpsc::channel(16);
    let mut set = ProbeSet::new(probe_config(), out, CancellationToken::new());
    let at = |address: &str| BTreeMap::from([("pg-0".to_owned(), address.to_owned())]);

    set.sync(&at(&refusing_address()));
    observe_until(&mut rx, "pg-0", "pg-0 down at the dead port", |o| {
        matches!(o, Observation::Down { .. })
    })
    .await;

    set.sync(&at(&real));
    observe_until(
        &mut rx,
        "pg-0",
        "pg-0 up as a primary at its real address",
        |o| {
            matches!(
                o,
                Observation::Up {
                    in_recovery: false,
                    ..
                }
            )
        },
    )
    .await;
    assert_eq!(
        set.members().collect::<Vec<_>>(),
        vec![("pg-0", real.as_str())]
    );
    // One persistent connection, however many probes ran.
    observe_until(&mut rx, "pg-0", "a second probe", |o| {
        matches!(o, Observation::Up { .. })
    })
    .await;
    assert_eq!(probe_connections(&cluster, "pg-0"), 1);

    set.sync(&BTreeMap::new());
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while probe_connections(&cluster, "pg-0") != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the removed lane's probe connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    drop(set);
    block_in_place(|| drop(cluster));
}
