//! [`PatroniCluster`]: a one-node etcd and Patroni members managing PostgreSQL, for the Patroni tests.
//!
//! Everything lives in a fresh cluster directory (like [`Cluster`](crate::Cluster)): etcd (v3 API, run
//! as the current user) and one Patroni per member (run as `postgres` through `runuser` when we are
//! root), all on free `127.0.0.1` ports. Patroni bootstraps the first member with the crate's roles and
//! database ([`APP_USER`](crate::APP_USER) with SCRAM, [`PROBE_USER`](crate::PROBE_USER) in `pg_monitor`,
//! [`DATABASE`]) and the plain cluster's `pg_hba.conf`; the others clone it. Timings are short so
//! failovers are quick: `ttl` [`TTL`] s, `loop_wait` 1 s, `retry_timeout` 4 s (a leader whose Patroni
//! dies loses its key after at most `ttl`).
//!
//! Every process runs in a process group of its own; Postgres runs in a session of its own (Patroni
//! starts it with `setsid`), so a member's Patroni can be killed or frozen without its Postgres.
//! Dropping the cluster kills every process and removes the directory; processes left behind by a
//! killed test run are killed by the next [`PatroniCluster::start`].

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::exec::{self, Tools, run};
use crate::{DATABASE, Error, files};

/// Patroni's `ttl` (seconds): how long a leader key outlives its Patroni.
pub const TTL: u64 = 10;
/// Patroni's `loop_wait` (seconds).
pub const LOOP_WAIT: u64 = 1;
/// Patroni's `retry_timeout` (seconds).
pub const RETRY_TIMEOUT: u64 = 4;

/// Bound on one REST request of the harness.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// `POST /switchover` answers once the switchover is done.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(60);
const START_TIMEOUT: Duration = Duration::from_secs(90);
const PSQL_TIMEOUT: Duration = Duration::from_secs(60);
const SHORT_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// One Patroni member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatroniNode {
    /// Patroni member name: `pg-0`, `pg-1`, …
    pub name: String,
    /// Postgres port on 127.0.0.1.
    pub pg_port: u16,
    /// REST API port on 127.0.0.1.
    pub rest_port: u16,
    /// Postgres data directory.
    pub data_dir: PathBuf,
}

impl PatroniNode {
    /// `127.0.0.1:<pg_port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.pg_port)
    }

    /// `http://127.0.0.1:<rest_port>`.
    pub fn rest_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rest_port)
    }
}

/// etcd and Patroni members in a private directory. See the module documentation.
#[derive(Debug)]
pub struct PatroniCluster {
    dir: PathBuf,
    socket_dir: PathBuf,
    tools: Tools,
    etcd: Option<Child>,
    etcd_port: u16,
    nodes: Vec<PatroniNode>,
    /// Each member's Patroni (its `runuser` wrapper when root; the process group leader) and
    /// tags, behind a lock so a shared cluster can be driven from several threads.
    members: Mutex<Vec<Slot>>,
}

/// A member's Patroni process, if running, and its tags.
#[derive(Debug, Default)]
struct Slot {
    patroni: Option<Child>,
    tags: BTreeMap<String, bool>,
}

impl PatroniCluster {
    /// Starts etcd and `members` Patroni members (`pg-0` bootstraps, the rest clone it), and returns
    /// once there is a leader and every other member streams from it.
    pub fn start(members: usize) -> Result<PatroniCluster, Error> {
        if !(1..=9).contains(&members) {
            return Err(Error::new(format!("{members} members: between 1 and 9")));
        }
        let tools = Tools::detect()?;
        let base = files::base_dir();
        reap_orphans(&base);
        files::reap_stale(&base);
        let dir = files::create_cluster_dir(&base)?;
        let mut cluster = PatroniCluster {
            socket_dir: dir.join("sock"),
            dir,
            tools,
            etcd: None,
            etcd_port: 0,
            nodes: Vec::new(),
            members: Mutex::new(Vec::new()),
        };
        crate::cluster::prepare_dirs(&cluster.tools, &cluster.dir, &cluster.socket_dir)?;
        let mut ports = files::free_ports(2 + 2 * members)?.into_iter();
        let mut port = || ports.next().ok_or_else(|| Error::new("too few free ports"));
        let (client, peer) = (port()?, port()?);
        cluster.start_etcd(client, peer)?;
        for i in 0..members {
            let name = format!("pg-{i}");
            cluster.nodes.push(PatroniNode {
                data_dir: cluster.dir.join(&name),
                name,
                pg_port: port()?,
                rest_port: port()?,
            });
            cluster.slots().push(Slot::default());
        }
        cluster.write_bootstrap_script()?;
        cluster.start_patroni("pg-0")?;
        cluster.wait_leader(None, START_TIMEOUT)?;
        for i in 1..members {
            cluster.start_patroni(&format!("pg-{i}"))?;
        }
        cluster.wait_leader_and_streaming(START_TIMEOUT)?;
        Ok(cluster)
    }

