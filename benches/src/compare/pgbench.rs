//! Running `pgbench` and reading what it reports: the summary on stdout and the per-transaction
//! log (`-l`) for latency percentiles.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::workloads::{MIXED_READ, MIXED_WEIGHTS, MIXED_WRITE, Script};

/// What a pgbench run is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run<'a> {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Role to log in as.
    pub user: &'a str,
    /// Its password (`PGPASSWORD`), if it needs one.
    pub password: Option<&'a str>,
    /// Database.
    pub database: &'a str,
    /// `-S` (select-only), the default TPC-B-like script, or the 90/10 custom scripts (`-f`,
    /// written into the run's directory).
    pub script: Script,
    /// `-s`: the value of `:scale` in custom scripts (the built-in ones read it from the tables).
    pub scale: u32,
    /// `PGOPTIONS` (startup options such as `-c pgsteer.consistency=eventual`), if any.
    pub options: Option<&'a str>,
    /// `-M extended` instead of simple.
    pub extended: bool,
    /// `-C`: a new connection per transaction.
    pub connect_per_tx: bool,
    /// `-c`.
    pub clients: u32,
    /// `-T`.
    pub duration: Duration,
}

/// What pgbench reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Transactions processed.
    pub transactions: u64,
    /// Failed transactions.
    pub failed: u64,
    /// `tps = …`.
    pub tps: f64,
    /// `latency average = … ms`.
    pub latency_avg_ms: f64,
    /// 99th percentile of the logged transaction latencies, in ms.
    pub latency_p99_ms: Option<f64>,
    /// Transactions per script, in `-f` order, when there are several scripts.
    pub per_script: Vec<u64>,
}

/// File names of the 90/10 scripts in the run's directory: (read, write).
pub const MIXED_FILES: (&str, &str) = ("mixed-9010-read.sql", "mixed-9010-write.sql");

