//! The report's tables, lines and JSON.

use super::*;

fn sample(round: usize, tps: f64, cpu: Option<f64>) -> Sample {
    Sample {
        round,
        transactions: (tps * 10.0) as u64,
        tps,
        latency_avg_ms: 1000.0 / tps,
        latency_p99_ms: Some(2.0),
        proxy_cpu_s: cpu,
        per_script: Vec::new(),
        auto: None,
    }
}

#[test]
fn medians_take_the_middle_value_or_the_mean_of_two() {
    assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    assert_eq!(median(vec![]), None);
}

#[test]
fn cpu_per_transaction_is_cpu_seconds_over_transactions() {
    let s = sample(0, 1000.0, Some(0.2));
    assert!((s.cpu_us_per_tx().unwrap() - 20.0).abs() < 1e-9);
    assert_eq!(sample(0, 1000.0, None).cpu_us_per_tx(), None);
}

/// One select-simple-8 sample of `t`.
fn put(r: &mut Results, t: Target, tps: f64, cpu: Option<f64>) {
    put_in(r, "select-simple-8", t, sample(0, tps, cpu));
}

/// One sample of `t` in workload `w`.
fn put_in(r: &mut Results, w: &str, t: Target, s: Sample) {
    r.samples.entry((w.to_owned(), t)).or_default().push(s);
}

#[test]
fn checks_compare_pgsteer_with_direct_and_its_peers() {
    let mut r = Results::default();
    put(&mut r, Target::Direct, 10_000.0, None);
    put(&mut r, Target::PgsteerRw, 8_000.0, Some(1.2));
    put(&mut r, Target::Pgbouncer, 7_000.0, Some(2.0));
    let c = checks(&r);
    let find = |what: &str| c.iter().find(|c| c.what.contains(what)).unwrap().met;
    assert_eq!(find("0.75 x direct"), Some(true));
    assert_eq!(find("ahead of pgbouncer"), Some(true));
    assert_eq!(find("below pgbouncer"), Some(true));
    assert_eq!(find("ahead of haproxy"), None);
    assert_eq!(find("<= 20 us"), Some(true));
    let workloads = &crate::compare::workloads::standard()[1..2];
    let text = table(workloads, &r);
    assert!(text.contains("pgsteer-rw"), "{text}");
    assert!(text.contains("0.800"), "{text}");
    assert!(
        text.contains("pgsteer-base          (no successful run)"),
        "{text}"
    );
    assert_eq!(versus_base(workloads, &r), "");
}

#[test]
fn pgsteer_rw_is_compared_with_the_baseline_build_of_the_same_run() {
    let mut r = Results::default();
    put(&mut r, Target::Direct, 10_000.0, None);
    put(&mut r, Target::PgsteerRw, 8_000.0, Some(0.952));
    let before = checks(&r);
    put(&mut r, Target::PgsteerBase, 7_600.0, Some(0.9956));
    assert_eq!(checks(&r), before, "the checks are about pgsteer-rw alone");
    let workloads = &crate::compare::workloads::standard()[1..2];
    let text = table(workloads, &r);
    let row = text.lines().find(|l| l.contains("pgsteer-base")).unwrap();
    assert!(row.contains("0.760"), "x base is / direct: {text}");
    assert!(row.contains("13.1"), "its own CPU figure: {text}");
    let text = versus_base(workloads, &r);
    assert!(text.contains("pgsteer vs pgsteer-base"), "{text}");
    assert!(text.contains("select-simple-8"), "{text}");
    assert!(text.contains("rw     tps x 1.053 (8000 vs 7600)"), "{text}");
    assert!(
        text.contains("CPU/tx rw 11.9 vs base 13.1 us (\u{2212}9 %)"),
        "{text}"
    );
    assert!(
        !text.contains("pooled tps"),
        "no pooled pair measured: {text}"
    );
    put(&mut r, Target::PgsteerPooled, 9_000.0, Some(1.35));
    put(&mut r, Target::PgsteerBasePooled, 8_000.0, Some(1.36));
    let text = versus_base(workloads, &r);
    assert!(text.contains("pooled tps x 1.125 (9000 vs 8000)"), "{text}");
    assert!(
        text.contains("CPU/tx pooled 15.0 vs base 17.0 us (\u{2212}12 %)"),
        "{text}"
    );
}

#[test]
fn pooled_mode_is_checked_against_pgbouncer_in_transaction_mode_and_direct() {
    let mut r = Results::default();
    put(&mut r, Target::PgsteerPooled, 9_000.0, Some(0.81));
    put(&mut r, Target::PgbouncerTx, 9_000.0, Some(0.9));
    let many = "select-simple-1000";
    let p99 = |ms, cpu| Sample {
        latency_p99_ms: Some(ms),
        ..sample(0, 5_000.0, Some(cpu))
    };
    put_in(&mut r, many, Target::PgsteerPooled, p99(80.0, 0.5));
    put_in(&mut r, many, Target::PgbouncerTx, p99(70.0, 0.6));
    let connect = "connect-select-8";
    put_in(&mut r, connect, Target::Direct, sample(0, 400.0, None));
    put_in(
        &mut r,
        connect,
        Target::PgsteerPooled,
        sample(0, 4_000.0, Some(1.0)),
    );
    let c = pooled_checks(&r);
    let find = |what: &str| {
        let c = c.iter().find(|c| c.what.contains(what)).unwrap();
        (c.met, c.measured.clone())
    };
    assert_eq!(
        find("select-simple-8: pgsteer-pooled CPU/tx"),
        (Some(true), "9.0 vs 10.0 us".into())
    );
    assert_eq!(
        find("select-simple-1000: pgsteer-pooled CPU/tx").0,
        Some(true)
    );
    assert_eq!(
        find("p99 no worse"),
        (Some(false), "80.000 vs 70.000 ms".into())
    );
    assert_eq!(find("3 x direct"), (Some(true), "10.000".into()));
    assert!(
        !c.iter().any(|c| c.what.contains("select-simple-32")),
        "no pooled run, no check: {c:?}"
    );
    assert!(checks(&r).iter().any(|c| c.what.contains("3 x direct")));
}

