//! The throughput comparison: a local primary + 2 replicas, pgbench against each target in
//! alternating rounds, medians, the table, and the record in `benches/results/`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgsteer_cluster::{APP_PASSWORD, APP_USER, Cluster, DATABASE, Spec, TRUST_USER};
use serde_json::{Value, json};

use super::pgbench::Run;
use super::procfs;
use super::report::{self, AutoCounts, Results, Sample};
use super::targets::{
    PgbouncerSpec, Pgsteer, PgsteerSpec, Proc, find_program, start_haproxy, start_pgbouncer,
};
use super::wire::http_get;
use super::workloads::{Target, Workload};

/// pgbench scale (`-i -s`).
pub const SCALE: u32 = 10;

/// How a comparison runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds per point.
    pub duration: Duration,
    /// Rounds (medians over them).
    pub rounds: usize,
    /// The workloads.
    pub workloads: Vec<Workload>,
    /// Only these targets (all if empty).
    pub targets: Vec<Target>,
    /// The release `pgsteer` binary.
    pub pgsteer: PathBuf,
    /// A pgsteer binary from an older build, run as a second instance (target `pgsteer-base`).
    pub baseline_pgsteer: Option<PathBuf>,
    /// `[runtime] threads` of the baseline instance.
    pub baseline_threads: usize,
    /// `[runtime] relay_engine` of the baseline instance (its default if `None`).
    pub baseline_engine: Option<String>,
    /// Where results go (`benches/results`).
    pub out_dir: PathBuf,
    /// Server connections of the pooled targets (`[pool] size` of pgsteer-pooled,
    /// `default_pool_size` of pgbouncer-tx).
    pub pool_size: usize,
}

/// Everything started for a comparison; dropping it stops the proxies, then the cluster.
pub struct Bench {
    /// The pgsteer instance.
    pub pgsteer: Pgsteer,
    /// The baseline pgsteer instance (`--baseline-pgsteer`).
    pub baseline: Option<Pgsteer>,
    pgbouncer: Option<(Proc, u16)>,
    pgbouncer_tx: Option<(Proc, u16)>,
    haproxy: Option<(Proc, u16)>,
    /// Scratch directory (pgbench logs, PgBouncer's files), removed on drop.
    scratch: PathBuf,
    /// The servers; dropped last.
    pub cluster: Cluster,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// A scratch directory under the system temp dir that `postgres` can enter.
pub fn scratch_dir(what: &str) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("pgsteer-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _ = std::process::Command::new("chmod")
        .arg("755")
        .arg(&dir)
        .status();
    Ok(dir)
}

/// Starts a cluster (2 replicas, `max_connections` 1200).
pub fn start_cluster() -> Result<Cluster, String> {
    eprintln!("compare: starting a primary and 2 replicas");
    Cluster::start(&Spec {
        replicas: 2,
        max_connections: 1200,
        ..Spec::default()
    })
    .map_err(|e| format!("cluster: {e}"))
}

/// The static members of `cluster` for a pgsteer config.
pub fn members(cluster: &Cluster) -> Vec<(String, String)> {
    cluster
        .nodes()
        .iter()
        .map(|n| (n.name.clone(), n.address()))
        .collect()
}

impl Bench {
    /// Starts the cluster, loads the pgbench tables, starts pgsteer and the peers that are installed.
    pub fn start(opts: &Options, log_dir: &Path) -> Result<Bench, String> {
        let cluster = start_cluster()?;
        init_pgbench(&cluster)?;
        let scratch = scratch_dir("bench")?;
        let wanted = |t| opts.targets.is_empty() || opts.targets.contains(&t);
        let auto = wanted(Target::PgsteerAuto) || wanted(Target::PgsteerAutoEventual);
        let spec = PgsteerSpec {
            name: "pgsteer",
            members: members(&cluster),
            hold_timeout: "10s",
            max_clients: 10_000,
            pool_size: (wanted(Target::PgsteerPooled) || auto).then_some(opts.pool_size),
            auto,
            threads: 1,
            relay_engine: None,
        };
        let pgsteer = Pgsteer::start(&opts.pgsteer, log_dir, &spec)?;
        let baseline = match &opts.baseline_pgsteer {
            Some(bin) if wanted(Target::PgsteerBase) || wanted(Target::PgsteerBasePooled) => {
                // Same config shape, with the pooled listener only when pgsteer-base-pooled is
                // asked for by name (an older build may not have pooled mode), its own ports and
                // its own directory for config and log.
                let dir = log_dir.join("pgsteer-base");
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                let spec = PgsteerSpec {
                    name: "pgsteer-base",
                    pool_size: opts
                        .targets
                        .contains(&Target::PgsteerBasePooled)
                        .then_some(opts.pool_size),
                    auto: false,
                    threads: opts.baseline_threads,
                    relay_engine: opts.baseline_engine.as_deref(),
                    ..spec
                };
                let started = Pgsteer::start(bin, &dir, &spec)
                    .map_err(|e| format!("{e} (log in {})", dir.display()))?;
                Some(started)
            }
            _ => None,
        };
        let primary = cluster.nodes()[0].port;
        let [pgbouncer, pgbouncer_tx] = start_pgbouncers(opts, &scratch, primary)?;
        let haproxy = match find_program("haproxy") {
            Some(bin) if wanted(Target::Haproxy) => Some(start_haproxy(&bin, log_dir, primary)?),
            Some(_) => None,
            None => {
                eprintln!("compare: haproxy is not installed: skipped (benches/run installs it)");
                None
            }
        };
        Ok(Bench {
            pgsteer,
            baseline,
            pgbouncer,
            pgbouncer_tx,
            haproxy,
            scratch,
            cluster,
        })
    }

