//! `compare memory`: what idle and parked clients cost the proxy, in resident memory and file
//! descriptors, measured on the release binary from `/proc/PID/status` and `/proc/PID/fd`.
//!
//! 1. 1,000 sessions through rw: connected, authenticated (trusted role), one `SELECT 1` each so
//!    the relay has run, then idle → KiB of RSS per session (target ≤ 16).
//! 2. 10,000 clients parked on the hold path of an instance whose rw route has no primary (its
//!    members are only the replicas; `hold_timeout` 1 h): raw TCP, a valid StartupMessage, then
//!    nothing → KiB per parked client (target ≤ 8).
//! 3. 1,000 clients through the pooled (transaction mode, trusted) listener of a third instance:
//!    logged in by pgsteer, one `SELECT 1` each, then idle and holding no server connection (its
//!    pool was filled to `--pool-size` beforehand, so no server connection is counted as theirs)
//!    → KiB per idle pooled client (target ≤ 8).
//!
//! After each, the clients leave and the proxy's descriptor count must come back to its baseline;
//! a second wave of parked clients shows whether RSS keeps growing (it should reuse what the first
//! freed: the allocator keeps freed memory, so RSS does not drop back after a wave).

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgsteer_cluster::{DATABASE, TRUST_USER};
use serde_json::{Value, json};

use super::procfs::{open_fds, rss_kib, status_kib};
use super::targets::{Pgsteer, PgsteerSpec};
use super::throughput::{members, stamp, start_cluster, write_record};
use super::wire::{Session, http_get, local, metric, startup_packet};

/// How the memory measurement runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The release `pgsteer` binary.
    pub pgsteer: PathBuf,
    /// Where results go.
    pub out_dir: PathBuf,
    /// Idle sessions (default 1,000).
    pub sessions: usize,
    /// Parked clients (default 10,000).
    pub parked: usize,
    /// Idle clients through the pooled listener (default 1,000).
    pub pooled: usize,
    /// `[pool] size` of the pooled listener.
    pub pool_size: usize,
}

/// RSS, anonymous RSS and descriptors of a process at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Snapshot {
    rss_kib: u64,
    anon_kib: u64,
    fds: usize,
}

impl Snapshot {
    fn of(pid: u32) -> Result<Snapshot, String> {
        Ok(Snapshot {
            rss_kib: rss_kib(pid).ok_or("cannot read VmRSS")?,
            anon_kib: status_kib(pid, "RssAnon").unwrap_or(0),
            fds: open_fds(pid).ok_or("cannot read /proc/PID/fd")?,
        })
    }

    fn json(&self) -> Value {
        json!({"rss_kib": self.rss_kib, "rss_anon_kib": self.anon_kib, "fds": self.fds})
    }
}

