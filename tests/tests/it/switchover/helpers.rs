//! Config, HTTP to the admin port and Patroni, metrics, and the switchover pgsteer leads.

use super::*;

/// Runs a blocking cluster call off the runtime.
pub(super) async fn blocking<T: Send + 'static>(
    cluster: &Arc<PatroniCluster>,
    f: impl FnOnce(&PatroniCluster) -> T + Send + 'static,
) -> T {
    let cluster = Arc::clone(cluster);
    tokio::task::spawn_blocking(move || f(&cluster))
        .await
        .expect("cluster task")
}

pub(super) fn config_for(cluster: &PatroniCluster, userlist: &std::path::Path) -> Config {
    let endpoints: Vec<String> = cluster
        .rest_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect();
    let text = format!(
        "[listen]\nrw = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
         [[listen.extra]]\nname = \"pooled\"\naddress = \"127.0.0.1:0\"\nroute = \"primary\"\n\
         pool_mode = \"transaction\"\n\
         [pool]\nsize = 8\n\
         [auth]\nauth_file = \"{}\"\n\
         [discovery]\nsource = \"patroni\"\nprobe_interval = \"100ms\"\nprobe_timeout = \"1s\"\n\
         [discovery.probe]\nuser = \"{}\"\npassword = \"{}\"\n\
         [discovery.patroni]\nendpoints = [{}]\n\
         [routing]\nhold_timeout = \"45s\"\n\
         [switchover]\ndrain_timeout = \"5s\"\ntimeout = \"60s\"\n",
        userlist.display(),
        pgsteer_cluster::PROBE_USER,
        pgsteer_cluster::PROBE_PASSWORD,
        endpoints.join(", ")
    );
    Config::parse(&text, std::iter::empty()).expect("test config parses")
}

pub(super) async fn where_am_i(c: &tokio_postgres::Client) -> Result<(bool, u16), String> {
    let row = c
        .query_one("SELECT pg_is_in_recovery(), inet_server_port()", &[])
        .await
        .map_err(|e| Failure::at("statement", &e).message)?;
    Ok((row.get(0), row.get::<_, i32>(1) as u16))
}

/// One HTTP/1.1 request (the admin API and Patroni answer with a Content-Length); (status, body).
pub(super) async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let out = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// `(label value, sample)` of every sample of `family` in `/metrics`.
pub(super) async fn samples(admin: SocketAddr, family: &str) -> Vec<(String, f64)> {
    let text = http_get(admin, "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(family))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = &series[family.len()..];
            if !(rest.is_empty() || rest.starts_with('{')) {
                return None;
            }
            let label = rest
                .split_once('"')
                .and_then(|(_, v)| v.split_once('"'))
                .map(|(v, _)| v.to_owned())
                .unwrap_or_default();
            Some((label, value.parse().ok()?))
        })
        .collect()
}

/// The phase `pgsteer_switchover_phase` shows as current.
pub(super) async fn current_phase(admin: SocketAddr) -> Option<String> {
    samples(admin, "pgsteer_switchover_phase")
        .await
        .into_iter()
        .find(|(_, v)| *v == 1.0)
        .map(|(p, _)| p)
}

/// What was seen of a `POST /switchover` while it ran.
pub(super) struct Watched {
    pub(super) status: u16,
    pub(super) body: String,
    /// Values of `pgsteer_switchover_phase` seen as current.
    pub(super) phases: BTreeSet<String>,
    /// The answer to a second request sent while a busy phase showed.
    pub(super) second: Option<(u16, String)>,
}

