"""The Grafana dashboard and the Prometheus rules stay valid and in step with the engine.

promtool checks and unit-tests the rule file and parses every dashboard query (as recording
rules of a throwaway rule file); every metric either references is one the engine registers.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipped_metrics import (RULE_TESTS, RULES, RUNBOOK, dashboard, dashboard_targets, engine_registry,
                             markdown_anchors, substituted)
from touchline.metrics.engine_metrics import LATENCY_BUCKETS


DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
JOB_MATCHER = 'job=~"$job"'
ALLOWED_VARIABLES = {"job", "__rate_interval"}
#: What a test query substitutes for the dashboard variables.
SUBSTITUTES = {"$__rate_interval": "1m", "$job": ".*"}

#: Rows of the dashboard and the panels each must hold.
REQUIRED_PANELS = {
    "Throughput": ["Throughput by event type", "Throughput by source", "Bytes in/s by source",
                   "Decisions/s by action and channel"],
    "Latency": ["Processing latency", "Latency SLO: events within 0.5 s", "Event-to-decision latency",
                "Stage latency p99 by stage", "State store latency p99 by op", "Connector latency p99 by channel"],
    "Errors": ["Dead letters/s by reason", "Dead-letter share of records", "State store errors/s by op",
               "State store up", "Connector errors/s by channel and error", "Connector failure share by channel",
               "Retries/s by channel"],
    "Connectors": ["Connector queue depth by channel", "Deliveries/s by channel and outcome"],
    "Suppression mix": ["Suppression share by reason", "Suppressions vs decisions"],
    "Journeys": ["Journey entries/s by journey", "Journey exits/s by journey and reason",
                 "Journey conversions/s by journey", "Journey step sends/s by journey and step",
                 "Journey steps held back/s by journey and handling", "Goal share of journey exits (1h)"],
    "Experiments": ["Exposures/s by experiment and arm", "Conversion rate by experiment and arm (1d)",
                    "Bandit choices/s by experiment and arm", "Attributed share of conversions",
                    "Attributed conversions/s by channel and model"],
    "Model quality": ["ROC AUC by model and role", "Log loss by model and role", "Calibration error by model and role",
                      "Drift events", "Label delay p50 by model"],
    "Kafka lag": ["Consumer lag by topic and partition", "Consumer lag by topic"],
    "Identity drift": ["Share of events by anonymous identity", "Alias merges per minute", "New ids/s by identity",
                       "Missing attributes/s by type and attribute"],
    "Process": ["Resident memory", "CPU", "Open file descriptors", "Build"],
}

#: Series not registered by the engine's own metric classes: Prometheus' target health, the
#: process/platform collectors, and Bytewax's Kafka lag gauge (re-exported when reading Kafka).
FOREIGN_METRICS = re.compile(r"up|process_\w+|python_\w+|bytewax_kafka_consumer_lag")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' r"|'(?:[^'\\]|\\.)*'")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGE_OR_OFFSET = re.compile(r"\[[^\]]*\]|\boffset\s+-?\w+")
_IDENTIFIER = re.compile(r"(?<![\w:.])[a-zA-Z_:][\w:]*")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
             "unless", "inf", "nan"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        pytest.fail("promtool not found: install the Debian package 'prometheus' (the README's test command does)")


def selectors(expr: str) -> list[tuple[str, str | None]]:
    """Each vector selector of a PromQL expression: (metric name, text between its braces or None).

    >>> selectors('sum by (job) (rate(a_total{job=~"x", le="0.5"}[5m] offset 1h)) / on (job) b or vector(1)')
    [('a_total', 'job=~"x", le="0.5"'), ('b', None)]
    """
    # Blank out what is not a metric name, keeping positions: strings, grouping clauses,
    # ranges, offsets. What is left are metric names, function names and keywords.
    masked = _STRING.sub(lambda m: '"' + " " * (len(m.group()) - 2) + '"', expr)
    for pattern in (_GROUPING, _RANGE_OR_OFFSET):
        masked = pattern.sub(lambda m: " " * len(m.group()), masked)
    braces = [(m.start(), m.end()) for m in re.finditer(r"\{[^}]*\}", masked)]
    found: list[tuple[str, str | None]] = []
    for m in _IDENTIFIER.finditer(masked):
        name, rest = m.group(), masked[m.end():]
        if name in _KEYWORDS or re.match(r"\s*\(", rest) or any(a < m.start() < b for a, b in braces):
            continue
        brace = re.match(r"\s*\{[^}]*\}", rest)
        if brace is None:
            found.append((name, None))
        else:
            start = m.end() + brace.group().index("{")
            found.append((name, expr[start + 1:m.end() + brace.end() - 1]))
    return found


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


# ---------------------------------------------------------------------------------- rules
def test_rules_pass_promtool_check():
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_pass_their_unit_tests():
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_firing_unit_test_and_the_required_labels():
    alerts = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    tested = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert set(alerts) - tested == set(), "alerts without a unit test where they fire"
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name


def test_every_alert_links_its_own_section_of_the_runbook():
    """runbook_url is docs/runbook.md#<alert in lower case>, and that heading exists there."""
    anchors = markdown_anchors(RUNBOOK.read_text())
    for rule in rules():
        if "alert" not in rule:
            continue
        url = rule["annotations"].get("runbook_url", "")
        path, _, anchor = url.partition("#")
        assert path == "docs/runbook.md", f"{rule['alert']}: runbook_url {url!r} is not docs/runbook.md#..."
        assert anchor == rule["alert"].lower(), f"{rule['alert']}: runbook_url {url!r} names another section"
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in {RUNBOOK.name}"
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    sections = set(re.findall(r"^## (\S+)\s*$", RUNBOOK.read_text(), re.MULTILINE))
    assert sections == alerts, f"runbook sections without an alert: {sections - alerts}"
    links = set(re.findall(r"\]\(#([^)]+)\)", RUNBOOK.read_text()))
    assert links <= set(anchors), f"links to no section of the runbook: {links - set(anchors)}"


