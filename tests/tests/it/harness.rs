//! Test harness: a real primary + streaming replicas (pgsteer-cluster) and a
//! pgsteer proxy running in this process on ephemeral ports.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use pgsteer::{Config, Running, Shutdown};
use pgsteer_cluster::{APP_PASSWORD, APP_USER, Cluster, DATABASE, Spec};
use pgsteer_discovery::Topology;
use pgsteer_protocol::backend::BackendMessage;
use pgsteer_protocol::frame::split_frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound for anything the tests wait on.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A cluster with pgsteer in front.
pub struct Env {
    pub proxy: Running,
    pub shutdown: Shutdown,
    // Dropped last: the proxy goes first.
    pub cluster: Cluster,
}

/// Config text for a proxy in front of `cluster` on ephemeral ports.
pub fn config_for(cluster: &Cluster) -> Config {
    let mut text = format!(
        "[listen]\nrw = \"127.0.0.1:0\"\nro = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
         [discovery]\nsource = \"static\"\nprobe_interval = \"100ms\"\nprobe_timeout = \"1s\"\n\
         [discovery.probe]\nuser = \"{}\"\npassword = \"{}\"\n\
         [routing]\nhold_timeout = \"10s\"\n",
        pgsteer_cluster::PROBE_USER,
        pgsteer_cluster::PROBE_PASSWORD
    );
    for n in cluster.nodes() {
        text.push_str(&format!(
            "[[discovery.members]]\nname = \"{}\"\naddress = \"{}\"\n",
            n.name,
            n.address()
        ));
    }
    Config::parse(&text, std::iter::empty()).expect("test config parses")
}

/// Starts a cluster with `replicas` replicas.
pub async fn cluster(spec: Spec) -> Cluster {
    tokio::task::spawn_blocking(move || Cluster::start(&spec))
        .await
        .expect("cluster task")
        .expect("cluster starts")
}

impl Env {
    /// A primary and `replicas` replicas, proxy with default test settings.
    pub async fn start(replicas: usize) -> Env {
        Env::start_with(replicas, |_| {}).await
    }

    /// Same, with config tweaks.
    pub async fn start_with(replicas: usize, tweak: impl FnOnce(&mut Config)) -> Env {
        let cluster = cluster(Spec {
            replicas,
            ..Spec::default()
        })
        .await;
        let mut config = config_for(&cluster);
        tweak(&mut config);
        Env::start_on(cluster, config, replicas).await
    }

    /// A proxy with `config` in front of `cluster`, once every member is probed.
    pub async fn start_on(cluster: Cluster, config: Config, replicas: usize) -> Env {
        let shutdown = Shutdown::new();
        let proxy = pgsteer::start(config, shutdown.clone())
            .await
            .expect("proxy starts");
        let env = Env {
            proxy,
            shutdown,
            cluster,
        };
        env.wait_topology("every member probed with a primary", |t| {
            t.primary().is_some()
                && t.members.values().all(|m| m.routable)
                && t.members.len() == replicas + 1
        })
        .await;
        env
    }

    /// The value of an unlabelled or labelled sample in `/metrics` (0 if absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = crate::routing::http_get(self.admin(), "/metrics").await;
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn rw(&self) -> SocketAddr {
        self.proxy.rw.expect("rw listener")
    }

    pub fn ro(&self) -> SocketAddr {
        self.proxy.ro.expect("ro listener")
    }

    pub fn admin(&self) -> SocketAddr {
        self.proxy.admin.expect("admin listener")
    }

    /// Waits until the proxy's topology satisfies `pred`.
    pub async fn wait_topology(&self, what: &str, pred: impl FnMut(&Topology) -> bool) {
        wait_topology(self.proxy.topology(), DEADLINE, what, pred).await;
    }

    /// Port of a member by name.
    pub fn port_of(&self, member: &str) -> u16 {
        self.cluster.node(member).port
    }
}

/// Waits until a proxy's topology satisfies `pred` and returns that value;
/// panics with the last topology when `deadline` passes.
pub async fn wait_topology(
    mut rx: tokio::sync::watch::Receiver<Topology>,
    deadline: Duration,
    what: &str,
    pred: impl FnMut(&Topology) -> bool,
) -> Topology {
    let waited = tokio::time::timeout(deadline, rx.wait_for(pred))
        .await
        .map(|r| r.map(|t| t.clone()));
    match waited {
        Ok(Ok(t)) => t,
        Ok(Err(_)) => panic!("discovery stopped while waiting for: {what}"),
        Err(_) => panic!(
            "timed out waiting for: {what}; topology: {:?}",
            *rx.borrow()
        ),
    }
}

