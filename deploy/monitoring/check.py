#!/usr/bin/env python3
"""Static checks for deploy/monitoring (run by scripts/test; standard library only).

- dashboard.json: every query (panel targets, annotations, template variables) uses only
  pgsteer's metric names (catches typos such as pgsteer_transaction_total), known PromQL
  functions, and dashboard variables that exist; panel ids are unique; panels use the
  ${DS_PROMETHEUS} data source.
- alerts.yaml: the rule expressions use only pgsteer's metric names (and `up`).
- prometheusrule.yaml: its spec is alerts.yaml from `groups:` on, indented by two spaces.
- every pgsteer_* family listed here is still defined in proxy/src/metrics.rs.
- with --promtool: every dashboard expression parses (`promtool check rules` on a generated
  file of recording rules, Grafana's $variables replaced by plain values).

Usage: python3 deploy/monitoring/check.py [--promtool]   (from anywhere)
"""

import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# The families pgsteer exports (proxy/src/metrics.rs), histograms separately.
COUNTERS_GAUGES = """
pgsteer_build_info
pgsteer_client_connections
pgsteer_client_connections_accepted_total
pgsteer_client_connections_rejected_total
pgsteer_sessions_routed_total
pgsteer_backend_sessions
pgsteer_backend_connect_failures_total
pgsteer_transactions_total
pgsteer_queries_total
pgsteer_backend_sent_bytes_total
pgsteer_backend_received_bytes_total
pgsteer_member_role
pgsteer_topology_generation
pgsteer_role_changes_total
pgsteer_discovery_errors_total
pgsteer_discovery_staleness_seconds
pgsteer_replication_lag_bytes
pgsteer_replication_lag_seconds
pgsteer_probe_duration_seconds
pgsteer_sessions_drained_total
pgsteer_held_connections
pgsteer_refused_after_hold_total
pgsteer_cancel_requests_total
pgsteer_peer_requests_total
pgsteer_transactions_held
pgsteer_switchover_phase
pgsteer_switchovers_total
pgsteer_switchover_transactions_total
pgsteer_pool_transactions_lost_total
pgsteer_pool_deferred_begins_total
""".split()
HISTOGRAMS = """
pgsteer_backend_connect_seconds
pgsteer_query_duration_seconds
pgsteer_transaction_duration_seconds
pgsteer_reroute_seconds
pgsteer_held_seconds
""".split()
# The prometheus crate's process collector.
PROCESS = """
process_cpu_seconds_total
process_open_fds
process_max_fds
process_virtual_memory_bytes
process_resident_memory_bytes
process_start_time_seconds
process_threads
""".split()

METRICS = set(COUNTERS_GAUGES) | set(PROCESS)
for h in HISTOGRAMS:
    METRICS |= {h + "_bucket", h + "_sum", h + "_count"}
# Alert rules may also use the series Prometheus writes for every target.
ALERT_METRICS = METRICS | {"up"}

FUNCTIONS = set("""
abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp
clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month
deg delta deriv exp floor histogram_count histogram_fraction histogram_quantile histogram_stddev
histogram_stdvar histogram_sum holt_winters hour idelta increase irate label_join label_replace
last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute month pi
predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn sin sinh
sort sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh time timestamp
vector year
sum min max avg group stddev stdvar count count_values bottomk topk quantile
""".split())
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "group_left", "group_right"}

GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
IDENT = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")


