//! `pgsteer demo`: a local primary + streaming replicas with pgsteer in front.
//!
//! The only module that uses `pgsteer-cluster` (the test clusters' crate); it is built with the
//! default cargo feature `demo`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use pgsteer_cluster::{Cluster, Spec};

use crate::config::{Config, ConfigError};

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The local cluster did not start (no PostgreSQL binaries, initdb or a server failed).
    #[error("demo cluster: {0}")]
    Cluster(#[source] pgsteer_cluster::Error),
    /// The configuration file could not be written into the cluster's directory.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The generated configuration does not validate.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Addresses the demo listens on.
#[derive(Debug, Clone, Copy)]
pub struct DemoAddrs {
    /// Read-write listener.
    pub rw: SocketAddr,
    /// Read-only listener.
    pub ro: SocketAddr,
    /// Admin HTTP.
    pub admin: SocketAddr,
    /// Read-write, pooled per transaction.
    pub pooled: SocketAddr,
    /// Route `auto`, pooled per transaction: reads on replicas.
    pub auto: SocketAddr,
}

impl Default for DemoAddrs {
    fn default() -> Self {
        DemoAddrs {
            rw: SocketAddr::from(([127, 0, 0, 1], 6432)),
            ro: SocketAddr::from(([127, 0, 0, 1], 6433)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9930)),
            pooled: SocketAddr::from(([127, 0, 0, 1], 6434)),
            auto: SocketAddr::from(([127, 0, 0, 1], 6435)),
        }
    }
}

/// The config text for a proxy in front of `cluster`.
pub fn config_text(cluster: &Cluster, addrs: DemoAddrs) -> String {
    let mut s = format!(
        "# Written by `pgsteer demo`.\n\
         [listen]\nrw = \"{}\"\nro = \"{}\"\nadmin = \"{}\"\n\n\
         # Read-write, pooled per transaction: pgsteer authenticates clients itself.\n\
         [[listen.extra]]\nname = \"pooled\"\naddress = \"{}\"\nroute = \"primary\"\n\
         pool_mode = \"transaction\"\n\n\
         # One connection string: each transaction to a replica when it only reads.\n\
         [[listen.extra]]\nname = \"auto\"\naddress = \"{}\"\nroute = \"auto\"\n\
         pool_mode = \"transaction\"\n\n\
         [auth]\nauth_file = \"{}\"\n\n\
         [discovery]\nsource = \"static\"\nprobe_interval = \"500ms\"\n\n\
         [discovery.probe]\nuser = \"{}\"\npassword = \"{}\"\ndbname = \"postgres\"\n",
        addrs.rw,
        addrs.ro,
        addrs.admin,
        addrs.pooled,
        addrs.auto,
        cluster.dir().join("userlist.txt").display(),
        pgsteer_cluster::PROBE_USER,
        pgsteer_cluster::PROBE_PASSWORD
    );
    for n in cluster.nodes() {
        let _ = write!(
            s,
            "\n[[discovery.members]]\nname = \"{}\"\naddress = \"{}\"\n",
            n.name,
            n.address()
        );
    }
    s
}

/// Starts the cluster and writes `pgsteer.toml` into its directory.
pub fn prepare(replicas: usize, addrs: DemoAddrs) -> Result<(Cluster, Config), DemoError> {
    let spec = Spec {
        replicas,
        ..Spec::default()
    };
    let cluster = Cluster::start(&spec).map_err(DemoError::Cluster)?;
    write_userlist(&cluster)?;
    let text = config_text(&cluster, addrs);
    let path = cluster.dir().join("pgsteer.toml");
    if let Err(source) = std::fs::write(&path, &text) {
        return Err(DemoError::Write { path, source });
    }
    let config = Config::parse(&text, std::iter::empty())?;
    Ok((cluster, config))
}

/// `userlist.txt` with the app user's SCRAM verifier as Postgres stores it: the pooled
/// listener checks clients' passwords against it and logs in with their proof.
fn write_userlist(cluster: &Cluster) -> Result<(), DemoError> {
    let user = pgsteer_cluster::APP_USER;
    let verifier = cluster
        .psql(
            "pg-0",
            &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'"),
        )
        .map_err(DemoError::Cluster)?;
    let path = cluster.dir().join("userlist.txt");
    match std::fs::write(&path, format!("\"{user}\" \"{}\"\n", verifier.trim())) {
        Ok(()) => Ok(()),
        Err(source) => Err(DemoError::Write { path, source }),
    }
}

/// What to print once the demo is up.
pub fn banner(cluster: &Cluster, addrs: DemoAddrs) -> String {
    let (u, p, db) = (
        pgsteer_cluster::APP_USER,
        pgsteer_cluster::APP_PASSWORD,
        pgsteer_cluster::DATABASE,
    );
    let mut s = String::from("pgsteer demo is up.\n\nMembers:\n");
    for n in cluster.nodes() {
        let _ = writeln!(s, "  {:6} {}", n.name, n.address());
    }
    let _ = write!(
        s,
        "\nRead-write (primary):\n  psql \"host={rh} port={rp} user={u} password={p} dbname={db}\" -c 'select pg_is_in_recovery(), inet_server_port()'\n\
         Read-only (a replica):\n  psql \"host={oh} port={op} user={u} password={p} dbname={db}\" -c 'select pg_is_in_recovery(), inet_server_port()'\n\
         Pin a member by name:\n  psql \"host={rh} port={rp} user={u} password={p} dbname={db} options='-c pgsteer.pod=pg-1'\"\n\
         Read-write, pooled per transaction (port {pp}; pgsteer checks the password itself):\n  \
         PGPASSWORD={p} pgbench -h {ph} -p {pp} -U {u} -c 50 -j 2 -T 10 -S {db}   # after pgbench -i through any port\n\
         One connection string, reads on replicas, writes on the primary (port {ap}, route auto, pooled):\n  \
         psql \"host={ah} port={ap} user={u} password={p} dbname={db}\" -c 'select pg_is_in_recovery()' -c 'select pg_is_in_recovery(), txid_current()'\n\
         Topology and pools:\n  curl -s http://{admin}/topology; curl -s http://{admin}/pools\n\
         Config: {}/pgsteer.toml\n\nCtrl-C stops pgsteer and the cluster and removes {}.\n",
        cluster.dir().display(),
        cluster.dir().display(),
        rh = addrs.rw.ip(),
        rp = addrs.rw.port(),
        oh = addrs.ro.ip(),
        op = addrs.ro.port(),
        admin = addrs.admin,
        ph = addrs.pooled.ip(),
        pp = addrs.pooled.port(),
        ah = addrs.auto.ip(),
        ap = addrs.auto.port(),
    );
    s
}
