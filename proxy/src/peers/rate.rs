//! A token bucket per source address: at most `rate` forwarded cancel requests per second
//! (bursts up to `rate`), the excess dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets kept before full ones are forgotten.
const PRUNE_AT: usize = 10_000;

/// Per-address token buckets.
pub struct RateLimit {
    rate: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// `rate` requests per second per address.
    pub fn new(rate: u32) -> RateLimit {
        RateLimit {
            rate: f64::from(rate.max(1)),
            buckets: Mutex::default(),
        }
    }

    /// Takes a token for `addr`: `false` when its bucket is empty.
    pub fn allow(&self, addr: IpAddr) -> bool {
        self.allow_at(addr, Instant::now())
    }

    fn allow_at(&self, addr: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= PRUNE_AT {
            let rate = self.rate;
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < rate);
        }
        let b = buckets.entry(addr).or_insert(Bucket {
            tokens: self.rate,
            at: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(self.rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_address_gets_its_rate_and_buckets_refill() {
        let r = RateLimit::new(3);
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t = Instant::now();
        assert!((0..3).all(|_| r.allow_at(a, t)));
        assert!(!r.allow_at(a, t), "the fourth in one instant is dropped");
        assert!(r.allow_at(b, t), "another address has its own bucket");
        assert!(r.allow_at(a, t + Duration::from_millis(400)), "refilled");
        assert!(!r.allow_at(a, t + Duration::from_millis(400)));
    }
}