    /// Port and proxy pid of a target, if it is running.
    pub fn endpoint(&self, t: Target) -> Option<(u16, Option<u32>)> {
        let nodes = self.cluster.nodes();
        match t {
            Target::Direct => Some((nodes[0].port, None)),
            Target::DirectReplica => Some((nodes.get(1)?.port, None)),
            Target::PgsteerRw => Some((self.pgsteer.rw, Some(self.pgsteer.proc.pid()))),
            Target::PgsteerRo => Some((self.pgsteer.ro, Some(self.pgsteer.proc.pid()))),
            Target::PgsteerBase => self.baseline.as_ref().map(|b| (b.rw, Some(b.proc.pid()))),
            Target::PgsteerPooled => {
                (self.pgsteer.pooled).map(|p| (p, Some(self.pgsteer.proc.pid())))
            }
            Target::PgsteerBasePooled => {
                let b = self.baseline.as_ref()?;
                b.pooled.map(|p| (p, Some(b.proc.pid())))
            }
            Target::PgsteerAuto | Target::PgsteerAutoEventual => {
                (self.pgsteer.auto).map(|p| (p, Some(self.pgsteer.proc.pid())))
            }
            Target::Pgbouncer => peer(self.pgbouncer.as_ref()),
            Target::PgbouncerTx => peer(self.pgbouncer_tx.as_ref()),
            Target::Haproxy => peer(self.haproxy.as_ref()),
        }
    }

    /// Fails if a proxy has died.
    fn check_alive(&mut self) -> Result<(), String> {
        self.pgsteer.proc.check_alive()?;
        if let Some(b) = &mut self.baseline {
            b.proc.check_alive()?;
        }
        let peers = [
            &mut self.pgbouncer,
            &mut self.pgbouncer_tx,
            &mut self.haproxy,
        ];
        for (p, _) in peers.into_iter().flatten() {
            p.check_alive()?;
        }
        Ok(())
    }

    /// One pgbench run of `w` against `t`, with the proxy's CPU time around it.
    pub fn measure(
        &self,
        w: &Workload,
        t: Target,
        duration: Duration,
        round: usize,
    ) -> Result<Sample, String> {
        let (port, pid) = self.endpoint(t).ok_or("not running")?;
        if w.script.resets_tables() {
            reset_tpcb(&self.cluster)?;
        }
        let (user, password) = if w.scram {
            (APP_USER, Some(APP_PASSWORD))
        } else {
            (TRUST_USER, None)
        };
        let run = Run {
            port,
            user,
            password,
            database: DATABASE,
            script: w.script,
            scale: SCALE,
            options: t.pgoptions(),
            extended: w.extended,
            connect_per_tx: w.connect_per_tx,
            clients: w.clients,
            duration,
        };
        let auto_before = t.is_auto().then(|| self.auto_counts()).transpose()?;
        let before = pid.and_then(procfs::cpu_ticks);
        let outcome = run.run(&self.scratch)?;
        let after = pid.and_then(procfs::cpu_ticks);
        let auto = match auto_before {
            Some(b) => Some(self.auto_counts()?.since(b)),
            None => None,
        };
        if outcome.failed > 0 {
            return Err(format!("{} failed transactions", outcome.failed));
        }
        let tick = procfs::clock_ticks() as f64;
        Ok(Sample {
            round,
            transactions: outcome.transactions,
            tps: outcome.tps,
            latency_avg_ms: outcome.latency_avg_ms,
            latency_p99_ms: outcome.latency_p99_ms,
            proxy_cpu_s: before
                .zip(after)
                .map(|(b, a)| a.saturating_sub(b) as f64 / tick),
            per_script: outcome.per_script,
            auto,
        })
    }