#[test]
fn the_table_has_a_column_for_each_peer_in_the_workload() {
    let mut r = Results::default();
    put(&mut r, Target::Direct, 10_000.0, None);
    put(&mut r, Target::PgsteerPooled, 9_000.0, Some(0.9));
    put(&mut r, Target::PgbouncerTx, 7_500.0, Some(1.0));
    let mut w = crate::compare::workloads::standard().swap_remove(1);
    w.targets = vec![Target::Direct, Target::PgsteerPooled, Target::PgbouncerTx];
    let text = table(std::slice::from_ref(&w), &r);
    let header = text.lines().find(|l| l.contains("target")).unwrap();
    assert!(header.contains("x bntx"), "{text}");
    assert!(
        !header.contains("x bncr") && !header.contains("x hapx"),
        "{text}"
    );
    let row = text.lines().find(|l| l.contains("pgsteer-pooled")).unwrap();
    assert!(row.contains("0.900"), "x base: {text}");
    assert!(row.contains("1.200"), "x bntx: {text}");
}

#[test]
fn percentages_are_signed_and_whole() {
    assert_eq!(percent(0.91), "\u{2212}9 %");
    assert_eq!(percent(1.104), "+10 %");
    assert_eq!(percent(0.998), "±0 %");
}

const METRICS: &str = "# HELP pgsteer_auto_transactions_total Transactions of route auto\n\
    # TYPE pgsteer_auto_transactions_total counter\n\
    pgsteer_auto_transactions_total{decision=\"primary_classifier\"} 1000\n\
    pgsteer_auto_transactions_total{decision=\"primary_freshness\"} 12\n\
    pgsteer_auto_transactions_total{decision=\"primary_no_replica\"} 0\n\
    pgsteer_auto_transactions_total{decision=\"replica\"} 8000\n\
    pgsteer_auto_transactions_totally_else 5\n\
    pgsteer_classify_seconds_total 0.25\n";

#[test]
fn auto_decisions_are_read_from_the_metrics_text() {
    let c = AutoCounts::parse(METRICS).unwrap();
    assert_eq!(
        c,
        AutoCounts {
            replica: 8000,
            primary_classifier: 1000,
            primary_freshness: 12,
            primary_no_replica: 0,
        }
    );
    assert_eq!(AutoCounts::parse("pgsteer_client_connections 3\n"), None);
    let before = AutoCounts {
        replica: 100,
        primary_classifier: 10,
        ..AutoCounts::default()
    };
    let d = c.since(before);
    assert_eq!(
        (d.replica, d.primary_classifier, d.total()),
        (7900, 990, 8902)
    );
    assert_eq!(AutoCounts::default().replica_share(), None);
    assert!((c.replica_share().unwrap() - 8000.0 / 9012.0).abs() < 1e-12);
}

#[test]
fn auto_is_reported_as_its_replica_share_and_against_pooled() {
    let mut r = Results::default();
    let w = "mixed-9010-8";
    let auto = |round, replica, classifier| Sample {
        per_script: vec![9 * classifier, classifier],
        auto: Some(AutoCounts {
            replica,
            primary_classifier: classifier,
            ..AutoCounts::default()
        }),
        ..sample(round, 1_200.0, Some(0.18))
    };
    put_in(&mut r, w, Target::PgsteerAuto, auto(0, 8_000, 1_000));
    put_in(&mut r, w, Target::PgsteerAuto, auto(1, 9_000, 1_000));
    put_in(
        &mut r,
        w,
        Target::PgsteerPooled,
        sample(0, 1_000.0, Some(0.12)),
    );
    let mut workload = crate::compare::workloads::standard()
        .into_iter()
        .find(|x| x.id == w)
        .unwrap();
    workload.targets = vec![Target::PgsteerPooled, Target::PgsteerAuto];
    let text = auto_routing(std::slice::from_ref(&workload), &r);
    assert!(
        text.contains(
            "89.5 % of transactions on replicas (replica 17,000 / primary_classifier 2,000 / \
             primary_freshness 0 / primary_no_replica 0; pgbench counted 24,000, 90.0 % of \
             them reads); per round: 88.9 / 90.0 %"
        ),
        "{text}"
    );
    assert!(
        text.contains("tps x 1.200 vs pgsteer-pooled (1200 vs 1000)"),
        "{text}"
    );
    assert!(text.contains("CPU/tx 15.0 vs 12.0 us (+25 %)"), "{text}");
    assert_eq!(
        auto_routing(&crate::compare::workloads::standard()[1..2], &r),
        ""
    );
    assert_eq!(thousands(0), "0");
    assert_eq!(thousands(999), "999");
    assert_eq!(thousands(1_000), "1,000");
    assert_eq!(thousands(1_234_567), "1,234,567");
}