def strip_promql(expr):
    """Removes strings, label matchers, ranges, grouping clauses and Grafana variables."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^{}]*\}", " ", s)
    s = re.sub(r"\[[^\[\]]*\]", " ", s)
    s = GROUPING.sub(" ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)
    return s


def names_in(expr):
    """(metric names, function names) an expression mentions."""
    metrics, functions = set(), set()
    for m in IDENT.finditer(strip_promql(expr)):
        word, call = m.group(1), m.group(2)
        if word in KEYWORDS:
            continue
        if call:
            functions.add(word)
        else:
            metrics.add(word)
    return metrics, functions


def check_expr(where, expr, allowed, errors):
    metrics, functions = names_in(expr)
    for name in sorted(metrics - allowed):
        errors.append(f"{where}: unknown metric {name!r} in: {expr.strip()}")
    for name in sorted(functions - FUNCTIONS):
        errors.append(f"{where}: unknown PromQL function {name!r} in: {expr.strip()}")


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def dashboard_queries(d, errors):
    """[(where, expr)] of every query in the dashboard; checks its structure on the way."""
    queries = []
    variables = {v["name"] for v in d.get("templating", {}).get("list", [])}
    for needed in ("DS_PROMETHEUS", "pod"):
        if needed not in variables:
            errors.append(f"dashboard.json: no template variable {needed!r}")
    ids = set()
    for p in walk_panels(d.get("panels", [])):
        where = f"dashboard.json panel {p.get('title', '?')!r}"
        if p.get("id") in ids:
            errors.append(f"{where}: duplicate panel id {p.get('id')}")
        ids.add(p.get("id"))
        if p.get("type") == "row":
            continue
        if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
            errors.append(f"{where}: data source is not ${{DS_PROMETHEUS}}")
        if not p.get("targets"):
            errors.append(f"{where}: no targets")
        for t in p.get("targets", []):
            if not t.get("expr", "").strip():
                errors.append(f"{where}: target {t.get('refId')} has no expr")
                continue
            queries.append((where, t["expr"]))
    for a in d.get("annotations", {}).get("list", []):
        if a.get("expr"):
            queries.append((f"dashboard.json annotation {a.get('name')!r}", a["expr"]))
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("definition") or v.get("query", {}).get("query", "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", q, re.S)
        if not m:
            errors.append(f"dashboard.json variable {v['name']!r}: expected label_values(<selector>, <label>)")
            continue
        queries.append((f"dashboard.json variable {v['name']!r}", m.group(1)))
    builtin = {"__rate_interval", "__interval", "__range", "__range_s", "__range_ms", "__interval_ms",
               "__name", "__all"}
    for where, expr in queries:
        for var in re.findall(r"\$\{?(\w+)", expr):
            if var not in variables and var not in builtin:
                errors.append(f"{where}: undefined dashboard variable ${var} in: {expr.strip()}")
    return queries


def rule_exprs(text):
    """The `expr:` values of a rules file (block scalars or one-liners), without a YAML parser."""
    exprs, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:- )?expr:\s*(.*)$", lines[i])
        i += 1
        if not m:
            continue
        indent, rest = len(m.group(1)), m.group(2).strip()
        if rest and rest[0] not in "|>":
            exprs.append(rest.strip("'\""))
            continue
        body = []
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        exprs.append("\n".join(body))
    return exprs


def check_prometheusrule(alerts_text, rule_text, errors):
    want = alerts_text[alerts_text.index("\ngroups:") + 1:].splitlines()
    if "\nspec:\n" not in rule_text:
        errors.append("prometheusrule.yaml: no `spec:` line")
        return
    got = rule_text[rule_text.index("\nspec:\n") + len("\nspec:\n"):].splitlines()
    got = [line[2:] if line.startswith("  ") else line for line in got]
    if [line.rstrip() for line in want] != [line.rstrip() for line in got]:
        for n, (a, b) in enumerate(zip(want + [""] * len(got), got + [""] * len(want))):
            if a.rstrip() != b.rstrip():
                errors.append(f"prometheusrule.yaml is out of sync with alerts.yaml (groups line {n + 1}: "
                              f"{a.strip()!r} != {b.strip()!r}); regenerate it, see its header")
                break


def check_metrics_source(errors):
    path = os.path.join(ROOT, "proxy", "src", "metrics.rs")
    with open(path, encoding="utf-8") as f:
        src = f.read()
    defined = set(re.findall(r'"(pgsteer_\w+)"', src))
    for name in sorted(set(COUNTERS_GAUGES) | set(HISTOGRAMS)):
        if name not in defined:
            errors.append(f"proxy/src/metrics.rs no longer defines {name} (used by deploy/monitoring)")


def promtool_parse(queries, errors):
    """Parses every dashboard query with promtool, as recording rules."""
    subst = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}

    def plain(expr):
        expr = re.sub(r"\$\{?(__\w+)\}?", lambda m: subst.get(m.group(1), "1m"), expr)
        return re.sub(r"\$\{?(\w+)\}?", "x", expr)

    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for n, (_, expr) in enumerate(queries):
        lines.append(f"      - record: dashboard:query_{n}")
        lines.append("        expr: " + json.dumps(plain(expr)))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    try:
        r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
        if r.returncode != 0:
            out = (r.stdout + r.stderr).strip()
            for m in re.finditer(r"query_(\d+)", out):
                where, expr = queries[int(m.group(1))]
                out += f"\n  query_{m.group(1)} is {where}: {expr.strip()}"
            errors.append("promtool cannot parse a dashboard query:\n" + out)
    finally:
        os.unlink(f.name)


def main():
    errors = []
    with open(os.path.join(HERE, "dashboard.json"), encoding="utf-8") as f:
        dashboard = json.load(f)
    queries = dashboard_queries(dashboard, errors)
    for where, expr in queries:
        check_expr(where, expr, METRICS, errors)

    with open(os.path.join(HERE, "alerts.yaml"), encoding="utf-8") as f:
        alerts = f.read()
    exprs = rule_exprs(alerts)
    if not exprs:
        errors.append("alerts.yaml: no expr found")
    for expr in exprs:
        check_expr("alerts.yaml", expr, ALERT_METRICS, errors)

    with open(os.path.join(HERE, "prometheusrule.yaml"), encoding="utf-8") as f:
        check_prometheusrule(alerts, f.read(), errors)
    check_metrics_source(errors)
    if "--promtool" in sys.argv[1:]:
        promtool_parse(queries, errors)

    for e in errors:
        print("deploy/monitoring/check.py: " + e, file=sys.stderr)
    if errors:
        return 1
    print(f"deploy/monitoring: {len(queries)} dashboard queries and {len(exprs)} alert expressions "
          "use known metrics; prometheusrule.yaml matches alerts.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
