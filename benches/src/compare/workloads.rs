//! What is measured: the pgbench workloads and the targets each one runs against.

use std::fmt;

/// Where pgbench connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// The primary itself.
    Direct,
    /// pgsteer's read-write listener.
    PgsteerRw,
    /// The read-write listener of a second pgsteer from an older build (`--baseline-pgsteer`),
    /// for before/after figures measured in the same run.
    PgsteerBase,
    /// pgsteer's pooled listener (transaction mode, `[auth] method = "trust"`) to the primary.
    PgsteerPooled,
    /// The same pooled listener on the `--baseline-pgsteer` instance: pooled mode before and
    /// after, in the same run.
    PgsteerBasePooled,
    /// pgsteer's `auto` listener on the same instance (transaction mode, same pool size): each
    /// transaction to a replica when it only reads and a replica has replayed the client's last
    /// write (read-your-writes, the default), else to the primary.
    PgsteerAuto,
    /// The same `auto` listener with `PGOPTIONS='-c pgsteer.consistency=eventual'`: reads go to
    /// any replica, whether or not it has the client's writes yet.
    PgsteerAutoEventual,
    /// PgBouncer (session mode) in front of the primary.
    Pgbouncer,
    /// A second PgBouncer, in transaction mode, in front of the primary.
    PgbouncerTx,
    /// HAProxy (`mode tcp`) in front of the primary.
    Haproxy,
    /// A replica itself.
    DirectReplica,
    /// pgsteer's read-only listener (sessions spread over the replicas).
    PgsteerRo,
}

impl Target {
    /// Every target, in table order.
    pub const ALL: [Target; 12] = [
        Target::Direct,
        Target::PgsteerRw,
        Target::PgsteerBase,
        Target::PgsteerPooled,
        Target::PgsteerBasePooled,
        Target::PgsteerAuto,
        Target::PgsteerAutoEventual,
        Target::Pgbouncer,
        Target::PgbouncerTx,
        Target::Haproxy,
        Target::DirectReplica,
        Target::PgsteerRo,
    ];

    /// Name in tables, JSON and `--targets`.
    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::PgsteerRw => "pgsteer-rw",
            Target::PgsteerBase => "pgsteer-base",
            Target::PgsteerPooled => "pgsteer-pooled",
            Target::PgsteerBasePooled => "pgsteer-base-pooled",
            Target::PgsteerAuto => "pgsteer-auto",
            Target::PgsteerAutoEventual => "pgsteer-auto-eventual",
            Target::Pgbouncer => "pgbouncer",
            Target::PgbouncerTx => "pgbouncer-tx",
            Target::Haproxy => "haproxy",
            Target::DirectReplica => "direct-replica",
            Target::PgsteerRo => "pgsteer-ro",
        }
    }

    /// What its tps is compared with: the server it ends up on.
    pub fn baseline(self) -> Target {
        match self {
            Target::DirectReplica | Target::PgsteerRo => Target::DirectReplica,
            _ => Target::Direct,
        }
    }

    /// A pooled mode (transaction pooling), where clients share a few server connections.
    pub fn is_pooled(self) -> bool {
        matches!(
            self,
            Target::PgsteerPooled
                | Target::PgsteerBasePooled
                | Target::PgbouncerTx
                | Target::PgsteerAuto
                | Target::PgsteerAutoEventual
        )
    }

    /// pgsteer's `auto` listener, whose route decisions are counted around each run.
    pub fn is_auto(self) -> bool {
        matches!(self, Target::PgsteerAuto | Target::PgsteerAutoEventual)
    }

    /// `PGOPTIONS` for pgbench: startup options the target needs.
    pub fn pgoptions(self) -> Option<&'static str> {
        (self == Target::PgsteerAutoEventual).then_some("-c pgsteer.consistency=eventual")
    }

    /// A proxy process whose CPU time is measured.
    pub fn is_proxy(self) -> bool {
        !matches!(self, Target::Direct | Target::DirectReplica)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What each pgbench transaction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// The built-in select-only script (`-S`).
    SelectOnly,
    /// The built-in TPC-B-like script.
    TpcbLike,
    /// Two custom scripts (`-f`) weighted 9 to 1: a single-row `SELECT` of `pgbench_accounts`
    /// and a single-row `UPDATE` of it, each its own autocommit transaction.
    Mixed9010,
}

/// The read transaction of [`Script::Mixed9010`] (weight 9).
pub const MIXED_READ: &str = "\\set aid random(1, 100000 * :scale)\n\
                              SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n";

