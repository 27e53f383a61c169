//! The running Kubernetes source: kube-runtime's watcher on the selected Pods, folded by
//! [`PodStore`], cross-checked by the SQL probe ([`verify`]) and published at once.
//!
//! One task owns everything: watcher events, probe observations, the client's watch tap and a
//! heartbeat are handled in one `select!`, so every publish sees one consistent state. During an
//! API outage the last pods are kept (still probed), `source_error` is set so `/topology` shows
//! the staleness, and the watcher reconnects with its default backoff; an expired
//! resourceVersion (410) makes it relist, which replaces the snapshot atomically.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::KubernetesSettings;
use super::client::{KubeClient, connect};
use super::pods::{PodStore, pending_change};
use crate::probe::{Observation, ProbeConfig};
use crate::probe_set::{ProbeHandle, ProbeSet};
use crate::topology::{Member, Role, Topology};
use crate::verify::{publish, verify};

/// How often the view is re-published while the watch is healthy, so that `confirmed_at` (and
/// with it `source_stale_seconds`) stays fresh on a quiet cluster.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Bounds of the wait between two attempts to build the client.
const CONNECT_BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));

/// Starts the source with a client built elsewhere. Returns the re-probe handle (inert without
/// `probe`) and the task, which ends after `cancel` fires.
pub fn spawn_kubernetes(
    settings: KubernetesSettings,
    client: KubeClient,
    probe: Option<ProbeConfig>,
    tx: watch::Sender<Topology>,
    cancel: CancellationToken,
) -> (ProbeHandle, JoinHandle<()>) {
    start(settings, Some(client), probe, tx, cancel)
}

/// Starts the source, building the client inside the task from `settings.kubeconfig` or the
/// environment (in-cluster or `KUBECONFIG`); failures are retried with backoff and shown as
/// `source_error`. Returns at once, like [`spawn_kubernetes`].
pub fn spawn(
    settings: KubernetesSettings,
    probe: Option<ProbeConfig>,
    tx: watch::Sender<Topology>,
    cancel: CancellationToken,
) -> (ProbeHandle, JoinHandle<()>) {
    start(settings, None, probe, tx, cancel)
}

fn start(
    settings: KubernetesSettings,
    client: Option<KubeClient>,
    probe: Option<ProbeConfig>,
    tx: watch::Sender<Topology>,
    cancel: CancellationToken,
) -> (ProbeHandle, JoinHandle<()>) {
    if probe.is_none() {
        warn!("no [discovery.probe]: pod role labels are trusted without asking the servers");
    }
    let (out, observations) = mpsc::channel(64);
    let probes = probe.map(|p| ProbeSet::new(p, out, cancel.clone()));
    let handle = probes
        .as_ref()
        .map_or_else(ProbeHandle::default, ProbeSet::handle);
    let source = Source {
        settings,
        store: PodStore::new(),
        probes,
        observations: BTreeMap::new(),
        source_error: None,
        published: BTreeMap::new(),
        conflict: Vec::new(),
        claims: BTreeMap::new(),
        zombies: BTreeSet::new(),
        tx,
    };
    let task = tokio::spawn(source.run(client, observations, cancel));
    (handle, task)
}

/// The source task's state.
struct Source {
    settings: KubernetesSettings,
    store: PodStore,
    probes: Option<ProbeSet>,
    observations: BTreeMap<String, Observation>,
    source_error: Option<String>,
    /// What was last published, for transition logs and re-probes on label changes.
    published: BTreeMap<String, Member>,
    /// Pods labelled primary together, while that lasts.
    conflict: Vec<String>,
    /// Role and address of every pod as last claimed by its labels.
    claims: BTreeMap<String, (Role, String)>,
    /// Members currently fenced as zombies.
    zombies: BTreeSet<String>,
    tx: watch::Sender<Topology>,
}

