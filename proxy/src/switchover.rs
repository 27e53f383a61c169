//! A switchover led by pgsteer (`POST /switchover`), so that no pooled client notices:
//!
//! 1. **holding**: new pooled transactions bound for the primary wait at the [`Gate`]
//!    (their clients stay connected, their queries wait);
//! 2. **draining**: transactions in flight on the old primary may finish for
//!    `[switchover] drain_timeout`; the rest are ended (their clients stay, see
//!    `session/pooled/lost.rs`);
//! 3. **switching**: the cluster manager is asked to switch ([`Manager`]: Patroni's REST
//!    `/switchover`, or CloudNativePG's `Cluster` `status.targetPrimary`);
//! 4. **confirming**: pgsteer waits until its probe confirms another primary (the candidate
//!    when one was asked for or chosen);
//! 5. the held transactions are released there.
//!
//! Any failure opens the gate again: transactions go on on whatever primary is confirmed,
//! and the answer says which step failed and why.

mod cnpg;
pub mod gate;
mod patroni;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use pgsteer_discovery::Topology;
use pgsteer_discovery::kubernetes::{KubernetesSettings, Preset};
use serde::Serialize;
use tracing::{info, warn};

use crate::config::Source;
use crate::metrics::SWITCHOVER_PHASES;
use crate::state::Shared;
pub use gate::Gate;

/// What `POST /switchover` answers.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// `ok` or `failed`.
    pub result: &'static str,
    /// The step that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<&'static str>,
    /// Why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The primary before.
    pub old_primary: Option<String>,
    /// The primary confirmed at the end (the old one again after most failures).
    pub new_primary: Option<String>,
    /// How long new transactions were held.
    pub held_ms: u64,
    /// Transactions that waited at the gate.
    pub transactions_held: u64,
    /// Of those, the ones let through.
    pub transactions_released: u64,
    /// Transactions in flight on the old primary ended after `drain_timeout`.
    pub transactions_ended: u64,
}

/// A step that failed: its name, the HTTP status for the answer, and why.
struct Failed(&'static str, StatusCode, String);

/// Runs a switchover to `candidate` (when `None`, Patroni chooses; for CloudNativePG, pgsteer
/// chooses the replica with the least lag) and reports on it.
pub async fn run(shared: &Shared, candidate: Option<String>) -> (StatusCode, Report) {
    let gate = &shared.switchover;
    if gate.running.swap(true, Ordering::AcqRel) {
        let report = Report {
            result: "failed",
            step: Some("start"),
            error: Some("a switchover is already running".into()),
            ..Report::default()
        };
        return (StatusCode::CONFLICT, report);
    }
    let mut report = Report::default();
    let started = Instant::now();
    let mut drained = None;
    let outcome = steps(shared, candidate.as_deref(), &mut report, &mut drained).await;
    gate.open();
    // The held transactions count themselves released once they run: let them.
    gate.settle(Duration::from_secs(1)).await;
    if let Some(member) = drained {
        shared.topology.undrain(&member);
    }
    phase(shared, "idle");
    report.held_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    report.transactions_held = gate.held.load(Ordering::Relaxed);
    report.transactions_released = gate.released.load(Ordering::Relaxed);
    report.new_primary = shared.topology.current().primary().map(|p| p.name.clone());
    let m = &shared.metrics;
    for (outcome, n) in [
        ("held", report.transactions_held),
        ("released", report.transactions_released),
        ("ended", report.transactions_ended),
    ] {
        m.switchover_transactions
            .with_label_values(&[outcome])
            .inc_by(n);
    }
    gate.running.store(false, Ordering::Release);
    let status = match outcome {
        Ok(()) => {
            report.result = "ok";
            m.switchovers.with_label_values(&["ok"]).inc();
            info!(?report, "switchover done");
            StatusCode::OK
        }
        Err(Failed(step, status, error)) => {
            report.result = "failed";
            report.step = Some(step);
            report.error = Some(error);
            m.switchovers.with_label_values(&["failed"]).inc();
            warn!(
                ?report,
                "switchover failed; transactions resume on the confirmed primary"
            );
            status
        }
    };
    (status, report)
}

async fn steps(
    shared: &Shared,
    candidate: Option<&str>,
    report: &mut Report,
    drained: &mut Option<String>,
) -> Result<(), Failed> {
    let config = &shared.config.switchover;
    let deadline = Instant::now() + config.timeout;
    let (old, manager, candidate) = check_start(shared, candidate)?;
    let candidate = candidate.as_deref();
    report.old_primary = Some(old.clone());
    info!(old = %old, candidate = ?candidate, "switchover: holding new transactions");
    phase(shared, "holding");
    shared.switchover.close();

    phase(shared, "draining");
    let left = drain(shared, &old, config.drain_timeout).await;
    if left > 0 {
        // Ended where they are: their clients get an error and stay.
        report.transactions_ended = left as u64;
        // An operator's drain of the old primary is the operator's to lift.
        if !shared.topology.drained().contains(&old) {
            shared.topology.drain(&old);
            *drained = Some(old.clone());
        }
        info!(old = %old, left, "switchover: transactions still in flight were ended");
    }

    phase(shared, "switching");
    let left_time = deadline.saturating_duration_since(Instant::now());
    manager.switch(&old, candidate, left_time).await?;

    phase(shared, "confirming");
    let mut rx = shared.topology.subscribe();
    let confirmed = rx.wait_for(|t| {
        t.primary()
            .is_some_and(|p| p.name != old && candidate.is_none_or(|c| p.name == c))
    });
    let left_time = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left_time, confirmed).await {
        Ok(Ok(_)) => Ok(()),
        _ => Err(Failed(
            "confirming",
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "no new primary confirmed within {}",
                humantime::format_duration(config.timeout)
            ),
        )),
    }
}

