//! Switchovers no application notices (issue 17), on one real Patroni cluster shared by the
//! phases: pgsteer in front with the passthrough `rw` listener (the baseline) and a pooled
//! transaction-mode listener. Writers run on both, without pause, through a `POST /switchover`
//! led by pgsteer (with and without a candidate), an unannounced Patroni switchover, a kill -9
//! failover, a rolling restart and a zombie leader. Pooled clients keep their connections and
//! fail at most their transaction in flight, every acknowledged write survives, and the figures
//! of both kinds are printed as one table (the README's).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgsteer::{Config, Running, Shutdown};
use pgsteer_cluster::patroni::PatroniCluster;
use pgsteer_cluster::{APP_PASSWORD, APP_USER};
use pgsteer_discovery::Topology;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::harness::{connect, try_connect};
use crate::pooled::TempDir;
use crate::routing::http_get;

/// Failovers wait for Patroni's TTL; a switchover led by pgsteer may hold for its `timeout`.
pub(super) const ROLE_CHANGE_DEADLINE: Duration = Duration::from_secs(90);
/// Pause between two transactions of one writer.
pub(super) const PACE: Duration = Duration::from_millis(20);
/// Acknowledged writes on the new primary each writer needs before a phase ends.
pub(super) const SETTLED: usize = 5;
/// A transaction that takes longer is counted as stuck (and its client abandoned).
pub(super) const STUCK: Duration = Duration::from_secs(120);

pub(super) const CREATE_TABLE: &str = "CREATE TABLE switchover_writes (client int, seq int, \
     port int DEFAULT inet_server_port(), at timestamptz DEFAULT clock_timestamp(), \
     PRIMARY KEY (client, seq))";
pub(super) const INSERT: &str =
    "INSERT INTO switchover_writes (client, seq) VALUES ($1, $2) RETURNING inet_server_port()";

mod bench;
mod helpers;
mod writers;

use bench::*;
use helpers::*;
use writers::*;

/// The phases, in order, on the shared cluster.
async fn phases(b: &mut Bench) -> Result<(), String> {
    let leader = b.leader().await?;
    let phase = b.begin("warm-up", &leader);
    b.settle(phase, &leader).await?;
    b.connect_idle().await;
    let candidate = b.replica_of(&b.healthy().await?);
    led(b, "POST /switchover?candidate=…", Some(&candidate), 1.0).await?;
    led(b, "POST /switchover", None, 2.0).await?;
    patroni_switchover(b).await?;
    let killed = failover(b).await?;
    rolling_restart(b, &killed).await?;
    zombie(b).await
}

/// A switchover led by pgsteer: no failed transaction, no disconnect.
async fn led(b: &mut Bench, name: &str, candidate: Option<&str>, nth: f64) -> Result<(), String> {
    let old = b.healthy().await?;
    let phase = b.begin(name, &old);
    let new = led_switchover(b, phase, candidate).await?;
    b.settle(phase, &new).await?;
    b.check(phase, 0);
    check_metrics_after(b, phase, nth).await;
    Ok(())
}

/// Patroni switches over without telling pgsteer: at most the transaction in flight fails.
async fn patroni_switchover(b: &mut Bench) -> Result<(), String> {
    let old = b.healthy().await?;
    let candidate = b.replica_of(&old);
    let phase = b.begin("patronictl switchover", &old);
    let target = candidate.clone();
    blocking(&b.cluster, move |c| c.switchover(&target))
        .await
        .map_err(|e| format!("patroni switchover: {e}"))?;
    b.settle(phase, &candidate).await?;
    b.check(phase, 1);
    Ok(())
}

/// kill -9 of the leader's Patroni and Postgres, in synchronous mode (so that no acknowledged
/// commit can be lost by the cluster itself). Returns the killed member.
async fn failover(b: &mut Bench) -> Result<String, String> {
    let old = b.healthy().await?;
    synchronous_mode(b, &old).await?;
    let phase = b.begin("kill -9 failover", &old);
    b.kill(&old).await?;
    let new = b.next_leader(&old).await?;
    b.settle(phase, &new).await?;
    b.check(phase, 1);
    Ok(old)
}

/// A StatefulSet-style rolling restart: the replicas one by one, a switchover led by pgsteer,
/// the old primary. `killed` comes back first.
async fn rolling_restart(b: &mut Bench, killed: &str) -> Result<(), String> {
    b.restart(killed).await?;
    let old = b.healthy().await?;
    let phase = b.begin("rolling restart", &old);
    for replica in b.cluster.names().into_iter().filter(|n| *n != old) {
        b.kill(&replica).await?;
        b.restart(&replica).await?;
    }
    // A switchover goes to a sync standby only: wait until Patroni named one again.
    synchronous_mode(b, &old).await?;
    let new = led_switchover(b, phase, None).await?;
    b.kill(&old).await?;
    b.restart(&old).await?;
    b.settle(phase, &new).await?;
    b.check(phase, 0);
    check_metrics_after(b, phase, 3.0).await;
    Ok(())
}

