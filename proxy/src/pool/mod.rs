//! Server connections pgsteer owns in pooled mode: one [`Pool`] per (member, database,
//! user), each with at most `size` connections, an idle list (most recently used first out,
//! so caches stay warm) and a first-come first-served wait queue.
//!
//! A client borrows a connection with [`Pool::acquire`]: an idle one, or a permit to open
//! one ([`Acquired::Open`]) while the pool is below its size, or it waits until one is given
//! back, up to `checkout_timeout`. [`Pool::give_back`] hands a returned connection straight
//! to the first waiter. A wait arms no timer of its own: [`maintain`] sweeps the queues for
//! waits past `checkout_timeout` every tenth of it (at most every second), as PgBouncer's
//! janitor does for `query_wait_timeout`; at 32 clients on a pool of 20, half the
//! transactions wait, and a timer per wait cost a lock on the runtime's timer wheel twice.
//! What happens to a connection at each turn is decided by the pure functions of
//! [`lifecycle`]; [`Pools::retire`] closes what belongs to members that lost their role or
//! address, and [`Pools::janitor`] closes idle and old ones.

pub mod greeting;
pub mod lifecycle;
pub mod server;
pub mod statements;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use pgsteer_discovery::Topology;
use prometheus::IntGauge;
use tokio::sync::oneshot;
use tracing::debug;

use crate::metrics::Metrics;
use lifecycle::CloseReason;
pub use server::ServerConn;
pub use statements::Registry;

/// Pool sizes and timeouts (`[pool]`).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Server connections per (member, database, user).
    pub size: usize,
    /// Idle connections the janitor keeps however long idle.
    pub min_idle: usize,
    /// Idle connections beyond `min_idle` close after this (0: never).
    pub server_idle_timeout: Duration,
    /// Connections close at their next return after this (0: never).
    pub server_lifetime: Duration,
    /// Bound on opening one connection (TCP, TLS, login).
    pub connect_timeout: Duration,
    /// How long a client waits for a connection before its query fails.
    pub checkout_timeout: Duration,
    /// Prepared statements kept per server connection.
    pub max_prepared_statements: usize,
}

impl From<&crate::config::Pool> for PoolSettings {
    fn from(c: &crate::config::Pool) -> PoolSettings {
        PoolSettings {
            size: c.size,
            min_idle: c.min_idle,
            server_idle_timeout: c.server_idle_timeout,
            server_lifetime: c.server_lifetime,
            connect_timeout: c.connect_timeout,
            checkout_timeout: c.checkout_timeout,
            max_prepared_statements: c.max_prepared_statements,
        }
    }
}

/// Which pool: a member (by stable name), a database, a user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Member name.
    pub member: String,
    /// Database.
    pub database: String,
    /// Role.
    pub user: String,
}

/// What a client got from [`Pool::acquire`].
pub enum Acquired {
    /// An idle connection.
    Idle(Box<ServerConn>),
    /// A permit to open a connection: the caller opens it, and calls
    /// [`Pool::forget`] if that fails.
    Open,
}

/// Why [`Pool::acquire`] gave no connection.
#[derive(Debug, thiserror::Error)]
pub enum NoConn {
    /// The pool was full for the whole `checkout_timeout`.
    #[error("no server connection free after waiting {waited:?} (pool size {size})")]
    Exhausted {
        /// How long the client waited.
        waited: Duration,
        /// The pool's size.
        size: usize,
    },
    /// The pool was retired (its member changed role or address) before or while the
    /// client waited: nothing will be given back to it, so route again.
    #[error("the pool was retired")]
    Retired,
}

/// What a waiter is handed.
enum Grant {
    Conn(Box<ServerConn>),
    Open,
    /// The pool was retired: route again.
    Retired,
}

struct Waiter {
    tx: oneshot::Sender<Grant>,
    since: Instant,
}

#[derive(Default)]
struct Inner {
    /// Idle connections, most recently returned last.
    // Boxed: a connection goes in and out of this list at every transaction, and clients
    // hold it boxed in between.
    #[allow(clippy::vec_box)]
    idle: Vec<Box<ServerConn>>,
    /// Connections open or being opened (idle + lent + opening).
    open: usize,
    /// Connections lent to clients now.
    lent: usize,
    /// Of those, pinned to their client.
    pinned: usize,
    waiters: VecDeque<Waiter>,
    /// The member lost the role or address the pool was opened for: nothing goes back.
    retired: bool,
}

