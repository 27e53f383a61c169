//! `compare memory`: what idle and parked clients cost the proxy, in resident memory and file
//! descriptors, measured on the release binary from `/proc/PID/status` and `/proc/PID/fd`.
//!
//! 1. 1,000 sessions through rw: connected, authenticated (trusted role), one `SELECT 1` each so
//!    the relay has run, then idle → KiB of RSS per session (target ≤ 16).
//! 2. 10,000 clients parked on the hold path of an instance whose rw route has no primary (its
//!    members are only the replicas; `hold_timeout` 1 h): raw TCP, a valid StartupMessage, then
//!    nothing → KiB per parked client (target ≤ 8).
//!
//! After each, the clients leave and the proxy's descriptor count must come back to its baseline;
//! a second wave of parked clients shows whether RSS keeps growing (it should reuse what the first
//! freed: the allocator keeps freed memory, so RSS does not drop back after a wave).

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgsteer_cluster::{DATABASE, TRUST_USER};
use serde_json::{Value, json};

use super::procfs::{open_fds, rss_kib, status_kib};
use super::targets::{Pgsteer, PgsteerSpec};
use super::throughput::{members, stamp, start_cluster};
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

/// Runs both measurements and writes `memory-<stamp>.{json,txt}` into `opts.out_dir`.
pub fn run(opts: &Options) -> Result<(), String> {
    let need = opts.parked + 64;
    if let Some(limit) = fd_limit().filter(|&l| l < need) {
        return Err(format!(
            "{} parked clients need {need} open files here, the limit is {limit}: \
             run through benches/run (which raises ulimit -n) or lower --parked",
            opts.parked
        ));
    }
    let stamp = stamp();
    let log_dir = opts.out_dir.join(format!("memory-{stamp}"));
    std::fs::create_dir_all(&log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
    let cluster = start_cluster()?;
    let max_clients = opts.parked.max(opts.sessions) + 1000;
    let mut text = format!("pgsteer memory {stamp}\n");

    // 1. Idle sessions.
    let idle = {
        let proxy = Pgsteer::start(
            &opts.pgsteer,
            &log_dir,
            &PgsteerSpec {
                name: "pgsteer-idle",
                members: members(&cluster),
                hold_timeout: "10s",
                max_clients,
            },
        )?;
        let pid = proxy.proc.pid();
        drop(open_sessions(proxy.rw, 20)?);
        settle();
        let base = Snapshot::of(pid)?;
        eprintln!("memory: opening {} sessions through rw", opts.sessions);
        let started = Instant::now();
        let sessions = open_sessions(proxy.rw, opts.sessions)?;
        let opened_in = started.elapsed();
        settle();
        let loaded = Snapshot::of(pid)?;
        drop(sessions);
        let fds_after = wait_fds(pid, base.fds, Duration::from_secs(30));
        settle();
        let after = Snapshot::of(pid)?;
        let per = (loaded.rss_kib as f64 - base.rss_kib as f64) / opts.sessions as f64;
        let per_anon = (loaded.anon_kib as f64 - base.anon_kib as f64) / opts.sessions as f64;
        text.push_str(&format!(
            "\nidle sessions through rw: {} (opened in {opened_in:.1?})\n\
             \x20 RSS {} -> {} KiB: {per:.2} KiB per session (anonymous {per_anon:.2}); target <= 16: {}\n\
             \x20 fds {} -> {} -> {} after they left: {}\n\
             \x20 RSS after they left: {} KiB\n",
            opts.sessions,
            base.rss_kib,
            loaded.rss_kib,
            if per <= 16.0 { "met" } else { "NOT met" },
            base.fds,
            loaded.fds,
            fds_after,
            if fds_after <= base.fds { "back to baseline" } else { "LEAK" },
            after.rss_kib,
        ));
        json!({
            "sessions": opts.sessions,
            "baseline": base.json(),
            "loaded": loaded.json(),
            "after": after.json(),
            "fds_after": fds_after,
            "kib_per_session": per,
            "anon_kib_per_session": per_anon,
            "target_kib": 16,
        })
    };

    // 2. Parked clients: an instance that knows only the replicas has no primary for rw.
    let parked = {
        let replicas: Vec<(String, String)> = members(&cluster).into_iter().skip(1).collect();
        let proxy = Pgsteer::start(
            &opts.pgsteer,
            &log_dir,
            &PgsteerSpec {
                name: "pgsteer-hold",
                members: replicas,
                hold_timeout: "1h",
                max_clients,
            },
        )?;
        let pid = proxy.proc.pid();
        drop(park(proxy.rw, 100)?);
        wait_held(proxy.admin, 0.0, Duration::from_secs(30))?;
        settle();
        let base = Snapshot::of(pid)?;
        eprintln!("memory: parking {} clients on rw (no primary)", opts.parked);
        let started = Instant::now();
        let clients = park(proxy.rw, opts.parked)?;
        let connected_in = started.elapsed();
        wait_held(proxy.admin, opts.parked as f64, Duration::from_secs(180))?;
        let parked_in = started.elapsed();
        settle();
        let loaded = Snapshot::of(pid)?;
        drop(clients);
        wait_held(proxy.admin, 0.0, Duration::from_secs(60))?;
        let fds_after = wait_fds(pid, base.fds, Duration::from_secs(30));
        settle();
        let after = Snapshot::of(pid)?;
        // A second wave: memory freed by the first is reused, not added to.
        let clients = park(proxy.rw, opts.parked)?;
        wait_held(proxy.admin, opts.parked as f64, Duration::from_secs(180))?;
        settle();
        let second = Snapshot::of(pid)?;
        drop(clients);
        wait_held(proxy.admin, 0.0, Duration::from_secs(60))?;
        let fds_after_second = wait_fds(pid, base.fds, Duration::from_secs(30));
        let per = (loaded.rss_kib as f64 - base.rss_kib as f64) / opts.parked as f64;
        let per_anon = (loaded.anon_kib as f64 - base.anon_kib as f64) / opts.parked as f64;
        let growth = second.rss_kib as i64 - loaded.rss_kib as i64;
        text.push_str(&format!(
            "\nparked clients (rw, no primary): {} (connected in {connected_in:.1?}, all held after {parked_in:.1?})\n\
             \x20 RSS {} -> {} KiB: {per:.2} KiB per parked client (anonymous {per_anon:.2}); target <= 8: {}\n\
             \x20 fds {} -> {} -> {} after they left: {}\n\
             \x20 RSS after they left: {} KiB; a second wave peaks at {} KiB ({growth:+} KiB), fds after it: {}\n",
            opts.parked,
            base.rss_kib,
            loaded.rss_kib,
            if per <= 8.0 { "met" } else { "NOT met" },
            base.fds,
            loaded.fds,
            fds_after,
            if fds_after <= base.fds { "back to baseline" } else { "LEAK" },
            after.rss_kib,
            second.rss_kib,
            fds_after_second,
        ));
        json!({
            "parked": opts.parked,
            "second_wave": second.json(),
            "fds_after_second_wave": fds_after_second,
            "baseline": base.json(),
            "loaded": loaded.json(),
            "after": after.json(),
            "fds_after": fds_after,
            "kib_per_parked_client": per,
            "anon_kib_per_parked_client": per_anon,
            "target_kib": 8,
        })
    };
    drop(cluster);
    println!("{text}");
    let record = json!({"stamp": stamp, "idle_sessions": idle, "parked_clients": parked});
    let json_path = opts.out_dir.join(format!("memory-{stamp}.json"));
    let txt_path = opts.out_dir.join(format!("memory-{stamp}.txt"));
    let pretty = serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, pretty).map_err(|e| format!("{}: {e}", json_path.display()))?;
    std::fs::write(&txt_path, &text).map_err(|e| format!("{}: {e}", txt_path.display()))?;
    eprintln!(
        "memory: wrote {} and {}",
        json_path.display(),
        txt_path.display()
    );
    Ok(())
}
