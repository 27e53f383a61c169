//! `compare`: pgsteer against direct Postgres, PgBouncer and HAProxy with pgbench (passthrough
//! and pooled), and the proxy's memory per idle, parked or idle pooled client. Run it through
//! `benches/run`, which raises the open-file limit, builds in release mode and installs the peers.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pgsteer_benches::compare::workloads::{self, Target};
use pgsteer_benches::compare::{memory, throughput};

#[derive(Parser)]
#[command(
    name = "compare",
    about = "pgsteer comparison harness (see benches/RESULTS.md)"
)]
struct Cli {
    /// Seconds per point.
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Rounds; the table shows medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// A smoke run: 2 s per point, one round.
    #[arg(long)]
    quick: bool,
    /// Only these workloads (comma-separated ids, e.g. select-simple-8,tpcb-8,mixed-9010-8).
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Only these targets (direct, pgsteer-rw, pgsteer-base, pgsteer-pooled, pgsteer-base-pooled, pgsteer-auto,
    /// pgsteer-auto-eventual, pgbouncer, pgbouncer-tx, haproxy, direct-replica, pgsteer-ro).
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// The pgsteer binary (default: `pgsteer` next to this one).
    #[arg(long)]
    pgsteer: Option<PathBuf>,
    /// A pgsteer binary from an older build, run as a second instance: target `pgsteer-base`
    /// (its rw listener), compared with pgsteer-rw in the same run.
    #[arg(long, value_name = "PATH")]
    baseline_pgsteer: Option<PathBuf>,
    /// `[runtime] threads` of the pgsteer-base instance (pgsteer-rw runs with 1): with the
    /// same binary as `--baseline-pgsteer`, compares one event loop with several.
    #[arg(long, value_name = "N", default_value_t = 1)]
    baseline_threads: usize,
    /// `[runtime] relay_engine` of the pgsteer-base instance (`epoll` or `tokio`): with the
    /// same binary as `--baseline-pgsteer`, compares the epoll engine with a task per session.
    #[arg(long, value_name = "ENGINE")]
    baseline_engine: Option<String>,
    /// Server connections of the pooled targets: `[pool] size` of pgsteer-pooled and
    /// `default_pool_size` of pgbouncer-tx (and of the pooled listener in `memory`).
    #[arg(long, default_value_t = 20)]
    pool_size: usize,
    /// Where results go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    out: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The pgbench comparison (the default).
    Throughput,
    /// Proxy RSS and descriptors per idle session, per parked client and per idle pooled client.
    Memory {
        /// Idle sessions through rw.
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Clients parked on the hold path.
        #[arg(long, default_value_t = 10_000)]
        parked: usize,
        /// Idle clients logged in through a pooled (transaction mode) listener.
        #[arg(long, default_value_t = 1000)]
        pooled: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let pgsteer = match cli.pgsteer {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("pgsteer"),
    };
    if !pgsteer.is_file() {
        return Err(format!(
            "{} not found: cargo build --release -p pgsteer (benches/run does)",
            pgsteer.display()
        ));
    }
    if let Some(base) = &cli.baseline_pgsteer {
        if !base.is_file() {
            return Err(format!("--baseline-pgsteer {}: not a file", base.display()));
        }
        if matches!(cli.command, Some(Command::Memory { .. })) {
            return Err("--baseline-pgsteer is for the throughput comparison only".into());
        }
    }
    std::fs::create_dir_all(&cli.out).map_err(|e| format!("{}: {e}", cli.out.display()))?;
    match cli.command.unwrap_or(Command::Throughput) {
        Command::Memory {
            sessions,
            parked,
            pooled,
        } => memory::run(&memory::Options {
            pgsteer,
            out_dir: cli.out,
            sessions,
            parked,
            pooled,
            pool_size: cli.pool_size.max(1),
        }),
        Command::Throughput => {
            let mut all = workloads::standard();
            if !cli.workloads.is_empty() {
                for id in &cli.workloads {
                    if !all.iter().any(|w| &w.id == id) {
                        return Err(format!("unknown workload {id}"));
                    }
                }
                all.retain(|w| cli.workloads.contains(&w.id));
            }
            let mut targets = Vec::new();
            for name in &cli.targets {
                let t = Target::ALL
                    .into_iter()
                    .find(|t| t.name() == name)
                    .ok_or_else(|| format!("unknown target {name}"))?;
                if matches!(t, Target::PgsteerBase | Target::PgsteerBasePooled)
                    && cli.baseline_pgsteer.is_none()
                {
                    return Err(format!("target {t} needs --baseline-pgsteer PATH"));
                }
                targets.push(t);
            }
            let (duration, rounds) = if cli.quick {
                (2, 1)
            } else {
                (cli.duration, cli.rounds)
            };
            throughput::run(&throughput::Options {
                duration: Duration::from_secs(duration.max(1)),
                rounds: rounds.max(1),
                workloads: all,
                targets,
                pgsteer,
                baseline_pgsteer: cli.baseline_pgsteer,
                baseline_threads: cli.baseline_threads.max(1),
                baseline_engine: cli.baseline_engine,
                out_dir: cli.out,
                pool_size: cli.pool_size.max(1),
            })
        }
    }
}