    /// Every member, `pg-0` first.
    pub fn nodes(&self) -> &[PatroniNode] {
        &self.nodes
    }

    /// Member names.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// The member called `name`.
    ///
    /// # Panics
    /// When there is no such member: a wrong name is a bug in the test.
    pub fn node(&self, name: &str) -> &PatroniNode {
        self.index(name)
            .map(|i| &self.nodes[i])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every member's REST API base URL.
    pub fn rest_urls(&self) -> Vec<String> {
        self.nodes.iter().map(PatroniNode::rest_url).collect()
    }

    /// etcd's client URL.
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    /// The cluster directory (data directories, configurations, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log of member `name`'s Patroni and Postgres.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// The member whose Patroni says it holds the leader key (`GET /primary` answers 200).
    pub fn leader(&self) -> Option<String> {
        self.live_nodes()
            .into_iter()
            .find(|n| {
                http(n.rest_port, "GET", "/primary", None, HTTP_TIMEOUT).is_ok_and(|r| r.0 == 200)
            })
            .map(|n| n.name.clone())
    }

    /// Waits until some member other than `not` leads, and returns its name.
    pub fn wait_leader(&self, not: Option<&str>, timeout: Duration) -> Result<String, Error> {
        let what = match not {
            Some(old) => format!("a leader other than {old}"),
            None => "a leader".to_owned(),
        };
        let leader = self.wait(&what, timeout, || {
            self.leader().filter(|l| Some(l.as_str()) != not)
        })?;
        Ok(leader)
    }

    /// Waits until there is a leader and every other member whose Patroni runs is `running` and
    /// streams from it (`pg_stat_replication`). Returns the leader.
    pub fn wait_leader_and_streaming(&self, timeout: Duration) -> Result<String, Error> {
        self.wait("a leader with every live member streaming", timeout, || {
            let leader = self.leader()?;
            let streaming = self
                .psql(
                    &leader,
                    "SELECT coalesce(string_agg(application_name, ','), '') \
                     FROM pg_stat_replication WHERE state = 'streaming'",
                )
                .ok()?;
            let streaming: Vec<&str> = streaming.split(',').collect();
            let all = self
                .live_nodes()
                .into_iter()
                .filter(|n| n.name != leader)
                .all(|n| {
                    streaming.contains(&n.name.as_str())
                        && http(n.rest_port, "GET", "/health", None, HTTP_TIMEOUT)
                            .is_ok_and(|r| r.0 == 200)
                });
            all.then_some(leader)
        })
    }

    /// Planned switchover to `candidate` (`POST /switchover` on the leader's REST API); returns
    /// once Patroni reports it done. Asks again while Patroni refuses because the candidate is not
    /// eligible yet (412) or gave up (503) and the old leader still leads.
    pub fn switchover(&self, candidate: &str) -> Result<(), Error> {
        let deadline = Instant::now() + SWITCHOVER_TIMEOUT;
        loop {
            let leader = self
                .leader()
                .ok_or_else(|| Error::new("switchover: no leader"))?;
            if leader == candidate {
                return Ok(());
            }
            let port = self.node(&leader).rest_port;
            let body = format!(r#"{{"leader": "{leader}", "candidate": "{candidate}"}}"#);
            let (status, text) =
                http(port, "POST", "/switchover", Some(&body), SWITCHOVER_TIMEOUT)?;
            let refused = format!(
                "switchover {leader} -> {candidate}: HTTP {status}: {}",
                text.trim()
            );
            match status {
                200 if text.contains("instead of") => return Err(Error::new(refused)),
                200 => return Ok(()),
                412 | 503 if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                _ => return Err(Error::new(refused)),
            }
        }
    }

    /// Kills member `name` the hard way: SIGKILL to its Patroni, then to its postmaster.
    pub fn kill_member(&self, name: &str) -> Result<(), Error> {
        self.kill_patroni_only(name)?;
        let data_dir = &self.node(name).data_dir;
        if let Some(pid) = files::running_postmaster(data_dir) {
            exec::signal(pid, "KILL");
        }
        if files::wait_postmaster_gone(data_dir, SHORT_TIMEOUT) {
            Ok(())
        } else {
            Err(Error::new(format!(
                "the postmaster of {name} survived SIGKILL"
            )))
        }
    }

    /// SIGKILL to member `name`'s Patroni only: its Postgres keeps running (and stays writable if
    /// it was the leader) until someone stops it.
    pub fn kill_patroni_only(&self, name: &str) -> Result<(), Error> {
        let i = self.index(name)?;
        let child = self.slots()[i].patroni.take();
        if let Some(mut child) = child {
            signal_group(child.id(), "KILL");
            let _ = child.wait();
        }
        Ok(())
    }

    /// Starts member `name`'s Patroni (again); a Postgres still running is adopted, a stopped one
    /// started (and rewound or re-cloned as Patroni sees fit).
    pub fn start_patroni(&self, name: &str) -> Result<(), Error> {
        let i = self.index(name)?;
        let mut slots = self.slots();
        if slots[i].patroni.is_some() {
            return Ok(());
        }
        let node = &self.nodes[i];
        let config = self.dir.join(format!("{name}.yml"));
        write_file(&config, &self.patroni_yaml(node, &slots[i].tags))?;
        let log = open_log(&self.log_path(name))?;
        let mut cmd = self.tools.server_side("patroni", &self.dir);
        cmd.arg(&config).stdout(log.0).stderr(log.1);
        strip_env(&mut cmd, "PATRONI_");
        let child = cmd
            .spawn()
            .map_err(|e| Error::new(format!("cannot start patroni for {name}: {e}")))?;
        slots[i].patroni = Some(child);
        Ok(())
    }

    /// Freezes (SIGSTOP) every member's Patroni, REST API included; Postgres keeps running.
    pub fn pause_all_patroni(&self) {
        for child in self.slots().iter().filter_map(|s| s.patroni.as_ref()) {
            signal_group(child.id(), "STOP");
        }
    }

    /// Lets every frozen Patroni run again (SIGCONT).
    pub fn resume_all_patroni(&self) {
        for child in self.slots().iter().filter_map(|s| s.patroni.as_ref()) {
            signal_group(child.id(), "CONT");
        }
    }

    /// Sets tag `tag` (e.g. `noloadbalance`) of member `name` and makes its Patroni reload its
    /// configuration (`POST /reload`). The new tag shows in `/cluster` within a `loop_wait` or two.
    pub fn set_tag(&self, name: &str, tag: &str, value: bool) -> Result<(), Error> {
        let i = self.index(name)?;
        let node = &self.nodes[i];
        let yaml = {
            let mut slots = self.slots();
            slots[i].tags.insert(tag.to_owned(), value);
            self.patroni_yaml(node, &slots[i].tags)
        };
        write_file(&self.dir.join(format!("{name}.yml")), &yaml)?;
        let (status, text) = http(node.rest_port, "POST", "/reload", Some(""), HTTP_TIMEOUT)?;
        if !(200..300).contains(&status) {
            return Err(Error::new(format!(
                "reload of {name}: HTTP {status}: {text}"
            )));
        }
        Ok(())
    }

    /// `GET /cluster` from the first member that answers, as text (JSON).
    pub fn cluster_json(&self) -> Result<String, Error> {
        let mut last = Error::new("no member to ask");
        for node in self.live_nodes() {
            match http(node.rest_port, "GET", "/cluster", None, HTTP_TIMEOUT) {
                Ok((200, body)) => return Ok(body),
                Ok((status, body)) => last = Error::new(format!("HTTP {status}: {body}")),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Runs `sql` on member `name` as `postgres` over the unix socket in [`DATABASE`] and returns the
    /// output (`-Atq`) trimmed.
    pub fn psql(&self, name: &str, sql: &str) -> Result<String, Error> {
        let node = &self.nodes[self.index(name)?];
        let mut cmd = self.tools.psql(&self.dir);
        cmd.args(["-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &node.pg_port.to_string(),
                "-U",
                "postgres",
                "-d",
                DATABASE,
            ])
            .env("PGCONNECT_TIMEOUT", "5")
            .arg("-c")
            .arg(sql);
        let out = run(&mut cmd, PSQL_TIMEOUT).map_err(|e| e.context(format!("psql on {name}")))?;
        Ok(out.trim().to_owned())
    }

    /// Kills every process and waits until they are gone. Idempotent; never fails.
    pub fn stop(&mut self) {
        for slot in self.slots().iter_mut() {
            if let Some(mut child) = slot.patroni.take() {
                signal_group(child.id(), "KILL");
                let _ = child.wait();
            }
        }
        for node in &self.nodes {
            if let Some(pid) = files::running_postmaster(&node.data_dir) {
                exec::signal(pid, "KILL");
                files::wait_postmaster_gone(&node.data_dir, SHORT_TIMEOUT);
            }
        }
        if let Some(mut etcd) = self.etcd.take() {
            signal_group(etcd.id(), "KILL");
            let _ = etcd.wait();
        }
    }

    // ---- start-up steps ----

    fn start_etcd(&mut self, client: u16, peer: u16) -> Result<(), Error> {
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = open_log(&self.dir.join("etcd.log"))?;
        let mut cmd = Command::new("etcd");
        cmd.current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.0)
            .stderr(log.1)
            .process_group(0)
            .args(["--name", "etcd0", "--data-dir"])
            .arg(self.dir.join("etcd"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("etcd0={peer_url}")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.scope()])
            .args(["--log-level", "warn"]);
        strip_env(&mut cmd, "ETCD");
        let child = cmd.spawn().map_err(|e| {
            Error::new(format!(
                "cannot start etcd (apt-get install etcd-server): {e}"
            ))
        })?;
        self.etcd = Some(child);
        self.etcd_port = client;
        self.wait("etcd to be healthy", SHORT_TIMEOUT, || {
            http(client, "GET", "/health", None, HTTP_TIMEOUT)
                .ok()
                .filter(|(status, body)| *status == 200 && body.contains("true"))
        })
        .map_err(|e| {
            let log = self.dir.join("etcd.log");
            Error::new(format!("{e}{}", files::log_excerpt(&log, 0, 15)))
        })?;
        Ok(())
    }

    /// `post_bootstrap.sh`: the plain cluster's roles and database, then the `public` grant.
    fn write_bootstrap_script(&self) -> Result<(), Error> {
        let mut sql: String = files::setup_sql()
            .iter()
            .map(|s| format!("{s};\n"))
            .collect();
        sql.push_str(&format!(
            "\\connect {DATABASE}\nGRANT ALL ON SCHEMA public TO PUBLIC;\n"
        ));
        let sql_path = self.dir.join("bootstrap.sql");
        write_file(&sql_path, &sql)?;
        let psql = self.tools.psql(&self.dir);
        let script = format!(
            "#!/bin/sh\n# written by pgsteer-cluster: Patroni's post_bootstrap; $1 is a conninfo\n\
             exec {} \"$1\" -X -q -v ON_ERROR_STOP=1 -f {}\n",
            shell_quote(&psql.get_program().to_string_lossy()),
            shell_quote(&sql_path.to_string_lossy()),
        );
        let path = self.dir.join("post_bootstrap.sh");
        write_file(&path, &script)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::new(format!("cannot chmod {}: {e}", path.display())))
    }

    fn scope(&self) -> String {
        let dir_name = self.dir.file_name().unwrap_or_default().to_string_lossy();
        dir_name.replace("pgsteer-cluster-", "pgsteer-")
    }

    /// A member's Patroni configuration.
    fn patroni_yaml(&self, node: &PatroniNode, tags: &BTreeMap<String, bool>) -> String {
        let q = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let path = |p: &Path| q(&p.to_string_lossy());
        let hba: String = files::hba_conf()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| format!("    - {}\n", q(l)))
            .collect();
        let tags = files::patroni_tags(tags);
        let bin_dir = self.bin_dir();
        format!(
            "# written by pgsteer-cluster\n\
             scope: {scope}\n\
             namespace: /pgsteer/\n\
             name: {name}\n\
             log:\n  level: INFO\n\
             restapi:\n  listen: 127.0.0.1:{rest}\n  connect_address: 127.0.0.1:{rest}\n\
             etcd3:\n  hosts: 127.0.0.1:{etcd}\n  protocol: http\n\
             bootstrap:\n\
             \x20 dcs:\n\
             \x20   ttl: {TTL}\n    loop_wait: {LOOP_WAIT}\n    retry_timeout: {RETRY_TIMEOUT}\n\
             \x20   maximum_lag_on_failover: 1048576\n\
             \x20   postgresql:\n\
             \x20     use_pg_rewind: true\n\
             \x20     parameters:\n\
             \x20       max_connections: 200\n\
             \x20       max_wal_senders: 10\n\
             \x20       max_replication_slots: 10\n\
             \x20       wal_level: replica\n\
             \x20       hot_standby: 'on'\n\
             \x20       wal_keep_size: 256MB\n\
             \x20       wal_log_hints: 'on'\n\
             \x20 initdb:\n\
             \x20   - encoding: UTF8\n    - locale: C\n    - auth-local: trust\n\
             \x20   - auth-host: scram-sha-256\n    - no-sync\n\
             \x20 post_bootstrap: {post_bootstrap}\n\
             postgresql:\n\
             \x20 listen: 127.0.0.1:{pg}\n  connect_address: 127.0.0.1:{pg}\n\
             \x20 data_dir: {data_dir}\n  bin_dir: {bin_dir}\n  pgpass: {pgpass}\n\
             \x20 use_unix_socket: true\n\
             \x20 basebackup:\n    - checkpoint: fast\n    - no-sync\n\
             \x20 authentication:\n\
             \x20   superuser:\n      username: postgres\n      password: patroni-superuser\n\
             \x20   replication:\n      username: replicator\n      password: patroni-replication\n\
             \x20 parameters:\n\
             \x20   unix_socket_directories: {sock}\n\
             \x20   fsync: 'off'\n    synchronous_commit: 'off'\n\
             \x20   password_encryption: scram-sha-256\n\
             \x20 pg_hba:\n{hba}\
             tags:\n{tags}",
            scope = q(&self.scope()),
            name = q(&node.name),
            rest = node.rest_port,
            etcd = self.etcd_port,
            post_bootstrap = path(&self.dir.join("post_bootstrap.sh")),
            pg = node.pg_port,
            data_dir = path(&node.data_dir),
            bin_dir = path(&bin_dir),
            pgpass = path(&self.dir.join(format!("{}.pgpass", node.name))),
            sock = path(&self.socket_dir),
        )
    }

    /// The directory of the PostgreSQL server binaries.
    fn bin_dir(&self) -> PathBuf {
        let bin = self.tools.tool("postgres", &self.dir);
        let bin_dir = Path::new(bin.get_program())
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        // When root, `tool` runs `runuser … postgres`: the binary is the last argument.
        if self.tools.as_postgres() {
            bin.get_args()
                .last()
                .and_then(|p| Path::new(p).parent())
                .map(Path::to_path_buf)
                .unwrap_or(bin_dir)
        } else {
            bin_dir
        }
    }

    // ---- helpers ----

    fn slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.members
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Members whose Patroni runs (was started and not killed).
    fn live_nodes(&self) -> Vec<&PatroniNode> {
        let slots = self.slots();
        self.nodes
            .iter()
            .zip(slots.iter())
            .filter(|(_, s)| s.patroni.is_some())
            .map(|(n, _)| n)
            .collect()
    }

    fn index(&self, name: &str) -> Result<usize, Error> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| {
                Error::new(format!(
                    "no member named {name:?} (members: {})",
                    self.names().join(", ")
                ))
            })
    }