/// One (member, database, user) pool.
pub struct Pool {
    /// Its key.
    pub key: PoolKey,
    /// Address of the member the connections go to.
    pub address: String,
    size: usize,
    inner: Mutex<Inner>,
    /// Client sessions using this pool's credentials (for `/pools`).
    pub clients: AtomicUsize,
    /// Connections lent on this pool's member, all its pools together.
    pub member_lent: Arc<AtomicUsize>,
    /// What a new client is shown at login without waiting for a connection.
    greeting: Mutex<greeting::Greeting>,
    /// This member's waiting-clients gauge, looked up at the first wait.
    waiting: OnceLock<IntGauge>,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the pool was retired (its member changed): make a new one.
    pub fn retired(&self) -> bool {
        self.lock().retired
    }

    /// A connection for a client: an idle one, a permit to open one, or the first one given
    /// back within `checkout_timeout` (the sweep of [`maintain`] ends longer waits). Idle
    /// connections that are too old are closed on the way. A retired pool gives nothing, and
    /// wakes its waiters when it is retired: they route again.
    pub async fn acquire(
        &self,
        settings: &PoolSettings,
        metrics: &Metrics,
    ) -> Result<Acquired, NoConn> {
        let (started, rx) = {
            let mut inner = self.lock();
            if let Some(got) = self.take_idle(&mut inner, settings) {
                inner.lent += 1;
                return Ok(got);
            }
            if inner.retired {
                return Err(NoConn::Retired);
            }
            let (tx, rx) = oneshot::channel();
            let since = Instant::now();
            inner.waiters.push_back(Waiter { tx, since });
            (since, rx)
        };
        let waiting = self
            .waiting
            .get_or_init(|| metrics.pool_waiting.with_label_values(&[&self.key.member]));
        waiting.inc();
        // A closed channel: the sweep took the wait out of the queue (or the pool is gone).
        let got = rx.await.ok();
        waiting.dec();
        metrics
            .pool_wait_seconds
            .observe(started.elapsed().as_secs_f64());
        match got {
            Some(Grant::Conn(c)) => Ok(Acquired::Idle(c)),
            Some(Grant::Open) => Ok(Acquired::Open),
            Some(Grant::Retired) => Err(NoConn::Retired),
            // The wait timed out (or the pool was dropped): out of the queue already.
            None => {
                let inner = self.lock();
                if inner.retired {
                    return Err(NoConn::Retired);
                }
                Err(NoConn::Exhausted {
                    waited: started.elapsed(),
                    size: self.size,
                })
            }
        }
    }

    /// An idle connection or a permit, counted as lent by the caller.
    fn take_idle(&self, inner: &mut Inner, settings: &PoolSettings) -> Option<Acquired> {
        while let Some(c) = inner.idle.pop() {
            let age = crate::clock::now().saturating_duration_since(c.created);
            match lifecycle::on_checkout(age, settings.server_lifetime, inner.retired) {
                None if !c.looks_alive() => {
                    inner.open -= 1;
                    close(c, CloseReason::Broken);
                }
                None => return Some(Acquired::Idle(c)),
                Some(why) => {
                    inner.open -= 1;
                    close(c, why);
                }
            }
        }
        (inner.open < self.size && !inner.retired).then(|| {
            inner.open += 1;
            Acquired::Open
        })
    }

    /// A connection a client had comes back (`None`: it was closed, or opening it failed
    /// before it was lent). Handed to the first waiter, or put on the idle list.
    pub fn give_back(&self, conn: Option<Box<ServerConn>>, pinned: bool) {
        let mut inner = self.lock();
        inner.lent = inner.lent.saturating_sub(1);
        if pinned {
            inner.pinned = inner.pinned.saturating_sub(1);
        }
        let mut conn = match conn {
            Some(c) if !inner.retired => Some(c),
            Some(c) => {
                close(c, CloseReason::Retired);
                None
            }
            None => None,
        };
        if conn.is_none() {
            inner.open = inner.open.saturating_sub(1);
        }
        while let Some(w) = inner.waiters.pop_front() {
            let grant = match conn.take() {
                Some(c) => Grant::Conn(c),
                None if inner.open < self.size && !inner.retired => {
                    inner.open += 1;
                    Grant::Open
                }
                None => {
                    inner.waiters.push_front(w);
                    return;
                }
            };
            inner.lent += 1;
            match w.tx.send(grant) {
                Ok(()) => return,
                // The waiter left: take the grant back and try the next one.
                Err(Grant::Conn(c)) => {
                    inner.lent -= 1;
                    conn = Some(c);
                }
                Err(Grant::Open) => {
                    inner.lent -= 1;
                    inner.open -= 1;
                }
                Err(Grant::Retired) => inner.lent -= 1,
            }
        }
        if let Some(mut c) = conn {
            c.idle_since = crate::clock::now();
            inner.idle.push(c);
        }
    }

