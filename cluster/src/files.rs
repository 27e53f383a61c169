//! The cluster's files and processes on disk: its directory, ports, configuration text, logs, postmaster pids.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fs;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{APP_USER, DATABASE, Error, MD5_USER, TRUST_USER};

/// Name of the file that marks a directory as ours and says which process made it.
const MARKER: &str = ".pgsteer-cluster";

/// Prefix of every cluster directory name.
const DIR_PREFIX: &str = "pgsteer-cluster-";

/// Numbers the clusters of this process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Ports this process has handed out; never handed out twice, so concurrent clusters do not collide.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// `$PGSTEER_CLUSTER_DIR` if set, else `/tmp`.
pub(crate) fn base_dir() -> PathBuf {
    std::env::var_os("PGSTEER_CLUSTER_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
}

/// Creates `<base>/pgsteer-cluster-<pid>-<n>` (mode 0755, so the server user can traverse it) and its
/// marker file.
pub(crate) fn create_cluster_dir(base: &Path) -> Result<PathBuf, Error> {
    fs::create_dir_all(base).map_err(|e| io_error("create", base, &e))?;
    let pid = std::process::id();
    for _ in 0..1000 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("{DIR_PREFIX}{pid}-{n}"));
        match fs::create_dir(&dir) {
            Ok(()) => {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                    .map_err(|e| io_error("set permissions of", &dir, &e))?;
                let marker = dir.join(MARKER);
                fs::write(&marker, marker_text(pid)).map_err(|e| io_error("write", &marker, &e))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error("create", &dir, &e)),
        }
    }
    Err(Error::new(format!(
        "cannot find a free directory name under {}",
        base.display()
    )))
}

/// `n` distinct free ports on 127.0.0.1: bound to port 0 together, then released.
///
/// Another process can take a port before the server binds it; the caller retries with a new port when
/// the server log says the address is in use.
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>, Error> {
    let mut handed = HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        if held.len() > n + 1000 {
            return Err(Error::new("cannot find free ports on 127.0.0.1"));
        }
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| Error::new(format!("cannot bind 127.0.0.1:0: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::new(format!("cannot read a bound address: {e}")))?
            .port();
        if handed.insert(port) {
            ports.push(port);
        }
        held.push(listener);
    }
    Ok(ports)
}

/// Settings of one server; written to `pgsteer.conf`, which `postgresql.conf` includes last.
#[derive(Debug, Clone)]
pub(crate) struct ServerConf<'a> {
    pub(crate) port: u16,
    pub(crate) socket_dir: &'a Path,
    pub(crate) cluster_name: &'a str,
    pub(crate) max_connections: u32,
    pub(crate) max_wal_senders: usize,
    pub(crate) extra: &'a [String],
}

