//! Wiring from configuration to the discovery sources of `pgsteer-discovery`.

use pgsteer_discovery::{ProbeConfig, ProbeHandle, StaticMember, Topology};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, Source};

/// The probe settings, if `[discovery.probe]` is configured.
pub fn probe_config(config: &Config) -> Result<Option<ProbeConfig>, ConfigError> {
    let d = &config.discovery;
    let Some(probe) = &d.probe else {
        return Ok(None);
    };
    Ok(Some(ProbeConfig {
        user: probe.user.clone(),
        password: probe.resolve_password()?,
        dbname: probe.dbname.clone(),
        interval: d.probe_interval,
        timeout: d.probe_timeout,
    }))
}

/// The static members.
pub fn static_members(config: &Config) -> Vec<StaticMember> {
    config
        .discovery
        .members
        .iter()
        .map(|m| StaticMember::new(m.name.clone(), m.address.clone()))
        .collect()
}

fn need_probe(config: &Config) -> Result<ProbeConfig, ConfigError> {
    probe_config(config)?.ok_or_else(|| {
        ConfigError("discovery: the static source needs [discovery.probe] credentials".into())
    })
}

/// Starts the configured source publishing into `tx` until `cancel` fires.
pub fn spawn(
    config: &Config,
    tx: watch::Sender<Topology>,
    cancel: CancellationToken,
) -> Result<(ProbeHandle, JoinHandle<()>), ConfigError> {
    match config.discovery.source {
        Source::Static => Ok(pgsteer_discovery::spawn_static(
            static_members(config),
            need_probe(config)?,
            tx,
            cancel,
        )),
        Source::Kubernetes => Err(ConfigError(
            "discovery: the kubernetes source is not available in this build yet".into(),
        )),
        Source::Patroni => Err(ConfigError(
            "discovery: the patroni source is not available in this build yet".into(),
        )),
    }
}

/// Runs discovery once (for `pgsteer check`).
pub async fn once(config: &Config) -> Result<Topology, ConfigError> {
    match config.discovery.source {
        Source::Static => {
            Ok(pgsteer_discovery::probe_once(&static_members(config), &need_probe(config)?).await)
        }
        _ => Err(ConfigError(
            "discovery: check supports the static source only in this build".into(),
        )),
    }
}