/// libpq-style connection string.
pub fn conn_str(addr: SocketAddr, user: &str, password: &str, options: Option<&str>) -> String {
    let mut s = format!(
        "host={} port={} user={user} password='{password}' dbname={DATABASE} sslmode=disable connect_timeout=20",
        addr.ip(),
        addr.port()
    );
    if let Some(o) = options {
        s.push_str(&format!(" options='{o}'"));
    }
    s
}

/// Connects with tokio-postgres as the SCRAM app user.
pub async fn connect(addr: SocketAddr, options: Option<&str>) -> tokio_postgres::Client {
    try_connect(addr, APP_USER, APP_PASSWORD, options)
        .await
        .unwrap_or_else(|e| panic!("connect through {addr}: {e:?}"))
}

/// Connects with tokio-postgres, returning the error.
pub async fn try_connect(
    addr: SocketAddr,
    user: &str,
    password: &str,
    options: Option<&str>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(
        &conn_str(addr, user, password, options),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Connects and keeps the connection task, whose result tells how the
/// server ended the session.
pub async fn connect_watched(
    addr: SocketAddr,
    options: Option<&str>,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, conn) = tokio_postgres::connect(
        &conn_str(addr, APP_USER, APP_PASSWORD, options),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("connect through {addr}: {e:?}"));
    (client, tokio::spawn(conn))
}

/// `inet_server_port()` of the backend a client landed on.
pub async fn server_port(c: &tokio_postgres::Client) -> u16 {
    let row = c
        .query_one("SELECT inet_server_port()", &[])
        .await
        .expect("query");
    row.get::<_, i32>(0) as u16
}

/// Runs `psql -Atc sql` through `addr`, returning (success, stdout, stderr).
pub async fn psql(addr: SocketAddr, options: Option<&str>, sql: &str) -> (bool, String, String) {
    let out = tokio::process::Command::new("psql")
        .arg(conn_str(addr, APP_USER, APP_PASSWORD, options))
        .args(["-X", "-Atc", sql])
        .output()
        .await
        .expect("psql runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

/// An error or notice received on a raw connection: (severity, SQLSTATE, message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
}

/// Reads from a raw connection until an ErrorResponse arrives or the
/// connection closes; returns the error, if any.
pub async fn read_error(s: &mut TcpStream) -> Option<ServerError> {
    let mut buf = BytesMut::with_capacity(1024);
    let read = async {
        loop {
            while let Some(f) = split_frame(&mut buf, 1 << 20).expect("valid frames") {
                if let Ok(BackendMessage::ErrorResponse(e)) = BackendMessage::parse(f.tag, &f.body)
                {
                    return Some(ServerError {
                        severity: e.severity().unwrap_or_default().into_owned(),
                        code: e.code().unwrap_or_default().into_owned(),
                        message: e.message().unwrap_or_default().into_owned(),
                    });
                }
            }
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("server answered or closed in time")
}

/// Sends raw bytes on a new connection.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    s
}

/// Waits until the connection is closed by the other side.
pub async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 256];
    let wait = async {
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait).await.unwrap_or(false)
}

/// Waits until one server session runs `query` (its text exactly), as `watcher`, a session
/// on that server, sees `pg_stat_activity`.
pub async fn wait_running(watcher: &tokio_postgres::Client, query: &str) {
    eventually(&format!("{query} runs"), || async {
        let n: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
                &[&query],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        n == 1
    })
    .await;
}

/// Sends `token`'s cancel request and checks that the query `running` ends with 57014.
pub async fn cancel_ends<T: std::fmt::Debug>(
    token: tokio_postgres::CancelToken,
    running: tokio::task::JoinHandle<Result<T, tokio_postgres::Error>>,
) {
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel sent");
    let r = tokio::time::timeout(DEADLINE, running)
        .await
        .expect("the query ended")
        .expect("the query's task");
    let e = r.expect_err("the query was cancelled");
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("57014"),
        "{e}"
    );
}

/// Polls `cond` until true or the deadline.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `bigint` (a `count(*)`) in the one row `sql` returns.
pub async fn count(
    c: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    c.query_one(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// The backend process id of the server session `c` is on.
pub async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("query")
        .get(0)
}