impl ServerConf<'_> {
    /// The text of `pgsteer.conf`.
    pub(crate) fn render(&self) -> String {
        let mut text =
            String::from("# written by pgsteer-cluster; included from postgresql.conf\n");
        let socket_dir = self.socket_dir.to_string_lossy();
        let lines = [
            "listen_addresses = '127.0.0.1'".to_owned(),
            format!("port = {}", self.port),
            format!("unix_socket_directories = {}", quote(&socket_dir)),
            format!("cluster_name = {}", quote(self.cluster_name)),
            format!("max_connections = {}", self.max_connections),
            "fsync = off".to_owned(),
            "synchronous_commit = off".to_owned(),
            "full_page_writes = off".to_owned(),
            "wal_level = replica".to_owned(),
            format!("max_wal_senders = {}", self.max_wal_senders),
            "wal_keep_size = '256MB'".to_owned(),
            "hot_standby = on".to_owned(),
            "logging_collector = off".to_owned(),
            "password_encryption = 'scram-sha-256'".to_owned(),
        ];
        for line in lines.iter().chain(self.extra) {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// Writes `pgsteer.conf` into `data_dir` and makes `postgresql.conf` include it (once).
pub(crate) fn write_server_conf(data_dir: &Path, conf: &ServerConf<'_>) -> Result<(), Error> {
    write_owned(&data_dir.join("pgsteer.conf"), &conf.render(), data_dir)?;
    let main = data_dir.join("postgresql.conf");
    let text = fs::read_to_string(&main).map_err(|e| io_error("read", &main, &e))?;
    let include = "include 'pgsteer.conf'";
    if !text.lines().any(|line| line.trim() == include) {
        write_owned(&main, &format!("{text}\n{include}\n"), data_dir)?;
    }
    Ok(())
}

/// The whole `pg_hba.conf`: trust on the socket and for replication, one trusted and one md5 role,
/// SCRAM for everyone else, all on 127.0.0.1 only.
pub(crate) fn hba_conf() -> String {
    format!(
        "# written by pgsteer-cluster\n\
         local all all trust\n\
         host replication all 127.0.0.1/32 trust\n\
         host all {TRUST_USER} 127.0.0.1/32 trust\n\
         host all {MD5_USER} 127.0.0.1/32 md5\n\
         host all all 127.0.0.1/32 scram-sha-256\n"
    )
}

/// Writes `pg_hba.conf` into `data_dir`.
pub(crate) fn write_hba_conf(data_dir: &Path) -> Result<(), Error> {
    write_owned(&data_dir.join("pg_hba.conf"), &hba_conf(), data_dir)
}

/// Replaces `primary_conninfo` in a replica's `postgresql.auto.conf` (written by `pg_basebackup -R`)
/// with one naming the replica, so the primary's `pg_stat_replication` shows it by name.
pub(crate) fn set_primary_conninfo(
    data_dir: &Path,
    primary_port: u16,
    application_name: &str,
) -> Result<(), Error> {
    let path = data_dir.join("postgresql.auto.conf");
    let text = fs::read_to_string(&path).map_err(|e| io_error("read", &path, &e))?;
    let conninfo = format!(
        "host=127.0.0.1 port={primary_port} user=postgres application_name={application_name} \
         sslmode=disable"
    );
    write_owned(
        &path,
        &replace_setting(&text, "primary_conninfo", &quote(&conninfo)),
        data_dir,
    )
}

/// `text` (a configuration file) without any `name = …` line and with `name = value` appended.
fn replace_setting(text: &str, name: &str, value: &str) -> String {
    let mut out: String = text
        .lines()
        .filter(|line| {
            let line = line.trim_start();
            !(line.starts_with(name)
                && line[name.len()..]
                    .trim_start()
                    .starts_with(['=', ' ', '\t', '\'']))
        })
        .map(|line| format!("{line}\n"))
        .collect();
    out.push_str(&format!("{name} = {value}\n"));
    out
}

/// A configuration-file string literal.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// An SQL string literal.
pub(crate) fn sql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The statements run on the new primary before any base backup, so replicas inherit the roles.
pub(crate) fn setup_sql() -> Vec<String> {
    use crate::{APP_PASSWORD, MD5_PASSWORD, PROBE_PASSWORD, PROBE_USER};
    vec![
        format!(
            "CREATE ROLE {APP_USER} LOGIN PASSWORD {}",
            sql_literal(APP_PASSWORD)
        ),
        "SET password_encryption = 'md5'".to_owned(),
        format!(
            "CREATE ROLE {MD5_USER} LOGIN PASSWORD {}",
            sql_literal(MD5_PASSWORD)
        ),
        "RESET password_encryption".to_owned(),
        format!("CREATE ROLE {TRUST_USER} LOGIN"),
        format!(
            "CREATE ROLE {PROBE_USER} LOGIN PASSWORD {}",
            sql_literal(PROBE_PASSWORD)
        ),
        format!("GRANT pg_monitor TO {PROBE_USER}"),
        format!("CREATE DATABASE {DATABASE} OWNER {APP_USER}"),
    ]
}

/// Writes `path` and, when running as root, gives it to the owner of `owner_of` (the data directory).
fn write_owned(path: &Path, text: &str, owner_of: &Path) -> Result<(), Error> {
    fs::write(path, text).map_err(|e| io_error("write", path, &e))?;
    let owner = fs::metadata(owner_of).map_err(|e| io_error("stat", owner_of, &e))?;
    let file = fs::metadata(path).map_err(|e| io_error("stat", path, &e))?;
    if (file.uid(), file.gid()) != (owner.uid(), owner.gid()) {
        std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))
            .map_err(|e| io_error("chown", path, &e))?;
    }
    Ok(())
}