impl Source {
    async fn run(
        mut self,
        client: Option<KubeClient>,
        mut observations: mpsc::Receiver<(String, Observation)>,
        cancel: CancellationToken,
    ) {
        let client = match client {
            Some(c) => c,
            None => match cancel.run_until_cancelled(self.connect()).await {
                Some(c) => c,
                None => return,
            },
        };
        let namespace = self
            .settings
            .namespace
            .clone()
            .unwrap_or_else(|| client.client.default_namespace().to_owned());
        info!(
            namespace = %namespace,
            selector = %self.settings.selector,
            preset = %self.settings.preset,
            "watching database pods"
        );
        let api: Api<Pod> = Api::namespaced(client.client.clone(), &namespace);
        let config = watcher::Config::default().labels(&self.settings.selector);
        let mut events = watcher(api, config).default_backoff().boxed();
        let idle = Notify::new();
        let watch_ok = client.watch_ok.as_deref().unwrap_or(&idle);
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                event = events.next() => match event {
                    Some(Ok(event)) => self.on_event(event),
                    Some(Err(e)) => self.on_error(&e),
                    None => {
                        error!("kubernetes watch stream ended");
                        break;
                    }
                },
                Some((name, observation)) = observations.recv(), if self.probes.is_some() => {
                    self.observations.insert(name, observation);
                    self.publish();
                }
                () = watch_ok.notified() => self.on_watch_ok(),
                _ = heartbeat.tick() => self.publish(),
            }
        }
        if let Some(probes) = self.probes.take() {
            probes.shutdown().await;
        }
    }

    /// Builds the client, retrying with backoff; the error is published meanwhile.
    async fn connect(&mut self) -> KubeClient {
        let mut wait = CONNECT_BACKOFF.0;
        loop {
            match connect(self.settings.kubeconfig.as_deref()).await {
                Ok(c) => return c,
                Err(e) => {
                    warn!(error = %e, retry_in = ?wait, "cannot create the kubernetes client");
                    self.source_error = Some(e.to_string());
                    self.publish();
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(CONNECT_BACKOFF.1);
                }
            }
        }
    }

    fn on_event(&mut self, event: watcher::Event<Pod>) {
        let healthy = !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_));
        if matches!(event, watcher::Event::InitDone) {
            debug!("pod list complete");
        }
        let changed = self.store.apply(event, &self.settings);
        if healthy && self.source_error.take().is_some() {
            info!("kubernetes watch recovered");
        }
        if changed {
            self.sync_probes();
        }
        if healthy {
            self.publish();
        }
    }

    fn on_error(&mut self, e: &watcher::Error) {
        let message = match e {
            watcher::Error::WatchError(status) if status.code == 410 => {
                info!("resourceVersion expired (410 Gone): relisting pods");
                "watch expired (410 Gone): relisting".to_owned()
            }
            other => {
                if self.source_error.is_none() {
                    warn!(error = %other, "kubernetes watch failed: keeping the last topology, reconnecting with backoff");
                } else {
                    debug!(error = %other, "kubernetes watch still failing");
                }
                format!("kubernetes watch: {other}")
            }
        };
        self.source_error = Some(message);
        self.publish();
    }

    /// A watch request succeeded: the watcher is connected again.
    fn on_watch_ok(&mut self) {
        if self.store.listed() && self.source_error.take().is_some() {
            info!("kubernetes watch reconnected");
            self.publish();
        }
    }

    /// Points the probe lanes at the pods' current addresses; forgets observations of pods that
    /// went away or moved.
    fn sync_probes(&mut self) {
        let Some(probes) = &mut self.probes else {
            return;
        };
        let addresses = self.store.addresses();
        let moved: Vec<String> = probes
            .members()
            .filter(|(name, address)| addresses.get(*name).map(String::as_str) != Some(*address))
            .map(|(name, _)| name.to_owned())
            .collect();
        for name in moved {
            self.observations.remove(&name);
        }
        probes.sync(&addresses);
    }

    /// Verifies the claimed members against the probe and publishes.
    fn publish(&mut self) {
        if !self.store.listed() && self.source_error.is_none() {
            return;
        }
        let claimed = self.store.claimed();
        self.log_claims(&claimed);
        let members = verify(&claimed, &self.observations, self.probes.is_some());
        self.log_verified(&members);
        let pending = pending_change(&members);
        publish(
            &self.tx,
            members.clone(),
            self.source_error.clone(),
            pending,
        );
        self.published = members;
    }

    /// Logs label conflicts; asks for a re-probe when a label or address changed, so that the
    /// probe confirms a new primary without waiting for the interval.
    fn log_claims(&mut self, claimed: &BTreeMap<String, Member>) {
        let conflict = self.store.conflicting_primaries();
        if conflict != self.conflict {
            if conflict.is_empty() {
                info!("primary label conflict resolved");
            } else {
                error!(pods = %conflict.join(","), "two pods labelled primary: no primary until resolved");
            }
            self.conflict = conflict;
        }
        let claims: BTreeMap<String, (Role, String)> = claimed
            .iter()
            .map(|(name, m)| (name.clone(), (m.role, m.address.clone())))
            .collect();
        if claims != self.claims {
            if let Some(probes) = &self.probes {
                probes.handle().reprobe();
            }
            self.claims = claims;
        }
    }

    /// Logs role changes and zombies (once when they appear).
    fn log_verified(&mut self, members: &BTreeMap<String, Member>) {
        for m in members.values() {
            let before = self.published.get(&m.name);
            let changed = before.is_none_or(|b| b.role != m.role || b.routable != m.routable);
            if !changed {
                continue;
            }
            let from = before.map_or(Role::Unknown, |b| b.role);
            let note = m.note.as_deref().unwrap_or("");
            info!(
                pod = %m.name, from = %from, to = %m.role, routable = m.routable,
                address = %m.address, note = %note, "pod role changed"
            );
        }
        let zombies: BTreeSet<String> = crate::verify::zombies(members)
            .map(|m| m.name.clone())
            .collect();
        for name in zombies.difference(&self.zombies) {
            error!(pod = %name, "zombie primary: writable but not labelled primary; fenced");
        }
        self.zombies = zombies;
    }
}
