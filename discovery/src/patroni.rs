//! The Patroni source: polls `GET /cluster` on the members' REST APIs, folds the document into
//! routing members with the pure [`fold_cluster`], cross-checks them with the SQL probe
//! ([`verify`]) and publishes.
//!
//! Patroni's leader (consensus in its DCS) is the authority on who may take writes; the probe
//! only confirms it and fences zombies (writable members Patroni does not call leader). When no
//! endpoint answers, the last members stay published with a `source_error` (so staleness grows)
//! and polling backs off; live sessions are never dropped for that alone.

mod cluster_doc;
mod http;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use cluster_doc::{
    ClusterDoc, NOLOADBALANCE_NOTE, PatroniMember, STANDBY_LEADER_NOTE, SWITCHOVER_DRAIN_LEAD,
    ScheduledSwitchover, fold_cluster, parse_timestamp,
};
pub use http::{EndpointError, FetchError, PollError};

use crate::probe::{Observation, ProbeConfig};
use crate::probe_set::{ProbeHandle, ProbeSet};
use crate::topology::{Member, Role, Topology};
use crate::verify::{publish, verify, zombies};
use http::{Endpoint, poll_round};

/// Longest pause between two polls while no endpoint answers (unless `poll_interval` is longer).
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// `[discovery.patroni]`: where the REST APIs are and how often to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatroniSettings {
    /// Base URLs of any members' REST APIs (`http://pg-0:8008`), tried in order, the last one
    /// that answered first.
    pub endpoints: Vec<String>,
    /// Time between two polls while endpoints answer.
    pub poll_interval: Duration,
    /// Bound on one request (connect, send, whole response).
    pub request_timeout: Duration,
}

/// Pause after `failures` failed rounds in a row: the interval doubled per failure, at most
/// [`MAX_BACKOFF`] (or the interval, if that is longer).
fn backoff(interval: Duration, failures: u32) -> Duration {
    let cap = MAX_BACKOFF.max(interval);
    interval
        .checked_mul(1u32 << failures.min(16))
        .map_or(cap, |d| d.min(cap))
}

/// Runs the Patroni source until `cancel` fires.
///
/// Polls `/cluster` every `poll_interval`, folds it with [`fold_cluster`], probes the members
/// with SQL when `probe` is set and publishes what [`verify`] makes of both (without `probe`,
/// Patroni's view is published as is). Returns the handle that asks the probe for an immediate
/// re-probe (inert without `probe`) and the task, which ends after `cancel` fires and every
/// probe connection is closed.
pub fn spawn_patroni(
    settings: PatroniSettings,
    probe: Option<ProbeConfig>,
    tx: watch::Sender<Topology>,
    cancel: CancellationToken,
) -> (ProbeHandle, JoinHandle<()>) {
    let (out, observations) = mpsc::channel(64);
    let set = probe.map(|p| ProbeSet::new(p, out, cancel.clone()));
    let handle = set.as_ref().map(ProbeSet::handle).unwrap_or_default();
    let (doc_tx, docs) = mpsc::channel(1);
    let poller = tokio::spawn(poll_loop(settings, doc_tx, cancel.clone()));
    let folder = Folder::new(set);
    let task = tokio::spawn(async move {
        folder.run(docs, observations, tx, cancel).await;
        if let Err(e) = poller.await {
            error!(error = %e, "patroni poller failed");
        }
    });
    (handle, task)
}