/// Sends `POST /switchover[?candidate=…]` and watches the metrics until it is answered; sends
/// a second request once a busy phase shows.
pub(super) async fn watch_switchover(
    b: &mut Bench,
    phase: usize,
    candidate: Option<&str>,
) -> Watched {
    let admin = b.admin();
    let path = match candidate {
        Some(c) => format!("/switchover?candidate={c}"),
        None => "/switchover".to_owned(),
    };
    let started = Instant::now();
    let request = tokio::spawn(async move { http(admin, "POST", &path, "").await });
    let (mut phases, mut max_held, mut second) = (BTreeSet::new(), 0.0_f64, None);
    while !request.is_finished() {
        if let Some(p) = current_phase(admin).await {
            let busy = matches!(p.as_str(), "holding" | "draining" | "switching");
            if busy && second.is_none() {
                second = Some(http(admin, "POST", "/switchover", "").await);
            }
            phases.insert(p);
        }
        let held = samples(admin, "pgsteer_transactions_held").await;
        max_held = held.iter().map(|s| s.1).fold(max_held, f64::max);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = request.await.expect("switchover request");
    let notes = &mut b.phases[phase].notes;
    notes.push(format!(
        "POST /switchover answered {status} after {} ms: {body}",
        started.elapsed().as_millis()
    ));
    notes.push(format!(
        "phases seen {phases:?}, pgsteer_transactions_held up to {max_held}"
    ));
    if let Some(s) = &second {
        notes.push(format!("a second POST while it ran: {} {}", s.0, s.1));
    }
    Watched {
        status,
        body,
        phases,
        second,
    }
}

/// A switchover led by pgsteer: its answer names the old and new primary Patroni sees, nothing
/// was ended, every held transaction was released, a second request got 409. Returns the new
/// primary.
pub(super) async fn led_switchover(
    b: &mut Bench,
    phase: usize,
    candidate: Option<&str>,
) -> Result<String, String> {
    let Watched {
        status,
        body,
        phases,
        second,
    } = watch_switchover(b, phase, candidate).await;
    let json: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| format!("POST {status}: not JSON ({e}): {body}"))?;
    if status != 200 || json["result"] != "ok" {
        return Err(format!("POST /switchover failed: {status} {body}"));
    }
    let new = json["new_primary"]
        .as_str()
        .ok_or_else(|| format!("no new_primary: {body}"))?
        .to_owned();
    let old = b.phases[phase].old.clone();
    let leader = b.leader().await?;
    let field = |k: &str| json[k].as_u64();
    let (held, released) = (field("transactions_held"), field("transactions_released"));
    let checks = [
        (
            json["old_primary"] == old.as_str(),
            format!("old_primary is not {old}"),
        ),
        (
            new == leader && new != old,
            format!("Patroni's leader is {leader}"),
        ),
        (
            candidate.is_none_or(|c| new == c),
            format!("the candidate was {candidate:?}"),
        ),
        (
            field("transactions_ended") == Some(0),
            "transactions were ended".into(),
        ),
        (field("held_ms").is_some(), "no held_ms".into()),
        (
            held == released && held.is_some_and(|h| h > 0),
            "held transactions are not all released (or none held while 4 pooled writers ran)"
                .into(),
        ),
        (
            matches!(second, Some((409, _))),
            format!(
                "a second POST during the switchover got {second:?}, not 409 (phases seen {phases:?})"
            ),
        ),
    ];
    for (ok, what) in checks {
        if !ok {
            b.problem(phase, format!("{what}: {status} {body}"));
        }
    }
    Ok(new)
}

/// Metrics once a led switchover is over: idle, nothing held, `ok` counted `ok_count` times.
pub(super) async fn check_metrics_after(b: &mut Bench, phase: usize, ok_count: f64) {
    let admin = b.admin();
    let current = current_phase(admin).await;
    if current.as_deref() != Some("idle") {
        b.problem(phase, format!("switchover phase after it: {current:?}"));
    }
    let held = samples(admin, "pgsteer_transactions_held").await;
    if held.iter().any(|s| s.1 != 0.0) || held.is_empty() {
        b.problem(
            phase,
            format!("pgsteer_transactions_held after it: {held:?}"),
        );
    }
    let total = samples(admin, "pgsteer_switchovers_total").await;
    let ok = total.iter().find(|s| s.0 == "ok").map(|s| s.1);
    if ok != Some(ok_count) {
        b.problem(phase, format!("pgsteer_switchovers_total: {total:?}"));
    }
}

/// Turns Patroni's synchronous mode on and waits until it names a sync standby: a failover then
/// promotes a member with every acknowledged commit (asynchronous replication could lose the
/// last ones, whoever routes them), and only a sync standby may take over.
pub(super) async fn synchronous_mode(b: &Bench, leader: &str) -> Result<(), String> {
    let rest: SocketAddr = ([127, 0, 0, 1], b.cluster.node(leader).rest_port).into();
    let body = r#"{"synchronous_mode": true}"#;
    let (status, text) = http(rest, "PATCH", "/config", body).await;
    if status != 200 {
        return Err(format!("PATCH /config: {status} {text}"));
    }
    let deadline = Instant::now() + ROLE_CHANGE_DEADLINE;
    loop {
        let json = blocking(&b.cluster, PatroniCluster::cluster_json).await;
        if json.as_deref().is_ok_and(|j| j.contains("sync_standby")) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("no sync standby: {json:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
