//! Cancel keys: the ones pgsteer hands to clients, mapped to the backend's.
//!
//! Each client gets its own random BackendKeyData, so a key seen on one
//! backend cannot cancel queries of another client, and a key is only valid
//! while its session lives. A CancelRequest with an unknown key is dropped
//! silently, as Postgres does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use pgsteer_protocol::startup::CancelRequest;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// Where a client's cancel key leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    /// Member name (for logs and metrics).
    pub member: String,
    /// Backend address at the time the session connected.
    pub address: String,
    /// The backend's process id.
    pub pid: i32,
    /// The backend's secret key.
    pub key: Vec<u8>,
}

/// Where the server connection a pooled client has now goes: set while one is lent,
/// empty while the client is idle (cancelling an idle client does nothing).
pub type LentSlot = Mutex<Option<Arc<CancelTarget>>>;

enum KeyTarget {
    /// A passthrough session's one backend.
    Fixed(CancelTarget),
    /// A pooled session's connection of the moment.
    Lent(Arc<LentSlot>),
}

struct Entry {
    key: Vec<u8>,
    target: KeyTarget,
}

/// Live sessions' cancel keys by the process id pgsteer made up for them.
#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<i32, Entry>>,
}

/// Fills `buf` with random bytes from the OS.
pub(crate) fn random_bytes(buf: &mut [u8]) {
    if getrandom::fill(buf).is_err() {
        // The OS generator does not fail on Linux once booted; if it ever does,
        // fall back to something unpredictable enough rather than panic.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
        }
    }
}

impl CancelRegistry {
    /// Registers a session's backend key and returns the `(pid, key)` to give
    /// the client; `key_len` is 4 for protocol 3.0, longer for 3.2.
    pub fn register(&self, target: CancelTarget, key_len: usize) -> (i32, Vec<u8>) {
        self.insert(KeyTarget::Fixed(target), key_len)
    }

    /// Registers a pooled session's key, whose target is whatever `slot` holds when a
    /// cancel request arrives.
    pub fn register_lent(&self, key_len: usize) -> (i32, Vec<u8>, Arc<LentSlot>) {
        let slot = Arc::new(Mutex::new(None));
        let (pid, key) = self.insert(KeyTarget::Lent(slot.clone()), key_len);
        (pid, key, slot)
    }

    fn insert(&self, target: KeyTarget, key_len: usize) -> (i32, Vec<u8>) {
        let mut key = vec![0u8; key_len];
        random_bytes(&mut key);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let mut p = [0u8; 4];
            random_bytes(&mut p);
            // Positive and non-zero, like a real process id.
            let pid = (i32::from_be_bytes(p) & 0x7fff_ffff).max(1);
            if let std::collections::hash_map::Entry::Vacant(v) = map.entry(pid) {
                v.insert(Entry {
                    key: key.clone(),
                    target,
                });
                return (pid, key);
            }
        }
    }

    /// Forgets a session's key.
    pub fn unregister(&self, pid: i32) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
    }

    /// The backend a client key cancels, if the key is valid.
    pub fn lookup(&self, pid: i32, key: &[u8]) -> Option<CancelTarget> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.get(&pid)?;
        if !constant_time_eq(&e.key, key) {
            return None;
        }
        match &e.target {
            KeyTarget::Fixed(t) => Some(t.clone()),
            KeyTarget::Lent(slot) => slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_deref()
                .cloned(),
        }
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no key is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Sends a CancelRequest for `target` to its backend.
pub async fn forward(target: &CancelTarget, timeout: Duration) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(16 + target.key.len());
    pgsteer_protocol::encode::cancel_request(&mut buf, target.pid, &target.key);
    let send = async {
        let mut s = TcpStream::connect(&target.address).await?;
        s.write_all(&buf).await?;
        s.shutdown().await
    };
    tokio::time::timeout(timeout, send)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Serves a client's CancelRequest: forwards it to the backend its key names, or drops it
/// if the key is unknown (as Postgres does), counting either way.
pub async fn serve_request(
    registry: &CancelRegistry,
    metrics: &Metrics,
    request: CancelRequest,
    timeout: Duration,
) {
    let target = registry.lookup(request.pid, &request.key);
    let result = if target.is_some() {
        "forwarded"
    } else {
        "unknown"
    };
    metrics.cancel_requests.with_label_values(&[result]).inc();
    let Some(target) = target else {
        debug!("cancel request with an unknown key dropped");
        return;
    };
    match forward(&target, timeout).await {
        Ok(()) => debug!(member = %target.member, "cancel request forwarded"),
        Err(e) => {
            warn!(member = %target.member, error = %e, "could not forward a cancel request")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> CancelTarget {
        CancelTarget {
            member: "pg-0".into(),
            address: "127.0.0.1:1".into(),
            pid: 77,
            key: vec![1, 2, 3, 4],
        }
    }

    #[test]
    fn only_the_exact_key_finds_the_backend() {
        let r = CancelRegistry::default();
        let (pid, key) = r.register(target(), 4);
        assert!(pid > 0);
        assert_eq!(r.lookup(pid, &key), Some(target()));
        let mut wrong = key.clone();
        wrong[0] ^= 1;
        assert_eq!(r.lookup(pid, &wrong), None);
        assert_eq!(r.lookup(pid, &key[..3]), None);
        r.unregister(pid);
        assert_eq!(r.lookup(pid, &key), None);
    }

    #[test]
    fn a_pooled_key_cancels_only_while_a_connection_is_lent() {
        let r = CancelRegistry::default();
        let (pid, key, slot) = r.register_lent(4);
        assert_eq!(
            r.lookup(pid, &key),
            None,
            "an idle client has nothing to cancel"
        );
        *slot.lock().unwrap() = Some(Arc::new(target()));
        assert_eq!(r.lookup(pid, &key), Some(target()));
        *slot.lock().unwrap() = None;
        assert_eq!(r.lookup(pid, &key), None);
    }

    #[test]
    fn keys_differ_between_sessions() {
        let r = CancelRegistry::default();
        let (p1, k1) = r.register(target(), 4);
        let (p2, k2) = r.register(target(), 32);
        assert!(p1 != p2 || k1 != k2);
        assert_eq!(k2.len(), 32);
        assert_eq!(r.len(), 2);
    }
}
