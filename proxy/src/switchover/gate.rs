//! The gate a switchover closes: pooled transactions bound for the primary wait at it (their
//! clients stay connected) until the new primary is confirmed.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::Metrics;

/// Holds new primary-bound transactions while a switchover runs.
pub struct Gate {
    /// Closed: checked first, one atomic load per transaction.
    closed: AtomicBool,
    /// Closed, for waiters.
    holding: watch::Sender<bool>,
    /// Transactions past the gate that have not taken their connection yet: the drain
    /// waits for them as for those that have.
    entering: AtomicUsize,
    /// Transactions held by the current switchover, and those let through after it.
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
            entering: AtomicUsize::new(0),
            held: AtomicU64::new(0),
            released: AtomicU64::new(0),
            running: AtomicBool::new(false),
        }
    }
}

/// A transaction on its way to a connection: counted until dropped.
pub struct Passed<'g>(&'g Gate);

impl Drop for Passed<'_> {
    fn drop(&mut self) {
        self.0.entering.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    /// Lets a primary-bound transaction through: at once while the gate is open, else once
    /// it opens (or after `limit`). The transaction counts as entering until the returned
    /// value is dropped (it holds its connection by then).
    pub async fn pass(&self, limit: Duration, metrics: &Metrics) -> Passed<'_> {
        loop {
            self.entering.fetch_add(1, Ordering::AcqRel);
            if !self.closed.load(Ordering::Acquire) {
                return Passed(self);
            }
            self.entering.fetch_sub(1, Ordering::AcqRel);
            let mut rx = self.holding.subscribe();
            self.held.fetch_add(1, Ordering::Relaxed);
            metrics.transactions_held.inc();
            let opened = tokio::time::timeout(limit, rx.wait_for(|closed| !*closed)).await;
            metrics.transactions_held.dec();
            self.released.fetch_add(1, Ordering::Relaxed);
            if opened.is_err() {
                // Held as long as a switchover may take: let it try (the router holds or
                // refuses it if there is still no primary).
                self.entering.fetch_add(1, Ordering::AcqRel);
                return Passed(self);
            }
        }
    }

    /// Closes the gate: new primary-bound transactions wait.
    pub fn close(&self) {
        self.held.store(0, Ordering::Relaxed);
        self.released.store(0, Ordering::Relaxed);
        self.closed.store(true, Ordering::Release);
        self.holding.send_replace(true);
    }

    /// Opens it: the held transactions go on.
    pub fn open(&self) {
        self.closed.store(false, Ordering::Release);
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

    /// Transactions past the gate still taking their connection.
    pub fn entering(&self) -> usize {
        self.entering.load(Ordering::Acquire)
    }
}
