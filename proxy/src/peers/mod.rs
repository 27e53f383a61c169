//! Peering: cancel requests reach the pgsteer process that owns their key, whichever process
//! behind the Service the client's cancel connection landed on.
//!
//! Each process has a peer id (`[peers] id`, else a stable hash of `POD_NAME` or the host
//! name) that its cancel keys carry (see `cancel::key`). A process that receives a key it
//! does not own reads the owner from the key and forwards the request to that peer's port
//! ([`wire`]: HMAC-SHA256 with the shared secret, timestamp and nonce; mutual TLS on top when
//! configured), at most `forward_rate` per second per source address ([`rate`]). Peers come
//! from `[[peers.member]]` and, with `[peers.kubernetes]`, from pgsteer's own pods, a pod's id
//! being the same hash of its name. [`server`] serves the peer port.

mod rate;
pub mod server;
pub mod wire;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[cfg(feature = "kubernetes")]
use pgsteer_discovery::kubernetes::peer_pods::{PeerPodSettings, PodIps, spawn_peer_pods};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cancel::KeyMaker;
use crate::config::{Config, ConfigError};
use crate::tls::PeerConfigs;

/// Peer id → peer port address (`host:port`).
pub type PeerTable = BTreeMap<u16, String>;

/// The peer id of a pgsteer pod or host named `name`: the first two bytes of its SHA-256.
pub fn peer_id_of(name: &str) -> u16 {
    let h = Sha256::digest(name.as_bytes());
    u16::from_be_bytes([h[0], h[1]])
}

/// This process's peer id and where it came from: `configured`, else env `POD_NAME`, else
/// the host name.
pub fn own_id(configured: Option<u16>) -> (u16, String) {
    if let Some(id) = configured {
        return (id, "peers.id".into());
    }
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return (peer_id_of(&pod), format!("POD_NAME {pod}"));
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    (peer_id_of(&host), format!("host name {host}"))
}

/// A running process's peering state.
pub struct Peering {
    id: u16,
    secret: Vec<u8>,
    table: watch::Receiver<PeerTable>,
    rate: rate::RateLimit,
    nonces: Mutex<wire::Nonces>,
    mutual: bool,
}

/// What became of a cancel request whose key is not ours (the `result` label of
/// `pgsteer_cancel_requests_total`).
pub mod result {
    /// Sent to the owning peer.
    pub const TO_PEER: &str = "to_peer";
    /// The key names no known peer (or this process): dropped.
    pub const UNKNOWN: &str = "unknown";
    /// Over `forward_rate` for its source address: dropped.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// The owning peer could not be reached.
    pub const PEER_UNREACHABLE: &str = "peer_unreachable";
}

impl Peering {
    /// Peering as configured, `None` when `[listen] peer` is not set. Starts the Kubernetes
    /// watch of peer pods when configured, until `stop` fires.
    pub fn start(config: &Config, stop: CancellationToken) -> Result<Option<Peering>, ConfigError> {
        if config.listen.peer.is_none() {
            return Ok(None);
        }
        let p = &config.peers;
        let secret = p.secret()?;
        let (id, from) = own_id(p.id);
        info!(peer_id = id, from = %from, "peering on");
        let statics: PeerTable = p
            .member
            .iter()
            .filter(|m| m.id != id)
            .map(|m| (m.id, m.address.clone()))
            .collect();
        let (table_tx, table) = watch::channel(statics.clone());
        #[cfg(not(feature = "kubernetes"))]
        if p.kubernetes.is_some() {
            return Err(ConfigError::NotBuilt {
                setting: "[peers.kubernetes]",
                feature: "kubernetes",
            });
        }
        #[cfg(feature = "kubernetes")]
        if let Some(k) = &p.kubernetes {
            let discovered = config.discovery.kubernetes.as_ref();
            let settings = PeerPodSettings {
                namespace: k
                    .namespace
                    .clone()
                    .or_else(|| discovered.and_then(|d| d.namespace.clone())),
                selector: k.selector.clone(),
                kubeconfig: k
                    .kubeconfig
                    .clone()
                    .or_else(|| discovered.and_then(|d| d.kubeconfig.clone())),
            };
            let (pods_tx, pods) = watch::channel(PodIps::new());
            spawn_peer_pods(settings, pods_tx, stop.clone());
            tokio::spawn(follow_pods(pods, statics, (id, k.port), table_tx, stop));
        }
        // Only the static peers: the table never changes.
        #[cfg(not(feature = "kubernetes"))]
        drop((table_tx, stop));
        Ok(Some(Peering {
            id,
            secret,
            table,
            rate: rate::RateLimit::new(p.forward_rate),
            nonces: Mutex::default(),
            mutual: config.peer_ca().is_some(),
        }))
    }