def test_markdown_anchors_follow_githubs_rule():
    assert markdown_anchors("# Touchline runbook\n## TouchlineEngineDown\n```\n# not a heading\n```\n"
                            "## Foo: bar (baz)\n## Foo: bar (baz)\n") == [
        "touchline-runbook", "touchlineenginedown", "foo-bar-baz", "foo-bar-baz-1"]


def test_latency_slo_threshold_is_a_bucket_bound():
    les = {float(le) for rule in rules() for le in re.findall(r'le="([^"]+)"', rule["expr"])}
    assert les == {0.5} and 0.5 in LATENCY_BUCKETS


# ------------------------------------------------------------------------------ dashboard
def test_dashboard_has_the_rows_and_panels():
    board = dashboard()
    assert board["schemaVersion"] >= 39
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    job = variables["job"]
    assert job["type"] == "query" and job["includeAll"] and job["multi"]
    assert job["datasource"] == DATASOURCE and "label_values(touchline_build_info, job)" in json.dumps(job["query"])

    rows: dict[str, list[str]] = {}
    current: list[str] | None = None
    for panel in board["panels"]:
        if panel["type"] == "row":
            current = rows.setdefault(panel["title"], [])
            continue
        assert current is not None, f"panel {panel['title']!r} before the first row"
        current.append(panel["title"])
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        if panel["type"] == "timeseries":
            assert panel["fieldConfig"]["defaults"].get("unit"), f"no unit on {panel['title']!r}"
    for row, titles in REQUIRED_PANELS.items():
        assert row in rows, f"row {row!r} missing"
        assert set(titles) <= set(rows[row]), f"row {row!r} lacks {set(titles) - set(rows[row])}"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"


def test_dashboard_queries_filter_by_job_and_use_only_known_variables():
    for panel, target in dashboard_targets():
        expr, where = target["expr"], f"{panel['title']!r} {target['refId']}"
        assert target["datasource"] == DATASOURCE, where
        used = {next(g for g in m.groups() if g) for m in _VARIABLE.finditer(expr)}
        assert used <= ALLOWED_VARIABLES, f"{where} uses {used - ALLOWED_VARIABLES}"
        found = selectors(expr)
        assert found, where
        for name, matchers in found:
            assert matchers is not None and JOB_MATCHER in matchers, f"{where}: {name} not filtered by {JOB_MATCHER}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path):
    records = [{"record": f"dashboard:panel{panel['id']}_{target['refId']}", "expr": substituted(target["expr"], SUBSTITUTES)}
               for panel, target in dashboard_targets()]
    assert not [r for r in records if "$" in r["expr"]]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- metric names
def registered_series() -> set[str]:
    """Every sample name the engine's registry can expose, labelled families included (which
    have no samples until a child is created)."""
    registry = engine_registry()
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"],
                "summary": ["", "_count", "_sum"], "info": ["_info"], "stateset": [""], "gaugehistogram":
                ["_bucket", "_gcount", "_gsum"], "unknown": [""]}
    names = set()
    for family in registry.collect():
        names |= {family.name + suffix for suffix in suffixes[family.type]}
        names |= {sample.name for sample in family.samples}
    return names


def test_every_metric_referenced_is_registered_by_the_engine():
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    exprs = [(f"dashboard {panel['title']!r}", target["expr"]) for panel, target in dashboard_targets()]
    exprs += [(f"rule {rule.get('alert') or rule['record']}", rule["expr"]) for rule in rules()]
    known = registered_series()
    unknown = set()
    for where, expr in exprs:
        for name, _ in selectors(expr):
            if ":" in name:
                assert name in recorded, f"{where}: recording rule {name} is not defined"
            elif not FOREIGN_METRICS.fullmatch(name) and name not in known:
                unknown.add(name)
    assert unknown == set(), f"metrics the engine does not register: {sorted(unknown)}"