/// The soft limit on open files of this process.
fn fd_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Waits (bounded) until the descriptor count of `pid` is at most `baseline`; returns the last count.
fn wait_fds(pid: u32, baseline: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let n = open_fds(pid).unwrap_or(usize::MAX);
        if n <= baseline || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (bounded) until `pgsteer_held_connections` reads `want`.
fn wait_held(admin: u16, want: f64, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let held = http_get(admin, "/metrics")
            .ok()
            .and_then(|(_, body)| metric(&body, "pgsteer_held_connections"));
        if held == Some(want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "pgsteer_held_connections is {held:?}, not {want}, after {timeout:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Lets the proxy settle (its allocator, lazily freed buffers) before a snapshot.
fn settle() {
    std::thread::sleep(Duration::from_secs(2));
}

/// Connector threads: connects are latency-bound on a busy machine, not CPU-bound.
const CONNECTORS: usize = 8;

/// Runs `make(i)` for `0..n` on [`CONNECTORS`] threads, keeping what it returns.
fn in_parallel<T: Send>(
    n: usize,
    make: impl Fn(usize) -> Result<T, String> + Sync,
) -> Result<Vec<T>, String> {
    std::thread::scope(|scope| {
        let make = &make;
        let workers: Vec<_> = (0..CONNECTORS)
            .map(|w| {
                scope.spawn(move || {
                    (w..n)
                        .step_by(CONNECTORS)
                        .map(make)
                        .collect::<Result<Vec<T>, String>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for w in workers {
            all.extend(w.join().map_err(|_| "a connector thread panicked")??);
        }
        Ok(all)
    })
}

fn open_sessions(port: u16, n: usize) -> Result<Vec<Session>, String> {
    in_parallel(n, |i| {
        let mut s =
            Session::open(port, TRUST_USER, DATABASE).map_err(|e| format!("session {i}: {e}"))?;
        s.query("SELECT 1")
            .map_err(|e| format!("session {i}: {e}"))?;
        Ok(s)
    })
}

/// Opens every server connection of a pool of `size` through the pooled listener on `port`:
/// `size` clients each inside a transaction at once, then done. The pool then stays at `size`
/// open connections, so the clients measured later add no server connection of their own.
/// A `BEGIN` alone takes no connection (pgsteer answers it and defers it to the transaction's
/// first statement), so each filler runs a statement in its transaction too.
fn fill_pool(port: u16, size: usize) -> Result<(), String> {
    let mut held = Vec::with_capacity(size);
    for i in 0..size {
        let mut s =
            Session::open(port, TRUST_USER, DATABASE).map_err(|e| format!("filler {i}: {e}"))?;
        s.query("BEGIN").map_err(|e| format!("filler {i}: {e}"))?;
        s.query("SELECT 1")
            .map_err(|e| format!("filler {i}: {e}"))?;
        held.push(s);
    }
    for mut s in held {
        s.query("COMMIT")?;
    }
    Ok(())
}

/// What `GET /pools` says, summed over the pools.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PoolFigures {
    clients: u64,
    active: u64,
    pinned: u64,
    idle: u64,
    open: u64,
}

impl PoolFigures {
    /// Sums the pools of a `/pools` body (`{"pools": [{"clients": …, "active": …}, …]}`).
    fn parse(body: &str) -> Option<PoolFigures> {
        let v: Value = serde_json::from_str(body).ok()?;
        let mut sum = PoolFigures::default();
        for p in v.get("pools")?.as_array()? {
            let n = |k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0);
            sum.clients += n("clients");
            sum.active += n("active");
            sum.pinned += n("pinned");
            sum.idle += n("idle");
            sum.open += n("open");
        }
        Some(sum)
    }

    fn text(self) -> String {
        format!(
            "{} clients, {} active, {} pinned, {} idle, {} open server connections",
            self.clients, self.active, self.pinned, self.idle, self.open
        )
    }

    fn json(self) -> Value {
        json!({
            "clients": self.clients, "active": self.active, "pinned": self.pinned,
            "idle": self.idle, "open": self.open,
        })
    }
}

/// Waits (bounded) until `/pools` shows at least `clients` clients and none of them holding a
/// server connection (no active, no pinned); returns what it showed.
fn wait_pools_idle(admin: u16, clients: usize, timeout: Duration) -> Result<PoolFigures, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let figures = http_get(admin, "/pools")
            .ok()
            .and_then(|(_, body)| PoolFigures::parse(&body));
        if let Some(f) = figures
            && f.clients >= clients as u64
            && f.active + f.pinned == 0
        {
            return Ok(f);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "/pools: {} after {timeout:?}, wanted {clients} idle clients holding nothing",
                figures.map_or("unreadable".into(), PoolFigures::text)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn park(port: u16, n: usize) -> Result<Vec<TcpStream>, String> {
    let packet = startup_packet(TRUST_USER, DATABASE);
    in_parallel(n, |i| {
        let mut s = TcpStream::connect_timeout(&local(port), Duration::from_secs(10))
            .map_err(|e| format!("parked client {i}: connect: {e}"))?;
        s.write_all(&packet)
            .map_err(|e| format!("parked client {i}: {e}"))?;
        Ok(s)
    })
}

/// Runs the three measurements and writes `memory-<stamp>.{json,txt}` into `opts.out_dir`.
pub fn run(opts: &Options) -> Result<(), String> {
    check_fd_limit(opts.parked.max(opts.pooled).max(opts.sessions))?;
    let stamp = stamp();
    let log_dir = opts.out_dir.join(format!("memory-{stamp}"));
    std::fs::create_dir_all(&log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
    let cluster = start_cluster()?;
    let max_clients = opts.parked.max(opts.sessions).max(opts.pooled) + 1000;
    let mut text = format!("pgsteer memory {stamp}\n");
    let idle = IdleRun::measure(opts, &log_dir, members(&cluster), max_clients, Listener::Rw)?;
    text.push_str(&idle.text());
    // An instance that knows only the replicas has no primary for rw.
    let replicas: Vec<(String, String)> = members(&cluster).into_iter().skip(1).collect();
    let parked = ParkedRun::measure(opts, &log_dir, replicas, max_clients)?;
    text.push_str(&parked.text());
    let pooled = IdleRun::measure(
        opts,
        &log_dir,
        members(&cluster),
        max_clients,
        Listener::Pooled,
    )?;
    text.push_str(&pooled.text());
    drop(cluster);
    println!("{text}");
    let record = json!({
        "stamp": stamp,
        "idle_sessions": idle.json(),
        "parked_clients": parked.json(),
        "idle_pooled_clients": pooled.json(),
    });
    let (json_path, txt_path) =
        write_record(&opts.out_dir, &format!("memory-{stamp}"), &record, &text)?;
    eprintln!(
        "memory: wrote {} and {}",
        json_path.display(),
        txt_path.display()
    );
    Ok(())
}

/// Fails early if this process may not open enough files for `clients` clients at once.
fn check_fd_limit(clients: usize) -> Result<(), String> {
    let need = clients + 64;
    if let Some(limit) = fd_limit().filter(|&l| l < need) {
        return Err(format!(
            "{clients} clients need {need} open files here, the limit is {limit}: \
             run through benches/run (which raises ulimit -n) or lower --parked and --pooled"
        ));
    }
    Ok(())
}

/// KiB of RSS and of anonymous RSS that each of `n` clients added between two snapshots.
fn kib_per_client(base: Snapshot, loaded: Snapshot, n: usize) -> (f64, f64) {
    let per = (loaded.rss_kib as f64 - base.rss_kib as f64) / n as f64;
    let per_anon = (loaded.anon_kib as f64 - base.anon_kib as f64) / n as f64;
    (per, per_anon)
}

/// `met` or `NOT met`.
fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// Whether the descriptors came back after the clients left.
fn fds_verdict(fds_after: usize, base: Snapshot) -> &'static str {
    if fds_after <= base.fds {
        "back to baseline"
    } else {
        "LEAK"
    }
}

/// Which listener idle clients come through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// rw, passthrough: each idle session keeps its server connection.
    Rw,
    /// The pooled listener (transaction mode): idle clients hold no server connection.
    Pooled,
}

impl Listener {
    /// The proxy instance's name (config and log file).
    fn instance(self) -> &'static str {
        match self {
            Listener::Rw => "pgsteer-idle",
            Listener::Pooled => "pgsteer-pooled-idle",
        }
    }

    /// The target, KiB per client.
    fn target_kib(self) -> f64 {
        match self {
            Listener::Rw => 16.0,
            Listener::Pooled => 8.0,
        }
    }
}

/// Measurement 1 (rw) or 3 (pooled): idle clients.
struct IdleRun {
    listener: Listener,
    sessions: usize,
    opened_in: Duration,
    base: Snapshot,
    loaded: Snapshot,
    after: Snapshot,
    fds_after: usize,
    /// `/pools` while the pooled clients were idle.
    pools: Option<PoolFigures>,
}

impl IdleRun {
    /// Starts a proxy on `members`, opens idle clients through `listener`, lets them go, with
    /// snapshots.
    fn measure(
        opts: &Options,
        log_dir: &Path,
        members: Vec<(String, String)>,
        max_clients: usize,
        listener: Listener,
    ) -> Result<IdleRun, String> {
        let pooled = listener == Listener::Pooled;
        let proxy = Pgsteer::start(
            &opts.pgsteer,
            log_dir,
            &PgsteerSpec {
                name: listener.instance(),
                members,
                hold_timeout: "10s",
                max_clients,
                pool_size: pooled.then_some(opts.pool_size),
                auto: false,
                threads: 1,
                relay_engine: None,
            },
        )?;
        let pid = proxy.proc.pid();
        let (port, n) = match proxy.pooled {
            Some(port) if pooled => {
                fill_pool(port, opts.pool_size)?;
                let open = http_get(proxy.admin, "/pools")
                    .ok()
                    .and_then(|(_, body)| PoolFigures::parse(&body))
                    .map_or(0, |f| f.open);
                if open < opts.pool_size as u64 {
                    return Err(format!(
                        "the pool was not filled before the baseline: {open} of {} server connections open",
                        opts.pool_size
                    ));
                }
                (port, opts.pooled)
            }
            _ => (proxy.rw, opts.sessions),
        };
        drop(open_sessions(port, 20)?);
        settle();
        let base = Snapshot::of(pid)?;
        eprintln!(
            "memory: opening {n} idle clients through {}",
            listener.instance()
        );
        let started = Instant::now();
        let sessions = open_sessions(port, n)?;
        let opened_in = started.elapsed();
        let pools = if pooled {
            Some(wait_pools_idle(proxy.admin, n, Duration::from_secs(30))?)
        } else {
            None
        };
        settle();
        let loaded = Snapshot::of(pid)?;
        drop(sessions);
        let fds_after = wait_fds(pid, base.fds, Duration::from_secs(30));
        settle();
        let after = Snapshot::of(pid)?;
        Ok(IdleRun {
            listener,
            sessions: n,
            opened_in,
            base,
            loaded,
            after,
            fds_after,
            pools,
        })
    }

    /// The section of the text report.
    fn text(&self) -> String {
        let (per, per_anon) = kib_per_client(self.base, self.loaded, self.sessions);
        let (what, unit) = match self.listener {
            Listener::Rw => ("idle sessions through rw".to_owned(), "session"),
            Listener::Pooled => (
                "idle pooled clients (transaction mode, no server connection held)".to_owned(),
                "idle pooled client",
            ),
        };
        let target = self.listener.target_kib();
        let pools = self.pools.map_or(String::new(), |p| {
            format!("\x20 /pools while idle: {}\n", p.text())
        });
        format!(
            "\n{what}: {} (opened in {:.1?})\n\
             \x20 RSS {} -> {} KiB: {per:.2} KiB per {unit} (anonymous {per_anon:.2}); target <= {target}: {}\n\
             {pools}\
             \x20 fds {} -> {} -> {} after they left: {}\n\
             \x20 RSS after they left: {} KiB\n",
            self.sessions,
            self.opened_in,
            self.base.rss_kib,
            self.loaded.rss_kib,
            met(per <= target),
            self.base.fds,
            self.loaded.fds,
            self.fds_after,
            fds_verdict(self.fds_after, self.base),
            self.after.rss_kib,
        )
    }

    /// The object in the JSON record.
    fn json(&self) -> Value {
        let (per, per_anon) = kib_per_client(self.base, self.loaded, self.sessions);
        let mut v = json!({
            "baseline": self.base.json(),
            "loaded": self.loaded.json(),
            "after": self.after.json(),
            "fds_after": self.fds_after,
            "target_kib": self.listener.target_kib(),
        });
        let fields = match self.listener {
            Listener::Rw => json!({
                "sessions": self.sessions,
                "kib_per_session": per,
                "anon_kib_per_session": per_anon,
            }),
            Listener::Pooled => json!({
                "clients": self.sessions,
                "kib_per_client": per,
                "anon_kib_per_client": per_anon,
                "pools": self.pools.map(|p| p.json()),
            }),
        };
        if let (Some(v), Value::Object(fields)) = (v.as_object_mut(), fields) {
            v.extend(fields);
        }
        v
    }
}

/// Measurement 2: clients parked on the hold path, in two waves.
struct ParkedRun {
    parked: usize,
    base: Snapshot,
    first: Wave,
    /// The peak of the second wave.
    second: Snapshot,
    fds_after_second: usize,
}

/// The first wave of [`ParkedRun`]: how long parking took, snapshots while parked and after.
struct Wave {
    connected_in: Duration,
    parked_in: Duration,
    loaded: Snapshot,
    after: Snapshot,
    fds_after: usize,
}

impl ParkedRun {
    /// Starts a proxy on `replicas` (no primary), parks `opts.parked` clients twice, with snapshots.
    fn measure(
        opts: &Options,
        log_dir: &Path,
        replicas: Vec<(String, String)>,
        max_clients: usize,
    ) -> Result<ParkedRun, String> {
        let proxy = Pgsteer::start(
            &opts.pgsteer,
            log_dir,
            &PgsteerSpec {
                name: "pgsteer-hold",
                members: replicas,
                hold_timeout: "1h",
                max_clients,
                pool_size: None,
                auto: false,
                threads: 1,
                relay_engine: None,
            },
        )?;
        let pid = proxy.proc.pid();
        drop(park(proxy.rw, 100)?);
        wait_held(proxy.admin, 0.0, Duration::from_secs(30))?;
        settle();
        let base = Snapshot::of(pid)?;
        eprintln!("memory: parking {} clients on rw (no primary)", opts.parked);
        let first = first_wave(&proxy, opts.parked, base)?;
        // A second wave: memory freed by the first is reused, not added to.
        let clients = park(proxy.rw, opts.parked)?;
        wait_held(proxy.admin, opts.parked as f64, Duration::from_secs(180))?;
        settle();
        let second = Snapshot::of(pid)?;
        drop(clients);
        wait_held(proxy.admin, 0.0, Duration::from_secs(60))?;
        let fds_after_second = wait_fds(pid, base.fds, Duration::from_secs(30));
        Ok(ParkedRun {
            parked: opts.parked,
            base,
            first,
            second,
            fds_after_second,
        })
    }

    /// The section of the text report.
    fn text(&self) -> String {
        let (per, per_anon) = kib_per_client(self.base, self.first.loaded, self.parked);
        let growth = self.second.rss_kib as i64 - self.first.loaded.rss_kib as i64;
        format!(
            "\nparked clients (rw, no primary): {} (connected in {:.1?}, all held after {:.1?})\n\
             \x20 RSS {} -> {} KiB: {per:.2} KiB per parked client (anonymous {per_anon:.2}); target <= 8: {}\n\
             \x20 fds {} -> {} -> {} after they left: {}\n\
             \x20 RSS after they left: {} KiB; a second wave peaks at {} KiB ({growth:+} KiB), fds after it: {}\n",
            self.parked,
            self.first.connected_in,
            self.first.parked_in,
            self.base.rss_kib,
            self.first.loaded.rss_kib,
            met(per <= 8.0),
            self.base.fds,
            self.first.loaded.fds,
            self.first.fds_after,
            fds_verdict(self.first.fds_after, self.base),
            self.first.after.rss_kib,
            self.second.rss_kib,
            self.fds_after_second,
        )
    }

    /// The object in the JSON record.
    fn json(&self) -> Value {
        let (per, per_anon) = kib_per_client(self.base, self.first.loaded, self.parked);
        json!({
            "parked": self.parked,
            "second_wave": self.second.json(),
            "fds_after_second_wave": self.fds_after_second,
            "baseline": self.base.json(),
            "loaded": self.first.loaded.json(),
            "after": self.first.after.json(),
            "fds_after": self.first.fds_after,
            "kib_per_parked_client": per,
            "anon_kib_per_parked_client": per_anon,
            "target_kib": 8,
        })
    }
}

/// Parks `n` clients on `proxy`, waits until all are held, snapshots, lets them go, snapshots.
fn first_wave(proxy: &Pgsteer, n: usize, base: Snapshot) -> Result<Wave, String> {
    let pid = proxy.proc.pid();
    let started = Instant::now();
    let clients = park(proxy.rw, n)?;
    let connected_in = started.elapsed();
    wait_held(proxy.admin, n as f64, Duration::from_secs(180))?;
    let parked_in = started.elapsed();
    settle();
    let loaded = Snapshot::of(pid)?;
    drop(clients);
    wait_held(proxy.admin, 0.0, Duration::from_secs(60))?;
    let fds_after = wait_fds(pid, base.fds, Duration::from_secs(30));
    settle();
    let after = Snapshot::of(pid)?;
    Ok(Wave {
        connected_in,
        parked_in,
        loaded,
        after,
        fds_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_figures_are_summed_over_the_pools() {
        let body = r#"{"pools": [
            {"member": "pg-0", "database": "app", "user": "app_trust", "clients": 1000,
             "waiting": 0, "longest_wait_seconds": 0.0, "active": 0, "pinned": 0,
             "idle": 20, "open": 20, "size": 20},
            {"member": "pg-1", "database": "app", "user": "app", "clients": 3,
             "waiting": 0, "longest_wait_seconds": 0.0, "active": 1, "pinned": 1,
             "idle": 0, "open": 2, "size": 20}
        ]}"#;
        let f = PoolFigures::parse(body).unwrap();
        assert_eq!(
            f,
            PoolFigures {
                clients: 1003,
                active: 1,
                pinned: 1,
                idle: 20,
                open: 22
            }
        );
        assert_eq!(
            PoolFigures::parse(r#"{"pools": []}"#),
            Some(PoolFigures::default())
        );
        assert_eq!(PoolFigures::parse("not json"), None);
    }

    #[test]
    fn pooled_clients_are_held_to_eight_kib_and_sessions_to_sixteen() {
        assert_eq!(Listener::Pooled.target_kib(), 8.0);
        assert_eq!(Listener::Rw.target_kib(), 16.0);
        assert_ne!(Listener::Pooled.instance(), Listener::Rw.instance());
    }
}
