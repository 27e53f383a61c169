//! Medians over rounds, the comparison table, the targets as checks, and the JSON record.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::workloads::{Target, Workload};

/// One pgbench run against one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Round number (0-based).
    pub round: usize,
    /// Transactions processed.
    pub transactions: u64,
    /// tps as pgbench reports it.
    pub tps: f64,
    /// Average latency, ms.
    pub latency_avg_ms: f64,
    /// p99 latency from the transaction log, ms.
    pub latency_p99_ms: Option<f64>,
    /// CPU seconds the proxy process used during the run.
    pub proxy_cpu_s: Option<f64>,
    /// Transactions per script, in `-f` order (custom scripts only).
    pub per_script: Vec<u64>,
    /// Route decisions of pgsteer's `auto` listener during the run (auto targets only).
    pub auto: Option<AutoCounts>,
}

/// `pgsteer_auto_transactions_total` by decision: a reading of `/metrics`, or the difference of
/// two.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AutoCounts {
    /// `decision="replica"`.
    pub replica: u64,
    /// `decision="primary_classifier"`: the classifier saw (or could not rule out) a write.
    pub primary_classifier: u64,
    /// `decision="primary_freshness"`: no replica had replayed the client's last write.
    pub primary_freshness: u64,
    /// `decision="primary_no_replica"`: no replica could take reads.
    pub primary_no_replica: u64,
}

/// The metric family counted in [`AutoCounts`].
pub const AUTO_METRIC: &str = "pgsteer_auto_transactions_total";

impl AutoCounts {
    /// The counters in a Prometheus text exposition; `None` if the family is missing (a build
    /// without route `auto`).
    pub fn parse(text: &str) -> Option<AutoCounts> {
        let mut c = AutoCounts::default();
        let mut seen = false;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(AUTO_METRIC) else {
                continue;
            };
            let Some((labels, value)) = rest.strip_prefix('{').and_then(|r| r.split_once('}'))
            else {
                continue;
            };
            let Some(decision) = labels.split(',').find_map(|l| {
                l.trim()
                    .strip_prefix("decision=\"")
                    .and_then(|d| d.strip_suffix('"'))
            }) else {
                continue;
            };
            // Counters print as integers or floats ("8000" or "8e3").
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let slot = match decision {
                "replica" => &mut c.replica,
                "primary_classifier" => &mut c.primary_classifier,
                "primary_freshness" => &mut c.primary_freshness,
                "primary_no_replica" => &mut c.primary_no_replica,
                _ => continue,
            };
            *slot = value as u64;
            seen = true;
        }
        seen.then_some(c)
    }

    /// What was counted between `before` and `self`.
    pub fn since(self, before: AutoCounts) -> AutoCounts {
        AutoCounts {
            replica: self.replica.saturating_sub(before.replica),
            primary_classifier: self
                .primary_classifier
                .saturating_sub(before.primary_classifier),
            primary_freshness: self
                .primary_freshness
                .saturating_sub(before.primary_freshness),
            primary_no_replica: self
                .primary_no_replica
                .saturating_sub(before.primary_no_replica),
        }
    }

    /// The sum of two counts.
    pub fn plus(self, other: AutoCounts) -> AutoCounts {
        AutoCounts {
            replica: self.replica + other.replica,
            primary_classifier: self.primary_classifier + other.primary_classifier,
            primary_freshness: self.primary_freshness + other.primary_freshness,
            primary_no_replica: self.primary_no_replica + other.primary_no_replica,
        }
    }

    /// Every decision.
    pub fn total(self) -> u64 {
        self.replica + self.primary_classifier + self.primary_freshness + self.primary_no_replica
    }

    /// The share of transactions sent to a replica, 0–1 (`None` without transactions).
    pub fn replica_share(self) -> Option<f64> {
        let total = self.total();
        (total > 0).then(|| self.replica as f64 / total as f64)
    }
}

impl Sample {
    /// Proxy CPU µs per transaction.
    pub fn cpu_us_per_tx(&self) -> Option<f64> {
        let cpu = self.proxy_cpu_s?;
        (self.transactions > 0).then(|| cpu * 1e6 / self.transactions as f64)
    }
}

