//! The shared Patroni cluster with pgsteer in front, its writers and idle clients, and the per-phase checks.

use super::*;

/// A client that only waits; checked after each phase.
pub(super) struct IdleClient {
    pub(super) kind: Kind,
    pub(super) addr: SocketAddr,
    pub(super) client: tokio_postgres::Client,
}

/// What happened in one phase, besides the writers' tallies.
#[derive(Debug, Default)]
pub(super) struct PhaseSummary {
    pub(super) name: String,
    pub(super) old: String,
    pub(super) new: String,
    /// Idle clients of each kind that kept their connection, of how many.
    pub(super) idle_kept: BTreeMap<Kind, (usize, usize)>,
    pub(super) notes: Vec<String>,
}

/// The shared cluster, the proxy, the writers and what they saw.
pub(super) struct Bench {
    pub(super) proxy: Running,
    pub(super) shutdown: Shutdown,
    pub(super) cluster: Arc<PatroniCluster>,
    pub(super) writers: Vec<Arc<Writer>>,
    pub(super) tasks: Vec<tokio::task::JoinHandle<()>>,
    pub(super) run: Arc<Run>,
    pub(super) idle: Vec<IdleClient>,
    pub(super) phases: Vec<PhaseSummary>,
    /// Expectations that did not hold (the test fails at the end, after the table).
    pub(super) problems: Vec<String>,
    pub(super) _dir: TempDir,
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.run.stop.cancel();
        self.shutdown.now.cancel();
    }
}