/// The current length of a file (0 when it does not exist yet).
pub(crate) fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// What was appended to a log after byte `from` (at most the last 64 KiB of it).
pub(crate) fn read_since(path: &Path, from: u64) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(from.max(len.saturating_sub(64 * 1024))))?;
    let mut text = Vec::new();
    file.read_to_end(&mut text)?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// The last `lines` lines a log got after byte `from`, as a message suffix.
pub(crate) fn log_excerpt(path: &Path, from: u64, lines: usize) -> String {
    match read_since(path, from) {
        Ok(text) => {
            let tail = crate::exec::last_lines(&text, lines);
            if tail.is_empty() {
                format!("\n(nothing new in the log {})", path.display())
            } else {
                format!("\n--- end of {} ---\n{tail}", path.display())
            }
        }
        Err(e) => format!("\n(cannot read the log {}: {e})", path.display()),
    }
}

/// The pid of the postmaster running on `data_dir`, if one is alive.
pub(crate) fn running_postmaster(data_dir: &Path) -> Option<u32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    is_postgres_process(pid).then_some(pid)
}

/// Whether `pid` is a live (not zombie) process whose command is `postgres`.
fn is_postgres_process(pid: u32) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let comm = fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
    comm.trim() == "postgres" && !is_zombie(&proc_dir)
}

/// Whether a process exists at all (a zombie counts as gone).
fn is_alive(pid: u32) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    proc_dir.exists() && !is_zombie(&proc_dir)
}