    /// This process's peer id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// How this process makes its cancel keys.
    pub fn keys(&self) -> KeyMaker {
        KeyMaker::owned(self.id, &self.secret)
    }

    /// The peers known now.
    pub fn table(&self) -> PeerTable {
        self.table.borrow().clone()
    }

    /// Forwards a key owned by another peer; returns the `result` label.
    pub async fn forward(
        &self,
        keys: &KeyMaker,
        pid: i32,
        key: &[u8],
        source: IpAddr,
        tls: Option<Arc<PeerConfigs>>,
        timeout: Duration,
    ) -> &'static str {
        let Some(owner) = keys.owner(pid, key).filter(|&o| o != self.id) else {
            return result::UNKNOWN;
        };
        let Some(address) = self.table.borrow().get(&owner).cloned() else {
            debug!(owner, "cancel key names no known peer");
            return result::UNKNOWN;
        };
        if !self.rate.allow(source) {
            return result::RATE_LIMITED;
        }
        let msg = wire::encode(
            &wire::PeerCancel {
                from: self.id,
                to: owner,
                pid,
                key: key.to_vec(),
            },
            &self.secret,
        );
        let tls = if self.mutual { tls } else { None };
        if self.mutual && tls.is_none() {
            return result::PEER_UNREACHABLE;
        }
        match tokio::time::timeout(timeout, send(&address, &msg, tls)).await {
            Ok(Ok(())) => {
                debug!(owner, address = %address, "cancel request forwarded to its peer");
                result::TO_PEER
            }
            Ok(Err(e)) => {
                warn!(owner, address = %address, error = %e, "could not forward a cancel request to its peer");
                result::PEER_UNREACHABLE
            }
            Err(_) => {
                warn!(owner, address = %address, "forwarding a cancel request to its peer timed out");
                result::PEER_UNREACHABLE
            }
        }
    }

    /// Checks a request received on the peer port.
    pub fn check(&self, msg: &[u8]) -> Result<wire::PeerCancel, wire::Refusal> {
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        nonces.check(msg, &self.secret)
    }
}

async fn send(address: &str, msg: &[u8], tls: Option<Arc<PeerConfigs>>) -> std::io::Result<()> {
    let tcp = TcpStream::connect(address).await?;
    match tls {
        None => {
            let mut s = tcp;
            s.write_all(msg).await?;
            s.shutdown().await
        }
        Some(configs) => {
            let ip = tcp.peer_addr()?.ip();
            let name = rustls_pki_types::ServerName::IpAddress(ip.into());
            let mut s = configs.connector().connect(name, tcp).await?;
            s.write_all(msg).await?;
            s.shutdown().await
        }
    }
}

/// Keeps the table at the static peers plus the pods, each pod by the hash of its name.
#[cfg(feature = "kubernetes")]
async fn follow_pods(
    mut pods: watch::Receiver<PodIps>,
    statics: PeerTable,
    (own, port): (u16, u16),
    table: watch::Sender<PeerTable>,
    stop: CancellationToken,
) {
    loop {
        let mut t = statics.clone();
        for (name, ip) in pods.borrow_and_update().iter() {
            let id = peer_id_of(name);
            if id != own {
                let host = if ip.contains(':') {
                    format!("[{ip}]")
                } else {
                    ip.clone()
                };
                t.insert(id, format!("{host}:{port}"));
            }
        }
        table.send_if_modified(|old| {
            let changed = *old != t;
            if changed {
                info!(peers = ?t, "peers changed");
                *old = t;
            }
            changed
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            r = pods.changed() => if r.is_err() { return },
        }
    }
}
