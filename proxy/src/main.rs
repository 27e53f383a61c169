//! The `pgsteer` command: parse the command line, set up logging and the
//! runtime, turn signals into shutdown tokens, run. Exit codes: 0 ok,
//! 1 runtime failure, 64 bad configuration.
#![cfg_attr(not(test), deny(clippy::too_many_lines))]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use pgsteer::{Config, Shutdown};
use tracing::{info, warn};

/// Exit code for configuration errors (EX_USAGE... EX_DATAERR family: 64).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "pgsteer",
    version,
    about = "Postgres-protocol-aware connection router for replicated Postgres"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Configuration file (TOML); PGSTEER_* variables override its keys.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the configuration, run discovery once, print the topology.
    Check {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start a local primary + replicas from the system PostgreSQL and run pgsteer in front.
    Demo {
        /// Number of streaming replicas.
        #[arg(long, default_value_t = 2)]
        replicas: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Run { config } => match load(&config) {
            Ok(c) => exit(serve(c, None)),
            Err(code) => code,
        },
        Command::Check { config } => match load(&config) {
            Ok(c) => exit(check(c)),
            Err(code) => code,
        },
        Command::Demo { replicas } => demo(replicas),
    }
}

#[cfg(feature = "demo")]
fn demo(replicas: usize) -> ExitCode {
    use pgsteer::demo::{self, DemoAddrs};
    let addrs = DemoAddrs::default();
    match demo::prepare(replicas, addrs) {
        Ok((cluster, config)) => {
            println!("{}", demo::banner(&cluster, addrs));
            let r = serve(config, None);
            drop(cluster);
            exit(r)
        }
        Err(e) => {
            eprintln!("pgsteer demo: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "demo"))]
fn demo(_replicas: usize) -> ExitCode {
    eprintln!("pgsteer demo: this pgsteer was built without the cargo feature `demo`");
    ExitCode::FAILURE
}

fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgsteer: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, separated by `: `, each said once: pgsteer's errors put their
/// cause in their own message and also keep it as their source.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// The configuration file with its overrides, validated, its TLS files loaded.
fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    pgsteer::load::file(path, std::env::vars()).map_err(|e| {
        eprintln!("pgsteer: {}: {e}", path.display());
        ExitCode::from(EXIT_CONFIG)
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The first event loop: single-threaded. `[runtime] threads` beyond it are started by
/// `pgsteer::start`, one thread and runtime each (`loops.rs`).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

fn serve(config: Config, _ready: Option<()>) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let shutdown = Shutdown::new();
        tokio::spawn(signals(shutdown.clone()));
        pgsteer::run(config, shutdown).await?;
        Ok(())
    })
}

/// First SIGTERM/SIGINT: graceful drain. Second: now.
async fn signals(shutdown: Shutdown) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    info!("signal received: draining (send again to stop at once)");
    shutdown.drain.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    info!("second signal: stopping now");
    shutdown.now.cancel();
}

fn check(config: Config) -> anyhow::Result<()> {
    let rt = runtime()?;
    let topology = rt.block_on(pgsteer::discovery::once(&config))?;
    println!("{}", serde_json::to_string_pretty(&topology)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_said_once_on_the_error_line() {
        let in_use = || std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use");
        let bind = pgsteer::StartError::Bind {
            what: "rw",
            addr: "127.0.0.1:6432".parse().unwrap(),
            source: in_use(),
        };
        assert_eq!(
            one_line(&anyhow::Error::new(bind)),
            "cannot listen on 127.0.0.1:6432 (rw): address in use"
        );
        let runtime = Err::<(), _>(in_use()).context("cannot start the runtime");
        assert_eq!(
            one_line(&runtime.unwrap_err()),
            "cannot start the runtime: address in use"
        );
    }
}