fn is_zombie(proc_dir: &Path) -> bool {
    fs::read_to_string(proc_dir.join("stat"))
        .ok()
        .and_then(|stat| {
            let (_, after) = stat.rsplit_once(')')?;
            after.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(false)
}

/// Waits until no postmaster runs on `data_dir`, up to `timeout`; true when none does.
pub(crate) fn wait_postmaster_gone(data_dir: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if running_postmaster(data_dir).is_none() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Text of the marker file: who made the directory, in which boot and pid namespace.
fn marker_text(pid: u32) -> String {
    format!("pid={pid}\nboot={}\npidns={}\n", boot_id(), pid_namespace())
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_owned())
        .unwrap_or_default()
}

fn pid_namespace() -> String {
    fs::read_link("/proc/self/ns/pid")
        .map(|ns| ns.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether a marker says its process is certainly gone: an earlier boot, or a dead pid in our namespace.
fn marker_is_stale(marker: &str, boot: &str, pidns: &str) -> bool {
    let field = |name: &str| {
        marker
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("")
    };
    let (Ok(pid), their_boot, their_ns) =
        (field("pid").parse::<u32>(), field("boot"), field("pidns"))
    else {
        return false;
    };
    if their_boot.is_empty() || boot.is_empty() {
        return false;
    }
    if their_boot != boot {
        return true;
    }
    !their_ns.is_empty() && their_ns == pidns && !is_alive(pid)
}

/// Stops the servers of, and removes, cluster directories under `base` left behind by processes that
/// died without dropping their `Cluster` (killed test runs). Best effort, and only for directories
/// whose marker proves their process is gone.
pub(crate) fn reap_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    let (boot, pidns) = (boot_id(), pid_namespace());
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_ours = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(DIR_PREFIX));
        let stale = is_ours
            && fs::read_to_string(dir.join(MARKER))
                .is_ok_and(|marker| marker_is_stale(&marker, &boot, &pidns));
        if stale {
            stop_postmasters_in(&dir);
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

/// Immediate shutdown (SIGQUIT, then SIGKILL) of every postmaster with a data directory in `dir`.
fn stop_postmasters_in(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for data_dir in entries.flatten().map(|e| e.path()) {
        if let Some(pid) = running_postmaster(&data_dir) {
            crate::exec::signal(pid, "QUIT");
            if !wait_postmaster_gone(&data_dir, Duration::from_secs(10)) {
                crate::exec::signal(pid, "KILL");
                wait_postmaster_gone(&data_dir, Duration::from_secs(5));
            }
        }
    }
}

fn io_error(verb: &str, path: &Path, e: &std::io::Error) -> Error {
    Error::new(format!("cannot {verb} {}: {e}", path.display()))
}

/// The `tags:` block: Patroni's four tags, `false` unless `tags` sets them.
pub(crate) fn patroni_tags(tags: &BTreeMap<String, bool>) -> String {
    let mut all: BTreeMap<&str, bool> = ["nofailover", "noloadbalance", "clonefrom", "nosync"]
        .into_iter()
        .map(|t| (t, false))
        .collect();
    all.extend(tags.iter().map(|(k, v)| (k.as_str(), *v)));
    all.iter().map(|(k, v)| format!("  {k}: {v}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hba_rules_come_in_the_documented_order() {
        let rules: Vec<String> = hba_conf()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            rules,
            [
                "local all all trust",
                "host replication all 127.0.0.1/32 trust",
                "host all app_trust 127.0.0.1/32 trust",
                "host all app_md5 127.0.0.1/32 md5",
                "host all all 127.0.0.1/32 scram-sha-256",
            ]
        );
    }

    #[test]
    fn server_conf_quotes_paths_and_ends_with_the_extra_lines() {
        let extra = vec!["log_connections = on".to_owned()];
        let conf = ServerConf {
            port: 5999,
            socket_dir: Path::new("/tmp/it's here/sock"),
            cluster_name: "c/pg-0",
            max_connections: 77,
            max_wal_senders: 10,
            extra: &extra,
        }
        .render();
        assert!(conf.contains("port = 5999\n"));
        assert!(conf.contains("unix_socket_directories = '/tmp/it''s here/sock'\n"));
        assert!(conf.contains("max_connections = 77\n"));
        assert!(conf.ends_with("log_connections = on\n"));
    }

    #[test]
    fn replacing_a_setting_drops_every_earlier_line_for_it() {
        let text = "# c\nprimary_conninfo = 'a'\nprimary_slot_name = 'x'\nprimary_conninfo='b'\n";
        assert_eq!(
            replace_setting(text, "primary_conninfo", "'c'"),
            "# c\nprimary_slot_name = 'x'\nprimary_conninfo = 'c'\n"
        );
    }

    #[test]
    fn free_ports_are_distinct_and_never_handed_out_twice() {
        let a = free_ports(5).unwrap();
        let b = free_ports(5).unwrap();
        let all: BTreeSet<u16> = a.iter().chain(&b).copied().collect();
        assert_eq!(all.len(), 10);
    }

    #[test]
    fn a_marker_is_stale_only_when_its_process_is_certainly_gone() {
        let me = std::process::id();
        let (boot, ns) = ("b1", "pid:[1]");
        let live = format!("pid={me}\nboot=b1\npidns=pid:[1]\n");
        assert!(!marker_is_stale(&live, boot, ns));
        assert!(marker_is_stale(&live, "b2", ns), "an earlier boot");
        assert!(!marker_is_stale(&live, boot, "pid:[2]"));
        let dead = format!("pid={}\nboot=b1\npidns=pid:[1]\n", u32::MAX - 1);
        assert!(marker_is_stale(&dead, boot, ns));
        assert!(
            !marker_is_stale(&dead, boot, "pid:[2]"),
            "another namespace"
        );
        assert!(!marker_is_stale("garbage", boot, ns));
    }
}
