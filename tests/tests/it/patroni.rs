//! Patroni discovery against a real Patroni cluster (etcd + three members): routing follows
//! Patroni's leader through switchovers, failovers and zombies; `noloadbalance` members get no
//! reads; a REST outage keeps the last topology. One cluster per test (they change roles).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgsteer::{Config, Running, Shutdown};
use pgsteer_cluster::patroni::PatroniCluster;
use pgsteer_cluster::{APP_PASSWORD, APP_USER};
use pgsteer_discovery::{Role, Topology};

use crate::harness::*;

/// Failovers wait for Patroni's TTL: allow more than the plain tests' deadline.
const ROLE_CHANGE_DEADLINE: Duration = Duration::from_secs(60);

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS patroni_writes \
     (id serial PRIMARY KEY, at timestamptz DEFAULT now())";

/// A Patroni cluster with pgsteer in front.
struct PatroniEnv {
    proxy: Running,
    shutdown: Shutdown,
    cluster: Arc<PatroniCluster>,
}

impl PatroniEnv {
    /// Three members, pgsteer reading all three REST APIs, with `extra` appended to
    /// `[discovery.patroni]`.
    async fn start(extra: &str) -> PatroniEnv {
        let cluster = tokio::task::spawn_blocking(|| PatroniCluster::start(3))
            .await
            .expect("cluster task")
            .unwrap_or_else(|e| panic!("patroni cluster starts: {e}"));
        let shutdown = Shutdown::new();
        let proxy = pgsteer::start(config_for(&cluster, extra), shutdown.clone())
            .await
            .expect("proxy starts");
        let env = PatroniEnv {
            shutdown,
            proxy,
            cluster: Arc::new(cluster),
        };
        let leader = env.leader().await;
        env.wait_topology(
            "patroni's leader is the primary and both replicas route",
            |t| t.primary().is_some_and(|p| p.name == leader) && t.replicas().count() == 2,
        )
        .await;
        env
    }

    fn rw(&self) -> SocketAddr {
        self.proxy.rw.expect("rw listener")
    }

    fn ro(&self) -> SocketAddr {
        self.proxy.ro.expect("ro listener")
    }

    fn port_of(&self, member: &str) -> u16 {
        self.cluster.node(member).pg_port
    }

    /// Runs a blocking harness call off the runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&PatroniCluster) -> T + Send + 'static,
    ) -> T {
        let cluster = Arc::clone(&self.cluster);
        tokio::task::spawn_blocking(move || f(&cluster))
            .await
            .expect("harness task")
    }

    async fn leader(&self) -> String {
        self.blocking(|c| c.wait_leader(None, ROLE_CHANGE_DEADLINE))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn wait_topology(&self, what: &str, pred: impl FnMut(&Topology) -> bool) {
        wait_topology(self.proxy.topology(), ROLE_CHANGE_DEADLINE, what, pred).await;
    }
}

impl Drop for PatroniEnv {
    fn drop(&mut self) {
        self.shutdown.now.cancel();
    }
}

fn config_for(cluster: &PatroniCluster, extra: &str) -> Config {
    let endpoints: Vec<String> = cluster
        .rest_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect();
    let text = format!(
        "[listen]\nrw = \"127.0.0.1:0\"\nro = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
         [discovery]\nsource = \"patroni\"\nprobe_interval = \"100ms\"\nprobe_timeout = \"1s\"\n\
         [discovery.probe]\nuser = \"{}\"\npassword = \"{}\"\n\
         [discovery.patroni]\nendpoints = [{}]\n{extra}\n\
         [routing]\nhold_timeout = \"30s\"\n",
        pgsteer_cluster::PROBE_USER,
        pgsteer_cluster::PROBE_PASSWORD,
        endpoints.join(", ")
    );
    Config::parse(&text, std::iter::empty()).expect("test config parses")
}

