//! The Kubernetes source: the database pods, watched through the API server, roles from their
//! labels (operator presets), cross-checked by the SQL probe.
//!
//! A member is a pod by name; its address is the pod IP (or a headless-Service DNS name) and
//! the pod's Postgres port. [`pods`] holds the pure fold (pod → member, events → snapshot),
//! [`source`] the task around kube-runtime's watcher, [`client`] the API client.

//! Without the `kubernetes` feature only the settings types are here (the proxy's
//! configuration names them); the API client and the source are not built.

#[cfg(feature = "kubernetes")]
pub mod client;
#[cfg(feature = "kubernetes")]
pub mod peer_pods;
#[cfg(feature = "kubernetes")]
pub mod pods;
pub mod preset;
#[cfg(feature = "kubernetes")]
pub mod source;

use std::path::PathBuf;

#[cfg(feature = "kubernetes")]
use k8s_openapi::api::core::v1::Pod;
#[cfg(feature = "kubernetes")]
use kube::Api;
#[cfg(feature = "kubernetes")]
use kube::api::ListParams;

#[cfg(feature = "kubernetes")]
pub use client::{KubeClient, KubernetesError, connect};
#[cfg(feature = "kubernetes")]
pub use pods::{PodStore, pending_change, pod_port, pod_to_member};
pub use preset::{CustomPreset, LabelRole, Preset, PresetError};
#[cfg(feature = "kubernetes")]
pub use source::{spawn, spawn_kubernetes};

#[cfg(feature = "kubernetes")]
use crate::topology::Topology;

/// What the Kubernetes source watches and how it reads pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSettings {
    /// Namespace of the database pods; `None` = the client's default namespace (the service
    /// account's namespace in a cluster, the kubeconfig context's, else `default`).
    pub namespace: Option<String>,
    /// Label selector of the database pods (`cluster-name=pg,app=postgres`).
    pub selector: String,
    /// Postgres port for pods that declare no container port named `postgresql` or `postgres`.
    pub port: u16,
    /// How labels name the role.
    pub preset: Preset,
    /// Pod IP or DNS name.
    pub address: AddressMode,
    /// Kubeconfig file to use instead of `KUBECONFIG` / in-cluster configuration.
    pub kubeconfig: Option<PathBuf>,
}

/// How a member's host is formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressMode {
    /// The pod IP (`status.podIP`).
    Ip,
    /// `{pod}.{service}.{namespace}.svc` through a headless Service.
    Dns {
        /// The headless Service's name.
        service: String,
    },
}

/// Why the configuration's `address` and `service` name no [`AddressMode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressModeError {
    /// `address = "dns"` without the headless Service to form names with.
    #[error("address = \"dns\" needs service (the headless Service)")]
    DnsWithoutService,
    /// Neither `ip` nor `dns`.
    #[error("address {0:?}: expected \"ip\" or \"dns\"")]
    Unknown(String),
}

impl AddressMode {
    /// From the configuration's `address` (`ip` or `dns`) and `service`.
    pub fn parse(mode: &str, service: Option<&str>) -> Result<AddressMode, AddressModeError> {
        match (mode, service) {
            ("ip", _) => Ok(AddressMode::Ip),
            ("dns", Some(s)) if !s.is_empty() => Ok(AddressMode::Dns {
                service: s.to_owned(),
            }),
            ("dns", _) => Err(AddressModeError::DnsWithoutService),
            (other, _) => Err(AddressModeError::Unknown(other.to_owned())),
        }
    }
}

/// Lists the pods once and folds them, without probing (for `pgsteer check`).
#[cfg(feature = "kubernetes")]
pub async fn list_once(settings: &KubernetesSettings) -> Result<Topology, KubernetesError> {
    let client = connect(settings.kubeconfig.as_deref()).await?;
    let namespace = settings
        .namespace
        .clone()
        .unwrap_or_else(|| client.client.default_namespace().to_owned());
    let api: Api<Pod> = Api::namespaced(client.client, &namespace);
    let pods = api
        .list(&ListParams::default().labels(&settings.selector))
        .await
        .map_err(|source| KubernetesError::ListPods {
            namespace: namespace.clone(),
            source,
        })?;
    let mut store = PodStore::new();
    store.apply(kube::runtime::watcher::Event::Init, settings);
    for pod in pods.items {
        store.apply(kube::runtime::watcher::Event::InitApply(pod), settings);
    }
    store.apply(kube::runtime::watcher::Event::InitDone, settings);
    let members = store.claimed();
    let mut topology = Topology {
        pending_change: pending_change(&members),
        confirmed_at: Some(std::time::SystemTime::now()),
        ..Topology::default()
    };
    topology.replace_members(members);
    Ok(topology)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_modes_parse_with_clear_errors() {
        assert_eq!(AddressMode::parse("ip", None), Ok(AddressMode::Ip));
        assert_eq!(
            AddressMode::parse("dns", Some("pg")),
            Ok(AddressMode::Dns {
                service: "pg".into()
            })
        );
        let dns = AddressMode::parse("dns", None).unwrap_err();
        assert_eq!(dns, AddressModeError::DnsWithoutService);
        assert!(dns.to_string().contains("service"), "{dns}");
        let fqdn = AddressMode::parse("fqdn", None).unwrap_err();
        assert!(fqdn.to_string().contains("\"ip\" or \"dns\""), "{fqdn}");
    }
}