    /// A permit from [`Acquired::Open`] was not used (the connection could not be opened).
    pub fn forget(&self) {
        self.give_back(None, false);
    }

    /// The pool's knowledge of what its connections report ([`greeting::Greeting`]).
    pub fn greeting(&self) -> MutexGuard<'_, greeting::Greeting> {
        self.greeting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the pool retired: its idle connections close now (counted out of `open`), lent
    /// ones when given back, and every waiter is woken to route again. Without the wake-up a
    /// waiter would sit out its whole `checkout_timeout`: a retired pool hands out nothing.
    fn retire(&self, why: CloseReason) {
        let mut inner = self.lock();
        inner.retired = true;
        let n = inner.idle.len();
        for c in inner.idle.drain(..) {
            close(c, why);
        }
        inner.open -= n;
        for w in inner.waiters.drain(..) {
            let _ = w.tx.send(Grant::Retired);
        }
    }

    /// Ends the waits that reached `timeout`: their clients get no connection (53300).
    fn expire_waits(&self, timeout: Duration) {
        let mut inner = self.lock();
        // First come first served: the longest waits are at the front.
        while inner
            .waiters
            .front()
            .is_some_and(|w| w.since.elapsed() >= timeout)
        {
            inner.waiters.pop_front();
        }
    }

    /// Counts a lent connection as pinned to its client.
    pub fn pin(&self) {
        self.lock().pinned += 1;
    }

    fn snapshot(&self) -> PoolSnapshot {
        let inner = self.lock();
        PoolSnapshot {
            member: self.key.member.clone(),
            database: self.key.database.clone(),
            user: self.key.user.clone(),
            clients: self.clients.load(Ordering::Relaxed),
            waiting: inner.waiters.len(),
            longest_wait_seconds: inner
                .waiters
                .front()
                .map_or(0.0, |w| w.since.elapsed().as_secs_f64()),
            active: inner.lent - inner.pinned.min(inner.lent),
            pinned: inner.pinned,
            idle: inner.idle.len(),
            open: inner.open,
            size: self.size,
        }
    }
}

/// Closes a connection pgsteer no longer wants: Terminate, then the socket, off the
/// caller's path.
pub fn close(mut c: Box<ServerConn>, why: CloseReason) {
    debug!(conn = c.id, member = %c.cancel.member, reason = why.as_str(), "closing a server connection");
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let bye = async {
            c.stream.write_all(&[b'X', 0, 0, 0, 4]).await?;
            c.stream.shutdown().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), bye).await;
    });
}

/// What `/pools` shows of one pool.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolSnapshot {
    /// Member name.
    pub member: String,
    /// Database.
    pub database: String,
    /// Role.
    pub user: String,
    /// Client sessions that used this pool.
    pub clients: usize,
    /// Clients waiting for a connection now.
    pub waiting: usize,
    /// How long the first of them has waited.
    pub longest_wait_seconds: f64,
    /// Connections lent for a transaction (or a session) now.
    pub active: usize,
    /// Connections pinned to their client.
    pub pinned: usize,
    /// Idle connections.
    pub idle: usize,
    /// Open connections (idle, lent and opening).
    pub open: usize,
    /// The pool's size.
    pub size: usize,
}

/// Settings maps shared by the sessions that have equal ones (most clients of an
/// application send the same startup parameters and see the same ParameterStatus values):
/// one copy each instead of one per client.
#[derive(Default)]
pub struct SettingsCache {
    by_fingerprint: Mutex<HashMap<u64, std::sync::Weak<server::Settings>>>,
}

