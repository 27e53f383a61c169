//! The layout of the cancel keys pgsteer hands out, and how a key names the pgsteer process
//! (peer) that owns it.
//!
//! A key is the secret part of BackendKeyData: 4 bytes in protocol 3.0, 32 in 3.2 (pgsteer's
//! choice; the protocol allows up to 256). The process id beside it is the backend's own in
//! passthrough, so the owner cannot hide there and lives in the secret:
//!
//! ```text
//! key = R ‖ (id XOR M)     R: len-2 random bytes; id: the owner's peer id (u16, big endian)
//! M   = HMAC-SHA256(peer secret, "pgsteer cancel owner" ‖ pid (i32 BE) ‖ R)[0..2]
//! ```
//!
//! So in a 3.0 key 16 bits are random and 16 carry the owner, masked with a pseudo-random
//! function of the random part: without the peer secret all 32 bits look random, and a blind
//! guess matches a live key with probability 2^-32 per known pid, as with PostgreSQL. Holders
//! of the peer secret (the peers) can read the owner, which leaves 16 unknown bits to them. A
//! 3.2 key keeps 240 random bits. Without peering every bit is random and every key is ours.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Bytes of the key that carry the (masked) owner id.
const OWNER_BYTES: usize = 2;
/// Domain separation of the mask from the peer requests' HMAC, which uses the same secret.
const MASK_CONTEXT: &[u8] = b"pgsteer cancel owner";

/// Makes keys and reads their owner.
#[derive(Clone, Default)]
pub struct KeyMaker {
    owner: Option<Owner>,
}

#[derive(Clone)]
struct Owner {
    id: u16,
    secret: Vec<u8>,
}

impl std::fmt::Debug for KeyMaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMaker")
            .field("id", &self.owner.as_ref().map(|o| o.id))
            .finish()
    }
}

/// HMAC-SHA-256 of the concatenated parts.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    #[allow(clippy::expect_used, reason = "HMAC accepts keys of any length")]
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

impl KeyMaker {
    /// Keys of a process without peers: all random.
    pub fn random() -> KeyMaker {
        KeyMaker { owner: None }
    }

    /// Keys that name peer `id`, masked with the peers' shared `secret`.
    pub fn owned(id: u16, secret: &[u8]) -> KeyMaker {
        KeyMaker {
            owner: Some(Owner {
                id,
                secret: secret.to_vec(),
            }),
        }
    }

    /// This process's peer id, when peering is on.
    pub fn id(&self) -> Option<u16> {
        self.owner.as_ref().map(|o| o.id)
    }

    /// A new key of `len` bytes (at least 4) for a client shown process id `pid`.
    pub fn make(&self, pid: i32, len: usize) -> Vec<u8> {
        let len = len.max(4);
        let mut key = vec![0u8; len];
        super::random_bytes(&mut key);
        if let Some(o) = &self.owner {
            let (random, owner) = key.split_at_mut(len - OWNER_BYTES);
            let mask = mask(&o.secret, pid, random);
            owner.copy_from_slice(&xor(o.id.to_be_bytes(), mask));
        }
        key
    }

    /// The peer id a key names, when peering is on and the key is long enough to name one.
    /// Any bytes name some id: whether the key is live is for its owner to say.
    pub fn owner(&self, pid: i32, key: &[u8]) -> Option<u16> {
        let o = self.owner.as_ref()?;
        if key.len() < 4 {
            return None;
        }
        let (random, owner) = key.split_at(key.len() - OWNER_BYTES);
        let mask = mask(&o.secret, pid, random);
        Some(u16::from_be_bytes(xor([owner[0], owner[1]], mask)))
    }
}

fn mask(secret: &[u8], pid: i32, random: &[u8]) -> [u8; OWNER_BYTES] {
    let h = hmac_sha256(secret, &[MASK_CONTEXT, &pid.to_be_bytes(), random]);
    [h[0], h[1]]
}

fn xor(a: [u8; 2], b: [u8; 2]) -> [u8; 2] {
    [a[0] ^ b[0], a[1] ^ b[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_its_maker_for_anyone_with_the_secret() {
        let a = KeyMaker::owned(3, b"shared");
        let b = KeyMaker::owned(9, b"shared");
        for len in [4, 32] {
            for pid in [1, 4242, i32::MAX] {
                let k = a.make(pid, len);
                assert_eq!(k.len(), len);
                assert_eq!(a.owner(pid, &k), Some(3));
                assert_eq!(b.owner(pid, &k), Some(3), "a peer reads the owner too");
            }
        }
    }

    #[test]
    fn without_the_secret_the_owner_bytes_look_random() {
        // The same owner gives different owner bytes for different random parts and pids.
        let a = KeyMaker::owned(3, b"shared");
        let tails: std::collections::HashSet<[u8; 2]> = (0..64)
            .map(|i| {
                let k = a.make(100 + i, 4);
                [k[2], k[3]]
            })
            .collect();
        assert!(tails.len() > 32, "{} distinct of 64", tails.len());
        // Another secret reads another owner.
        let other = KeyMaker::owned(3, b"other");
        let wrong = (0..64)
            .filter(|&i| {
                let k = a.make(i, 4);
                other.owner(i, &k) != Some(3)
            })
            .count();
        assert!(wrong > 56, "{wrong} of 64");
    }

    proptest::proptest! {
        #[test]
        fn every_key_names_its_owner(id in 0u16.., pid in proptest::prelude::any::<i32>(), len in 4usize..=256) {
            let k = KeyMaker::owned(id, b"0123456789abcdef");
            let key = k.make(pid, len);
            proptest::prop_assert_eq!(key.len(), len);
            proptest::prop_assert_eq!(KeyMaker::owned(id ^ 1, b"0123456789abcdef").owner(pid, &key), Some(id));
        }
    }

    #[test]
    fn without_peering_keys_are_random_and_name_no_owner() {
        let r = KeyMaker::random();
        let k = r.make(5, 4);
        assert_eq!(r.owner(5, &k), None);
        assert_ne!(r.make(5, 32), r.make(5, 32));
        assert_eq!(KeyMaker::owned(1, b"s").owner(5, &[1, 2, 3]), None);
    }
}