/// Polls until cancelled or the folder is gone, backing off while no endpoint answers.
async fn poll_loop(
    settings: PatroniSettings,
    out: mpsc::Sender<Result<ClusterDoc, PollError>>,
    cancel: CancellationToken,
) {
    let endpoints: Vec<Endpoint> = settings
        .endpoints
        .iter()
        .map(|u| Endpoint::new(u))
        .collect();
    let mut preferred = 0;
    let mut failures = 0u32;
    loop {
        let round = poll_round(&endpoints, &mut preferred, settings.request_timeout);
        let Some(result) = cancel.run_until_cancelled(round).await else {
            return;
        };
        let pause = if result.is_ok() {
            failures = 0;
            settings.poll_interval
        } else {
            failures = failures.saturating_add(1);
            backoff(settings.poll_interval, failures)
        };
        if out.send(result).await.is_err() {
            return;
        }
        let wait = tokio::time::sleep_until(Instant::now() + pause);
        if cancel.run_until_cancelled(wait).await.is_none() {
            return;
        }
    }
}

/// The folding task's state: Patroni's last claim, the probe's observations, what was published.
struct Folder {
    probes: Option<ProbeSet>,
    claimed: BTreeMap<String, Member>,
    pending_change: Option<String>,
    source_error: Option<String>,
    observations: BTreeMap<String, Observation>,
    published: BTreeMap<String, Member>,
    zombies: Vec<String>,
}

impl Folder {
    fn new(probes: Option<ProbeSet>) -> Folder {
        Folder {
            probes,
            claimed: BTreeMap::new(),
            pending_change: None,
            source_error: None,
            observations: BTreeMap::new(),
            published: BTreeMap::new(),
            zombies: Vec::new(),
        }
    }

    async fn run(
        mut self,
        mut docs: mpsc::Receiver<Result<ClusterDoc, PollError>>,
        mut observations: mpsc::Receiver<(String, Observation)>,
        tx: watch::Sender<Topology>,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                doc = docs.recv() => match doc {
                    Some(doc) => self.on_poll(doc, SystemTime::now()),
                    None => break,
                },
                Some((name, observation)) = observations.recv() => {
                    if !self.claimed.contains_key(&name) {
                        continue;
                    }
                    self.observations.insert(name, observation);
                }
            }
            self.publish(&tx);
        }
        drop(observations);
        if let Some(set) = self.probes.take() {
            set.shutdown().await;
        }
    }

    /// Takes in one poll result: a new claim, or an outage (the last claim stays).
    fn on_poll(&mut self, result: Result<ClusterDoc, PollError>, now: SystemTime) {
        match result {
            Ok(doc) => {
                if self.source_error.take().is_some() {
                    info!("patroni answers again");
                }
                let (claimed, pending) = fold_cluster(&doc, now);
                if pending != self.pending_change
                    && let Some(p) = &pending
                {
                    info!(change = %p, "patroni announced a role change");
                }
                self.pending_change = pending;
                self.set_claim(claimed);
            }
            Err(e) => {
                if self.source_error.is_none() {
                    warn!(error = %e, "patroni unreachable: keeping the last topology");
                }
                self.source_error = Some(e.to_string());
            }
        }
    }

    /// Replaces the claim, keeps the probe lanes in step, and re-probes at once when a role
    /// changed (so a new leader is confirmed writable without waiting for the interval).
    fn set_claim(&mut self, claimed: BTreeMap<String, Member>) {
        let roles_changed = claimed.len() != self.claimed.len()
            || claimed.iter().any(|(name, m)| {
                self.claimed
                    .get(name)
                    .is_none_or(|old| old.role != m.role || old.address != m.address)
            });
        // A member whose address changed: its stored observation is of the old address.
        self.observations.retain(
            |name, _| match (claimed.get(name), self.claimed.get(name)) {
                (Some(new), Some(old)) => new.address == old.address,
                (Some(_), None) => true,
                (None, _) => false,
            },
        );
        self.claimed = claimed;
        if let Some(set) = self.probes.as_mut() {
            let addresses: BTreeMap<String, String> = self
                .claimed
                .values()
                .filter(|m| !m.address.is_empty())
                .map(|m| (m.name.clone(), m.address.clone()))
                .collect();
            set.sync(&addresses);
            if roles_changed {
                set.handle().reprobe();
            }
        }
    }

    fn publish(&mut self, tx: &watch::Sender<Topology>) {
        let members = verify(&self.claimed, &self.observations, self.probes.is_some());
        self.log_transitions(&members);
        publish(
            tx,
            members.clone(),
            self.source_error.clone(),
            self.pending_change.clone(),
        );
        self.published = members;
    }

    fn log_transitions(&mut self, next: &BTreeMap<String, Member>) {
        for member in next.values() {
            let before = self.published.get(&member.name);
            let routable_before = before.is_some_and(|m| m.routable);
            let role_before = before.map_or(Role::Unknown, |m| m.role);
            if role_before != member.role || routable_before != member.routable {
                info!(
                    member = %member.name,
                    from = %role_before,
                    to = %member.role,
                    routable = member.routable,
                    note = member.note.as_deref().unwrap_or(""),
                    "member changed"
                );
            }
        }
        for name in self.published.keys().filter(|n| !next.contains_key(*n)) {
            info!(member = %name, "member no longer listed by patroni");
        }
        let now: Vec<String> = zombies(next).map(|m| m.name.clone()).collect();
        for name in now.iter().filter(|n| !self.zombies.contains(n)) {
            error!(member = %name, "zombie: writable but not patroni's leader; fenced");
        }
        self.zombies = now;
    }
}