impl SettingsCache {
    /// The shared copy of `settings`.
    pub fn intern(&self, settings: server::Settings) -> Arc<server::Settings> {
        let key = server::fingerprint(&settings);
        let mut map = self
            .by_fingerprint
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(&key).and_then(std::sync::Weak::upgrade)
            && *s == settings
        {
            return s;
        }
        if map.len() >= 1024 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let s = Arc::new(settings);
        map.insert(key, Arc::downgrade(&s));
        s
    }
}

/// Every pool of the proxy.
pub struct Pools {
    /// Sizes and timeouts.
    pub settings: PoolSettings,
    /// Prepared statements across sessions.
    pub statements: Arc<Registry>,
    /// Settings maps shared across sessions.
    pub settings_cache: SettingsCache,
    /// member → "database\0user" → pool.
    by_member: Mutex<HashMap<String, HashMap<String, Arc<Pool>>>>,
    /// Lent connections per member, for least-loaded routing; each pool of the member
    /// counts into the same counter without a lock.
    lent: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

impl Pools {
    /// No pools yet.
    pub fn new(settings: PoolSettings) -> Pools {
        Pools {
            settings,
            statements: Arc::new(Registry::default()),
            settings_cache: SettingsCache::default(),
            by_member: Mutex::new(HashMap::new()),
            lent: Mutex::new(HashMap::new()),
        }
    }

    /// The pool for `member` at `address` and a client's `db_user` key (see [`db_user`]),
    /// made on first use; a retired pool or one for another address is replaced.
    pub fn get(&self, member: &str, address: &str, db_user: &str) -> Arc<Pool> {
        let mut all = self.by_member.lock().unwrap_or_else(|e| e.into_inner());
        let pools = match all.get_mut(member) {
            Some(p) => p,
            None => all.entry(member.to_owned()).or_default(),
        };
        if let Some(p) = pools.get(db_user) {
            if p.address == address && !p.retired() {
                return p.clone();
            }
            // A session saw the member's new address before `maintain` did: the old pool
            // is replaced here, so retire it here, or its waiters (which no sweep would see
            // any more) would wait for connections to an address no one routes to.
            p.retire(CloseReason::Retired);
        }
        let (database, user) = db_user.split_once('\0').unwrap_or((db_user, ""));
        let lent = {
            let mut lent = self.lent.lock().unwrap_or_else(|e| e.into_inner());
            lent.entry(member.to_owned()).or_default().clone()
        };
        let pool = Arc::new(Pool {
            key: PoolKey {
                member: member.to_owned(),
                database: database.to_owned(),
                user: user.to_owned(),
            },
            address: address.to_owned(),
            size: self.settings.size.max(1),
            inner: Mutex::new(Inner::default()),
            clients: AtomicUsize::new(0),
            member_lent: lent,
            greeting: Mutex::default(),
            waiting: OnceLock::new(),
        });
        pools.insert(db_user.to_owned(), pool.clone());
        pool
    }

    /// Lent connections on `member` now, for least-loaded routing.
    pub fn lent_on(&self, member: &str) -> usize {
        let lent = self.lent.lock().unwrap_or_else(|e| e.into_inner());
        // SeqCst: read after the switchover gate closed (see `switchover::Gate`).
        lent.get(member).map_or(0, |n| n.load(Ordering::SeqCst))
    }

    /// Retires the pools of members that are gone or whose role or address changed between
    /// `before` and `after`: their idle connections close now, lent ones when given back.
    pub fn retire(&self, before: &Topology, after: &Topology) {
        let mut all = self.by_member.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|member, pools| {
            let changed = match (before.member(member), after.member(member)) {
                (Some(b), Some(a)) => b.role != a.role || b.address != a.address,
                (_, None) => true,
                (None, Some(_)) => false,
            };
            if changed {
                for pool in pools.values() {
                    pool.retire(CloseReason::Retired);
                }
                debug!(member, "pools retired after a topology change");
            }
            !changed
        });
    }