/// The write transaction of [`Script::Mixed9010`] (weight 1).
pub const MIXED_WRITE: &str = "\\set aid random(1, 100000 * :scale)\n\
                               \\set delta random(-5000, 5000)\n\
                               UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n";

/// The pgbench weights of [`MIXED_READ`] and [`MIXED_WRITE`].
pub const MIXED_WEIGHTS: (u32, u32) = (9, 1);

impl Script {
    /// Whether its tables are reset before each run (what pgbench does before a TPC-B-like run
    /// without `-n`). The 90/10 script's updates only change balances; no reset.
    pub fn resets_tables(self) -> bool {
        self == Script::TpcbLike
    }
}

/// One pgbench configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Short id: `select-simple-8`, `tpcb-8`, `connect-select-8`, `mixed-9010-8`, …
    pub id: String,
    /// The transaction script.
    pub script: Script,
    /// `-M extended`.
    pub extended: bool,
    /// `-C`.
    pub connect_per_tx: bool,
    /// Log in with the SCRAM role (passed through by pgsteer) instead of the trusted one.
    pub scram: bool,
    /// `-c`.
    pub clients: u32,
    /// Targets it runs against.
    pub targets: Vec<Target>,
}

impl Workload {
    fn new(id: &str, clients: u32, targets: &[Target]) -> Workload {
        let script = if id.starts_with("mixed-9010") {
            Script::Mixed9010
        } else if id.contains("select") {
            Script::SelectOnly
        } else {
            Script::TpcbLike
        };
        Workload {
            id: format!("{id}-{clients}"),
            script,
            extended: id.contains("extended"),
            connect_per_tx: id.starts_with("connect"),
            scram: id.contains("scram"),
            clients,
            targets: targets.to_vec(),
        }
    }

    /// A one-line description.
    pub fn describe(&self) -> String {
        let script = match self.script {
            Script::SelectOnly => "select-only (-S)",
            Script::TpcbLike => "TPC-B-like",
            Script::Mixed9010 => {
                "90 % single-row SELECT / 10 % single-row UPDATE (-f read@9 -f write@1, autocommit)"
            }
        };
        let mode = if self.extended { "extended" } else { "simple" };
        let connect = if self.connect_per_tx {
            ", new connection per transaction (-C)"
        } else {
            ""
        };
        let user = if self.scram {
            "SCRAM role"
        } else {
            "trusted role"
        };
        format!(
            "{script}, {mode} protocol, {} client{}{connect}, {user}",
            self.clients,
            if self.clients == 1 { "" } else { "s" }
        )
    }
}

