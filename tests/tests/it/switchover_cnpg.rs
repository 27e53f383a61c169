//! `POST /switchover` with CloudNativePG: pgsteer holds pooled transactions, sets the
//! Cluster's `status.targetPrimary` through the API fixture, and releases the held work once
//! its probe confirms the new primary. The test plays the operator: it sees the patch, promotes
//! the real replica and moves the pods' role labels.

use std::net::SocketAddr;

use pgsteer::Config;
use pgsteer_cluster::{Spec, StopMode};
use pgsteer_tests::kube_api::{FakePod, KubeApi};
use serde_json::Value;

use crate::drain::http_post;
use crate::harness::{Env, cluster, connect, eventually};
use crate::pooled::{TempDir, userlist};
use crate::routing::http_get;

const NAMESPACE: &str = "db";
const ROLE: &str = "cnpg.io/instanceRole";

/// pg-0 (primary) and pg-1 (replica) as CloudNativePG pods of cluster `pg` in the fixture,
/// pgsteer in front with the kubernetes source (preset `cloudnativepg`) and a pooled rw
/// listener in transaction mode.
struct Setup {
    env: Env,
    api: KubeApi,
    _dir: TempDir,
}

impl Setup {
    async fn start() -> Setup {
        let cluster = cluster(Spec {
            replicas: 1,
            ..Spec::default()
        })
        .await;
        let api = KubeApi::start(NAMESPACE).await;
        for (name, role) in [("pg-0", "primary"), ("pg-1", "replica")] {
            api.apply(
                FakePod::new(name)
                    .label("cnpg.io/cluster", "pg")
                    .label(ROLE, role)
                    .port(cluster.node(name).port),
            );
        }
        let dir = TempDir(std::env::temp_dir().join(format!(
            "pgsteer-cnpg-{}-{}",
            std::process::id(),
            cluster.nodes()[0].port
        )));
        std::fs::create_dir_all(&dir.0).expect("temp dir");
        let text = format!(
            "[listen]\nrw = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             [discovery]\nsource = \"kubernetes\"\nprobe_interval = \"100ms\"\nprobe_timeout = \"1s\"\n\
             [discovery.probe]\nuser = \"{}\"\npassword = \"{}\"\n\
             [discovery.kubernetes]\nnamespace = \"{NAMESPACE}\"\nselector = \"cnpg.io/cluster=pg\"\n\
             preset = \"cloudnativepg\"\nkubeconfig = \"{}\"\n\
             [routing]\nhold_timeout = \"10s\"\n\
             [switchover]\ntimeout = \"30s\"\n",
            pgsteer_cluster::PROBE_USER,
            pgsteer_cluster::PROBE_PASSWORD,
            api.write_kubeconfig(Some(&dir.0)).display()
        );
        let mut config = Config::parse(&text, std::iter::empty()).expect("test config parses");
        config.pool.mode = pgsteer::config::PoolMode::Transaction;
        config.pool.size = 4;
        config.auth.auth_file = Some(userlist(&cluster, &dir));
        let env = Env::start_on(cluster, config, 1).await;
        Setup {
            env,
            api,
            _dir: dir,
        }
    }

    fn admin(&self) -> SocketAddr {
        self.env.admin()
    }
}

/// The server port a transaction ran on, and that it ran on a primary.
async fn on_primary(c: &tokio_postgres::Client) -> u16 {
    let row = c
        .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
        .await
        .expect("a transaction through the pool");
    assert!(!row.get::<_, bool>(1), "ran on a server in recovery");
    u16::try_from(row.get::<_, i32>(0)).expect("port")
}

