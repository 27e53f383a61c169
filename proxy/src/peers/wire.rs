//! The peer request: one cancel key forwarded to the pgsteer process that owns it, with an
//! HMAC-SHA256 over everything else under the peers' shared secret, a timestamp and a nonce
//! against replay. No answer is sent (as with a CancelRequest).
//!
//! ```text
//! version u8 = 1 | from u16 | to u16 | unix time ms u64 | nonce [16] | pid i32 | key len u16
//! | key [len] (4..=256) | HMAC-SHA256(secret, "pgsteer peer cancel" ‖ all of the above) [32]
//! ```

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use subtle::ConstantTimeEq;

use crate::cancel::hmac_sha256;

/// The bytes before the key.
pub const HEADER_LEN: usize = 1 + 2 + 2 + 8 + 16 + 4 + 2;
/// The HMAC after the key.
pub const MAC_LEN: usize = 32;
/// The longest key (protocol 3.2 allows 256 bytes).
pub const MAX_KEY_LEN: usize = 256;
const VERSION: u8 = 1;
const CONTEXT: &[u8] = b"pgsteer peer cancel";
/// How far a request's clock may be from ours; requests older than this are refused, and
/// nonces are remembered this long.
pub const WINDOW: Duration = Duration::from_secs(30);
/// Most nonces remembered; a full cache refuses new requests until old nonces expire (only
/// holders of the secret can fill it).
const MAX_NONCES: usize = 100_000;

/// A forwarded cancel key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCancel {
    /// Peer id of the sender.
    pub from: u16,
    /// Peer id the key names (the receiver).
    pub to: u16,
    /// The process id the client sent.
    pub pid: i32,
    /// The secret key the client sent.
    pub key: Vec<u8>,
}

/// Why a request is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a request of this format.
    Malformed,
    /// The HMAC does not match: not from a peer, or altered.
    BadMac,
    /// Its time is outside the window.
    Stale,
    /// Its nonce was seen already.
    Replayed,
}

impl Refusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::BadMac => "bad_hmac",
            Refusal::Stale => "stale",
            Refusal::Replayed => "replayed",
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Encodes `c` with a fresh nonce and the current time.
pub fn encode(c: &PeerCancel, secret: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 16];
    crate::cancel::random_bytes(&mut nonce);
    encode_at(c, secret, now_ms(), nonce)
}

fn encode_at(c: &PeerCancel, secret: &[u8], at_ms: u64, nonce: [u8; 16]) -> Vec<u8> {
    let key = &c.key[..c.key.len().min(MAX_KEY_LEN)];
    let mut out = Vec::with_capacity(HEADER_LEN + key.len() + MAC_LEN);
    out.push(VERSION);
    out.extend_from_slice(&c.from.to_be_bytes());
    out.extend_from_slice(&c.to.to_be_bytes());
    out.extend_from_slice(&at_ms.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&c.pid.to_be_bytes());
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(key);
    let mac = hmac_sha256(secret, &[CONTEXT, &out]);
    out.extend_from_slice(&mac);
    out
}

/// The key length a header announces, if the header is one of ours and the length allowed.
pub fn key_len(header: &[u8; HEADER_LEN]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([header[33], header[34]]));
    (header[0] == VERSION && (4..=MAX_KEY_LEN).contains(&len)).then_some(len)
}

/// Remembers the nonces of accepted requests for [`WINDOW`].
#[derive(Default)]
pub struct Nonces {
    seen: HashMap<[u8; 16], u64>,
}

impl Nonces {
    /// Checks a whole request (header, key, HMAC) and remembers its nonce.
    pub fn check(&mut self, msg: &[u8], secret: &[u8]) -> Result<PeerCancel, Refusal> {
        self.check_at(msg, secret, now_ms())
    }

