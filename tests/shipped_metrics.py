"""What ``metrics/`` ships (the Grafana dashboard, the Prometheus rules) and the registry the
engine exposes, for the tests that keep them in step."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from touchline.metrics.api_metrics import ApiMetrics
from touchline.metrics.connectors import ConnectorMetrics
from touchline.metrics.engine_metrics import EngineMetrics

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "metrics" / "alerts" / "touchline.rules.yml"
RULE_TESTS = ROOT / "metrics" / "alerts" / "touchline.rules.test.yml"
DASHBOARD = ROOT / "metrics" / "dashboards" / "touchline.json"
RUNBOOK = ROOT / "docs" / "runbook.md"


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_targets() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) of every query in the dashboard, panels inside collapsed rows included."""
    for top in dashboard()["panels"]:
        for panel in [top, *top.get("panels", [])]:
            for target in panel.get("targets", []):
                yield panel, target


def substituted(expr: str, substitutes: Mapping[str, str]) -> str:
    """``expr`` with Grafana's variables filled in, as Grafana would before sending it."""
    for variable, value in substitutes.items():
        expr = expr.replace(variable, value)
    return expr


def engine_registry() -> CollectorRegistry:
    """A fresh registry with every series the engine, its channel connectors and the HTTP API register."""
    registry = CollectorRegistry()
    EngineMetrics(registry)
    ConnectorMetrics(registry)
    ApiMetrics(registry)
    return registry


def markdown_anchors(text: str) -> list[str]:
    """The anchors GitHub gives a Markdown file's headings: lower case, punctuation dropped,
    spaces as hyphens, a repeat numbered (``-1``, ``-2``); lines in code fences are not headings."""
    anchors: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            repeats = sum(1 for a in anchors if a == slug or re.fullmatch(re.escape(slug) + r"-\d+", a))
            anchors.append(f"{slug}-{repeats}" if repeats else slug)
    return anchors
