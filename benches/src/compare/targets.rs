//! The processes under test: the release `pgsteer` binary, PgBouncer (session mode) and HAProxy
//! (`mode tcp`), each a child process with its config and log in the run directory, killed when
//! dropped.

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
}

/// The TOML config of a pgsteer instance.
pub fn pgsteer_config(spec: &PgsteerSpec<'_>, rw: u16, ro: u16, admin: u16) -> String {
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
        let (rw, ro, admin) = (free_port()?, free_port()?, free_port()?);
        let config = dir.join(format!("{}.toml", spec.name));
        fs::write(&config, pgsteer_config(spec, rw, ro, admin))
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
            if let Ok((200, _)) = http_get(admin, "/readyz") {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{} not ready after {START_TIMEOUT:?}", spec.name));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Pgsteer {
            proc,
            rw,
            ro,
            admin,
        })
    }
}

/// PgBouncer in session mode in front of `127.0.0.1:backend`, trusting `user` (who must be
/// trusted by Postgres too). Returns the process and its port.
pub fn start_pgbouncer(
    bin: &Path,
    dir: &Path,
    backend: u16,
    database: &str,
    user: &str,
) -> Result<(Proc, u16), String> {
    let dir = dir.join("pgbouncer");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let port = free_port()?;
    let auth_file = dir.join("userlist.txt");
    fs::write(&auth_file, format!("\"{user}\" \"\"\n")).map_err(|e| e.to_string())?;
    let config = dir.join("pgbouncer.ini");
    let text = format!(
        "[databases]\n{database} = host=127.0.0.1 port={backend} dbname={database}\n\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
         auth_type = trust\nauth_file = {}\npool_mode = session\n\
         max_client_conn = 4000\ndefault_pool_size = 100\n\
         log_connections = 0\nlog_disconnections = 0\nstats_period = 60\n\
         logfile = {}\nignore_startup_parameters = extra_float_digits\n",
        auth_file.display(),
        dir.join("pgbouncer.log").display(),
    );
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
    let mut proc = Proc::spawn("pgbouncer", cmd, &dir.join("stderr.log"))?;
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