    fn check_at(&mut self, msg: &[u8], secret: &[u8], now: u64) -> Result<PeerCancel, Refusal> {
        let header: &[u8; HEADER_LEN] = msg
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(Refusal::Malformed)?;
        let len = key_len(header).ok_or(Refusal::Malformed)?;
        if msg.len() != HEADER_LEN + len + MAC_LEN {
            return Err(Refusal::Malformed);
        }
        let (body, mac) = msg.split_at(HEADER_LEN + len);
        let expected = hmac_sha256(secret, &[CONTEXT, body]);
        if !bool::from(expected.ct_eq(mac)) {
            return Err(Refusal::BadMac);
        }
        let at = u64::from_be_bytes(body[5..13].try_into().map_err(|_| Refusal::Malformed)?);
        let window = WINDOW.as_millis() as u64;
        if at.abs_diff(now) > window {
            return Err(Refusal::Stale);
        }
        let nonce: [u8; 16] = body[13..29].try_into().map_err(|_| Refusal::Malformed)?;
        self.seen
            .retain(|_, &mut t| t.saturating_add(window) >= now);
        if self.seen.len() >= MAX_NONCES || self.seen.insert(nonce, at).is_some() {
            return Err(Refusal::Replayed);
        }
        let u16_at = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
        Ok(PeerCancel {
            from: u16_at(1),
            to: u16_at(3),
            pid: i32::from_be_bytes([body[29], body[30], body[31], body[32]]),
            key: body[HEADER_LEN..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef";

    fn cancel() -> PeerCancel {
        PeerCancel {
            from: 1,
            to: 3,
            pid: 4242,
            key: vec![9, 8, 7, 6],
        }
    }

    #[test]
    fn a_request_round_trips_once() {
        let msg = encode(&cancel(), SECRET);
        let mut n = Nonces::default();
        assert_eq!(n.check(&msg, SECRET), Ok(cancel()));
        assert_eq!(n.check(&msg, SECRET), Err(Refusal::Replayed));
        let long = PeerCancel {
            key: vec![5; 32],
            ..cancel()
        };
        assert_eq!(n.check(&encode(&long, SECRET), SECRET), Ok(long));
    }

    #[test]
    fn forged_altered_stale_and_cut_requests_are_refused() {
        let mut n = Nonces::default();
        let msg = encode(&cancel(), b"not the secret at all");
        assert_eq!(n.check(&msg, SECRET), Err(Refusal::BadMac));
        let mut altered = encode(&cancel(), SECRET);
        altered[30] ^= 1; // the pid
        assert_eq!(n.check(&altered, SECRET), Err(Refusal::BadMac));
        let now = now_ms();
        let old = encode_at(&cancel(), SECRET, now - 60_000, [1; 16]);
        assert_eq!(n.check_at(&old, SECRET, now), Err(Refusal::Stale));
        let msg = encode(&cancel(), SECRET);
        for cut in 0..msg.len() {
            assert_eq!(
                n.check(&msg[..cut], SECRET),
                Err(Refusal::Malformed),
                "{cut}"
            );
        }
        let mut long = msg.clone();
        long.push(0);
        assert_eq!(n.check(&long, SECRET), Err(Refusal::Malformed));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_refused_without_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let mut n = Nonces::default();
            proptest::prop_assert!(n.check(&bytes, SECRET).is_err());
            if let Some(h) = bytes.get(..HEADER_LEN).and_then(|h| <&[u8; HEADER_LEN]>::try_from(h).ok()) {
                let _ = key_len(h);
            }
        }
    }

    #[test]
    fn nonces_are_forgotten_after_the_window() {
        let mut n = Nonces::default();
        let t = now_ms();
        let a = encode_at(&cancel(), SECRET, t, [2; 16]);
        assert!(n.check_at(&a, SECRET, t).is_ok());
        let b = encode_at(&cancel(), SECRET, t + 40_000, [3; 16]);
        assert!(n.check_at(&b, SECRET, t + 40_000).is_ok());
        assert_eq!(n.seen.len(), 1, "the first nonce expired");
    }
}
