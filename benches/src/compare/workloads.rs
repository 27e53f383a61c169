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
    pub const ALL: [Target; 9] = [
        Target::Direct,
        Target::PgsteerRw,
        Target::PgsteerBase,
        Target::PgsteerPooled,
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
        matches!(self, Target::PgsteerPooled | Target::PgbouncerTx)
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

/// One pgbench configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Short id: `select-simple-8`, `tpcb-8`, `connect-select-8`, …
    pub id: String,
    /// `-S`.
    pub select_only: bool,
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
        Workload {
            id: format!("{id}-{clients}"),
            select_only: id.contains("select"),
            extended: id.contains("extended"),
            connect_per_tx: id.starts_with("connect"),
            scram: id.contains("scram"),
            clients,
            targets: targets.to_vec(),
        }
    }

    /// A one-line description.
    pub fn describe(&self) -> String {
        let script = if self.select_only {
            "select-only (-S)"
        } else {
            "TPC-B-like"
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
/// `pgsteer-base` is in every set pgsteer-rw is in; the harness drops it unless a baseline binary
/// is given.
pub fn standard() -> Vec<Workload> {
    let everything = Target::ALL;
    let unpooled: Vec<Target> = everything.into_iter().filter(|t| !t.is_pooled()).collect();
    let writes = [
        Target::Direct,
        Target::PgsteerRw,
        Target::PgsteerBase,
        Target::Pgbouncer,
        Target::Haproxy,
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
                "select-simple-1000"
            ]
        );
        let w = &standard()[7];
        assert!(w.select_only && w.connect_per_tx && !w.scram && !w.extended);
        let w = &standard()[6];
        assert!(!w.select_only && !w.targets.contains(&Target::PgsteerRo));
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
        assert_eq!(with(Target::PgsteerPooled), asked);
        assert_eq!(with(Target::PgbouncerTx), asked);
        let many = standard().pop().unwrap();
        assert_eq!(many.clients, 1000);
        assert!(many.select_only && !many.extended && !many.connect_per_tx);
        assert_eq!(
            many.targets,
            [Target::Direct, Target::PgsteerPooled, Target::PgbouncerTx],
            "pooled modes and direct; a session pool of 100 would starve 900 clients"
        );
    }
}