    /// Closes idle connections past `server_idle_timeout` (beyond `min_idle`) or
    /// `server_lifetime`, and forgets empty retired pools.
    pub fn janitor(&self) {
        let s = &self.settings;
        let all = self.by_member.lock().unwrap_or_else(|e| e.into_inner());
        for pool in all.values().flat_map(HashMap::values) {
            let mut inner = pool.lock();
            let mut kept = Vec::with_capacity(inner.idle.len());
            let mut closed = 0;
            // Most recently used first: they are the ones min_idle keeps.
            for (rank, c) in inner.idle.drain(..).rev().enumerate() {
                let why = lifecycle::on_janitor(
                    c.created.elapsed(),
                    c.idle_since.elapsed(),
                    rank,
                    s.min_idle,
                    s.server_lifetime,
                    s.server_idle_timeout,
                );
                match why {
                    Some(why) => {
                        closed += 1;
                        close(c, why);
                    }
                    None => kept.push(c),
                }
            }
            kept.reverse();
            inner.idle = kept;
            inner.open -= closed;
        }
    }

    /// Ends every wait for a connection that reached `checkout_timeout`.
    pub fn expire_waits(&self) {
        let all = self.by_member.lock().unwrap_or_else(|e| e.into_inner());
        for pool in all.values().flat_map(HashMap::values) {
            pool.expire_waits(self.settings.checkout_timeout);
        }
    }

    /// Every pool's figures, for `/pools`.
    pub fn snapshot(&self) -> Vec<PoolSnapshot> {
        let all = self.by_member.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<PoolSnapshot> = all
            .values()
            .flat_map(HashMap::values)
            .map(|p| p.snapshot())
            .collect();
        v.sort_by(|a, b| (&a.member, &a.database, &a.user).cmp(&(&b.member, &b.database, &b.user)));
        v
    }

    /// Sets the server-connection gauges by pod and state.
    pub fn observe(&self, metrics: &Metrics) {
        let g = &metrics.pool_server_connections;
        g.reset();
        for p in self.snapshot() {
            for (state, n) in [("idle", p.idle), ("active", p.active), ("pinned", p.pinned)] {
                g.with_label_values(&[&p.member, state]).add(n as i64);
            }
        }
    }

    /// Closes every idle connection (shutdown).
    pub fn close_idle(&self) {
        let all = self.by_member.lock().unwrap_or_else(|e| e.into_inner());
        for pool in all.values().flat_map(HashMap::values) {
            pool.retire(CloseReason::Shutdown);
        }
    }
}

/// Keeps the pools in step with the topology (retiring what belongs to members that changed)
/// runs the janitor every second and ends waits past `checkout_timeout` (looked at every
/// tenth of it, between 10 ms and 1 s), until `stop`; then closes the idle connections.
pub async fn maintain(
    pools: Arc<Pools>,
    mut topology: tokio::sync::watch::Receiver<Topology>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut before = topology.borrow_and_update().clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let every = (pools.settings.checkout_timeout / 10)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut sweep = tokio::time::interval(every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Without topology updates (their sender gone) the janitor and the sweep go on.
    let mut watching = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => pools.janitor(),
            _ = sweep.tick() => pools.expire_waits(),
            r = topology.changed(), if watching => {
                if r.is_err() {
                    watching = false;
                    continue;
                }
                let after = topology.borrow_and_update().clone();
                pools.retire(&before, &after);
                before = after;
            }
        }
    }
    pools.close_idle();
}

