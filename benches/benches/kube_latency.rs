//! Kubernetes source latency: from a watch event that relabels a pod (written by the API
//! fixture over real HTTP) to the new topology in the router's `watch::Receiver`.
//!
//! `cargo bench -p pgsteer-benches --bench kube_latency` prints percentiles over
//! `PGSTEER_KUBE_LATENCY_N` relabels (default 500). No Postgres is involved: the probe is off, so
//! this is the watch → fold → publish path alone.

use std::time::{Duration, Instant};

use pgsteer_discovery::Topology;
use pgsteer_discovery::kubernetes::{
    AddressMode, KubernetesSettings, Preset, connect, spawn_kubernetes,
};
use pgsteer_tests::kube_api::{FakePod, KubeApi};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn main() {
    let n = std::env::var("PGSTEER_KUBE_LATENCY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500usize);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut samples = runtime.block_on(measure(n));
    samples.sort();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "kube_latency: watch event -> topology over {} relabels: mean {:?}, p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        samples.len(),
        mean,
        pct(50),
        pct(90),
        pct(99),
        samples[samples.len() - 1]
    );
}

async fn measure(n: usize) -> Vec<Duration> {
    let api = KubeApi::start("db").await;
    api.apply(FakePod::new("pg-0").label("app", "pg").port(5432));
    api.apply(
        FakePod::new("pg-1")
            .label("app", "pg")
            .label("role", "replica")
            .port(5432),
    );
    let settings = KubernetesSettings {
        namespace: Some("db".into()),
        selector: "app=pg".into(),
        port: 5432,
        preset: Preset::Patroni,
        address: AddressMode::Ip,
        kubeconfig: Some(api.write_kubeconfig(None)),
    };
    let client = connect(settings.kubeconfig.as_deref())
        .await
        .expect("client");
    let (tx, mut rx) = watch::channel(Topology::default());
    let cancel = CancellationToken::new();
    let (_reprobe, task) = spawn_kubernetes(settings, client, None, tx, cancel.clone());
    rx.wait_for(|t| t.members.len() == 2).await.expect("listed");
    while api.watchers() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let primary = i % 2 == 0;
        rx.borrow_and_update();
        let started = Instant::now();
        api.update("pg-1", |p| {
            let role = if primary { "primary" } else { "replica" };
            p.labels.insert("role".into(), role.into());
        });
        rx.wait_for(|t| t.primary().is_some() == primary)
            .await
            .expect("source alive");
        samples.push(started.elapsed());
    }
    cancel.cancel();
    let _ = task.await;
    samples
}