/// Reads `/cluster` once and, with `probe`, probes every member once (for `pgsteer check`).
///
/// The request is bounded by `request_timeout`, the probes by `probe.timeout`; probe
/// connections are closed before this returns. When no endpoint answers the topology has no
/// members and says why in `source_error`.
pub async fn patroni_once(settings: &PatroniSettings, probe: Option<&ProbeConfig>) -> Topology {
    let endpoints: Vec<Endpoint> = settings
        .endpoints
        .iter()
        .map(|u| Endpoint::new(u))
        .collect();
    let mut topology = Topology::default();
    let doc = match poll_round(&endpoints, &mut 0, settings.request_timeout).await {
        Ok(doc) => doc,
        Err(e) => {
            topology.source_error = Some(e.to_string());
            return topology;
        }
    };
    let (claimed, pending) = fold_cluster(&doc, SystemTime::now());
    let observations = match probe {
        Some(probe) => probe_each_once(&claimed, probe).await,
        None => BTreeMap::new(),
    };
    topology.replace_members(verify(&claimed, &observations, probe.is_some()));
    topology.pending_change = pending;
    topology.confirmed_at = Some(SystemTime::now());
    topology
}

/// One observation per member with an address, or as many as arrive within the probe timeout.
async fn probe_each_once(
    claimed: &BTreeMap<String, Member>,
    probe: &ProbeConfig,
) -> BTreeMap<String, Observation> {
    let addresses: BTreeMap<String, String> = claimed
        .values()
        .filter(|m| !m.address.is_empty())
        .map(|m| (m.name.clone(), m.address.clone()))
        .collect();
    let (out, mut rx) = mpsc::channel(addresses.len().max(1) * 2);
    let mut set = ProbeSet::new(probe.clone(), out, CancellationToken::new());
    set.sync(&addresses);
    let mut observations = BTreeMap::new();
    let deadline = Instant::now() + probe.timeout + Duration::from_millis(500);
    while observations.len() < addresses.len() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((name, observation))) => {
                observations.entry(name).or_insert(observation);
            }
            Ok(None) | Err(_) => break,
        }
    }
    drop(rx);
    set.shutdown().await;
    observations
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn member(name: &str, role: &str, state: &str, port: u16) -> serde_json::Value {
        json!({"name": name, "role": role, "state": state, "host": "127.0.0.1", "port": port})
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let ms = Duration::from_millis;
        assert_eq!(backoff(ms(250), 1), ms(500));
        assert_eq!(backoff(ms(250), 3), ms(2000));
        assert_eq!(backoff(ms(250), 30), MAX_BACKOFF);
        assert_eq!(backoff(Duration::from_secs(5), 2), Duration::from_secs(5));
    }

    /// A fake Patroni REST API: answers every request with the current body (`None`: 503).
    async fn fake_patroni(body: Arc<Mutex<Option<String>>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let body = body.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    assert!(request.starts_with(b"GET /cluster HTTP/1.1\r\n"));
                    let (status, body) = match body {
                        Some(b) => ("200 OK", b),
                        None => ("503 Service Unavailable", "{}".to_owned()),
                    };
                    let response = format!(
                        "HTTP/1.0 {status}\r\nContent-Type: application/json\r\n\r\n{body}"
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        url
    }

    fn refusing_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("addr"))
    }

    #[tokio::test]
    async fn the_source_follows_any_answering_endpoint_and_keeps_the_last_view_in_an_outage() {
        let one_leader = json!({"members": [member("pg-0", "leader", "running", 5432),
                                            member("pg-1", "replica", "streaming", 5433)]})
        .to_string();
        let body = Arc::new(Mutex::new(Some(one_leader)));
        let answering = fake_patroni(Arc::clone(&body)).await;
        let settings = PatroniSettings {
            endpoints: vec![refusing_url(), "https://nope".into(), answering],
            poll_interval: Duration::from_millis(20),
            request_timeout: Duration::from_secs(2),
        };
        let (tx, mut rx) = watch::channel(Topology::default());
        let cancel = CancellationToken::new();
        let (_handle, task) = spawn_patroni(settings.clone(), None, tx, cancel.clone());
        let wait = async |rx: &mut watch::Receiver<Topology>, pred: fn(&Topology) -> bool| {
            tokio::time::timeout(Duration::from_secs(10), rx.wait_for(pred))
                .await
                .expect("in time")
                .expect("source alive")
                .clone()
        };
        let t = wait(&mut rx, |t| t.primary().is_some()).await;
        assert_eq!(t.primary().unwrap().name, "pg-0");
        assert!(t.source_error.is_none());

        *body.lock().unwrap() = None;
        let t = wait(&mut rx, |t| t.source_error.is_some()).await;
        let error = t.source_error.clone().unwrap();
        assert!(
            error.contains("503") && error.contains("connect"),
            "{error}"
        );
        assert_eq!(t.primary().unwrap().name, "pg-0", "the last view stays");

        let switched = json!({
            "members": [member("pg-0", "replica", "streaming", 5432),
                        member("pg-1", "leader", "running", 5433)],
            "scheduled_switchover": {"at": "2000-01-01T00:00:00+00:00", "from": "pg-1"},
        });
        *body.lock().unwrap() = Some(switched.to_string());
        let t = wait(&mut rx, |t| t.source_error.is_none()).await;
        assert_eq!(t.members["pg-1"].role, Role::Primary);
        assert!(t.members["pg-1"].draining);
        assert!(t.pending_change.is_some());

        let once = patroni_once(&settings, None).await;
        assert_eq!(once.members.len(), 2);
        assert!(once.pending_change.is_some());
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("stops")
            .expect("no panic");
    }

    #[tokio::test]
    async fn a_leader_the_probe_cannot_reach_gets_no_writes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let refusing = listener.local_addr().expect("addr").port();
        drop(listener);
        let body = json!({"members": [member("pg-0", "leader", "running", refusing)]});
        let url = fake_patroni(Arc::new(Mutex::new(Some(body.to_string())))).await;
        let settings = PatroniSettings {
            endpoints: vec![url],
            poll_interval: Duration::from_millis(20),
            request_timeout: Duration::from_secs(2),
        };
        let probe = ProbeConfig {
            timeout: Duration::from_secs(2),
            ..ProbeConfig::default()
        };
        let once = patroni_once(&settings, Some(&probe)).await;
        let m = &once.members["pg-0"];
        assert_eq!((m.role, m.routable), (Role::Unreachable, false), "{m:?}");
        assert!(once.primary().is_none());
    }
}
