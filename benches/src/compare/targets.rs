//! The processes under test: the release `pgsteer` binary (passthrough rw/ro, and a pooled
//! listener), PgBouncer (session or transaction mode) and HAProxy (`mode tcp`), each a child
//! process with its config and log in the run directory, killed when dropped.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::wire::{free_port, http_get, wait_port};

/// How long a proxy may take to start listening (pgsteer: to be ready).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A child process, killed and reaped when dropped.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc, String> {
        let out = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error if the process has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited: {status}", self.name)),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds an executable on `PATH` or in the sbin directories Debian installs daemons into.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(PathBuf::from)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Whether this process runs as root (daemons that refuse root then switch to `postgres`).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// A running pgsteer with its listener ports.
#[derive(Debug)]
pub struct Pgsteer {
    /// The process.
    pub proc: Proc,
    /// Read-write listener port.
    pub rw: u16,
    /// Read-only listener port.
    pub ro: u16,
    /// Admin HTTP port.
    pub admin: u16,
    /// Pooled (transaction mode) listener port, if the spec asked for one.
    pub pooled: Option<u16>,
    /// `auto` (transaction mode, route auto) listener port, if the spec asked for one.
    pub auto: Option<u16>,
}

/// The ports a pgsteer instance listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Read-write listener (passthrough).
    pub rw: u16,
    /// Read-only listener (passthrough).
    pub ro: u16,
    /// Admin HTTP.
    pub admin: u16,
    /// The extra listener `pooled` (transaction mode, route primary), if any.
    pub pooled: Option<u16>,
    /// The extra listener `auto` (transaction mode, route auto), if any.
    pub auto: Option<u16>,
}

/// What a pgsteer instance is configured with.
#[derive(Debug, Clone)]
pub struct PgsteerSpec<'a> {
    /// Instance name (config and log file names).
    pub name: &'a str,
    /// Static members: (name, host:port).
    pub members: Vec<(String, String)>,
    /// `routing.hold_timeout`.
    pub hold_timeout: &'a str,
    /// `limits.max_client_connections`.
    pub max_clients: usize,
    /// `[pool] size` of an extra listener `pooled` in transaction mode (clients trusted:
    /// `[auth] method = "trust"`); `None`: no pooled listener (a baseline build may not have
    /// pooled mode).
    pub pool_size: Option<usize>,
    /// With a pool size: a second extra listener `auto` (`route = "auto"`, transaction mode,
    /// the same pool settings), for issue 16's read/write split.
    pub auto: bool,
    /// `[runtime] threads` (event loops); 1 is written only when asked for otherwise (an
    /// older build may not know the section).
    pub threads: usize,
    /// `[runtime] relay_engine`, written only when given.
    pub relay_engine: Option<&'a str>,
}

/// The TOML config of a pgsteer instance: rw and ro stay passthrough; a pooled listener is an
/// extra one.
pub fn pgsteer_config(spec: &PgsteerSpec<'_>, ports: Ports) -> String {
    let Ports { rw, ro, admin, .. } = ports;
    let mut text = format!(
        "# written by the pgsteer comparison harness\n\
         [listen]\nrw = \"127.0.0.1:{rw}\"\nro = \"127.0.0.1:{ro}\"\nadmin = \"127.0.0.1:{admin}\"\n\n\
         [discovery]\nsource = \"static\"\n\n\
         [discovery.probe]\nuser = \"{}\"\npassword = \"{}\"\n\n\
         [routing]\nhold_timeout = \"{}\"\n\n\
         [limits]\nmax_client_connections = {}\n",
        pgsteer_cluster::PROBE_USER,
        pgsteer_cluster::PROBE_PASSWORD,
        spec.hold_timeout,
        spec.max_clients,
    );
    if spec.threads > 1 || spec.relay_engine.is_some() {
        text.push_str("\n[runtime]\n");
    }
    if spec.threads > 1 {
        let _ = writeln!(text, "threads = {}", spec.threads);
    }
    if let Some(engine) = spec.relay_engine {
        let _ = writeln!(text, "relay_engine = \"{engine}\"");
    }
    if let (Some(port), Some(size)) = (ports.pooled, spec.pool_size) {
        let _ = write!(
            text,
            "\n[pool]\nsize = {size}\n\n[auth]\nmethod = \"trust\"\n\n\
             [[listen.extra]]\nname = \"pooled\"\naddress = \"127.0.0.1:{port}\"\n\
             route = \"primary\"\npool_mode = \"transaction\"\n"
        );
        if let Some(port) = ports.auto {
            let _ = write!(
                text,
                "\n[[listen.extra]]\nname = \"auto\"\naddress = \"127.0.0.1:{port}\"\n\
                 route = \"auto\"\npool_mode = \"transaction\"\n"
            );
        }
    }
    for (name, address) in &spec.members {
        let _ = write!(
            text,
            "\n[[discovery.members]]\nname = \"{name}\"\naddress = \"{address}\"\n"
        );
    }
    text
}

