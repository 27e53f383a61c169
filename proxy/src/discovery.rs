//! Wiring from configuration to the discovery sources of `pgsteer-discovery`.
//!
//! What each source needs is checked where the configuration is validated
//! (the section accessors of `config::Discovery`); these functions use the same
//! accessors, so a configuration changed after parsing gets the same errors.

#[cfg(feature = "kubernetes")]
use pgsteer_discovery::kubernetes::KubernetesError;
use pgsteer_discovery::kubernetes::KubernetesSettings;
use pgsteer_discovery::{ProbeConfig, ProbeHandle, ProbeTls, StaticMember, Topology};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, Probe, Source};
use crate::tls::ServerSide;

/// Why `pgsteer check` could not read the topology once.
#[derive(Debug, thiserror::Error)]
pub enum OnceError {
    /// The discovery settings are unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS settings towards the servers do not load.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The Kubernetes API could not be asked.
    #[cfg(feature = "kubernetes")]
    #[error("discovery.kubernetes: {0}")]
    Kubernetes(#[source] KubernetesError),
}

/// The probe settings, if `[discovery.probe]` is configured.
pub fn probe_config(config: &Config) -> Result<Option<ProbeConfig>, ConfigError> {
    config
        .discovery
        .probe
        .as_ref()
        .map(|probe| probe_settings(config, probe))
        .transpose()
}

fn probe_settings(config: &Config, probe: &Probe) -> Result<ProbeConfig, ConfigError> {
    let d = &config.discovery;
    Ok(ProbeConfig {
        user: probe.user.clone(),
        password: probe.resolve_password()?,
        dbname: probe.dbname.clone(),
        interval: d.probe_interval,
        timeout: d.probe_timeout,
        tls: ProbeTls::disabled(),
    })
}

/// The probe settings with TLS as `[tls] server_mode` says (`server`).
fn with_tls(probe: ProbeConfig, server: &ServerSide) -> ProbeConfig {
    ProbeConfig {
        tls: server.probe(),
        ..probe
    }
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
    let k = config.discovery.kubernetes_section()?;
    let address = k.address_mode()?;
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
    let p = config.discovery.patroni_section()?;
    Ok(pgsteer_discovery::PatroniSettings {
        endpoints: p.endpoints.clone(),
        poll_interval: p.poll_interval,
        request_timeout: p.request_timeout,
    })
}

fn need_probe(config: &Config) -> Result<ProbeConfig, ConfigError> {
    probe_settings(config, config.discovery.static_probe()?)
}

/// Starts the configured source publishing into `tx` until `cancel` fires.
/// The probe connects to the servers with TLS as `server` (`[tls] server_mode`) says.
pub fn spawn(
    config: &Config,
    server: &ServerSide,
    tx: watch::Sender<Topology>,
    cancel: CancellationToken,
) -> Result<(ProbeHandle, JoinHandle<()>), ConfigError> {
    let probe = || Ok::<_, ConfigError>(probe_config(config)?.map(|p| with_tls(p, server)));
    match config.discovery.source {
        Source::Static => Ok(pgsteer_discovery::spawn_static(
            static_members(config),
            with_tls(need_probe(config)?, server),
            tx,
            cancel,
        )),
        #[cfg(feature = "kubernetes")]
        Source::Kubernetes => Ok(pgsteer_discovery::kubernetes::spawn(
            kubernetes_settings(config)?,
            probe()?,
            tx,
            cancel,
        )),
        #[cfg(not(feature = "kubernetes"))]
        Source::Kubernetes => Err(crate::config::KUBERNETES_NOT_BUILT),
        Source::Patroni => Ok(pgsteer_discovery::spawn_patroni(
            patroni_settings(config)?,
            probe()?,
            tx,
            cancel,
        )),
    }
}

/// Runs discovery once (for `pgsteer check`).
pub async fn once(config: &Config) -> Result<Topology, OnceError> {
    let server = ServerSide::load(config.tls.server_mode, config.tls.server_ca()?)?;
    match config.discovery.source {
        Source::Static => {
            let probe = with_tls(need_probe(config)?, &server);
            Ok(pgsteer_discovery::probe_once(&static_members(config), &probe).await)
        }
        Source::Patroni => {
            let probe = probe_config(config)?.map(|p| with_tls(p, &server));
            Ok(pgsteer_discovery::patroni_once(&patroni_settings(config)?, probe.as_ref()).await)
        }
        #[cfg(feature = "kubernetes")]
        Source::Kubernetes => {
            pgsteer_discovery::kubernetes::list_once(&kubernetes_settings(config)?)
                .await
                .map_err(OnceError::Kubernetes)
        }
        #[cfg(not(feature = "kubernetes"))]
        Source::Kubernetes => Err(OnceError::Config(crate::config::KUBERNETES_NOT_BUILT)),
    }
}