/// The standard set: select-only simple and extended at 1, 8, 32 clients; TPC-B-like at 8;
/// connection per transaction at 8 (trusted role through everything, SCRAM direct vs pgsteer);
/// 1,000 select-only clients on the pooled targets (20 server connections) against direct.
/// The pooled targets also run select-only simple at 8 and 32 clients and `-C`.
/// The 90 % read / 10 % write script at 8 and 32 clients (simple) and 8 (extended) runs direct,
/// through pgsteer-pooled (everything on the primary through the pool) and through the `auto`
/// listener of the same pgsteer (issue 16), with read-your-writes and with eventual consistency.
/// `pgsteer-base` is in every set pgsteer-rw is in; the harness drops it unless a baseline binary
/// is given.
pub fn standard() -> Vec<Workload> {
    let everything: Vec<Target> = Target::ALL.into_iter().filter(|t| !t.is_auto()).collect();
    let unpooled: Vec<Target> = everything
        .iter()
        .copied()
        .filter(|t| !t.is_pooled())
        .collect();
    let writes = [
        Target::Direct,
        Target::PgsteerRw,
        Target::PgsteerBase,
        Target::Pgbouncer,
        Target::Haproxy,
    ];
    let mixed = [
        Target::Direct,
        Target::PgsteerPooled,
        Target::PgsteerAuto,
        Target::PgsteerAutoEventual,
    ];
    let mut all = Vec::new();
    for mode in ["select-simple", "select-extended"] {
        for clients in [1, 8, 32] {
            let pooled = mode == "select-simple" && clients > 1;
            all.push(Workload::new(
                mode,
                clients,
                if pooled { &everything } else { &unpooled },
            ));
        }
    }
    all.push(Workload::new("tpcb", 8, &writes));
    all.push(Workload::new("connect-select", 8, &everything));
    all.push(Workload::new(
        "connect-select-scram",
        8,
        &[Target::Direct, Target::PgsteerRw, Target::PgsteerBase],
    ));
    all.push(Workload::new(
        "select-simple",
        1000,
        &[Target::Direct, Target::PgsteerPooled, Target::PgbouncerTx],
    ));
    all.push(Workload::new("mixed-9010", 8, &mixed));
    all.push(Workload::new("mixed-9010", 32, &mixed));
    all.push(Workload::new("mixed-9010-extended", 8, &mixed));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_set_covers_the_issue() {
        let ids: Vec<String> = standard().into_iter().map(|w| w.id).collect();
        assert_eq!(
            ids,
            [
                "select-simple-1",
                "select-simple-8",
                "select-simple-32",
                "select-extended-1",
                "select-extended-8",
                "select-extended-32",
                "tpcb-8",
                "connect-select-8",
                "connect-select-scram-8",
                "select-simple-1000",
                "mixed-9010-8",
                "mixed-9010-32",
                "mixed-9010-extended-8"
            ]
        );
        let w = &standard()[7];
        assert!(w.script == Script::SelectOnly && w.connect_per_tx && !w.scram && !w.extended);
        let w = &standard()[6];
        assert!(w.script == Script::TpcbLike && !w.targets.contains(&Target::PgsteerRo));
        assert!(w.script.resets_tables());
        assert!(
            standard()
                .iter()
                .filter(|w| w.targets.contains(&Target::PgsteerRw))
                .all(|w| w.targets.contains(&Target::PgsteerBase)),
            "pgsteer-base can be compared with pgsteer-rw everywhere"
        );
    }

    #[test]
    fn pooled_targets_run_what_the_pooled_mode_issue_asks() {
        let with = |t: Target| -> Vec<String> {
            standard()
                .into_iter()
                .filter(|w| w.targets.contains(&t))
                .map(|w| w.id)
                .collect()
        };
        let asked = [
            "select-simple-8",
            "select-simple-32",
            "connect-select-8",
            "select-simple-1000",
        ];
        let mixed = ["mixed-9010-8", "mixed-9010-32", "mixed-9010-extended-8"];
        assert_eq!(with(Target::PgsteerPooled), [&asked[..], &mixed].concat());
        assert_eq!(with(Target::PgbouncerTx), asked);
        assert_eq!(
            with(Target::PgsteerBasePooled),
            asked[..3],
            "before and after wherever pooled mode meets PgBouncer with few clients"
        );
        let many = standard().swap_remove(9);
        assert_eq!(many.clients, 1000);
        assert!(many.script == Script::SelectOnly && !many.extended && !many.connect_per_tx);
        assert_eq!(
            many.targets,
            [Target::Direct, Target::PgsteerPooled, Target::PgbouncerTx],
            "pooled modes and direct; a session pool of 100 would starve 900 clients"
        );
    }

    #[test]
    fn the_mixed_workload_compares_auto_with_the_primary_alone() {
        let mixed: Vec<Workload> = standard()
            .into_iter()
            .filter(|w| w.script == Script::Mixed9010)
            .collect();
        assert_eq!(mixed.len(), 3);
        for w in &mixed {
            assert_eq!(
                w.targets,
                [
                    Target::Direct,
                    Target::PgsteerPooled,
                    Target::PgsteerAuto,
                    Target::PgsteerAutoEventual
                ],
                "{}",
                w.id
            );
            assert!(!w.script.resets_tables() && !w.connect_per_tx && !w.scram);
        }
        assert!(!mixed[0].extended && mixed[2].extended);
        assert!(
            mixed[0].describe().contains("90 %"),
            "{}",
            mixed[0].describe()
        );
        assert!(
            standard()
                .iter()
                .filter(|w| w.script != Script::Mixed9010)
                .all(|w| !w.targets.iter().any(|t| t.is_auto())),
            "auto runs the mixed script only"
        );
        assert!(MIXED_READ.contains("SELECT abalance") && !MIXED_READ.contains("BEGIN"));
        assert!(MIXED_WRITE.contains("UPDATE pgbench_accounts") && !MIXED_WRITE.contains("BEGIN"));
        assert_eq!(
            Target::PgsteerAutoEventual.pgoptions(),
            Some("-c pgsteer.consistency=eventual")
        );
        assert_eq!(Target::PgsteerAuto.pgoptions(), None);
    }
}