/// Medians of one (workload, target) over the rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Median tps.
    pub tps: f64,
    /// Median average latency, ms.
    pub latency_avg_ms: f64,
    /// Median p99 latency, ms.
    pub latency_p99_ms: Option<f64>,
    /// Median proxy CPU µs per transaction.
    pub cpu_us_per_tx: Option<f64>,
    /// Rounds that produced a sample.
    pub rounds: usize,
}

/// Median of `values` (mean of the middle two for an even count); `None` if empty.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

impl Point {
    /// Medians of `samples` (at least one).
    pub fn of(samples: &[Sample]) -> Option<Point> {
        Some(Point {
            tps: median(samples.iter().map(|s| s.tps).collect())?,
            latency_avg_ms: median(samples.iter().map(|s| s.latency_avg_ms).collect())?,
            latency_p99_ms: median(samples.iter().filter_map(|s| s.latency_p99_ms).collect()),
            cpu_us_per_tx: median(samples.iter().filter_map(Sample::cpu_us_per_tx).collect()),
            rounds: samples.len(),
        })
    }
}

/// Every sample, by workload id and target.
#[derive(Debug, Default)]
pub struct Results {
    /// Samples.
    pub samples: BTreeMap<(String, Target), Vec<Sample>>,
    /// Runs that failed: (workload, target, round, error).
    pub failures: Vec<(String, Target, usize, String)>,
}