    /// Polls `check` until it returns something or `timeout` passes; the error names `what` and
    /// quotes the end of every member's log.
    fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> Result<T, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check() {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                let mut message =
                    format!("timed out after {}s waiting for {what}", timeout.as_secs());
                for node in &self.nodes {
                    message.push_str(&files::log_excerpt(&self.log_path(&node.name), 0, 15));
                }
                return Err(Error::new(message));
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for PatroniCluster {
    /// Kills every process, then removes the directory. Never panics.
    fn drop(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::remove_dir_all(&self.dir).is_err()
            && self.dir.exists()
            && Instant::now() < deadline
        {
            std::thread::sleep(POLL);
        }
    }
}

/// One HTTP/1.0 request to `127.0.0.1:port`; returns the status and the body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), Error> {
    let what = format!("{method} http://127.0.0.1:{port}{path}");
    let fail = |e: std::io::Error| Error::new(format!("{what}: {e}"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(fail)?;
    stream.set_read_timeout(Some(timeout)).map_err(fail)?;
    stream.set_write_timeout(Some(timeout)).map_err(fail)?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(fail)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(fail)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::new(format!("{what}: no HTTP status in {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// Sends `signal` to the process group `pgid`.
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, "--"])
        .arg(format!("-{pgid}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Removes every environment variable starting with `prefix` from `cmd`.
fn strip_env(cmd: &mut Command, prefix: &str) {
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(prefix.as_bytes()) {
            cmd.env_remove(key);
        }
    }
}

/// `path` opened for appending, twice (standard output and standard error).
fn open_log(path: &Path) -> Result<(File, File), Error> {
    let file = File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::new(format!("cannot open {}: {e}", path.display())))?;
    let copy = file
        .try_clone()
        .map_err(|e| Error::new(format!("cannot open {}: {e}", path.display())))?;
    Ok((file, copy))
}

fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    fs::write(path, text).map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Kills etcd and Patroni processes (and their `runuser` wrappers) of cluster directories under
/// `base` whose owning process (the pid in `pgsteer-cluster-<pid>-<n>`) is gone: left behind by a
/// killed test run. Their postmasters and directories are then reaped by `files::reap_stale`.
fn reap_orphans(base: &Path) {
    let Ok(procs) = fs::read_dir("/proc") else {
        return;
    };
    let marker = format!(
        "{}/pgsteer-cluster-",
        base.to_string_lossy().trim_end_matches('/')
    );
    let me = std::process::id();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let ours = cmdline.contains("patroni") || cmdline.contains("etcd");
        let owner = cmdline
            .split_once(&marker)
            .and_then(|(_, rest)| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(owner) = owner.filter(|&o| ours && o != me && pid != me)
            && !Path::new(&format!("/proc/{owner}")).exists()
        {
            exec::signal(pid, "KILL");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patroni_configuration_has_the_short_timings_and_the_plain_hba() {
        let cluster = PatroniCluster {
            dir: PathBuf::from("/tmp/pgsteer-cluster-1-2"),
            socket_dir: PathBuf::from("/tmp/pgsteer-cluster-1-2/sock"),
            tools: Tools::detect().unwrap(),
            etcd: None,
            etcd_port: 2379,
            nodes: Vec::new(),
            members: Mutex::new(Vec::new()),
        };
        let node = PatroniNode {
            name: "pg-1".into(),
            pg_port: 5433,
            rest_port: 8009,
            data_dir: PathBuf::from("/tmp/pgsteer-cluster-1-2/pg-1"),
        };
        let tags = BTreeMap::from([("noloadbalance".to_owned(), true)]);
        let yaml = cluster.patroni_yaml(&node, &tags);
        for line in [
            "scope: 'pgsteer-1-2'",
            "    ttl: 10",
            "    loop_wait: 1",
            "    retry_timeout: 4",
            "  hosts: 127.0.0.1:2379",
            "  listen: 127.0.0.1:8009",
            "  listen: 127.0.0.1:5433",
            "    - 'host all all 127.0.0.1/32 scram-sha-256'",
            "  noloadbalance: true",
            "  nofailover: false",
        ] {
            assert!(
                yaml.lines().any(|l| l == line),
                "{line:?} missing in:\n{yaml}"
            );
        }
        assert!(yaml.contains("bin_dir: '/usr/lib/postgresql/"), "{yaml}");
    }

    #[test]
    fn http_reads_the_status_and_body() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"POST /switchover HTTP/1.0\r\n"));
            s.write_all(b"HTTP/1.0 412 Precondition Failed\r\nX: y\r\n\r\nnope")
                .unwrap();
        });
        let (status, body) = http(port, "POST", "/switchover", Some("{}"), HTTP_TIMEOUT).unwrap();
        assert_eq!((status, body.as_str()), (412, "nope"));
        server.join().unwrap();
    }
}