impl Pgsteer {
    /// Writes the config into `dir`, starts `bin run --config …` and waits for `/readyz`.
    pub fn start(bin: &Path, dir: &Path, spec: &PgsteerSpec<'_>) -> Result<Pgsteer, String> {
        let ports = Ports {
            rw: free_port()?,
            ro: free_port()?,
            admin: free_port()?,
            pooled: spec.pool_size.map(|_| free_port()).transpose()?,
            auto: (spec.pool_size.is_some() && spec.auto)
                .then(free_port)
                .transpose()?,
        };
        let config = dir.join(format!("{}.toml", spec.name));
        fs::write(&config, pgsteer_config(spec, ports))
            .map_err(|e| format!("{}: {e}", config.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn");
        let mut proc = Proc::spawn(spec.name, cmd, &dir.join(format!("{}.log", spec.name)))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            proc.check_alive()?;
            if let Ok((200, _)) = http_get(ports.admin, "/readyz") {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{} not ready after {START_TIMEOUT:?}", spec.name));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Pgsteer {
            proc,
            rw: ports.rw,
            ro: ports.ro,
            admin: ports.admin,
            pooled: ports.pooled,
            auto: ports.auto,
        })
    }
}

/// What a PgBouncer instance is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgbouncerSpec<'a> {
    /// Instance name (its directory under the scratch directory, its process name).
    pub name: &'a str,
    /// The primary's port on 127.0.0.1.
    pub backend: u16,
    /// The one database it serves.
    pub database: &'a str,
    /// `pool_mode`: `session` or `transaction`.
    pub pool_mode: &'a str,
    /// `default_pool_size`.
    pub pool_size: usize,
}

/// `pgbouncer.ini` for `spec` on `port`: `auth_type = trust` with `auth_file`, connection
/// logging off.
pub fn pgbouncer_config(
    spec: &PgbouncerSpec<'_>,
    port: u16,
    auth_file: &Path,
    log: &Path,
) -> String {
    let PgbouncerSpec {
        backend,
        database,
        pool_mode,
        pool_size,
        ..
    } = *spec;
    format!(
        "[databases]\n{database} = host=127.0.0.1 port={backend} dbname={database}\n\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
         auth_type = trust\nauth_file = {}\npool_mode = {pool_mode}\n\
         max_client_conn = 4000\ndefault_pool_size = {pool_size}\n\
         log_connections = 0\nlog_disconnections = 0\nstats_period = 60\n\
         logfile = {}\nignore_startup_parameters = extra_float_digits\n",
        auth_file.display(),
        log.display(),
    )
}

/// PgBouncer as `spec` says, trusting `user` (who must be trusted by Postgres too). Returns the
/// process and its port.
pub fn start_pgbouncer(
    bin: &Path,
    dir: &Path,
    spec: &PgbouncerSpec<'_>,
    user: &str,
) -> Result<(Proc, u16), String> {
    let dir = dir.join(spec.name);
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let port = free_port()?;
    let auth_file = dir.join("userlist.txt");
    fs::write(&auth_file, format!("\"{user}\" \"\"\n")).map_err(|e| e.to_string())?;
    let config = dir.join("pgbouncer.ini");
    let text = pgbouncer_config(spec, port, &auth_file, &dir.join("pgbouncer.log"));
    fs::write(&config, text).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    if is_root() {
        // PgBouncer refuses to run as root; `-u` switches user in the same process.
        let _ = Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(&dir)
            .status();
        cmd.args(["-u", "postgres"]);
    }
    cmd.arg(&config);
    let mut proc = Proc::spawn(spec.name, cmd, &dir.join("stderr.log"))?;
    wait_port(port, START_TIMEOUT)?;
    proc.check_alive()?;
    Ok((proc, port))
}