    /// pgsteer's `auto` route decisions so far, from its admin `/metrics`.
    fn auto_counts(&self) -> Result<AutoCounts, String> {
        let (status, body) = http_get(self.pgsteer.admin, "/metrics")
            .map_err(|e| format!("pgsteer /metrics: {e}"))?;
        if status != 200 {
            return Err(format!("pgsteer /metrics: HTTP {status}"));
        }
        AutoCounts::parse(&body)
            .ok_or_else(|| format!("pgsteer /metrics has no {}", report::AUTO_METRIC))
    }
}

/// Port and pid of a peer process, if it runs.
fn peer(p: Option<&(Proc, u16)>) -> Option<(u16, Option<u32>)> {
    p.map(|(p, port)| (*port, Some(p.pid())))
}

/// PgBouncer in session mode (pool size 100) and in transaction mode (`opts.pool_size`), each if
/// wanted and installed.
fn start_pgbouncers(
    opts: &Options,
    scratch: &Path,
    primary: u16,
) -> Result<[Option<(Proc, u16)>; 2], String> {
    let Some(bin) = find_program("pgbouncer") else {
        eprintln!("compare: pgbouncer is not installed: skipped (benches/run installs it)");
        return Ok([None, None]);
    };
    let wanted = |t| opts.targets.is_empty() || opts.targets.contains(&t);
    let start = |t, pool_mode, pool_size| {
        let spec = PgbouncerSpec {
            name: Target::name(t),
            backend: primary,
            database: DATABASE,
            pool_mode,
            pool_size,
        };
        wanted(t)
            .then(|| start_pgbouncer(&bin, scratch, &spec, TRUST_USER))
            .transpose()
    };
    Ok([
        start(Target::Pgbouncer, "session", 100)?,
        start(Target::PgbouncerTx, "transaction", opts.pool_size)?,
    ])
}

/// `pgbench -i -s 10` as the trusted role, readable and writable by the SCRAM role too; waits
/// until both replicas have replayed it.
fn init_pgbench(cluster: &Cluster) -> Result<(), String> {
    eprintln!("compare: pgbench -i -s {SCALE}");
    let primary = cluster.nodes()[0].port;
    let out = std::process::Command::new("pgbench")
        .args([
            "-i",
            "-q",
            "-s",
            &SCALE.to_string(),
            "-h",
            "127.0.0.1",
            "-p",
        ])
        .arg(primary.to_string())
        .args(["-U", TRUST_USER, DATABASE])
        .output()
        .map_err(|e| format!("pgbench -i: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let psql = |node: &str, sql: &str| cluster.psql(node, sql).map_err(|e| e.to_string());
    psql(
        "pg-0",
        &format!("GRANT ALL ON ALL TABLES IN SCHEMA public TO {APP_USER}"),
    )?;
    psql("pg-0", "CHECKPOINT")?;
    let lsn = psql("pg-0", "SELECT pg_current_wal_lsn()")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    for node in cluster.nodes().iter().skip(1) {
        let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
        while psql(&node.name, &sql)? != "t" {
            if Instant::now() > deadline {
                return Err(format!("{} did not replay the pgbench tables", node.name));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

/// What pgbench does before a TPC-B-like run without `-n`, done on the primary directly so that
/// every target starts from the same state.
fn reset_tpcb(cluster: &Cluster) -> Result<(), String> {
    for sql in [
        "VACUUM pgbench_branches",
        "VACUUM pgbench_tellers",
        "TRUNCATE pgbench_history",
    ] {
        cluster.psql("pg-0", sql).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Output of a command, trimmed, or `-`.
fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into())
}

/// UTC time stamp `2026-11-26T151200Z` (from `date`).
pub fn stamp() -> String {
    command_line("date", &["-u", "+%Y-%m-%dT%H%M%SZ"])
}

/// Runs the whole comparison and writes `compare-<stamp>.{json,txt}` into `opts.out_dir`.
pub fn run(opts: &Options) -> Result<(), String> {
    let stamp = stamp();
    let log_dir = opts.out_dir.join(format!("compare-{stamp}"));
    std::fs::create_dir_all(&log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
    let loadavg_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut bench = Bench::start(opts, &log_dir)?;
    let workloads = runnable_workloads(opts, &bench);
    announce(opts, &workloads);
    warm_up(&bench, &workloads);
    let results = run_rounds(opts, &mut bench, &workloads)?;
    let checks = report::checks(&results);
    let mut text = header(opts, &stamp, &loadavg_start);
    let baseline = baseline_version(opts);
    text.push_str(&summary(baseline.as_ref(), &workloads, &results, &checks));
    println!("{text}");
    let meta = meta(opts, &stamp, &loadavg_start, baseline);
    let record = report::to_json(meta, &workloads, &results, &checks);
    let (json_path, txt_path) =
        write_record(&opts.out_dir, &format!("compare-{stamp}"), &record, &text)?;
    eprintln!(
        "compare: wrote {} and {} (proxy logs and configs in {})",
        json_path.display(),
        txt_path.display(),
        log_dir.display()
    );
    drop(bench);
    Ok(())
}

/// The workloads of `opts`, each keeping only the targets that are running and selected.
fn runnable_workloads(opts: &Options, bench: &Bench) -> Vec<Workload> {
    opts.workloads
        .iter()
        .cloned()
        .map(|mut w| {
            w.targets.retain(|&t| {
                bench.endpoint(t).is_some()
                    && (opts.targets.is_empty() || opts.targets.contains(&t))
            });
            w
        })
        .collect()
}

/// Says on stderr how many points will run and roughly how long that takes.
fn announce(opts: &Options, workloads: &[Workload]) {
    let points: usize = workloads.iter().map(|w| w.targets.len()).sum();
    eprintln!(
        "compare: {} points x {} rounds x {:?} (about {} min)",
        points,
        opts.rounds,
        opts.duration,
        (points * opts.rounds) as u64 * (opts.duration.as_secs() + 2) / 60 + 1
    );
}

/// Warms every target up once (caches, pools, the proxies' buffers); results are discarded.
fn warm_up(bench: &Bench, workloads: &[Workload]) {
    let warm = Duration::from_secs(1);
    for &t in &Target::ALL {
        if let Some(w) = workloads
            .iter()
            .find(|w| w.targets.contains(&t) && !w.scram)
        {
            let _ = bench.measure(w, t, warm, 0);
        }
    }
}

/// Every round of every workload against its targets; stops only if a proxy has died.
fn run_rounds(
    opts: &Options,
    bench: &mut Bench,
    workloads: &[Workload],
) -> Result<Results, String> {
    let mut results = Results::default();
    for round in 0..opts.rounds {
        for w in workloads {
            for t in round_order(&w.targets, round) {
                bench.check_alive()?;
                run_point(opts, bench, w, t, round, &mut results);
            }
        }
    }
    Ok(results)
}

/// `targets` rotated so that each round starts with a different one.
fn round_order(targets: &[Target], round: usize) -> Vec<Target> {
    let mut order = targets.to_vec();
    if !order.is_empty() {
        let n = order.len();
        order.rotate_left(round % n);
    }
    order
}

/// Measures one point and records its sample, or its failure (which does not stop the run).
fn run_point(
    opts: &Options,
    bench: &Bench,
    w: &Workload,
    t: Target,
    round: usize,
    results: &mut Results,
) {
    let started = Instant::now();
    match bench.measure(w, t, opts.duration, round) {
        Ok(s) => {
            eprintln!(
                "round {}/{} {:<24} {:<21} {:>9.0} tps {:>8.3} ms  cpu {} ({:.0?}){}",
                round + 1,
                opts.rounds,
                w.id,
                t.name(),
                s.tps,
                s.latency_avg_ms,
                s.cpu_us_per_tx()
                    .map_or("-".into(), |c| format!("{c:.1} us/tx")),
                started.elapsed(),
                s.auto
                    .and_then(|a| a.replica_share())
                    .map_or(String::new(), |r| format!("  replicas {:.1} %", r * 100.0)),
            );
            results
                .samples
                .entry((w.id.clone(), t))
                .or_default()
                .push(s);
        }
        Err(e) => {
            eprintln!("round {} {} {}: FAILED: {e}", round + 1, w.id, t.name());
            results.failures.push((w.id.clone(), t, round, e));
        }
    }
}

/// The first two lines of the report: run parameters, machine and program versions.
fn header(opts: &Options, stamp: &str, loadavg_start: &str) -> String {
    format!(
        "pgsteer comparison {stamp}: {} s per point, {} round(s), {} cores, load at start {}\n\
         postgres {}, pgbench scale {SCALE}; pgsteer {} (runtime threads 1); {}; {}\n",
        opts.duration.as_secs(),
        opts.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg_start
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        command_line("pgbench", &["--version"]),
        command_line("git", &["describe", "--always", "--dirty"]),
        command_line("pgbouncer", &["--version"]),
        command_line("haproxy", &["-v"]),
    )
}

/// Path and `--version` of the baseline pgsteer binary, if one was given (with its event
/// loops when more than one).
fn baseline_version(opts: &Options) -> Option<(String, String)> {
    opts.baseline_pgsteer.as_ref().map(|bin| {
        let bin = bin.display().to_string();
        let mut version = command_line(&bin, &["--version"]);
        if opts.baseline_threads > 1 {
            version.push_str(&format!(", [runtime] threads = {}", opts.baseline_threads));
        }
        if let Some(engine) = &opts.baseline_engine {
            version.push_str(&format!(", [runtime] relay_engine = \"{engine}\""));
        }
        (bin, version)
    })
}

/// The report after the header: the baseline, the table, baseline comparison, checks, failures.
fn summary(
    baseline: Option<&(String, String)>,
    workloads: &[Workload],
    results: &Results,
    checks: &[report::Check],
) -> String {
    let mut text = String::new();
    if let Some((bin, version)) = baseline {
        text.push_str(&format!(
            "baseline pgsteer (pgsteer-base): {bin} ({version})\n"
        ));
    }
    text.push_str(&report::table(workloads, results));
    text.push_str(&report::auto_routing(workloads, results));
    text.push_str(&report::versus_base(workloads, results));
    text.push_str(&report::checks_text(checks));
    if !results.failures.is_empty() {
        text.push_str(&format!("\n{} run(s) failed:\n", results.failures.len()));
        for (w, t, r, e) in &results.failures {
            text.push_str(&format!("  round {} {w} {t}: {e}\n", r + 1));
        }
    }
    text
}

/// The `meta` object of the JSON record: run parameters, machine, load and versions.
fn meta(
    opts: &Options,
    stamp: &str,
    loadavg_start: &str,
    baseline: Option<(String, String)>,
) -> Value {
    json!({
        "stamp": stamp,
        "duration_s": opts.duration.as_secs(),
        "rounds": opts.rounds,
        "scale": SCALE,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "loadavg_start": loadavg_start.trim(),
        "loadavg_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "clk_tck": procfs::clock_ticks(),
        "git": command_line("git", &["describe", "--always", "--dirty"]),
        "baseline_pgsteer": baseline.map(|(bin, version)| json!({"path": bin, "version": version})),
    })
}

/// Writes `record` to `<name>.json` and `text` to `<name>.txt` in `out_dir`; returns both paths.
pub fn write_record(
    out_dir: &Path,
    name: &str,
    record: &Value,
    text: &str,
) -> Result<(PathBuf, PathBuf), String> {
    let json_path = out_dir.join(format!("{name}.json"));
    let txt_path = out_dir.join(format!("{name}.txt"));
    let pretty = serde_json::to_string_pretty(record).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, pretty).map_err(|e| format!("{}: {e}", json_path.display()))?;
    std::fs::write(&txt_path, text).map_err(|e| format!("{}: {e}", txt_path.display()))?;
    Ok((json_path, txt_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_round_starts_with_the_next_target() {
        let targets = [Target::Direct, Target::PgsteerRw, Target::Pgbouncer];
        assert_eq!(round_order(&targets, 0), targets);
        assert_eq!(
            round_order(&targets, 1),
            [Target::PgsteerRw, Target::Pgbouncer, Target::Direct]
        );
        assert_eq!(round_order(&targets, 3), targets);
        assert!(round_order(&[], 2).is_empty());
    }
}
