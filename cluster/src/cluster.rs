//! [`Cluster`]: starting, driving and tearing down a primary with streaming replicas.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::exec::{self, Tools, run};
use crate::files::{self, ServerConf};
use crate::{DATABASE, Error, Node, Spec, StopMode};

const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
const BASEBACKUP_TIMEOUT: Duration = Duration::from_secs(300);
/// `pg_ctl -t` (seconds) for start, stop and promote.
const PG_CTL_WAIT: &str = "60";
/// Outer deadline of a `pg_ctl` command: its own wait plus slack.
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(90);
const PSQL_TIMEOUT: Duration = Duration::from_secs(300);
const SHORT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Cluster::start`] waits for the replicas to stream.
const STREAMING_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a new server is started on a fresh port when another process took its port first.
const PORT_ATTEMPTS: usize = 5;
/// Longest path of a unix socket directory (sun_path holds 108 bytes with `/.s.PGSQL.65535` and NUL).
const MAX_SOCKET_DIR: usize = 107 - "/.s.PGSQL.65535".len();
/// `application_name` of the connections this crate makes.
const APPLICATION_NAME: &str = "pgsteer-cluster";

/// A running PostgreSQL primary with streaming replicas in a private directory.
///
/// Node 0 starts as the primary; the others replicate from it. Dropping the cluster stops every
/// server (immediate shutdown) and removes the directory.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    socket_dir: PathBuf,
    tools: Tools,
    nodes: Vec<Node>,
    max_connections: u32,
    max_wal_senders: usize,
    extra_conf: Vec<String>,
}

/// A server that did not start, and whether it was because its port was taken.
struct StartFailure {
    error: Error,
    address_in_use: bool,
}

impl Cluster {
    /// Starts a primary (`<prefix>-0`) and `spec.replicas` streaming replicas, and returns once the
    /// primary's `pg_stat_replication` shows every replica streaming.
    ///
    /// The roles and database of the crate constants exist on every node. On error, whatever was
    /// started is stopped and the directory removed.
    pub fn start(spec: &Spec) -> Result<Cluster, Error> {
        Cluster::start_in(spec, &files::base_dir())
    }

    /// [`Cluster::start`] in a directory under `base`.
    pub(crate) fn start_in(spec: &Spec, base: &Path) -> Result<Cluster, Error> {
        let max_wal_senders = validate(spec)?;
        let tools = Tools::detect()?;
        files::reap_stale(base);
        let dir = files::create_cluster_dir(base)?;
        // From here on, dropping `cluster` (also on an early return) stops what was started and
        // removes the directory.
        let mut cluster = Cluster {
            socket_dir: dir.join("sock"),
            dir,
            tools,
            nodes: Vec::new(),
            max_connections: spec.max_connections,
            max_wal_senders,
            extra_conf: spec.extra_conf.clone(),
        };
        prepare_dirs(&cluster.tools, &cluster.dir, &cluster.socket_dir)?;
        let ports = files::free_ports(spec.replicas + 1)?;
        for (i, port) in ports.into_iter().enumerate() {
            let name = format!("{}-{i}", spec.name_prefix);
            if i == 0 {
                cluster.init_primary(name, port)?;
            } else {
                cluster.add_replica(name, port)?;
            }
        }
        cluster.wait_streaming(spec.replicas, STREAMING_TIMEOUT)?;
        Ok(cluster)
    }

    /// All nodes, the first primary first.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node called `name`.
    ///
    /// # Panics
    /// When there is no such node: this is a test helper, and a wrong name is a bug in the test.
    pub fn node(&self, name: &str) -> &Node {
        self.find(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The cluster's directory (data directories, logs, sockets).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of every node's unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server log of node `name` (`<dir>/<name>.log`).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// Runs `sql` (one `psql -c`, so several statements run as one transaction) on node `name` as the
    /// superuser `postgres` over the unix socket, in database [`DATABASE`], and returns the output
    /// (`-Atq`: unaligned, tuples only, `|` between columns) trimmed.
    pub fn psql(&self, name: &str, sql: &str) -> Result<String, Error> {
        let node = self.find(name)?;
        let mut cmd = self.psql_command(node, DATABASE);
        cmd.arg("-c").arg(sql);
        let out = run(&mut cmd, PSQL_TIMEOUT).map_err(|e| e.context(format!("psql on {name}")))?;
        Ok(out.trim().to_owned())
    }

    /// `pg_is_in_recovery()` on node `name`: true for a replica.
    pub fn is_in_recovery(&self, name: &str) -> Result<bool, Error> {
        match self.psql(name, "SELECT pg_is_in_recovery()")?.as_str() {
            "t" => Ok(true),
            "f" => Ok(false),
            other => Err(Error::new(format!(
                "pg_is_in_recovery() on {name} returned {other:?}"
            ))),
        }
    }

    /// Promotes replica `name` to primary and waits until it accepts writes (`pg_ctl promote -w`).
    pub fn promote(&self, name: &str) -> Result<(), Error> {
        let node = self.find(name)?;
        let mut cmd = self.pg_ctl("promote", node);
        cmd.args(["-w", "-t", PG_CTL_WAIT]);
        run(&mut cmd, PG_CTL_TIMEOUT).map_err(|e| e.context(format!("promoting {name}")))?;
        Ok(())
    }

    /// Stops node `name` and waits until it is down; a node that is not running is left alone.
    pub fn stop_node(&self, name: &str, mode: StopMode) -> Result<(), Error> {
        let node = self.find(name)?;
        if files::running_postmaster(&node.data_dir).is_none() {
            return Ok(());
        }
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        let mut cmd = self.pg_ctl("stop", node);
        cmd.args(["-m", mode, "-w", "-t", PG_CTL_WAIT]);
        run(&mut cmd, PG_CTL_TIMEOUT).map_err(|e| e.context(format!("stopping {name}")))?;
        Ok(())
    }

    /// Starts node `name` again on its port and waits until it accepts connections; a running node is
    /// left alone. A replica comes back as a replica, and an old primary as a primary.
    pub fn start_node(&self, name: &str) -> Result<(), Error> {
        let node = self.find(name)?;
        if files::running_postmaster(&node.data_dir).is_some() {
            return Ok(());
        }
        self.pg_ctl_start(node).map_err(|failure| failure.error)
    }

    /// Waits until the primary's `pg_stat_replication` shows at least `replicas` streaming replicas.
    ///
    /// The primary is the first running node that is not in recovery, looked up again at every poll.
    pub fn wait_streaming(&self, replicas: usize, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.replication_state();
            if state
                .as_ref()
                .is_ok_and(|(_, streaming)| streaming.len() >= replicas)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.not_streaming(replicas, timeout, state));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Stops every server (immediate shutdown) and waits until they are gone. Idempotent; never fails
    /// (a server that ignores the shutdown is killed).
    pub fn stop(&mut self) {
        for node in self.nodes.iter().rev() {
            stop_now(&node.data_dir);
        }
    }

    // ---- start-up steps ----

    /// `initdb`, configuration, start, then the roles and the database.
    fn init_primary(&mut self, name: String, port: u16) -> Result<(), Error> {
        let data_dir = self.dir.join(&name);
        let mut initdb = self.tools.tool("initdb", &self.dir);
        initdb
            .arg("-D")
            .arg(&data_dir)
            .args([
                "--no-sync",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .args(["-U", "postgres", "--encoding=UTF8", "--locale=C"]);
        run(&mut initdb, INITDB_TIMEOUT).map_err(|e| e.context(format!("initdb of {name}")))?;
        files::write_hba_conf(&data_dir)?;
        self.nodes.push(Node {
            name,
            port,
            data_dir,
        });
        self.start_new_node()?;
        self.create_roles()
    }

    /// The roles and the database, on the primary, before any base backup so replicas inherit them.
    fn create_roles(&self) -> Result<(), Error> {
        let Some(primary) = self.nodes.first() else {
            return Err(Error::new("no primary to create roles on"));
        };
        let mut cmd = self.psql_command(primary, "postgres");
        for statement in files::setup_sql() {
            cmd.arg("-c").arg(statement);
        }
        run(&mut cmd, PSQL_TIMEOUT).map_err(|e| e.context("creating roles"))?;
        let mut cmd = self.psql_command(primary, DATABASE);
        cmd.args(["-c", "GRANT ALL ON SCHEMA public TO PUBLIC"]);
        run(&mut cmd, PSQL_TIMEOUT).map_err(|e| e.context("granting the public schema"))?;
        Ok(())
    }

    /// A base backup of the primary with a standby configuration, its own port, then start.
    fn add_replica(&mut self, name: String, port: u16) -> Result<(), Error> {
        let Some(primary_port) = self.nodes.first().map(|n| n.port) else {
            return Err(Error::new("no primary to replicate from"));
        };
        let data_dir = self.dir.join(&name);
        let mut backup = self.tools.tool("pg_basebackup", &self.dir);
        backup
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port.to_string(),
                "-U",
                "postgres",
            ])
            .arg("-D")
            .arg(&data_dir)
            .args(["-R", "-X", "stream", "--no-sync", "--checkpoint=fast", "-w"]);
        let result = run(&mut backup, BASEBACKUP_TIMEOUT);
        result.map_err(|e| e.context(format!("base backup for {name}")))?;
        files::set_primary_conninfo(&data_dir, primary_port, &name)?;
        self.nodes.push(Node {
            name,
            port,
            data_dir,
        });
        self.start_new_node()
    }

    /// Writes the last node's `pgsteer.conf` and starts it, moving to a fresh port when another
    /// process took the one picked for it.
    fn start_new_node(&mut self) -> Result<(), Error> {
        let mut attempt = 1;
        loop {
            let Some(node) = self.nodes.last() else {
                return Err(Error::new("no node to start"));
            };
            self.write_conf(node)?;
            match self.pg_ctl_start(node) {
                Ok(()) => return Ok(()),
                Err(failure) if failure.address_in_use && attempt < PORT_ATTEMPTS => {
                    attempt += 1;
                    let port = files::free_ports(1)?.pop();
                    if let (Some(node), Some(port)) = (self.nodes.last_mut(), port) {
                        node.port = port;
                    }
                }
                Err(failure) => return Err(failure.error),
            }
        }
    }

    fn write_conf(&self, node: &Node) -> Result<(), Error> {
        let dir_name = self.dir.file_name().unwrap_or_default().to_string_lossy();
        let cluster_name = format!("{dir_name}/{}", node.name);
        let conf = ServerConf {
            port: node.port,
            socket_dir: &self.socket_dir,
            cluster_name: &cluster_name,
            max_connections: self.max_connections,
            max_wal_senders: self.max_wal_senders,
            extra: &self.extra_conf,
        };
        files::write_server_conf(&node.data_dir, &conf)
    }

    // ---- commands ----

    fn pg_ctl_start(&self, node: &Node) -> Result<(), StartFailure> {
        let log = self.log_path(&node.name);
        let from = files::file_len(&log);
        let mut cmd = self.pg_ctl("start", node);
        cmd.arg("-l").arg(&log).args(["-w", "-t", PG_CTL_WAIT]);
        run(&mut cmd, PG_CTL_TIMEOUT).map(drop).map_err(|e| {
            let new_log = files::read_since(&log, from).unwrap_or_default();
            StartFailure {
                address_in_use: new_log.contains("Address already in use"),
                error: Error::new(format!(
                    "{} did not start on port {}: {e}{}",
                    node.name,
                    node.port,
                    files::log_excerpt(&log, from, 20)
                )),
            }
        })
    }

    fn pg_ctl(&self, action: &str, node: &Node) -> Command {
        let mut cmd = self.tools.tool("pg_ctl", &self.dir);
        cmd.arg(action).arg("-D").arg(&node.data_dir);
        cmd
    }

    fn psql_command(&self, node: &Node, database: &str) -> Command {
        let mut cmd = self.tools.psql(&self.dir);
        cmd.args(["-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &node.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGAPPNAME", APPLICATION_NAME);
        cmd
    }

    fn find(&self, name: &str) -> Result<&Node, Error> {
        self.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            Error::new(format!(
                "no node named {name:?} in the cluster at {} (nodes: {})",
                self.dir.display(),
                names.join(", ")
            ))
        })
    }

    // ---- replication state ----

    /// The current primary's name and the `application_name`s of the replicas streaming from it.
    fn replication_state(&self) -> Result<(String, Vec<String>), Error> {
        const QUERY: &str = "SELECT pg_is_in_recovery(), \
             coalesce(string_agg(application_name, ',') FILTER (WHERE state = 'streaming'), '') \
             FROM pg_stat_replication";
        let mut last_error = None;
        for node in &self.nodes {
            if files::running_postmaster(&node.data_dir).is_none() {
                continue;
            }
            match self.psql(&node.name, QUERY) {
                Ok(out) => {
                    if let Some(streaming) = out.strip_prefix("f|") {
                        let names = streaming
                            .split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect();
                        return Ok((node.name.clone(), names));
                    }
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::new("no running primary")))
    }

    /// The error of [`Cluster::wait_streaming`]: what was seen, and the end of the logs of the replicas
    /// that are not streaming.
    fn not_streaming(
        &self,
        replicas: usize,
        timeout: Duration,
        state: Result<(String, Vec<String>), Error>,
    ) -> Error {
        let mut message = format!(
            "{replicas} replicas were not streaming after {}s",
            timeout.as_secs()
        );
        let (primary, streaming) = match state {
            Ok((primary, streaming)) => {
                message.push_str(&format!(
                    ": {primary} shows {} streaming ({})",
                    streaming.len(),
                    streaming.join(", ")
                ));
                (primary, streaming)
            }
            Err(e) => {
                message.push_str(&format!(": {e}"));
                (String::new(), Vec::new())
            }
        };
        for node in &self.nodes {
            if node.name != primary && !streaming.contains(&node.name) {
                message.push_str(&files::log_excerpt(&self.log_path(&node.name), 0, 8));
            }
        }
        Error::new(message)
    }
}

impl Drop for Cluster {
    /// Stops every server, then removes the directory. Never panics; errors are ignored.
    fn drop(&mut self) {
        self.stop();
        remove_dir(&self.dir);
    }
}

/// Immediate shutdown of the postmaster on `data_dir` (SIGQUIT), then SIGKILL if it lingers.
fn stop_now(data_dir: &Path) {
    let Some(pid) = files::running_postmaster(data_dir) else {
        return;
    };
    exec::signal(pid, "QUIT");
    if !files::wait_postmaster_gone(data_dir, Duration::from_secs(30)) {
        exec::signal(pid, "KILL");
        files::wait_postmaster_gone(data_dir, Duration::from_secs(5));
    }
}

/// Removes `dir`, retrying briefly while exiting servers may still be writing into it.
fn remove_dir(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::remove_dir_all(dir).is_err() && dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks `spec` and returns the `max_wal_senders` to use.
fn validate(spec: &Spec) -> Result<usize, Error> {
    let prefix = &spec.name_prefix;
    let valid_prefix = !prefix.is_empty()
        && prefix.len() <= 32
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_prefix {
        return Err(Error::new(format!(
            "name_prefix {prefix:?} must be 1 to 32 ASCII letters, digits, '-' or '_'"
        )));
    }
    // A base backup with `-X stream` takes two WAL senders while the earlier replicas hold one each.
    let max_wal_senders = (spec.replicas + 2).max(10);
    if usize::try_from(spec.max_connections).unwrap_or(usize::MAX) <= max_wal_senders {
        return Err(Error::new(format!(
            "max_connections {} must be greater than max_wal_senders {max_wal_senders}",
            spec.max_connections
        )));
    }
    Ok(max_wal_senders)
}

/// Creates the socket directory and, when root, hands both directories to `postgres` and checks
/// that it can write there (every server of a cluster, and Patroni, put their sockets there).
pub(crate) fn prepare_dirs(tools: &Tools, dir: &Path, socket_dir: &Path) -> Result<(), Error> {
    if socket_dir.as_os_str().len() > MAX_SOCKET_DIR {
        return Err(Error::new(format!(
            "{} is too long for a unix socket path; set PGSTEER_CLUSTER_DIR to a shorter \
             directory",
            socket_dir.display()
        )));
    }
    fs::create_dir(socket_dir)
        .and_then(|()| fs::set_permissions(socket_dir, fs::Permissions::from_mode(0o755)))
        .map_err(|e| Error::new(format!("cannot create {}: {e}", socket_dir.display())))?;
    if tools.as_postgres() {
        let mut chown = Command::new("chown");
        chown.arg("postgres:postgres").arg(dir).arg(socket_dir);
        run(&mut chown, SHORT_TIMEOUT)?;
        let mut writable = tools.server_side("test", dir);
        writable.arg("-w").arg(socket_dir);
        run(&mut writable, SHORT_TIMEOUT).map_err(|_| {
            Error::new(format!(
                "the postgres user cannot write to {}: every parent directory must be \
                 searchable by others (or set PGSTEER_CLUSTER_DIR elsewhere)",
                socket_dir.display()
            ))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_with_a_bad_prefix_or_too_few_connections_is_refused() {
        let bad_prefix = Spec {
            name_prefix: "pg 0".into(),
            ..Spec::default()
        };
        assert!(validate(&bad_prefix).is_err());
        let few = Spec {
            max_connections: 10,
            ..Spec::default()
        };
        assert!(
            validate(&few)
                .unwrap_err()
                .to_string()
                .contains("max_wal_senders")
        );
        let many = Spec {
            replicas: 12,
            ..Spec::default()
        };
        assert_eq!(validate(&many).unwrap(), 14);
        assert_eq!(validate(&Spec::default()).unwrap(), 10);
    }

    #[test]
    fn a_cluster_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Cluster>();
    }

    /// A private base directory the `postgres` user can traverse.
    fn scratch_base(tag: &str) -> PathBuf {
        let base = PathBuf::from(format!(
            "/tmp/pgsteer-cluster-test-{}-{tag}",
            std::process::id()
        ));
        fs::create_dir_all(&base).unwrap();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
        base
    }

    #[test]
    fn a_bad_setting_fails_the_start_with_the_server_log_and_leaves_nothing_behind() {
        let base = scratch_base("bad-setting");
        let spec = Spec {
            replicas: 1,
            extra_conf: vec!["no_such_setting_here = 1".into()],
            ..Spec::default()
        };
        let err = Cluster::start_in(&spec, &base).unwrap_err().to_string();
        assert!(err.contains("pg-0 did not start"), "{err}");
        assert!(
            err.contains("no_such_setting_here"),
            "the log tail is missing: {err}"
        );
        let left: Vec<_> = fs::read_dir(&base)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        fs::remove_dir(&base).unwrap();
    }

    #[test]
    fn a_directory_left_by_a_dead_process_is_reaped_at_the_next_start() {
        let base = scratch_base("reap");
        let stale = base.join("pgsteer-cluster-1-0");
        fs::create_dir_all(stale.join("pg-0")).unwrap();
        // pid u32::MAX - 1 exists in no namespace (pid_max is at most 2^22).
        let marker = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        let ns = fs::read_link("/proc/self/ns/pid").unwrap();
        fs::write(
            stale.join(".pgsteer-cluster"),
            format!(
                "pid={}\nboot={}\npidns={}\n",
                u32::MAX - 1,
                marker.trim(),
                ns.display()
            ),
        )
        .unwrap();
        let live = base.join("pgsteer-cluster-2-0");
        fs::create_dir_all(&live).unwrap();
        fs::write(
            live.join(".pgsteer-cluster"),
            format!(
                "pid={}\nboot={}\npidns={}\n",
                std::process::id(),
                marker.trim(),
                ns.display()
            ),
        )
        .unwrap();
        files::reap_stale(&base);
        assert!(!stale.exists());
        assert!(live.exists(), "a live process's directory was reaped");
        fs::remove_dir_all(&base).unwrap();
    }
}