/// `pg_is_in_recovery()` and `inet_server_port()` of a session.
async fn where_am_i(c: &tokio_postgres::Client) -> (bool, u16) {
    let row = c
        .query_one("SELECT pg_is_in_recovery(), inet_server_port()", &[])
        .await
        .expect("query");
    (row.get(0), row.get::<_, i32>(1) as u16)
}

/// One write through a new rw session; the port of the member that took it.
async fn write_once(rw: SocketAddr) -> Result<u16, String> {
    let describe = |e: tokio_postgres::Error| match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    let client = try_connect(rw, APP_USER, APP_PASSWORD, None)
        .await
        .map_err(describe)?;
    // Async replication: a table created just before a crash may be lost with the old leader.
    client.batch_execute(CREATE_TABLE).await.map_err(describe)?;
    let row = client
        .query_one(
            "INSERT INTO patroni_writes DEFAULT VALUES RETURNING inet_server_port()",
            &[],
        )
        .await
        .map_err(describe)?;
    Ok(row.get::<_, i32>(0) as u16)
}

async fn create_table(rw: SocketAddr) {
    let c = connect(rw, None).await;
    c.batch_execute(CREATE_TABLE).await.expect("create table");
}

/// Writes through pgsteer until one lands somewhere other than `old_port`; returns the time
/// since `since` and the port.
async fn first_write_elsewhere(env: &PatroniEnv, old_port: u16, since: Instant) -> (Duration, u16) {
    let deadline = since + ROLE_CHANGE_DEADLINE;
    loop {
        let last = match write_once(env.rw()).await {
            Ok(port) if port != old_port => return (since.elapsed(), port),
            Ok(_) => "the write landed on the old leader".to_owned(),
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "no write reached a new leader within {ROLE_CHANGE_DEADLINE:?}; last: {last}; \
             topology: {:?}",
            *env.proxy.topology().borrow()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rw_and_ro_follow_patroni_and_a_noloadbalance_replica_gets_no_reads() {
    let env = PatroniEnv::start("").await;
    let leader = env.leader().await;
    let rw = connect(env.rw(), None).await;
    assert_eq!(where_am_i(&rw).await, (false, env.port_of(&leader)));
    let a = connect(env.ro(), None).await;
    let b = connect(env.ro(), None).await;
    let (ra, pa) = where_am_i(&a).await;
    let (rb, pb) = where_am_i(&b).await;
    assert!(ra && rb, "ro sessions are on replicas");
    assert_ne!(pa, pb, "ro sessions spread over both replicas");

    let quiet = env
        .cluster
        .names()
        .into_iter()
        .find(|n| *n != leader)
        .expect("a replica");
    let tagged = quiet.clone();
    env.blocking(move |c| c.set_tag(&tagged, "noloadbalance", true))
        .await
        .expect("tag set");
    env.wait_topology("the tagged replica is not routable", |t| {
        t.member(&quiet)
            .is_some_and(|m| m.role == Role::Replica && !m.routable)
    })
    .await;
    let t = env.proxy.topology().borrow().clone();
    let note = t.members[&quiet].note.clone().unwrap_or_default();
    assert!(note.contains("noloadbalance"), "{note}");
    drop((a, b));
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let c = connect(env.ro(), None).await;
        let (in_recovery, port) = where_am_i(&c).await;
        assert!(in_recovery);
        assert_ne!(
            port,
            env.port_of(&quiet),
            "a read went to the noloadbalance member"
        );
        sessions.push(c);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_switchover_moves_new_writes_to_the_new_leader() {
    let env = PatroniEnv::start("").await;
    create_table(env.rw()).await;
    let old = env.leader().await;
    let candidate = env
        .cluster
        .names()
        .into_iter()
        .find(|n| *n != old)
        .expect("a replica");
    let started = Instant::now();
    let (cluster, target) = (Arc::clone(&env.cluster), candidate.clone());
    // Spawned now, so the writes below race the switchover.
    let switchover = tokio::task::spawn_blocking(move || cluster.switchover(&target));
    let (took, port) = first_write_elsewhere(&env, env.port_of(&old), started).await;
    let done = switchover.await.expect("switchover task");
    done.unwrap_or_else(|e| panic!("switchover: {e}"));
    println!(
        "patroni switchover {old} -> {candidate}: first write through pgsteer after {} ms",
        took.as_millis()
    );
    assert_eq!(port, env.port_of(&candidate));
    env.wait_topology("the old leader is a replica again", |t| {
        t.member(&old).is_some_and(|m| m.role == Role::Replica)
            && t.primary().is_some_and(|p| p.name == candidate)
    })
    .await;
    let c = connect(env.rw(), None).await;
    assert_eq!(where_am_i(&c).await, (false, env.port_of(&candidate)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplanned_failover_moves_new_writes_to_the_new_leader() {
    let env = PatroniEnv::start("").await;
    create_table(env.rw()).await;
    let old = env.leader().await;
    let started = Instant::now();
    let victim = old.clone();
    env.blocking(move |c| c.kill_member(&victim))
        .await
        .expect("leader killed");
    let (took, port) = first_write_elsewhere(&env, env.port_of(&old), started).await;
    println!(
        "patroni failover after kill -9 of {old}: first write through pgsteer after {} ms",
        took.as_millis()
    );
    let new = env.leader().await;
    assert_ne!(new, old);
    assert_eq!(port, env.port_of(&new));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_leader_takes_no_writes_through_pgsteer_once_patroni_moves_on() {
    let env = PatroniEnv::start("").await;
    create_table(env.rw()).await;
    let old = env.leader().await;
    let (before, before_conn) = connect_watched(env.rw(), None).await;
    assert_eq!(where_am_i(&before).await, (false, env.port_of(&old)));

    let zombie = old.clone();
    env.blocking(move |c| c.kill_patroni_only(&zombie))
        .await
        .expect("patroni killed");
    let not = old.clone();
    let new = env
        .blocking(move |c| c.wait_leader(Some(&not), ROLE_CHANGE_DEADLINE))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    env.wait_topology("the new leader is the primary", |t| {
        t.primary().is_some_and(|p| p.name == new)
    })
    .await;
    // The old leader's Postgres is still up and writable: a real zombie.
    let zombie = old.clone();
    let writable = env
        .blocking(move |c| c.psql(&zombie, "INSERT INTO patroni_writes DEFAULT VALUES"))
        .await;
    assert!(
        writable.is_ok(),
        "the zombie should still be writable: {writable:?}"
    );

    for _ in 0..5 {
        let port = write_once(env.rw()).await.expect("a write through pgsteer");
        assert_eq!(
            port,
            env.port_of(&new),
            "a new rw session reached the zombie"
        );
    }
    let pinned = format!("-c pgsteer.pod={old}");
    let attempt = async {
        let c = try_connect(env.rw(), APP_USER, APP_PASSWORD, Some(&pinned)).await?;
        c.query_one("INSERT INTO patroni_writes DEFAULT VALUES RETURNING 1", &[])
            .await
    };
    let pinned_write = tokio::time::timeout(Duration::from_secs(3), attempt).await;
    assert!(
        !matches!(pinned_write, Ok(Ok(_))),
        "a session pinned to the zombie wrote through pgsteer"
    );
    let old_session = before
        .query_one("INSERT INTO patroni_writes DEFAULT VALUES RETURNING 1", &[])
        .await;
    assert!(
        old_session.is_err(),
        "a session opened before the failover still writes to the zombie {old}; its topology \
         entry: {:?}",
        env.proxy.topology().borrow().member(&old)
    );
    for _ in 0..3 {
        let ro = connect(env.ro(), None).await;
        assert_ne!(
            where_am_i(&ro).await.1,
            env.port_of(&old),
            "a read reached the zombie"
        );
    }
    let ended = tokio::time::timeout(DEADLINE, before_conn).await;
    assert!(ended.is_ok(), "the fenced session's connection did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_keeps_the_last_topology_while_no_patroni_answers_and_recovers() {
    let env = PatroniEnv::start("request_timeout = \"300ms\"").await;
    let leader = env.leader().await;
    let held = connect(env.rw(), None).await;
    assert_eq!(where_am_i(&held).await, (false, env.port_of(&leader)));

    env.blocking(PatroniCluster::pause_all_patroni).await;
    let outage = Instant::now();
    let resumed = scopeguard(Arc::clone(&env.cluster));
    env.wait_topology("the source reports the outage", |t| {
        t.source_error.is_some()
    })
    .await;
    let t = env.proxy.topology().borrow().clone();
    assert!(
        t.source_error
            .as_deref()
            .is_some_and(|e| e.contains("no patroni endpoint answered")),
        "{:?}",
        t.source_error
    );
    assert_eq!(t.primary().map(|p| p.name.as_str()), Some(leader.as_str()));
    // Sessions keep working and new ones are routed on the last topology.
    assert_eq!(where_am_i(&held).await, (false, env.port_of(&leader)));
    let rw = connect(env.rw(), None).await;
    assert_eq!(where_am_i(&rw).await, (false, env.port_of(&leader)));
    let ro = connect(env.ro(), None).await;
    assert!(where_am_i(&ro).await.0);
    // Stay down a little longer (well within Patroni's TTL, so nobody fails over).
    tokio::time::sleep_until((outage + Duration::from_secs(4)).into()).await;
    let stale = env
        .proxy
        .topology()
        .borrow()
        .staleness(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(stale >= Duration::from_secs(2), "staleness {stale:?}");

    drop(resumed);
    env.wait_topology("the source recovers", |t| {
        t.source_error.is_none() && t.primary().is_some_and(|p| p.name == leader)
    })
    .await;
    assert_eq!(where_am_i(&held).await, (false, env.port_of(&leader)));
    let rw = connect(env.rw(), None).await;
    assert_eq!(where_am_i(&rw).await, (false, env.port_of(&leader)));
}

/// Resumes every Patroni when dropped, also when the test fails half-way.
fn scopeguard(cluster: Arc<PatroniCluster>) -> impl Drop {
    struct Resume(Arc<PatroniCluster>);
    impl Drop for Resume {
        fn drop(&mut self) {
            self.0.resume_all_patroni();
        }
    }
    Resume(cluster)
}

/// What one write-loop client saw.
#[derive(Debug, Default)]
struct LoopReport {
    /// `(seq, port, when)` of every acknowledged write.
    acked: Vec<(i32, u16, Instant)>,
    failed_writes: u32,
    read_only_errors: u32,
    refused_connects: u32,
    longest_wait: Duration,
}

/// One client: an autocommit write at a time on one session, reconnecting
/// after an error, until `stop` fires.
async fn write_loop(
    rw: SocketAddr,
    client_id: i32,
    stop: tokio_util::sync::CancellationToken,
) -> LoopReport {
    let mut r = LoopReport::default();
    let mut session: Option<tokio_postgres::Client> = None;
    let mut seq = 0;
    while !stop.is_cancelled() {
        let started = Instant::now();
        let c = match session.take() {
            Some(c) => c,
            None => match try_connect(rw, APP_USER, APP_PASSWORD, None).await {
                Ok(c) => c,
                Err(_) => {
                    r.refused_connects += 1;
                    continue;
                }
            },
        };
        seq += 1;
        let res = c
            .query_one(
                "INSERT INTO write_loop(client, seq) VALUES ($1, $2) RETURNING inet_server_port()",
                &[&client_id, &seq],
            )
            .await;
        match res {
            Ok(row) => {
                r.acked
                    .push((seq, row.get::<_, i32>(0) as u16, Instant::now()));
                r.longest_wait = r.longest_wait.max(started.elapsed());
                session = Some(c);
            }
            Err(e) => {
                r.failed_writes += 1;
                if e.as_db_error().is_some_and(|d| d.code().code() == "25006") {
                    r.read_only_errors += 1;
                }
            }
        }
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_loop_through_a_switchover_fails_at_most_one_write_per_client_and_loses_none() {
    const CLIENTS: i32 = 4;
    let env = PatroniEnv::start("").await;
    let setup = connect(env.rw(), None).await;
    setup
        .batch_execute(
            "CREATE TABLE write_loop(client int, seq int, port int DEFAULT inet_server_port(), \
             PRIMARY KEY (client, seq))",
        )
        .await
        .unwrap();
    let old = env.leader().await;
    let old_port = env.port_of(&old);
    let candidate = env.cluster.names().into_iter().find(|n| *n != old).unwrap();
    let new_port = env.port_of(&candidate);

    let stop = tokio_util::sync::CancellationToken::new();
    let loops: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(write_loop(env.rw(), id, stop.clone())))
        .collect();
    // let every client get going on the old leader first
    eventually("writes flowing", || async {
        let n = count(&setup, "SELECT count(DISTINCT client) FROM write_loop", &[]).await;
        n == i64::from(CLIENTS)
    })
    .await;
    let switched_at = Instant::now();
    let target = candidate.clone();
    env.blocking(move |c| c.switchover(&target))
        .await
        .expect("switchover");
    // keep writing until every client has written a few rows on the new leader
    let check = connect(env.rw(), None).await;
    eventually("every client writes on the new leader", || async {
        let n: i64 = check
            .query_one(
                "SELECT count(*) FROM (SELECT client FROM write_loop WHERE port = $1 \
                 GROUP BY client HAVING count(*) >= 5) c",
                &[&i32::from(new_port)],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        n == i64::from(CLIENTS)
    })
    .await;
    let mut reports = Vec::new();
    stop.cancel();
    for l in loops {
        reports.push(l.await.unwrap());
    }

    let first_new = reports
        .iter()
        .flat_map(|r| r.acked.iter())
        .filter(|(_, port, _)| *port == new_port)
        .map(|(_, _, at)| *at)
        .min()
        .expect("writes reached the new leader");
    let late_old = reports
        .iter()
        .flat_map(|r| r.acked.iter())
        .filter(|(_, port, at)| *port == old_port && *at > first_new)
        .count();
    let failed: Vec<u32> = reports.iter().map(|r| r.failed_writes).collect();
    let read_only: u32 = reports.iter().map(|r| r.read_only_errors).sum();
    let refused: u32 = reports.iter().map(|r| r.refused_connects).sum();
    let longest = reports
        .iter()
        .map(|r| r.longest_wait)
        .max()
        .unwrap_or_default();
    let acked: usize = reports.iter().map(|r| r.acked.len()).sum();
    println!(
        "write loop through switchover {old} -> {candidate}: {CLIENTS} clients, {acked} acknowledged writes, \
         failed per client {failed:?}, 25006 errors {read_only}, refused connects {refused}, \
         longest wait {} ms, switchover to first write on the new primary {} ms",
        longest.as_millis(),
        first_new.duration_since(switched_at).as_millis()
    );
    assert_eq!(read_only, 0, "a session reached the demoted node");
    assert_eq!(refused, 0, "connections were refused instead of held");
    assert!(
        failed.iter().all(|&f| f <= 1),
        "failed writes per client: {failed:?}"
    );
    assert_eq!(
        late_old, 0,
        "the old primary accepted writes after the new one took over"
    );

    // every acknowledged write is on the new primary
    let present: std::collections::HashSet<(i32, i32)> = check
        .query("SELECT client, seq FROM write_loop", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(where_am_i(&check).await, (false, new_port));
    for (id, r) in reports.iter().enumerate() {
        for (seq, _, _) in &r.acked {
            assert!(
                present.contains(&(id as i32, *seq)),
                "acknowledged write {id}/{seq} lost"
            );
        }
    }
}