/// The primary to switch from, the manager to ask and the candidate to confirm, after
/// checking that a switchover can be asked for.
fn check_start(
    shared: &Shared,
    candidate: Option<&str>,
) -> Result<(String, Manager, Option<String>), Failed> {
    if !Manager::supported(shared) {
        return Err(Failed(
            "start",
            StatusCode::NOT_IMPLEMENTED,
            "pgsteer leads switchovers through Patroni ([discovery] source = \"patroni\") or \
             CloudNativePG (source = \"kubernetes\", preset = \"cloudnativepg\") only"
                .into(),
        ));
    }
    let t = shared.topology.current();
    let Some(old) = t.primary().map(|p| p.name.clone()) else {
        return Err(Failed(
            "start",
            StatusCode::CONFLICT,
            "no primary is confirmed".into(),
        ));
    };
    if let Some(c) = candidate
        && (c == old || t.member(c).is_none())
    {
        return Err(Failed(
            "start",
            StatusCode::BAD_REQUEST,
            format!("{c} is not a replica of the cluster"),
        ));
    }
    let manager = Manager::of(shared, &old)?;
    let candidate = manager.candidate(&t, candidate)?;
    Ok((old, manager, candidate))
}

/// The cluster manager asked to switch.
enum Manager {
    /// Patroni: `POST /switchover` on its REST API (the discovery endpoints).
    Patroni {
        endpoints: Vec<String>,
        auth: Option<String>,
    },
    /// CloudNativePG: the `Cluster`'s `status.targetPrimary`, through the Kubernetes API the
    /// discovery source uses.
    CloudNativePg {
        settings: Box<KubernetesSettings>,
        cluster: String,
    },
}

impl Manager {
    /// Whether pgsteer can lead switchovers with the configured discovery source.
    fn supported(shared: &Shared) -> bool {
        let d = &shared.config.discovery;
        match d.source {
            Source::Patroni => true,
            Source::Kubernetes => d
                .kubernetes
                .as_ref()
                .is_some_and(|k| k.preset == Preset::CloudNativePg),
            Source::Static => false,
        }
    }

