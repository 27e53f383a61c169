//! The gate a switchover closes: pooled transactions bound for the primary wait at it (their
//! clients stay connected) until the new primary is confirmed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::Metrics;

/// Holds new primary-bound transactions while a switchover runs.
///
/// No transaction slips past it onto the old primary: a session increments its pool's lent
/// count before it looks at the gate again (SeqCst), and the switchover closes the gate
/// (SeqCst) before it reads the lent counts, so either the session sees the gate closed and
/// gives the connection back, or the switchover sees the connection lent and waits for it.
pub struct Gate {
    /// Closed: one atomic load per transaction while open.
    closed: AtomicBool,
    /// Closed, for waiters.
    holding: watch::Sender<bool>,
    /// Transactions held by the current switchover.
    pub held: AtomicU64,
    /// Those released.
    pub released: AtomicU64,
    /// A switchover is running.
    pub running: AtomicBool,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            closed: AtomicBool::new(false),
            holding: watch::Sender::new(false),
            held: AtomicU64::new(0),
            released: AtomicU64::new(0),
            running: AtomicBool::new(false),
        }
    }
}

/// One held transaction: counted in the gauge while it waits.
struct Held<'g> {
    gate: &'g Gate,
    metrics: &'g Metrics,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.metrics.transactions_held.dec();
        self.gate.released.fetch_add(1, Ordering::Relaxed);
    }
}

impl Gate {
    /// Whether primary-bound transactions are held now.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Waits while the gate is closed (at most `limit`: then the router holds or refuses the
    /// transaction as it would without a switchover).
    pub async fn wait(&self, limit: Duration, metrics: &Metrics) {
        if !self.is_closed() {
            return;
        }
        let mut rx = self.holding.subscribe();
        self.held.fetch_add(1, Ordering::Relaxed);
        metrics.transactions_held.inc();
        let _held = Held {
            gate: self,
            metrics,
        };
        let _ = tokio::time::timeout(limit, rx.wait_for(|closed| !*closed)).await;
    }

    /// Closes the gate: new primary-bound transactions wait.
    pub fn close(&self) {
        self.held.store(0, Ordering::Relaxed);
        self.released.store(0, Ordering::Relaxed);
        self.closed.store(true, Ordering::SeqCst);
        self.holding.send_replace(true);
    }

    /// Opens it: the held transactions go on.
    pub fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
        self.holding.send_replace(false);
    }

    /// Waits (at most `limit`) until every transaction held at the gate has woken up after
    /// [`Gate::open`] and counted itself released (or gone away with its client), so that a
    /// report read afterwards is complete.
    pub async fn settle(&self, limit: Duration) {
        let until = tokio::time::Instant::now() + limit;
        while self.holding.receiver_count() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