/// HAProxy in `mode tcp` in front of `127.0.0.1:backend`, one thread (as pgsteer and PgBouncer
/// run by default). Returns the process and its port.
pub fn start_haproxy(bin: &Path, dir: &Path, backend: u16) -> Result<(Proc, u16), String> {
    let port = free_port()?;
    let config = dir.join("haproxy.cfg");
    let text = format!(
        "global\n  maxconn 4000\n  nbthread 1\n\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\n\
         listen postgres\n  bind 127.0.0.1:{port}\n  server primary 127.0.0.1:{backend}\n"
    );
    fs::write(&config, text).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.arg("-db").arg("-f").arg(&config);
    let mut proc = Proc::spawn("haproxy", cmd, &dir.join("haproxy.log"))?;
    wait_port(port, START_TIMEOUT)?;
    proc.check_alive()?;
    Ok((proc, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pool_size: Option<usize>) -> PgsteerSpec<'static> {
        PgsteerSpec {
            name: "pgsteer",
            members: vec![("pg-0".into(), "127.0.0.1:5432".into())],
            hold_timeout: "10s",
            max_clients: 10_000,
            pool_size,
            auto: false,
            threads: 1,
            relay_engine: None,
        }
    }

    const PORTS: Ports = Ports {
        rw: 6432,
        ro: 6433,
        admin: 6434,
        pooled: Some(6435),
        auto: None,
    };

    #[test]
    fn a_pooled_listener_is_an_extra_one_that_pgsteer_accepts() {
        let text = pgsteer_config(&spec(Some(20)), PORTS);
        let config = pgsteer::Config::parse(&text, []).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(config.pooled(), "{text}");
        assert_eq!(config.pool.size, 20);
        assert_eq!(
            config.pool.mode,
            pgsteer::config::PoolMode::Passthrough,
            "rw and ro stay passthrough"
        );
        let extra = &config.listen.extra[0];
        assert_eq!(extra.address.port(), 6435);
        assert_eq!(extra.route, "primary");
        assert_eq!(
            extra.pool_mode,
            Some(pgsteer::config::PoolMode::Transaction)
        );
    }

    #[test]
    fn event_loops_are_written_only_when_more_than_one() {
        let two = PgsteerSpec {
            threads: 2,
            ..spec(None)
        };
        let text = pgsteer_config(&two, PORTS);
        let config = pgsteer::Config::parse(&text, []).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.runtime.threads, 2, "{text}");
        assert!(!pgsteer_config(&spec(None), PORTS).contains("[runtime]"));
        let tokio = PgsteerSpec {
            threads: 2,
            relay_engine: Some("tokio"),
            ..spec(None)
        };
        let text = pgsteer_config(&tokio, PORTS);
        let config = pgsteer::Config::parse(&text, []).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.runtime.threads, 2, "{text}");
        assert_eq!(
            config.runtime.relay_engine,
            pgsteer::config::RelayEngine::Tokio,
            "{text}"
        );
    }

    #[test]
    fn an_auto_listener_shares_the_pool_of_the_pooled_one() {
        let ports = Ports {
            auto: Some(6436),
            ..PORTS
        };
        let with_auto = PgsteerSpec {
            auto: true,
            ..spec(Some(20))
        };
        let text = pgsteer_config(&with_auto, ports);
        let config = pgsteer::Config::parse(&text, []).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.listen.extra.len(), 2, "{text}");
        let auto = &config.listen.extra[1];
        assert_eq!(auto.name, "auto");
        assert_eq!(auto.address.port(), 6436);
        assert_eq!(auto.route, "auto");
        assert_eq!(auto.pool_mode, Some(pgsteer::config::PoolMode::Transaction));
        assert_eq!(config.pool.size, 20);
        let without = pgsteer_config(&spec(Some(20)), PORTS);
        assert!(!without.contains("route = \"auto\""), "{without}");
    }

    #[test]
    fn without_a_pool_size_the_config_has_no_pooled_section() {
        let text = pgsteer_config(&spec(None), PORTS);
        assert!(
            !text.contains("[pool]") && !text.contains("[auth]"),
            "{text}"
        );
        let config = pgsteer::Config::parse(&text, []).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(!config.pooled());
    }

    #[test]
    fn pgbouncer_gets_its_pool_mode_and_size() {
        let spec = PgbouncerSpec {
            name: "pgbouncer-tx",
            backend: 5432,
            database: "app",
            pool_mode: "transaction",
            pool_size: 20,
        };
        let text = pgbouncer_config(&spec, 6400, Path::new("/u.txt"), Path::new("/b.log"));
        for line in [
            "app = host=127.0.0.1 port=5432 dbname=app",
            "listen_port = 6400",
            "pool_mode = transaction",
            "default_pool_size = 20",
            "auth_type = trust",
            "auth_file = /u.txt",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}: {text}");
        }
    }
}
