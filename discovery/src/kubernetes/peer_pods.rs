//! pgsteer's own pods, for cancel forwarding between pgsteer processes: the pods a label
//! selector matches, by name, with their pod IPs. Every pod with an IP counts (a terminating
//! pgsteer pod still serves the sessions it drains, whose cancel keys it owns).
//!
//! The fold is pure ([`PeerPods::apply`]); [`spawn_peer_pods`] runs kube-runtime's watcher
//! (list + watch, default backoff, relist on 410) and publishes each change.

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::client::connect;

/// Pod name → pod IP.
pub type PodIps = BTreeMap<String, String>;

/// What to watch.
#[derive(Debug, Clone)]
pub struct PeerPodSettings {
    /// Namespace; `None`: the client's default namespace.
    pub namespace: Option<String>,
    /// Label selector of pgsteer's pods.
    pub selector: String,
    /// Kubeconfig file instead of `KUBECONFIG` / in-cluster configuration.
    pub kubeconfig: Option<PathBuf>,
}

/// The fold of watcher events into a snapshot; a relist replaces it at `InitDone`.
#[derive(Debug, Default)]
pub struct PeerPods {
    pods: PodIps,
    relist: Option<PodIps>,
}

fn name_ip(pod: &Pod) -> Option<(String, Option<String>)> {
    let name = pod.metadata.name.clone().filter(|n| !n.is_empty())?;
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .filter(|ip| !ip.is_empty());
    Some((name, ip))
}

impl PeerPods {
    /// Applies one event; `true` when the snapshot changed.
    pub fn apply(&mut self, event: watcher::Event<Pod>) -> bool {
        let before = self.pods.clone();
        match event {
            watcher::Event::Init => self.relist = Some(PodIps::new()),
            watcher::Event::InitApply(pod) => {
                if let (Some(list), Some((name, Some(ip)))) = (&mut self.relist, name_ip(&pod)) {
                    list.insert(name, ip);
                }
            }
            watcher::Event::InitDone => {
                if let Some(list) = self.relist.take() {
                    self.pods = list;
                }
            }
            watcher::Event::Apply(pod) => match name_ip(&pod) {
                Some((name, Some(ip))) => {
                    self.pods.insert(name, ip);
                }
                Some((name, None)) => {
                    self.pods.remove(&name);
                }
                None => {}
            },
            watcher::Event::Delete(pod) => {
                if let Some((name, _)) = name_ip(&pod) {
                    self.pods.remove(&name);
                }
            }
        }
        before != self.pods
    }

    /// The pods now.
    pub fn pods(&self) -> &PodIps {
        &self.pods
    }
}

/// Watches the pods and publishes their IPs into `tx` until `cancel` fires. A watch error
/// keeps the last pods.
pub fn spawn_peer_pods(
    settings: PeerPodSettings,
    tx: watch::Sender<PodIps>,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        cancel.run_until_cancelled(run(settings, tx)).await;
    })
}

async fn run(settings: PeerPodSettings, tx: watch::Sender<PodIps>) {
    let mut wait = std::time::Duration::from_millis(500);
    let client = loop {
        match connect(settings.kubeconfig.as_deref()).await {
            Ok(c) => break c,
            Err(e) => {
                warn!(error = %e, "peers: cannot create the kubernetes client; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
            }
        }
    };
    let namespace = settings
        .namespace
        .clone()
        .unwrap_or_else(|| client.client.default_namespace().to_owned());
    info!(namespace = %namespace, selector = %settings.selector, "watching pgsteer peer pods");
    let api: Api<Pod> = Api::namespaced(client.client.clone(), &namespace);
    let config = watcher::Config::default().labels(&settings.selector);
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut fold = PeerPods::default();
    while let Some(event) = events.next().await {
        match event {
            Ok(e) => {
                if fold.apply(e) {
                    debug!(pods = fold.pods().len(), "peer pods changed");
                    tx.send_replace(fold.pods().clone());
                }
            }
            Err(e) => debug!(error = %e, "peer pod watch failed; keeping the last peers"),
        }
    }
}