    /// The manager of the configured source; `old` names the CloudNativePG cluster unless
    /// `[switchover] cluster` does.
    fn of(shared: &Shared, old: &str) -> Result<Manager, Failed> {
        let config = &shared.config;
        if config.discovery.source == Source::Patroni {
            let endpoints = config
                .discovery
                .patroni
                .as_ref()
                .map(|p| p.endpoints.clone())
                .unwrap_or_default();
            let auth = patroni_auth(shared)?;
            return Ok(Manager::Patroni { endpoints, auth });
        }
        let settings = crate::discovery::kubernetes_settings(config)
            .map_err(|e| Failed("start", StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let cluster = match &config.switchover.cluster {
            Some(c) => c.clone(),
            None => cnpg::cluster_of(old).map(str::to_owned).ok_or_else(|| {
                Failed(
                    "start",
                    StatusCode::CONFLICT,
                    format!(
                        "cannot tell the CloudNativePG cluster from pod {old}: set [switchover] cluster"
                    ),
                )
            })?,
        };
        Ok(Manager::CloudNativePg {
            settings: Box::new(settings),
            cluster,
        })
    }

    /// The candidate to confirm: the one asked for; else none for Patroni (it chooses), and
    /// the routable replica with the least lag for CloudNativePG (which needs a name).
    fn candidate(&self, t: &Topology, asked: Option<&str>) -> Result<Option<String>, Failed> {
        if let Some(c) = asked {
            return Ok(Some(c.to_owned()));
        }
        if let Manager::Patroni { .. } = self {
            return Ok(None);
        }
        t.replicas()
            .min_by_key(|m| (m.lag_bytes.unwrap_or(u64::MAX), m.name.clone()))
            .map(|m| Some(m.name.clone()))
            .ok_or_else(|| {
                Failed(
                    "start",
                    StatusCode::CONFLICT,
                    "no routable replica to promote".into(),
                )
            })
    }

    /// Asks the manager to switch from `old` to `candidate`, within `timeout`.
    async fn switch(
        &self,
        old: &str,
        candidate: Option<&str>,
        timeout: Duration,
    ) -> Result<(), Failed> {
        let failed = |e| Failed("switching", StatusCode::BAD_GATEWAY, e);
        match self {
            Manager::Patroni { endpoints, auth } => {
                patroni::switchover(endpoints, old, candidate, auth.as_deref(), timeout)
                    .await
                    .map(drop)
                    .map_err(failed)
            }
            Manager::CloudNativePg { settings, cluster } => {
                let candidate = candidate.ok_or_else(|| failed("no candidate".into()))?;
                let asked = cnpg::promote(settings, cluster, candidate);
                match tokio::time::timeout(timeout, asked).await {
                    Ok(done) => done.map_err(failed),
                    Err(_) => Err(failed(format!(
                        "the Kubernetes API did not answer within {}",
                        humantime::format_duration(timeout)
                    ))),
                }
            }
        }
    }
}

/// Waits until nothing is lent on `old` any more (or `timeout`): what is still lent.
async fn drain(shared: &Shared, old: &str, timeout: Duration) -> usize {
    let until = Instant::now() + timeout;
    loop {
        let left = shared.pools.lent_on(old);
        if left == 0 || Instant::now() >= until {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn patroni_auth(shared: &Shared) -> Result<Option<String>, Failed> {
    let Some(path) = &shared.config.switchover.patroni_auth_file else {
        return Ok(None);
    };
    std::fs::read_to_string(path)
        .map(|s| Some(s.trim().to_owned()))
        .map_err(|e| {
            Failed(
                "start",
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read {}: {e}", path.display()),
            )
        })
}

/// Shows `name` as the current phase.
fn phase(shared: &Shared, name: &str) {
    for p in SWITCHOVER_PHASES {
        shared
            .metrics
            .switchover_phase
            .with_label_values(&[p])
            .set(i64::from(p == name));
    }
}

#[cfg(test)]
mod tests {
    use pgsteer_discovery::kubernetes::AddressMode;
    use pgsteer_discovery::{Member, Role};

    use super::*;

    fn cloudnativepg() -> Manager {
        Manager::CloudNativePg {
            settings: Box::new(KubernetesSettings {
                namespace: None,
                selector: "cnpg.io/cluster=pg".into(),
                port: 5432,
                preset: Preset::CloudNativePg,
                address: AddressMode::Ip,
                kubeconfig: None,
            }),
            cluster: "pg".into(),
        }
    }

    fn topology(members: &[(&str, Role, bool, Option<u64>)]) -> Topology {
        let members = members
            .iter()
            .map(|&(name, role, routable, lag)| {
                let mut m = Member::new(name, "127.0.0.1:5432");
                m.role = role;
                m.routable = routable;
                m.lag_bytes = lag;
                (name.to_owned(), m)
            })
            .collect();
        Topology {
            members,
            ..Topology::default()
        }
    }

    #[test]
    fn cloudnativepg_promotes_the_least_lagging_routable_replica_unless_one_is_asked_for() {
        let t = topology(&[
            ("pg-0", Role::Primary, true, None),
            ("pg-1", Role::Replica, true, Some(800)),
            ("pg-2", Role::Replica, true, Some(10)),
            ("pg-3", Role::Replica, false, Some(0)),
            ("pg-4", Role::Replica, true, None),
        ]);
        let m = cloudnativepg();
        assert_eq!(
            m.candidate(&t, None).ok().flatten().as_deref(),
            Some("pg-2")
        );
        assert_eq!(
            m.candidate(&t, Some("pg-1")).ok().flatten().as_deref(),
            Some("pg-1")
        );
        let patroni = Manager::Patroni {
            endpoints: vec![],
            auth: None,
        };
        assert_eq!(
            patroni.candidate(&t, None).ok(),
            Some(None),
            "Patroni chooses"
        );
        let alone = topology(&[("pg-0", Role::Primary, true, None)]);
        let Err(Failed(step, status, why)) = m.candidate(&alone, None) else {
            panic!("a candidate without replicas");
        };
        assert_eq!((step, status), ("start", StatusCode::CONFLICT));
        assert!(why.contains("replica"), "{why}");
    }
}
