//! Wiring from configuration to the discovery sources of `pgsteer-discovery`.

use pgsteer_discovery::kubernetes::{AddressMode, KubernetesError, KubernetesSettings};
use pgsteer_discovery::{ProbeConfig, ProbeHandle, StaticMember, Topology};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, Source};

/// Why `pgsteer check` could not read the topology once.
#[derive(Debug, thiserror::Error)]
pub enum OnceError {
    /// The discovery settings are unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Kubernetes API could not be asked.
    #[error("discovery.kubernetes: {0}")]
    Kubernetes(#[source] KubernetesError),
}

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

/// The Kubernetes source settings from `[discovery.kubernetes]`.
pub fn kubernetes_settings(config: &Config) -> Result<KubernetesSettings, ConfigError> {
    let Some(k) = &config.discovery.kubernetes else {
        return Err(ConfigError::MissingSection {
            source_name: "kubernetes",
            section: "discovery.kubernetes",
        });
    };
    if k.selector.trim().is_empty() {
        return Err(ConfigError::EmptySelector);
    }
    let address = AddressMode::parse(&k.address, k.service.as_deref())
        .map_err(ConfigError::KubernetesAddress)?;
    Ok(KubernetesSettings {
        namespace: k.namespace.clone(),
        selector: k.selector.clone(),
        port: k.port,
        preset: k.preset.clone(),
        address,
        kubeconfig: k.kubeconfig.clone(),
    })
}

/// The Patroni source settings from `[discovery.patroni]`.
pub fn patroni_settings(
    config: &Config,
) -> Result<pgsteer_discovery::PatroniSettings, ConfigError> {
    let Some(p) = &config.discovery.patroni else {
        return Err(ConfigError::MissingSection {
            source_name: "patroni",
            section: "discovery.patroni",
        });
    };
    Ok(pgsteer_discovery::PatroniSettings {
        endpoints: p.endpoints.clone(),
        poll_interval: p.poll_interval,
        request_timeout: p.request_timeout,
    })
}

fn need_probe(config: &Config) -> Result<ProbeConfig, ConfigError> {
    probe_config(config)?.ok_or(ConfigError::NoProbe)
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
        Source::Kubernetes => Ok(pgsteer_discovery::kubernetes::spawn(
            kubernetes_settings(config)?,
            probe_config(config)?,
            tx,
            cancel,
        )),
        Source::Patroni => Ok(pgsteer_discovery::spawn_patroni(
            patroni_settings(config)?,
            probe_config(config)?,
            tx,
            cancel,
        )),
    }
}

/// Runs discovery once (for `pgsteer check`).
pub async fn once(config: &Config) -> Result<Topology, OnceError> {
    match config.discovery.source {
        Source::Static => {
            Ok(pgsteer_discovery::probe_once(&static_members(config), &need_probe(config)?).await)
        }
        Source::Patroni => {
            let probe = probe_config(config)?;
            Ok(pgsteer_discovery::patroni_once(&patroni_settings(config)?, probe.as_ref()).await)
        }
        Source::Kubernetes => {
            pgsteer_discovery::kubernetes::list_once(&kubernetes_settings(config)?)
                .await
                .map_err(OnceError::Kubernetes)
        }
    }
}
