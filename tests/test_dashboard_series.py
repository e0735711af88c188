"""A real run feeds every series the dashboard's Connectors, Journeys and Experiments rows
query, with the label values the queries select (``converted="true"``, ``reason="goal"``).

The name check in test_observability_files.py proves the engine *registers* each metric; this
proves a run with journeys, an A/B split, a bandit and queued connectors *exports* samples of
them, so those panels are not empty in production by construction.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from http_server import WebhookServer
from shipped_metrics import ROOT, dashboard
from test_observability_files import selectors
from touchline.runner import run
from touchline.settings import load_settings

ROWS = ("Connectors", "Journeys", "Experiments")
EXAMPLES = ROOT / "examples"
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def row_targets(rows: tuple[str, ...]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(row title, panel, target) of every query in the named rows."""
    row = None
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
        elif row in rows:
            for target in panel["targets"]:
                yield row, panel, target


def wanted_labels(matchers: str | None) -> dict[str, str]:
    """The label values a selector asks for by equality (the job variable aside).

    >>> wanted_labels('job=~"$job", converted="true", outcome!="duplicate"')
    {'converted': 'true'}
    """
    return {name: value for name, op, value in _MATCHER.findall(matchers or "") if op == "=" and name != "job"}


def test_a_run_feeds_every_series_of_the_connector_journey_and_experiment_rows(tmp_path: Path):
    with WebhookServer() as hook:
        settings = load_settings(EXAMPLES / "experiments.toml", {
            "journeys.files": [EXAMPLES / "journeys" / "abandoned_cart.yaml"],
            "simulator.contacts": 800, "simulator.days": 21, "simulator.closed_loop": True,
            "output.dir": tmp_path / "out", "metrics.enabled": False,
            "delivery.channels": {channel: {"kind": "webhook", "url": hook.url} for channel in ("email", "push")},
        })
        registry = CollectorRegistry()
        run(settings, progress=None, registry=registry)
        assert hook.delivered, "the webhook connectors delivered nothing"
    samples = [(s.name, s.labels) for family in registry.collect() for s in family.samples]
    checked = set()
    for row, panel, target in row_targets(ROWS):
        for name, matchers in selectors(target["expr"]):
            wanted = wanted_labels(matchers)
            found = any(n == name and all(labels.get(k) == v for k, v in wanted.items()) for n, labels in samples)
            assert found, f"row {row}, panel {panel['title']!r}: the run exported no {name} with {wanted or 'any labels'}"
            checked.add(row)
    assert checked == set(ROWS)