/// The key of a client's pools on every member: its database and user.
pub fn db_user(database: &str, user: &str) -> String {
    format!("{database}\0{user}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> server::Settings {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn one_connection_pools(checkout_timeout: Duration) -> Arc<Pools> {
        Arc::new(Pools::new(PoolSettings {
            size: 1,
            min_idle: 0,
            server_idle_timeout: Duration::ZERO,
            server_lifetime: Duration::ZERO,
            connect_timeout: Duration::from_secs(1),
            checkout_timeout,
            max_prepared_statements: 1,
        }))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    type Waiting = tokio::task::JoinHandle<Result<Acquired, NoConn>>;

    /// pg-0's pool at `address`, its one permit taken, and a second client in its queue.
    async fn full_pool_with_a_waiter(
        pools: &Arc<Pools>,
        metrics: &Arc<Metrics>,
        address: &str,
    ) -> (Arc<Pool>, Waiting) {
        let pool = pools.get("pg-0", address, &db_user("app", "app"));
        let first = pool.acquire(&pools.settings, metrics).await;
        assert!(matches!(first, Ok(Acquired::Open)), "the only permit");
        let waiter = tokio::spawn({
            let (pool, pools, metrics) = (pool.clone(), pools.clone(), metrics.clone());
            async move { pool.acquire(&pools.settings, &metrics).await }
        });
        while pool.snapshot().waiting == 0 {
            tokio::task::yield_now().await;
        }
        (pool, waiter)
    }

    /// The waiter's answer, which must come at once (long before its checkout_timeout).
    async fn woken(waiter: Waiting) -> Result<Acquired, NoConn> {
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the waiter is woken at once, not at its checkout_timeout")
            .unwrap()
    }

    #[test]
    fn waiters_of_a_retired_pool_are_woken_to_route_again() {
        // Far longer than the test may take: a waiter that is not woken fails it.
        let pools = one_connection_pools(Duration::from_secs(3600));
        let metrics = Arc::new(Metrics::new().unwrap());
        runtime().block_on(async {
            let (pool, waiter) = full_pool_with_a_waiter(&pools, &metrics, "127.0.0.1:5432").await;
            pool.retire(CloseReason::Retired);
            assert!(
                matches!(woken(waiter).await, Err(NoConn::Retired)),
                "told to route again"
            );
            assert!(
                matches!(
                    pool.acquire(&pools.settings, &metrics).await,
                    Err(NoConn::Retired)
                ),
                "a retired pool queues nobody"
            );
            let next = pools.get("pg-0", "127.0.0.1:5432", &db_user("app", "app"));
            assert!(!Arc::ptr_eq(&pool, &next), "the member gets a new pool");
            let fresh = next.acquire(&pools.settings, &metrics).await;
            assert!(matches!(fresh, Ok(Acquired::Open)), "with room in it");
        });
    }

    #[test]
    fn a_wait_past_checkout_timeout_ends_at_the_sweep_after_it() {
        let pools = one_connection_pools(Duration::from_millis(200));
        let metrics = Arc::new(Metrics::new().unwrap());
        runtime().block_on(async {
            let (pool, waiter) = full_pool_with_a_waiter(&pools, &metrics, "127.0.0.1:5432").await;
            // What `maintain` does every tenth of the timeout, until the wait ends.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !waiter.is_finished() {
                assert!(Instant::now() < deadline, "the sweep never ended the wait");
                pools.expire_waits();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            match waiter.await.unwrap() {
                Err(NoConn::Exhausted { waited, size: 1 }) => assert!(
                    waited >= Duration::from_millis(200),
                    "ended before its checkout_timeout: {waited:?}"
                ),
                _ => panic!("the client is told no connection was free"),
            }
            assert_eq!(pool.snapshot().waiting, 0, "out of the queue");
            // The permit given back goes to nobody and stays in the pool.
            pool.forget();
            let again = pool.acquire(&pools.settings, &metrics).await;
            assert!(
                matches!(again, Ok(Acquired::Open)),
                "the pool kept its room"
            );
        });
    }

    #[test]
    fn a_pool_replaced_for_a_new_address_wakes_its_waiters_to_route_again() {
        let pools = one_connection_pools(Duration::from_secs(3600));
        let metrics = Arc::new(Metrics::new().unwrap());
        runtime().block_on(async {
            let (old, waiter) = full_pool_with_a_waiter(&pools, &metrics, "10.0.0.1:5432").await;
            // A session routes to the member's new address before `maintain` saw the change.
            let new = pools.get("pg-0", "10.0.0.2:5432", &db_user("app", "app"));
            assert!(!Arc::ptr_eq(&old, &new));
            assert!(
                matches!(woken(waiter).await, Err(NoConn::Retired)),
                "told to route again"
            );
            let fresh = new.acquire(&pools.settings, &metrics).await;
            assert!(matches!(fresh, Ok(Acquired::Open)), "the new pool has room");
        });
    }

    #[test]
    fn equal_settings_share_one_copy_while_someone_holds_it() {
        let cache = SettingsCache::default();
        let a = cache.intern(settings(&[("application_name", "app")]));
        let b = cache.intern(settings(&[("application_name", "app")]));
        let c = cache.intern(settings(&[("application_name", "other")]));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(weak.upgrade().is_none(), "the cache holds no copy itself");
    }
}