impl Results {
    /// The medians of one workload and target.
    pub fn point(&self, workload: &str, target: Target) -> Option<Point> {
        Point::of(self.samples.get(&(workload.to_owned(), target))?)
    }
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// The peers a target's tps is compared with, and their column headings.
const PEERS: [(Target, &str); 3] = [
    (Target::Pgbouncer, "x bncr"),
    (Target::PgbouncerTx, "x bntx"),
    (Target::Haproxy, "x hapx"),
];

/// The comparison table: per workload, one row per target, a ratio column per peer that runs
/// the workload.
pub fn table(workloads: &[Workload], results: &Results) -> String {
    let mut out = String::new();
    for w in workloads {
        let peers: Vec<(Target, &str)> = PEERS
            .into_iter()
            .filter(|(t, _)| w.targets.contains(t))
            .collect();
        let _ = writeln!(out, "\n{} — {}", w.id, w.describe());
        let _ = write!(
            out,
            "  {:<21} {:>9} {:>8} {:>8} {:>8}",
            "target", "tps", "avg ms", "p99 ms", "x base"
        );
        for (_, heading) in &peers {
            let _ = write!(out, " {heading:>8}");
        }
        let _ = writeln!(out, " {:>10} {:>12}", "CPU us/tx", "CPU s/10k tx");
        for &t in &w.targets {
            out.push_str(&row(&w.id, t, &peers, results));
        }
    }
    out.push_str(
        "\nx base: tps / direct (pgsteer-ro and direct-replica: / direct-replica); x bncr,\n\
         x bntx, x hapx: tps / PgBouncer's (session mode), / PgBouncer's in transaction mode\n\
         (pgbouncer-tx), / HAProxy's in the same workload. CPU: utime+stime of the proxy\n\
         process over the run / transactions processed. Medians over the rounds.\n",
    );
    out
}

/// One row of the table: `t`'s medians in `workload`, and its tps over the baseline's and over
/// each peer's.
fn row(workload: &str, t: Target, peers: &[(Target, &str)], results: &Results) -> String {
    let Some(p) = results.point(workload, t) else {
        return format!("  {:<21} (no successful run)\n", t.name());
    };
    let ratio = |other: Target| {
        (other != t)
            .then(|| results.point(workload, other))
            .flatten()
            .map(|o| p.tps / o.tps)
    };
    let mut out = format!(
        "  {:<21} {:>9.0} {:>8.3} {:>8} {:>8}",
        t.name(),
        p.tps,
        p.latency_avg_ms,
        opt(p.latency_p99_ms, 3),
        opt(ratio(t.baseline()), 3),
    );
    for &(peer, _) in peers {
        let _ = write!(out, " {:>8}", opt(ratio(peer), 3));
    }
    let _ = writeln!(
        out,
        " {:>10} {:>12}",
        opt(p.cpu_us_per_tx, 1),
        opt(p.cpu_us_per_tx.map(|us| us / 100.0), 3),
    );
    out
}

/// pgsteer-rw against pgsteer-base and pgsteer-pooled against pgsteer-base-pooled (an older
/// build measured in the same run), per workload: the tps ratio and the CPU per transaction of
/// both. Empty when no workload has a pair.
pub fn versus_base(workloads: &[Workload], results: &Results) -> String {
    let mut out = String::new();
    let pairs = [
        (Target::PgsteerRw, Target::PgsteerBase, "rw"),
        (Target::PgsteerPooled, Target::PgsteerBasePooled, "pooled"),
    ];
    for (now, then, what) in pairs {
        for w in workloads {
            let (Some(now), Some(base)) = (results.point(&w.id, now), results.point(&w.id, then))
            else {
                continue;
            };
            let cpu = match (now.cpu_us_per_tx, base.cpu_us_per_tx) {
                (Some(a), Some(b)) => {
                    format!("{what} {a:.1} vs base {b:.1} us ({})", percent(a / b))
                }
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "  {:<24} {what:<6} tps x {:.3} ({:.0} vs {:.0})  CPU/tx {cpu}",
                w.id,
                now.tps / base.tps,
                now.tps,
                base.tps
            );
        }
    }
    if out.is_empty() {
        return out;
    }
    format!(
        "\npgsteer vs pgsteer-base (same run, medians; tps x = this build / base; rw: the rw listener, pooled: the pooled ones):\n{out}"
    )
}

/// Route `auto` per workload and auto target: the share of transactions its listener sent to
/// replicas (decisions counted on `/metrics` around each run, summed over the rounds, and each
/// round's share), and its tps against pgsteer-pooled (everything on the primary through the
/// same pool) in the same run. Empty when no auto target ran.
pub fn auto_routing(workloads: &[Workload], results: &Results) -> String {
    let mut out = String::new();
    for w in workloads {
        for &t in w.targets.iter().filter(|t| t.is_auto()) {
            let Some(samples) = results.samples.get(&(w.id.clone(), t)) else {
                continue;
            };
            let _ = writeln!(
                out,
                "  {:<22} {:<22} {}",
                w.id,
                t.name(),
                replica_share(samples)
            );
            if let (Some(auto), Some(pooled)) = (
                results.point(&w.id, t),
                results.point(&w.id, Target::PgsteerPooled),
            ) {
                let _ = writeln!(
                    out,
                    "  {:<22} {:<22} {}",
                    w.id,
                    t.name(),
                    versus_pooled(&auto, &pooled)
                );
            }
        }
    }
    if out.is_empty() {
        return out;
    }
    format!(
        "\nroute auto (pgsteer_auto_transactions_total on /metrics before and after each run, \
         summed over the rounds; tps x = auto / pgsteer-pooled, medians):\n{out}"
    )
}

/// `88.9 % of transactions on replicas (replica 8,000 / …); per round: …` for an auto target's
/// samples, with pgbench's own count and share of read transactions beside the decisions.
fn replica_share(samples: &[Sample]) -> String {
    let counted: Vec<AutoCounts> = samples.iter().filter_map(|s| s.auto).collect();
    let sum = counted
        .iter()
        .fold(AutoCounts::default(), |a, &c| a.plus(c));
    let pct = |c: AutoCounts| c.replica_share().map(|s| s * 100.0);
    let rounds: Vec<String> = counted.iter().map(|&c| opt(pct(c), 1)).collect();
    let pgbench_tx: u64 = samples.iter().map(|s| s.transactions).sum();
    let reads: u64 = samples.iter().filter_map(|s| s.per_script.first()).sum();
    let scripted: u64 = samples
        .iter()
        .map(|s| s.per_script.iter().sum::<u64>())
        .sum();
    let read_share = if scripted > 0 {
        format!(
            ", {:.1} % of them reads",
            reads as f64 * 100.0 / scripted as f64
        )
    } else {
        String::new()
    };
    format!(
        "{} % of transactions on replicas (replica {} / primary_classifier {} / \
         primary_freshness {} / primary_no_replica {}; pgbench counted {}{read_share}); \
         per round: {} %",
        opt(pct(sum), 1),
        thousands(sum.replica),
        thousands(sum.primary_classifier),
        thousands(sum.primary_freshness),
        thousands(sum.primary_no_replica),
        thousands(pgbench_tx),
        if rounds.is_empty() {
            "-".to_owned()
        } else {
            rounds.join(" / ")
        },
    )
}

/// `tps x 1.200 vs pgsteer-pooled (…); p99 …; CPU/tx …`.
fn versus_pooled(auto: &Point, pooled: &Point) -> String {
    let cpu = match (auto.cpu_us_per_tx, pooled.cpu_us_per_tx) {
        (Some(a), Some(b)) => format!("{a:.1} vs {b:.1} us ({})", percent(a / b)),
        _ => "-".to_owned(),
    };
    let p99 = match (auto.latency_p99_ms, pooled.latency_p99_ms) {
        (Some(a), Some(b)) => format!("{a:.3} vs {b:.3} ms"),
        _ => "-".to_owned(),
    };
    format!(
        "tps x {:.3} vs pgsteer-pooled ({:.0} vs {:.0}); p99 {p99}; CPU/tx {cpu}",
        auto.tps / pooled.tps,
        auto.tps,
        pooled.tps,
    )
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A ratio as a signed whole percentage change: 0.91 → `−9 %`, 1.1 → `+10 %`.
fn percent(ratio: f64) -> String {
    let p = ((ratio - 1.0) * 100.0).round();
    if p == 0.0 {
        "±0 %".to_owned()
    } else if p < 0.0 {
        format!("\u{2212}{} %", -p)
    } else {
        format!("+{p} %")
    }
}

/// One of the targets, as measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What is checked.
    pub what: String,
    /// The measured value(s).
    pub measured: String,
    /// `None`: could not be measured (a peer is missing or a run failed).
    pub met: Option<bool>,
}

/// The throughput targets for pgsteer, evaluated on the medians.
pub fn checks(results: &Results) -> Vec<Check> {
    let mut out = Vec::new();
    let get = |w: &str, t| results.point(w, t);
    for w in [
        "select-simple-8",
        "select-simple-32",
        "select-extended-8",
        "select-extended-32",
    ] {
        let (Some(rw), Some(direct)) = (get(w, Target::PgsteerRw), get(w, Target::Direct)) else {
            continue;
        };
        let ratio = rw.tps / direct.tps;
        out.push(Check {
            what: format!("{w}: pgsteer-rw tps >= 0.75 x direct"),
            measured: format!("{ratio:.3}"),
            met: Some(ratio >= 0.75),
        });
        for peer in [Target::Pgbouncer, Target::Haproxy] {
            let p = get(w, peer);
            out.push(Check {
                what: format!("{w}: pgsteer-rw tps ahead of {peer}"),
                measured: p.as_ref().map_or("-".into(), |p| {
                    format!("{:.0} vs {:.0} ({:.3})", rw.tps, p.tps, rw.tps / p.tps)
                }),
                met: p.as_ref().map(|p| rw.tps > p.tps),
            });
            let cpu = p
                .as_ref()
                .and_then(|p| Some((rw.cpu_us_per_tx?, p.cpu_us_per_tx?)));
            out.push(Check {
                what: format!("{w}: pgsteer-rw CPU/tx below {peer}'s"),
                measured: cpu.map_or("-".into(), |(a, b)| format!("{a:.1} vs {b:.1} us")),
                met: cpu.map(|(a, b)| a < b),
            });
        }
        out.push(Check {
            what: format!("{w}: pgsteer-rw CPU/tx <= 20 us"),
            measured: opt(rw.cpu_us_per_tx, 1),
            met: rw.cpu_us_per_tx.map(|c| c <= 20.0),
        });
    }
    for w in ["connect-select-8", "connect-select-scram-8"] {
        let (Some(rw), Some(direct)) = (get(w, Target::PgsteerRw), get(w, Target::Direct)) else {
            continue;
        };
        let ratio = rw.tps / direct.tps;
        out.push(Check {
            what: format!("{w}: pgsteer-rw tps >= 0.95 x direct"),
            measured: format!("{ratio:.3}"),
            met: Some(ratio >= 0.95),
        });
    }
    out.extend(pooled_checks(results));
    out
}

/// The pooled-mode issue's throughput targets for pgsteer-pooled: CPU per transaction at or below
/// PgBouncer's transaction mode, `-C` at least 3 × direct, p99 at 1,000 clients no worse than
/// PgBouncer's transaction mode.
pub fn pooled_checks(results: &Results) -> Vec<Check> {
    let mut out = Vec::new();
    let get = |w: &str, t| results.point(w, t);
    for w in ["select-simple-8", "select-simple-32", "select-simple-1000"] {
        let Some(pooled) = get(w, Target::PgsteerPooled) else {
            continue;
        };
        let bouncer = get(w, Target::PgbouncerTx);
        let cpu = bouncer
            .as_ref()
            .and_then(|b| Some((pooled.cpu_us_per_tx?, b.cpu_us_per_tx?)));
        out.push(Check {
            what: format!("{w}: pgsteer-pooled CPU/tx at or below pgbouncer-tx's"),
            measured: cpu.map_or("-".into(), |(a, b)| format!("{a:.1} vs {b:.1} us")),
            met: cpu.map(|(a, b)| a <= b),
        });
        if w == "select-simple-1000" {
            let p99 = bouncer
                .as_ref()
                .and_then(|b| Some((pooled.latency_p99_ms?, b.latency_p99_ms?)));
            out.push(Check {
                what: format!("{w}: pgsteer-pooled p99 no worse than pgbouncer-tx's"),
                measured: p99.map_or("-".into(), |(a, b)| format!("{a:.3} vs {b:.3} ms")),
                met: p99.map(|(a, b)| a <= b),
            });
        }
    }
    let w = "connect-select-8";
    if let Some(pooled) = get(w, Target::PgsteerPooled) {
        let direct = get(w, Target::Direct);
        out.push(Check {
            what: format!("{w}: pgsteer-pooled tps >= 3 x direct"),
            measured: direct
                .as_ref()
                .map_or("-".into(), |d| format!("{:.3}", pooled.tps / d.tps)),
            met: direct.map(|d| pooled.tps >= 3.0 * d.tps),
        });
    }
    out
}

/// The checks as text.
pub fn checks_text(checks: &[Check]) -> String {
    let mut out = String::from(
        "\nTargets (issue 9 for pgsteer-rw, \"Pooled mode\" for pgsteer-pooled), on the medians:\n",
    );
    for c in checks {
        let verdict = match c.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "n/a",
        };
        let _ = writeln!(out, "  [{verdict:>7}] {} — {}", c.what, c.measured);
    }
    out
}