/// Patroni killed on the leader, its Postgres alive and writable: no write reaches it once
/// another member leads. In synchronous mode, as the phases before: with asynchronous
/// replication the zombie acknowledges writes after its leader key expired (its replicas stop
/// streaming then) and before pgsteer can know, and those are lost whoever routes them. Last:
/// the zombie stays.
async fn zombie(b: &mut Bench) -> Result<(), String> {
    let old = b.healthy().await?;
    synchronous_mode(b, &old).await?;
    let phase = b.begin("zombie leader", &old);
    let zombie = old.clone();
    blocking(&b.cluster, move |c| c.kill_patroni_only(&zombie))
        .await
        .map_err(|e| format!("kill patroni: {e}"))?;
    let new = b.next_leader(&old).await?;
    // Taken once Patroni's /primary answers on the new leader: at or after its publication.
    let (published, published_at) = (Instant::now(), std::time::SystemTime::now());
    b.wait_primary(&new).await?;
    let noticed = published.elapsed().as_millis();
    let note = format!("pgsteer routed to {new} {noticed} ms after Patroni's /primary said so");
    b.phases[phase].notes.push(note);
    b.settle(phase, &new).await?;
    b.check(phase, 1);
    let epoch = published_at
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    // Every row on the zombie, marked 1 when written after the new leader was published.
    let zombie = old.clone();
    let on_zombie = blocking(&b.cluster, move |c| {
        let sql = format!(
            "SELECT coalesce(string_agg(format('%s:%s:%s', client, seq, \
             (at > to_timestamp({epoch}))::int), ' '), '') FROM switchover_writes"
        );
        c.psql(&zombie, &sql)
    })
    .await
    .map_err(|e| format!("rows on the zombie: {e}"))?;
    // Those the new leader lacks: the zombie took them on its own. Written before the new leader
    // was published (as Patroni's leader key expired, streamed to no one and never
    // acknowledged in synchronous mode), or after: those reached a demoted primary.
    let present = rows(b).await?;
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for row in on_zombie.split(' ').filter(|r| !r.is_empty()) {
        let mut parts = row.split(':').map(|p| p.parse::<i32>().unwrap_or(-1));
        let (client, seq, late) = (parts.next(), parts.next(), parts.next());
        let key = (client.unwrap_or(-1), seq.unwrap_or(-1));
        if !present.contains(&key) {
            if late == Some(1) {
                &mut after
            } else {
                &mut before
            }
            .push(key);
        }
    }
    let note = format!("rows only on the zombie, written before {new} led: {before:?}");
    b.phases[phase].notes.push(note);
    if !after.is_empty() {
        let p = format!("writes reached the zombie {old} after {new} led (client, seq): {after:?}");
        b.problem(phase, p);
    }
    Ok(())
}

/// `(client, seq)` of every row on the leader, read through pgsteer.
async fn rows(b: &Bench) -> Result<HashSet<(i32, i32)>, String> {
    let leader = b.leader().await?;
    let c = connect(b.rw(), None).await;
    let at = where_am_i(&c).await?;
    if at != (false, b.port_of(&leader)) {
        return Err(format!("reading on {at:?}, not on the leader {leader}"));
    }
    let rows = c
        .query("SELECT client, seq FROM switchover_writes", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Every acknowledged write of every writer is on the final primary.
async fn check_durable(b: &mut Bench) -> Result<(), String> {
    let leader = b.leader().await?;
    let present = rows(b).await?;
    for (phase, summary) in b.phases.iter().enumerate() {
        for w in &b.writers {
            let lost: Vec<i32> = w
                .tally(phase)
                .acked
                .iter()
                .map(|a| a.0)
                .filter(|seq| !present.contains(&(w.id, *seq)))
                .collect();
            if !lost.is_empty() {
                b.problems.push(format!(
                    "{}: {}: acknowledged writes missing on {leader}: seq {lost:?}",
                    summary.name,
                    w.name()
                ));
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_clients_keep_their_connections_and_writes_through_switchovers_failovers_and_restarts()
 {
    let mut b = Bench::start().await;
    let leader = b.leader().await.unwrap_or_else(|e| panic!("{e}"));
    b.wait_primary(&leader)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    connect(b.rw(), None)
        .await
        .batch_execute(CREATE_TABLE)
        .await
        .expect("create table");
    b.spawn_writers();

    let outcome = phases(&mut b).await;
    b.run.stop.cancel();
    for task in std::mem::take(&mut b.tasks) {
        let abort = task.abort_handle();
        if tokio::time::timeout(ROLE_CHANGE_DEADLINE, task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    let durable = match &outcome {
        Ok(()) => check_durable(&mut b).await,
        Err(_) => Ok(()),
    };
    println!(
        "switchover figures (pgsteer {}):\n{}",
        env!("CARGO_PKG_VERSION"),
        b.table()
    );
    if let Err(e) = outcome.and(durable) {
        panic!("{e}\nalso: {:#?}\nlogs: {}", b.problems, b.keep_logs());
    }
    if !b.problems.is_empty() {
        panic!("{:#?}\nlogs: {}", b.problems, b.keep_logs());
    }
}