/// `pgsteer_transactions_held` on the admin port.
async fn held_now(admin: SocketAddr) -> i64 {
    http_get(admin, "/metrics")
        .await
        .lines()
        .find_map(|l| l.strip_prefix("pgsteer_transactions_held "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloudnativepg_switchover_moves_a_held_pooled_transaction_to_the_promoted_replica() {
    let s = Setup::start().await;
    s.api.create_cnpg_cluster("pg", 2, "pg-0");
    let (p0, p1) = (s.env.port_of("pg-0"), s.env.port_of("pg-1"));
    let client = connect(s.env.rw(), None).await;
    assert_eq!(on_primary(&client).await, p0);

    let admin = s.admin();
    let answer =
        tokio::spawn(async move { http_post(admin, "/switchover?candidate=pg-1", None).await });
    eventually("the fixture records status.targetPrimary = pg-1", || {
        let target = s
            .api
            .cnpg_cluster("pg")
            .map(|c| c["status"]["targetPrimary"].clone());
        async move { target.is_some_and(|t| t == "pg-1") }
    })
    .await;
    // New transactions are held from before the patch: this one waits at the gate.
    let held = tokio::spawn(async move {
        let port = on_primary(&client).await;
        (client, port)
    });
    eventually("the client's transaction is held", || async move {
        held_now(admin).await > 0
    })
    .await;

    // The operator: the old primary shuts down, the target is promoted, labels and status follow.
    tokio::task::block_in_place(|| {
        s.env.cluster.stop_node("pg-0", StopMode::Fast).unwrap();
        s.env.cluster.promote("pg-1").unwrap();
    });
    s.api.update("pg-0", |p| {
        p.labels.insert(ROLE.into(), "replica".into());
    });
    s.api.update("pg-1", |p| {
        p.labels.insert(ROLE.into(), "primary".into());
    });
    s.api.update_cnpg_cluster("pg", |c| {
        c["status"]["currentPrimary"] = "pg-1".into();
        c["status"]["phase"] = "Cluster in healthy state".into();
    });

    let (status, body) = answer.await.expect("switchover request");
    let report: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["result"], "ok", "{report}");
    assert_eq!(report["old_primary"], "pg-0", "{report}");
    assert_eq!(report["new_primary"], "pg-1", "{report}");
    assert_eq!(report["transactions_held"], 1, "{report}");
    assert_eq!(report["transactions_released"], 1, "{report}");

    // The held transaction ran on the new primary, and so does the next: same connection.
    let (client, port) = held.await.expect("held transaction");
    assert_eq!(port, p1);
    assert_eq!(on_primary(&client).await, p1);
    assert!(!client.is_closed());

    // What was asked of CloudNativePG: what `kubectl cnpg promote pg pg-1` asks.
    let patches = s.api.cnpg_patches();
    assert_eq!(patches.len(), 1, "{patches:?}");
    let patch = &patches[0];
    assert!(patch.status, "the status subresource is patched");
    assert_eq!(patch.cluster, "pg");
    assert_eq!(patch.body["status"]["targetPrimary"], "pg-1");
    assert_eq!(patch.body["status"]["phase"], "Switchover in progress");
    assert_eq!(
        patch.body["status"]["phaseReason"],
        "Switching over to pg-1"
    );
    assert!(patch.body["status"]["targetPrimaryTimestamp"].is_string());
    assert!(
        patch.body["metadata"]["resourceVersion"].is_string(),
        "an optimistic lock: {}",
        patch.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloudnativepg_switchover_without_its_cluster_fails_at_switching_and_resumes_on_the_old_primary()
 {
    let s = Setup::start().await;
    let p0 = s.env.port_of("pg-0");
    let client = connect(s.env.rw(), None).await;
    assert_eq!(on_primary(&client).await, p0);

    // No Cluster "pg" in the fixture; no candidate: pgsteer picks the replica.
    let (status, body) = http_post(s.admin(), "/switchover", None).await;
    let report: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(status, 502, "{report}");
    assert_eq!(report["result"], "failed", "{report}");
    assert_eq!(report["step"], "switching", "{report}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cluster pg not found in namespace db"),
        "{report}"
    );
    assert_eq!(report["old_primary"], "pg-0", "{report}");
    assert_eq!(report["new_primary"], "pg-0", "{report}");
    assert!(s.api.cnpg_patches().is_empty());

    // Transactions go on where they were, on the same client connection.
    assert_eq!(on_primary(&client).await, p0);
    assert!(!client.is_closed());
}

/// No Postgres: the fixture's Cluster objects as kube-rs sees them (what pgsteer relies on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_serves_cloudnativepg_clusters_to_kube_rs_as_the_api_server_does() {
    use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
    use serde_json::json;

    let api = KubeApi::start(NAMESPACE).await;
    let kubeconfig = api.write_kubeconfig(None);
    let client = pgsteer_discovery::kubernetes::connect(Some(&kubeconfig))
        .await
        .expect("client")
        .client()
        .clone();
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("postgresql.cnpg.io", "v1", "Cluster"),
        "clusters",
    );
    let clusters: Api<DynamicObject> = Api::namespaced_with(client, NAMESPACE, &resource);
    let api_error = |r: Result<DynamicObject, kube::Error>| match r {
        Err(kube::Error::Api(s)) => s,
        other => panic!("expected an API error, got {other:?}"),
    };
    let params = PatchParams::default();

    assert!(api_error(clusters.get("pg").await).is_not_found());
    let absent = clusters
        .patch_status("pg", &params, &Patch::Merge(json!({"status": {}})))
        .await;
    assert!(api_error(absent).is_not_found());

    api.create_cnpg_cluster("pg", 2, "pg-0");
    let read = clusters.get("pg").await.expect("get");
    let rv0 = read
        .metadata
        .resource_version
        .clone()
        .expect("resourceVersion");
    assert_eq!(read.data["status"]["currentPrimary"], "pg-0");

    // The status subresource changes the status only, at a new resourceVersion.
    let patch = json!({"status": {"targetPrimary": "pg-1"}, "spec": {"instances": 5}});
    let after = clusters
        .patch_status("pg", &params, &Patch::Merge(&patch))
        .await
        .expect("status patch");
    assert_eq!(after.data["status"]["targetPrimary"], "pg-1");
    assert_eq!(after.data["status"]["currentPrimary"], "pg-0");
    assert_eq!(after.data["spec"]["instances"], 2);
    assert_ne!(after.metadata.resource_version, Some(rv0.clone()));
    // The object itself: everything but the status; a spec change is a new generation.
    let patch = json!({"status": {"targetPrimary": "pg-9"}, "spec": {"instances": 3}});
    let after = clusters
        .patch("pg", &params, &Patch::Merge(&patch))
        .await
        .expect("object patch");
    assert_eq!(after.data["status"]["targetPrimary"], "pg-1");
    assert_eq!(after.data["spec"]["instances"], 3);
    assert_eq!(after.metadata.generation, Some(2));
    // A stale resourceVersion is a conflict, as for controller-runtime's optimistic lock.
    let stale = json!({"metadata": {"resourceVersion": rv0}, "status": {"targetPrimary": "pg-0"}});
    let conflict = clusters
        .patch_status("pg", &params, &Patch::Merge(&stale))
        .await;
    assert!(api_error(conflict).is_conflict());
    // Custom resources have no strategic merge patch.
    let strategic = clusters
        .patch_status("pg", &params, &Patch::Strategic(json!({"status": {}})))
        .await;
    assert_eq!(api_error(strategic).code, 415);

    assert_eq!(api.cnpg_patches().len(), 2, "accepted patches are recorded");
    let stored = api.cnpg_cluster("pg").expect("stored");
    assert_eq!(stored["status"]["targetPrimary"], "pg-1");
    assert_eq!(
        stored["metadata"]["resourceVersion"],
        json!(after.metadata.resource_version)
    );
}