/// Everything as JSON: settings, every sample, medians, checks.
pub fn to_json(meta: Value, workloads: &[Workload], results: &Results, checks: &[Check]) -> Value {
    let mut points = Vec::new();
    for w in workloads {
        for &t in &w.targets {
            let samples = results
                .samples
                .get(&(w.id.clone(), t))
                .cloned()
                .unwrap_or_default();
            let median = Point::of(&samples);
            points.push(json!({
                "workload": w.id,
                "description": w.describe(),
                "target": t.name(),
                "median": median.map(|p| json!({
                    "tps": p.tps,
                    "latency_avg_ms": p.latency_avg_ms,
                    "latency_p99_ms": p.latency_p99_ms,
                    "proxy_cpu_us_per_tx": p.cpu_us_per_tx,
                    "proxy_cpu_s_per_10k_tx": p.cpu_us_per_tx.map(|us| us / 100.0),
                    "rounds": p.rounds,
                })),
                "samples": samples.iter().map(|s| json!({
                    "round": s.round,
                    "transactions": s.transactions,
                    "tps": s.tps,
                    "latency_avg_ms": s.latency_avg_ms,
                    "latency_p99_ms": s.latency_p99_ms,
                    "proxy_cpu_s": s.proxy_cpu_s,
                    "proxy_cpu_us_per_tx": s.cpu_us_per_tx(),
                    "per_script_transactions": s.per_script,
                    "auto_decisions": s.auto.map(auto_json),
                })).collect::<Vec<_>>(),
            }));
        }
    }
    json!({
        "meta": meta,
        "points": points,
        "failures": results.failures.iter().map(|(w, t, r, e)| json!({
            "workload": w, "target": t.name(), "round": r, "error": e,
        })).collect::<Vec<_>>(),
        "checks": checks.iter().map(|c| json!({
            "what": c.what, "measured": c.measured, "met": c.met,
        })).collect::<Vec<_>>(),
    })
}

/// Route decisions as a JSON object by label, with the replica share.
fn auto_json(c: AutoCounts) -> Value {
    json!({
        "replica": c.replica,
        "primary_classifier": c.primary_classifier,
        "primary_freshness": c.primary_freshness,
        "primary_no_replica": c.primary_no_replica,
        "replica_share": c.replica_share(),
    })
}

#[cfg(test)]
mod tests;