impl Bench {
    pub(super) async fn start() -> Bench {
        let cluster = tokio::task::spawn_blocking(|| PatroniCluster::start(3))
            .await
            .expect("cluster task")
            .unwrap_or_else(|e| panic!("patroni cluster starts: {e}"));
        let cluster = Arc::new(cluster);
        let leader = blocking(&cluster, |c| c.wait_leader(None, ROLE_CHANGE_DEADLINE))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // The cluster runs with synchronous_commit off: the app's commits wait for the WAL flush
        // (and, once Patroni's synchronous mode is on, for the sync standby), so that
        // "acknowledged" means "survives a kill -9".
        let verifier = blocking(&cluster, move |c| {
            c.psql(
                &leader,
                &format!("ALTER ROLE {APP_USER} SET synchronous_commit = 'on'"),
            )?;
            c.psql(
                &leader,
                &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{APP_USER}'"),
            )
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let dir = TempDir(std::env::temp_dir().join(format!(
            "pgsteer-switchover-{}-{}",
            std::process::id(),
            cluster.nodes()[0].pg_port
        )));
        std::fs::create_dir_all(&dir.0).expect("temp dir");
        let userlist = dir.0.join("userlist.txt");
        std::fs::write(&userlist, format!("\"{APP_USER}\" \"{verifier}\"\n")).expect("userlist");
        let shutdown = Shutdown::new();
        let proxy = pgsteer::start(config_for(&cluster, &userlist), shutdown.clone())
            .await
            .expect("proxy starts");
        Bench {
            proxy,
            shutdown,
            cluster,
            writers: Vec::new(),
            tasks: Vec::new(),
            run: Arc::new(Run {
                phase: AtomicUsize::new(0),
                stop: CancellationToken::new(),
            }),
            idle: Vec::new(),
            phases: Vec::new(),
            problems: Vec::new(),
            _dir: dir,
        }
    }

    pub(super) fn rw(&self) -> SocketAddr {
        self.proxy.rw.expect("rw listener")
    }

    pub(super) fn pooled(&self) -> SocketAddr {
        self.proxy.extra("pooled").expect("pooled listener")
    }

    pub(super) fn admin(&self) -> SocketAddr {
        self.proxy.admin.expect("admin listener")
    }

    pub(super) fn addr(&self, kind: Kind) -> SocketAddr {
        match kind {
            Kind::Pooled => self.pooled(),
            Kind::Passthrough => self.rw(),
        }
    }

    pub(super) fn port_of(&self, member: &str) -> u16 {
        self.cluster.node(member).pg_port
    }

    pub(super) async fn leader(&self) -> Result<String, String> {
        blocking(&self.cluster, |c| c.wait_leader(None, ROLE_CHANGE_DEADLINE))
            .await
            .map_err(|e| e.to_string())
    }

    /// Waits until there is a leader and every live member streams from it; returns the leader.
    pub(super) async fn healthy(&self) -> Result<String, String> {
        blocking(&self.cluster, |c| {
            c.wait_leader_and_streaming(ROLE_CHANGE_DEADLINE)
        })
        .await
        .map_err(|e| format!("cluster not healthy: {e}"))
    }

    /// Copies the members' logs out of the cluster directory (removed on drop); returns where.
    pub(super) fn keep_logs(&self) -> String {
        let to =
            std::env::temp_dir().join(format!("pgsteer-switchover-logs-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&to);
        for name in self.cluster.names() {
            let _ = std::fs::copy(self.cluster.log_path(&name), to.join(format!("{name}.log")));
        }
        to.display().to_string()
    }

    /// SIGKILL to member `name`'s Patroni and Postgres.
    pub(super) async fn kill(&self, name: &str) -> Result<(), String> {
        let victim = name.to_owned();
        blocking(&self.cluster, move |c| c.kill_member(&victim))
            .await
            .map_err(|e| format!("kill {name}: {e}"))
    }

    /// Starts member `name`'s Patroni again and waits until it streams from the leader.
    pub(super) async fn restart(&self, name: &str) -> Result<(), String> {
        let member = name.to_owned();
        blocking(&self.cluster, move |c| c.start_patroni(&member))
            .await
            .map_err(|e| format!("start {name}: {e}"))?;
        self.healthy().await.map(|_| ())
    }

    /// Waits until a member other than `old` leads.
    pub(super) async fn next_leader(&self, old: &str) -> Result<String, String> {
        let not = old.to_owned();
        blocking(&self.cluster, move |c| {
            c.wait_leader(Some(&not), ROLE_CHANGE_DEADLINE)
        })
        .await
        .map_err(|e| e.to_string())
    }

    /// A member other than the leader.
    pub(super) fn replica_of(&self, leader: &str) -> String {
        self.cluster
            .names()
            .into_iter()
            .find(|n| n != leader)
            .expect("a replica")
    }

    /// Waits until pgsteer routes writes to `member`.
    pub(super) async fn wait_primary(&self, member: &str) -> Result<(), String> {
        let mut rx = self.proxy.topology();
        let pred = |t: &Topology| t.primary().is_some_and(|p| p.name == member);
        let waited = tokio::time::timeout(ROLE_CHANGE_DEADLINE, rx.wait_for(pred))
            .await
            .map(|r| r.is_ok());
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => Err("discovery stopped".into()),
            Err(_) => Err(format!(
                "pgsteer's primary is not {member} after {ROLE_CHANGE_DEADLINE:?}: {:?}",
                *rx.borrow()
            )),
        }
    }

    pub(super) fn spawn_writers(&mut self) {
        let kinds = [
            (Kind::Pooled, Style::Autocommit),
            (Kind::Pooled, Style::Autocommit),
            (Kind::Pooled, Style::Block),
            (Kind::Pooled, Style::Block),
            (Kind::Passthrough, Style::Autocommit),
            (Kind::Passthrough, Style::Block),
        ];
        for (id, (kind, style)) in kinds.into_iter().enumerate() {
            let w = Arc::new(Writer {
                id: id as i32,
                kind,
                style,
                tallies: Mutex::new(Vec::new()),
            });
            self.tasks.push(tokio::spawn(write_loop(
                self.addr(kind),
                Arc::clone(&w),
                Arc::clone(&self.run),
            )));
            self.writers.push(w);
        }
    }

    pub(super) async fn connect_idle(&mut self) {
        for kind in [
            Kind::Pooled,
            Kind::Pooled,
            Kind::Passthrough,
            Kind::Passthrough,
        ] {
            let addr = self.addr(kind);
            let client = connect(addr, None).await;
            self.idle.push(IdleClient { kind, addr, client });
        }
    }

    /// Starts phase `name`: from now on the writers record into it.
    pub(super) fn begin(&mut self, name: &str, old: &str) -> usize {
        self.phases.push(PhaseSummary {
            name: name.to_owned(),
            old: old.to_owned(),
            ..PhaseSummary::default()
        });
        let phase = self.phases.len() - 1;
        self.run.phase.store(phase, Ordering::SeqCst);
        phase
    }

    /// Waits until pgsteer routes to `new` and every writer has acknowledged a few writes on
    /// it in this phase, then checks the idle clients.
    pub(super) async fn settle(&mut self, phase: usize, new: &str) -> Result<(), String> {
        self.phases[phase].new = new.to_owned();
        self.wait_primary(new).await?;
        let port = self.port_of(new);
        let deadline = Instant::now() + ROLE_CHANGE_DEADLINE;
        loop {
            let behind: Vec<String> = self
                .writers
                .iter()
                .filter(|w| {
                    let t = w.tally(phase);
                    t.acked.iter().filter(|a| a.1 == port).count() < SETTLED
                })
                .map(|w| format!("{}: {}", w.name(), w.tally(phase).summary()))
                .collect();
            if behind.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{}: writers without {SETTLED} acknowledged writes on {new} after \
                     {ROLE_CHANGE_DEADLINE:?}:\n  {}",
                    self.phases[phase].name,
                    behind.join("\n  ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.check_idle(phase, port).await;
        Ok(())
    }

    /// Each idle client runs one query: pooled ones must still be connected, on `port`.
    pub(super) async fn check_idle(&mut self, phase: usize, port: u16) {
        let mut kept: BTreeMap<Kind, (usize, usize)> = BTreeMap::new();
        let mut problems = Vec::new();
        for idle in &mut self.idle {
            let entry = kept.entry(idle.kind).or_default();
            entry.1 += 1;
            let asked = tokio::time::timeout(ROLE_CHANGE_DEADLINE, where_am_i(&idle.client))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {ROLE_CHANGE_DEADLINE:?}")));
            match asked {
                Ok(at) if at == (false, port) => entry.0 += 1,
                Ok(at) => problems.push(format!(
                    "an idle {} client is on {at:?}, not the primary on port {port}",
                    idle.kind.as_str()
                )),
                Err(e) => {
                    if idle.kind == Kind::Pooled {
                        problems.push(format!("an idle pooled client lost its session: {e}"));
                    }
                    match try_connect(idle.addr, APP_USER, APP_PASSWORD, None).await {
                        Ok(c) => idle.client = c,
                        Err(e) => problems.push(format!("idle client reconnect: {e}")),
                    }
                }
            }
        }
        let name = &self.phases[phase].name;
        self.problems
            .extend(problems.into_iter().map(|p| format!("{name}: {p}")));
        self.phases[phase].idle_kept = kept;
    }

    /// Checks the writers' tallies of `phase`: pooled writers stay connected and fail at most
    /// `failed_per_writer` transactions; no kind sees 25006 or writes on the old primary after
    /// the new one took writes.
    pub(super) fn check(&mut self, phase: usize, failed_per_writer: u32) {
        let summary = &self.phases[phase];
        let (old_port, new_port) = (self.port_of(&summary.old), self.port_of(&summary.new));
        let all: Vec<(Arc<Writer>, Tally)> = self
            .writers
            .iter()
            .map(|w| (Arc::clone(w), w.tally(phase)))
            .collect();
        let first_new = all
            .iter()
            .flat_map(|(_, t)| t.acked.iter())
            .filter(|a| a.1 == new_port)
            .map(|a| a.2)
            .min();
        let mut problems = Vec::new();
        for (w, t) in &all {
            let name = w.name();
            if t.read_only > 0 {
                problems.push(format!("{name}: {} × 25006", t.read_only));
            }
            let late = t
                .acked
                .iter()
                .filter(|a| a.1 == old_port && first_new.is_some_and(|f| a.2 > f))
                .count();
            if old_port != new_port && late > 0 {
                problems.push(format!(
                    "{name}: {late} writes acknowledged by the old primary after the new one took writes"
                ));
            }
            if w.kind != Kind::Pooled {
                continue;
            }
            if t.disconnects > 0 {
                problems.push(format!("{name}: {} disconnects", t.disconnects));
            }
            if t.failed > failed_per_writer {
                problems.push(format!(
                    "{name}: {} failed transactions (at most {} expected): {:?} {:?}",
                    t.failed, failed_per_writer, t.codes, t.messages
                ));
            }
            if t.rollback_errors > 0 {
                problems.push(format!(
                    "{name}: {} ROLLBACKs after a failed statement were not answered: {:?}",
                    t.rollback_errors, t.messages
                ));
            }
            // Inside a block the transaction is known to be lost (40001); a statement or COMMIT
            // in flight may have taken effect (08007) or not (40001). Nothing else.
            let unexpected: Vec<&String> = t
                .codes
                .keys()
                .filter(|k| {
                    !matches!(
                        k.as_str(),
                        "insert 40001"
                            | "statement 08007"
                            | "statement 40001"
                            | "commit 08007"
                            | "commit 40001"
                    )
                })
                .collect();
            if !unexpected.is_empty() {
                problems.push(format!(
                    "{name}: failures {unexpected:?}, expected 40001 in a block, 08007 or 40001 \
                     for an autocommit statement or a COMMIT: {:?}",
                    t.messages
                ));
            }
        }
        let name = &summary.name;
        self.problems
            .extend(problems.into_iter().map(|p| format!("{name}: {p}")));
    }

    pub(super) fn problem(&mut self, phase: usize, p: String) {
        let name = &self.phases[phase].name;
        self.problems.push(format!("{name}: {p}"));
    }

    /// The table (markdown, one line per phase and kind) and the details under it.
    pub(super) fn table(&self) -> String {
        let mut s = String::from(
            "| phase | clients | failed transactions | disconnects | 25006 | acknowledged writes \
             | longest wait (ms) | longest gap between acks (ms) | idle clients kept |\n\
             |---|---|---|---|---|---|---|---|---|\n",
        );
        let mut details = String::new();
        for (phase, summary) in self.phases.iter().enumerate() {
            for kind in [Kind::Pooled, Kind::Passthrough] {
                let tallies: Vec<(String, Tally)> = self
                    .writers
                    .iter()
                    .filter(|w| w.kind == kind)
                    .map(|w| (w.name(), w.tally(phase)))
                    .collect();
                let sum = |f: fn(&Tally) -> u32| tallies.iter().map(|(_, t)| f(t)).sum::<u32>();
                let max = |f: fn(&Tally) -> Duration| {
                    tallies
                        .iter()
                        .map(|(_, t)| f(t))
                        .max()
                        .unwrap_or_default()
                        .as_millis()
                };
                let acked: usize = tallies.iter().map(|(_, t)| t.acked.len()).sum();
                let (kept, of) = summary.idle_kept.get(&kind).copied().unwrap_or_default();
                let _ = writeln!(
                    s,
                    "| {} | {} ×{} | {} | {} | {} | {acked} | {} | {} | {kept}/{of} |",
                    summary.name,
                    kind.as_str(),
                    tallies.len(),
                    sum(|t| t.failed),
                    sum(|t| t.disconnects),
                    sum(|t| t.read_only),
                    max(|t| t.longest_wait),
                    max(|t| t.longest_gap),
                );
                for (name, t) in &tallies {
                    let _ = writeln!(details, "  {}: {name}: {}", summary.name, t.summary());
                }
            }
            let _ = writeln!(
                details,
                "  {}: {} -> {} {}",
                summary.name,
                summary.old,
                summary.new,
                summary.notes.join("; ")
            );
        }
        s.push_str("details:\n");
        s.push_str(&details);
        s
    }
}
