//! Cancel keys: the ones pgsteer hands to clients, mapped to the backend's.
//!
//! A passthrough client is shown its backend's real process id (so it matches
//! `pg_backend_pid()` and NotificationResponse) with a secret key of pgsteer's; a pooled
//! client a made-up process id. The secret is random except for the bits that name the
//! pgsteer process owning it (see `key`), so a key seen on one backend cannot cancel queries
//! of another client, and a key is only valid while its session lives. A CancelRequest with
//! an unknown key is dropped silently, as Postgres does.

mod key;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::session::upstream;
use crate::tls::ServerSide;

pub use key::KeyMaker;
pub(crate) use key::hmac_sha256;

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
    serial: u64,
    key: Vec<u8>,
    target: KeyTarget,
}

/// A registered key, to unregister it when its session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHandle {
    /// The process id the client was shown.
    pub pid: i32,
    serial: u64,
}

/// Live sessions' cancel keys by the process id their clients were shown.
///
/// In passthrough that is the backend's own pid, which two members may share: a pid holds a
/// few entries, told apart by their secret keys.
#[derive(Default)]
pub struct CancelRegistry {
    keys: KeyMaker,
    map: Mutex<HashMap<i32, Vec<Entry>>>,
    serial: AtomicU64,
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

/// A made-up process id for a pooled client: positive and non-zero, like a real one.
fn made_up_pid() -> i32 {
    let mut p = [0u8; 4];
    random_bytes(&mut p);
    (i32::from_be_bytes(p) & 0x7fff_ffff).max(1)
}

impl CancelRegistry {
    /// A registry whose keys are made by `keys` (naming this process when peering is on).
    pub fn new(keys: KeyMaker) -> CancelRegistry {
        CancelRegistry {
            keys,
            ..CancelRegistry::default()
        }
    }

    /// How keys are made and read.
    pub fn keys(&self) -> &KeyMaker {
        &self.keys
    }

    /// Registers a passthrough session's backend key; the client is shown the backend's own
    /// process id and a key of pgsteer's, returned with its handle. `key_len` is 4 for
    /// protocol 3.0, longer for 3.2.
    pub fn register(&self, target: CancelTarget, key_len: usize) -> (KeyHandle, Vec<u8>) {
        let pid = target.pid;
        self.insert(pid, KeyTarget::Fixed(target), key_len)
    }

    /// Registers a pooled session's key, whose target is whatever `slot` holds when a
    /// cancel request arrives; its process id is made up (no one backend is the client's).
    pub fn register_lent(&self, key_len: usize) -> (KeyHandle, Vec<u8>, Arc<LentSlot>) {
        let slot = Arc::new(Mutex::new(None));
        let (handle, key) = self.insert(made_up_pid(), KeyTarget::Lent(slot.clone()), key_len);
        (handle, key, slot)
    }

    fn insert(&self, pid: i32, target: KeyTarget, key_len: usize) -> (KeyHandle, Vec<u8>) {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        // The key (an HMAC when peering) is made outside the lock; a key that another session
        // of the same pid already has (16 random bits in 3.0) is made again.
        let mut key = self.keys.make(pid, key_len);
        loop {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            let entries = map.entry(pid).or_default();
            if !entries.iter().any(|e| e.key == key) {
                entries.push(Entry {
                    serial,
                    key: key.clone(),
                    target,
                });
                return (KeyHandle { pid, serial }, key);
            }
            drop(map);
            key = self.keys.make(pid, key_len);
        }
    }

    /// Forgets a session's key.
    pub fn unregister(&self, handle: KeyHandle) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entries) = map.get_mut(&handle.pid) {
            entries.retain(|e| e.serial != handle.serial);
            if entries.is_empty() {
                map.remove(&handle.pid);
            }
        }
    }

    /// The backend a client key cancels, if the key is valid and names one now.
    pub fn lookup(&self, pid: i32, key: &[u8]) -> Option<CancelTarget> {
        self.find(pid, key, |t| match t {
            KeyTarget::Fixed(t) => Some(t.clone()),
            KeyTarget::Lent(slot) => slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_deref()
                .cloned(),
        })
        .flatten()
    }

    fn find<T>(&self, pid: i32, key: &[u8], f: impl FnOnce(&KeyTarget) -> T) -> Option<T> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // Every entry is compared, in constant time, so timing tells nothing of the keys.
        let mut found = None;
        for e in map.get(&pid)? {
            if constant_time_eq(&e.key, key) {
                found = Some(&e.target);
            }
        }
        found.map(f)
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.values().map(Vec::len).sum()
    }

    /// Whether no key is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Sends a CancelRequest for `target` to its backend, over TLS as `tls` (`[tls]
/// server_mode`) says, as libpq does.
pub async fn forward(
    target: &CancelTarget,
    tls: &ServerSide,
    timeout: Duration,
) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(16 + target.key.len());
    pgsteer_protocol::encode::cancel_request(&mut buf, target.pid, &target.key);
    let send = async {
        let mut s = upstream::connect_to(&target.address, tls, timeout)
            .await
            .map_err(std::io::Error::other)?;
        s.write_all(&buf).await?;
        s.flush().await?;
        s.shutdown().await
    };
    tokio::time::timeout(timeout, send)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
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
        let (h, key) = r.register(target(), 4);
        assert_eq!(h.pid, 77, "the client is shown the backend's own pid");
        assert_eq!(r.lookup(77, &key), Some(target()));
        let mut wrong = key.clone();
        wrong[0] ^= 1;
        assert_eq!(r.lookup(77, &wrong), None);
        assert_eq!(r.lookup(77, &key[..3]), None);
        r.unregister(h);
        assert_eq!(r.lookup(77, &key), None);
    }

    #[test]
    fn a_pooled_key_cancels_only_while_a_connection_is_lent() {
        let r = CancelRegistry::default();
        let (h, key, slot) = r.register_lent(4);
        let pid = h.pid;
        assert!(pid > 0);
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
        let (h1, k1) = r.register(target(), 4);
        let (h2, k2) = r.register(target(), 32);
        assert_eq!(h1.pid, h2.pid, "two members may have backends with one pid");
        assert_ne!(k1, k2);
        assert_eq!(k2.len(), 32);
        assert_eq!(r.len(), 2);
        r.unregister(h1);
        assert_eq!(r.lookup(77, &k1), None);
        assert_eq!(r.lookup(77, &k2), Some(target()));
        r.unregister(h2);
        assert!(r.is_empty());
    }
}
