"""A real Prometheus scrapes a running engine; its HTTP API answers the questions the
dashboard and the alerts ask (throughput, p99 latency), so those queries are known to work."""

from __future__ import annotations

import math
import re
import time

import pytest

from live_engine import LiveEngine
from prometheus_server import PrometheusServer
from shipped_metrics import RULES, dashboard_targets, substituted
from waiting import wait_for



def poll(fn, seconds: float, what: str):
    return wait_for(fn, what, timeout=seconds, interval=0.5)


def scalar(result: list[dict]) -> float | None:
    """The value of a one-element instant vector, if it has one and it is a number."""
    if len(result) != 1:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) or math.isinf(value) else value


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every dashboard target, with Grafana's variables filled in
    as Grafana would for this job."""
    filled = {"$__rate_interval": "15s", "$job": "touchline"}
    return [(panel.get("title", "?"), substituted(target["expr"], filled))
            for panel, target in dashboard_targets() if target.get("expr")]


@pytest.fixture
def scraped_engine(tmp_path):
    # A fresh lead model learns its labels at the horizon (days away on the wall clock), so in
    # a short live run nobody is handed to sales and nothing is frequency-capped; a half
    # holdout gives the suppression panels live data, as an A/B-testing operator would see.
    with LiveEngine(tmp_path, rate=300, **{"policy.holdout_share": 0.5}) as live:
        prom = PrometheusServer(tmp_path / "prometheus", [live.url.removeprefix("http://")], rule_files=[RULES])
        prom.start()
        try:
            yield live, prom
        finally:
            prom.stop()


def test_prometheus_scrapes_the_engine_and_answers_throughput_and_p99(scraped_engine):
    live, prom = scraped_engine
    up = poll(lambda: scalar(prom.query('up{job="touchline"}')), 30, "a first scrape")
    assert up == 1.0
    started, fed_before = time.monotonic(), live.fed
    # rate() over a window the series only partly covers underestimates: wait for a full one
    poll(lambda: (scalar(prom.query('count_over_time(up{job="touchline"}[10s])')) or 0) >= 9, 30,
         "10 s of scrapes")
    throughput = poll(lambda: scalar(prom.query('sum(rate(touchline_events_total{job="touchline"}[10s]))')),
                      40, "a throughput figure")
    p99 = poll(lambda: scalar(prom.query(
        'histogram_quantile(0.99, sum by (le) (rate(touchline_processing_latency_seconds_bucket{job="touchline"}[10s])))'
    )), 40, "a p99 figure")
    feed_rate = (live.fed - fed_before) / (time.monotonic() - started)
    assert 0.5 * feed_rate < throughput < 2 * feed_rate, (throughput, feed_rate)
    assert 0 < p99 < 10  # live batches take milliseconds; the bucket layout resolves sub-second values
    e2e = poll(lambda: scalar(prom.query(
        'histogram_quantile(0.5, sum by (le) (rate(touchline_event_to_decision_seconds_bucket{job="touchline"}[30s])))'
    )), 40, "an event-to-decision median")
    assert 0 <= e2e < 10


def test_every_dashboard_query_and_rule_runs_against_live_data(scraped_engine):
    live, prom = scraped_engine
    poll(lambda: scalar(prom.query('sum(rate(touchline_decisions_total{job="touchline"}[15s]))')), 40,
         "decisions in Prometheus")
    queries = dashboard_queries()
    assert len(queries) >= 20
    empty = []
    for title, expr in queries:
        if not prom.query(expr):  # raises with Prometheus' error if the query is invalid
            empty.append((title, expr))
    # Without Kafka, connectors or labelled models in a short live run some panels are
    # rightly empty; the ones an SRE opens first must not be.
    for must in ("throughput", "latency", "dead letter", "suppression", "stage"):
        hits = [t for t, _ in queries if must in t.lower()]
        assert hits, f"no dashboard panel about {must}"
        assert any(t not in {e[0] for e in empty} for t in hits), f"every {must} panel is empty: {empty}"
    groups = poll(lambda: (g := prom.api("rules")["groups"]) and all(r.get("lastEvaluation", "").startswith("2")
                                                                       and not r["lastEvaluation"].startswith("0001")
                                                                       for grp in g for r in grp["rules"]) and g,
                  30, "every rule evaluated")
    rules = [r for g in groups for r in g["rules"]]
    assert rules and all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules
                                                               if r["health"] != "ok"]
    recorded = [r["name"] for r in rules if r["type"] == "recording"]
    assert any(re.search(r"rate", name) for name in recorded), recorded