impl Run<'_> {
    /// The command line, logging every transaction to `dir/pgbench_log.*` (custom scripts are
    /// read from `dir`; [`Run::run`] writes them).
    pub fn command(&self, dir: &Path) -> Command {
        let log_prefix = dir.join(LOG_PREFIX);
        let mut cmd = Command::new("pgbench");
        cmd.args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", self.user, "-n", "-T"])
            .arg(
                (self.duration + self.connect_allowance())
                    .as_secs()
                    .max(1)
                    .to_string(),
            )
            .arg("-c")
            .arg(self.clients.to_string())
            .arg("-j")
            .arg(self.jobs().to_string())
            .arg("-l")
            .arg(format!("--log-prefix={}", log_prefix.display()));
        match self.script {
            Script::SelectOnly => {
                cmd.arg("-S");
            }
            Script::TpcbLike => {}
            Script::Mixed9010 => {
                let (read, write) = MIXED_FILES;
                let (r, w) = MIXED_WEIGHTS;
                cmd.arg("-s").arg(self.scale.to_string());
                cmd.arg("-f")
                    .arg(format!("{}@{r}", dir.join(read).display()));
                cmd.arg("-f")
                    .arg(format!("{}@{w}", dir.join(write).display()));
            }
        }
        if self.extended {
            cmd.args(["-M", "extended"]);
        }
        if self.connect_per_tx {
            cmd.arg("-C");
        }
        cmd.arg(self.database);
        cmd.env_remove("PGPASSWORD")
            .env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "10");
        if let Some(p) = self.password {
            cmd.env("PGPASSWORD", p);
        }
        if let Some(o) = self.options {
            cmd.env("PGOPTIONS", o);
        }
        cmd
    }

    /// `-j`: pgbench threads. Up to 2 (the cores of the machines this runs on); 4 from 100
    /// clients, so that one thread does not serve hundreds of connections alone.
    pub fn jobs(&self) -> u32 {
        if self.clients >= 100 {
            4
        } else {
            self.clients.clamp(1, 2)
        }
    }

    /// Seconds added to `-T` for connecting many clients: pgbench's clock runs while each thread
    /// connects its clients, one after the other, and 1,000 backends take seconds to start on 2
    /// cores (a 2 s run of 1,000 clients straight to Postgres processed nothing). tps is
    /// reported without that initial connection time and the logged transactions all come
    /// after it, so only the proxy's CPU time per transaction also counts the logins.
    pub fn connect_allowance(&self) -> Duration {
        if self.clients < 100 || self.connect_per_tx {
            Duration::ZERO
        } else {
            Duration::from_millis(10) * self.clients
        }
    }

    /// Runs pgbench in `dir` (its logs go there and are removed once read).
    pub fn run(&self, dir: &Path) -> Result<Outcome, String> {
        if self.script == Script::Mixed9010 {
            let (read, write) = MIXED_FILES;
            for (name, text) in [(read, MIXED_READ), (write, MIXED_WRITE)] {
                let path = dir.join(name);
                fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        let out = self
            .command(dir)
            .output()
            .map_err(|e| format!("cannot run pgbench: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let latencies = read_logs(dir, LOG_PREFIX);
        if !out.status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            return Err(format!(
                "pgbench failed ({}): {}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ));
        }
        if stdout.contains("actually processed: 0\n") {
            return Err(format!(
                "pgbench processed no transaction in -T {} s: connecting {} clients took longer?",
                (self.duration + self.connect_allowance()).as_secs(),
                self.clients
            ));
        }
        let mut outcome = parse_summary(&stdout)
            .ok_or_else(|| format!("cannot read the pgbench summary:\n{stdout}\n{stderr}"))?;
        let mut latencies = latencies?;
        outcome.latency_p99_ms = percentile(&mut latencies, 99.0).map(|us| us as f64 / 1000.0);
        Ok(outcome)
    }
}

/// File name prefix of the per-transaction logs (`-l --log-prefix`).
const LOG_PREFIX: &str = "pgbench_log";

/// Reads the pgbench summary (`number of transactions actually processed`, `tps = `, …).
pub fn parse_summary(stdout: &str) -> Option<Outcome> {
    let mut o = Outcome::default();
    let (mut got_tx, mut got_tps) = (false, false);
    for line in stdout.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("number of transactions actually processed:") {
            // "123456" or "123456/200000" with -t
            o.transactions = v.trim().split('/').next()?.trim().parse().ok()?;
            got_tx = true;
        } else if let Some(v) = line.strip_prefix("number of failed transactions:") {
            o.failed = v.split_whitespace().next()?.parse().ok()?;
        } else if let Some(v) = line.strip_prefix("latency average =") {
            o.latency_avg_ms = v.trim().trim_end_matches("ms").trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("tps =") {
            o.tps = v.split_whitespace().next()?.parse().ok()?;
            got_tps = true;
        } else if let Some(v) = line.strip_prefix("- ") {
            // Per script: " - 71893 transactions (90.0% of total, tps = 8986.5)".
            if let Some((n, _)) = v.split_once(" transactions (") {
                o.per_script.push(n.trim().parse().ok()?);
            }
        }
    }
    (got_tx && got_tps).then_some(o)
}

/// Reads and removes every log file `prefix.*` in `dir`, returning the latencies (µs) of the
/// transactions that succeeded. A line is `client_id transaction_no time script_no epoch µs`,
/// where `time` is the latency in µs (or `failed`/`skipped`).
pub fn read_logs(dir: &Path, prefix: &str) -> Result<Vec<u64>, String> {
    let mut all = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(&format!("{prefix}.")) {
            continue;
        }
        let path = entry.path();
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        all.extend(parse_log(&text));
        let _ = fs::remove_file(&path);
    }
    Ok(all)
}

/// Latencies (µs) of one pgbench log's successful transactions.
pub fn parse_log(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.lines()
        .filter_map(|line| line.split_whitespace().nth(2)?.parse().ok())
}

/// The `p`th percentile (nearest rank) of `values`; sorts them.
pub fn percentile(values: &mut [u64], p: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str = "pgbench (15.14 (Debian 15.14-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 10
query mode: extended
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 15 s
number of transactions actually processed: 171717
number of failed transactions: 0 (0.000%)
latency average = 0.699 ms
initial connection time = 9.213 ms
tps = 11447.800000 (without initial connection time)
";

    #[test]
    fn the_summary_gives_transactions_tps_and_latency() {
        let o = parse_summary(SUMMARY).unwrap();
        assert_eq!(o.transactions, 171_717);
        assert_eq!(o.failed, 0);
        assert!((o.tps - 11447.8).abs() < 1e-9);
        assert!((o.latency_avg_ms - 0.699).abs() < 1e-9);
        assert_eq!(parse_summary("pgbench: error: connection refused"), None);
    }

    #[test]
    fn reconnecting_runs_report_tps_including_connections() {
        let text = SUMMARY.replace(
            "tps = 11447.800000 (without initial connection time)",
            "average connection time = 2.1 ms\ntps = 400.5 (including reconnection times)",
        );
        assert!((parse_summary(&text).unwrap().tps - 400.5).abs() < 1e-9);
    }

    #[test]
    fn many_clients_get_four_pgbench_threads_and_time_to_connect() {
        let run = |clients| Run {
            port: 5432,
            user: "u",
            password: None,
            database: "d",
            script: Script::SelectOnly,
            scale: 10,
            options: None,
            extended: false,
            connect_per_tx: false,
            clients,
            duration: Duration::from_secs(1),
        };
        assert_eq!(run(1).jobs(), 1);
        assert_eq!(run(8).jobs(), 2);
        assert_eq!(run(32).jobs(), 2);
        assert_eq!(run(1000).jobs(), 4);
        let cmd = run(1000).command(Path::new("/tmp/run"));
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        let j = args.iter().position(|a| a == "-j").unwrap();
        assert_eq!(args[j + 1], "4");
        let t = args.iter().position(|a| a == "-T").unwrap();
        assert_eq!(args[t + 1], "11", "1 s plus 10 s to connect 1,000 clients");
        assert_eq!(run(32).connect_allowance(), Duration::ZERO);
    }

    #[test]
    fn the_mixed_script_is_two_weighted_files_with_the_scale_and_startup_options() {
        let run = Run {
            port: 5432,
            user: "u",
            password: None,
            database: "d",
            script: Script::Mixed9010,
            scale: 10,
            options: Some("-c pgsteer.consistency=eventual"),
            extended: false,
            connect_per_tx: false,
            clients: 8,
            duration: Duration::from_secs(1),
        };
        let cmd = run.command(Path::new("/tmp/run"));
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        let joined = args.join(" ");
        assert!(
            joined.contains(
                "-s 10 -f /tmp/run/mixed-9010-read.sql@9 -f /tmp/run/mixed-9010-write.sql@1"
            ),
            "{joined}"
        );
        assert!(!args.iter().any(|a| a == "-S"), "{joined}");
        let env: Vec<_> = cmd.get_envs().collect();
        assert!(
            env.iter().any(|(k, v)| *k == "PGOPTIONS"
                && v.is_some_and(|v| v == "-c pgsteer.consistency=eventual")),
            "{env:?}"
        );
        let plain = Run {
            options: None,
            ..run
        };
        assert!(
            !plain
                .command(Path::new("/tmp/run"))
                .get_envs()
                .any(|(k, _)| k == "PGOPTIONS")
        );
    }

    #[test]
    fn several_scripts_give_transactions_per_script() {
        let text = SUMMARY.to_owned()
            + "SQL script 1: /tmp/run/mixed-9010-read.sql
 - weight: 9 (targets 90.0% of total)
 - 154500 transactions (90.0% of total, tps = 10300.000000)
 - number of failed transactions: 0 (0.000%)
 - latency average = 0.650 ms
 - latency stddev = 0.100 ms
SQL script 2: /tmp/run/mixed-9010-write.sql
 - weight: 1 (targets 10.0% of total)
 - 17217 transactions (10.0% of total, tps = 1147.800000)
 - number of failed transactions: 0 (0.000%)
 - latency average = 1.100 ms
 - latency stddev = 0.300 ms
";
        let o = parse_summary(&text).unwrap();
        assert_eq!(o.per_script, [154_500, 17_217]);
        assert_eq!(o.transactions, 171_717);
        assert!(
            (o.latency_avg_ms - 0.699).abs() < 1e-9,
            "the overall average"
        );
        assert!(parse_summary(SUMMARY).unwrap().per_script.is_empty());
    }

    #[test]
    fn log_lines_give_latencies_and_skip_failures() {
        let log = "0 1 650 0 1700000000 123456\n1 1 failed 0 1700000000 123999\n0 2 701 0 1700000000 124000\n";
        assert_eq!(parse_log(log).collect::<Vec<_>>(), vec![650, 701]);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut v, 99.0), Some(99));
        assert_eq!(percentile(&mut v, 100.0), Some(100));
        assert_eq!(percentile(&mut v, 50.0), Some(50));
        assert_eq!(percentile(&mut [7], 99.0), Some(7));
        assert_eq!(percentile(&mut [], 99.0), None);
    }
}
