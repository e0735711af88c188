"""The engine dataflow: source -> engine step -> decisions and dead letters.

Wiring only; the logic is in :mod:`touchline.flows.step` and ``touchline.decisions``.
Items are whole micro-batches (lists of raw lines), so Bytewax's per-item cost is
paid once per batch and the state store sees one round trip per operation per batch.
"""

from __future__ import annotations

from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from touchline.flows.step import BatchResult, Engine


def build_flow(
    source: Source,
    engine: Engine,
    decisions_sink: Sink,
    dead_letter_sink: Sink,
    name: str = "touchline",
) -> Dataflow:
    """Wire the engine flow."""
    flow = Dataflow(name)
    raw = op.input("events", flow, source)
    results = op.map("process", raw, engine.process_or_halt)
    decisions = op.flat_map("decisions", results, _decisions)
    dead = op.flat_map("dead_letters", results, _dead_letters)
    op.output("decisions_out", op.key_on("decisions_key", decisions, _one_key), decisions_sink)
    op.output("dead_letters_out", op.key_on("dead_letters_key", dead, _one_key), dead_letter_sink)
    return flow


def _decisions(result: BatchResult) -> list[dict[str, Any]]:
    return result.decisions


def _dead_letters(result: BatchResult) -> list[dict[str, Any]]:
    return result.dead_letters


def _one_key(_record: dict[str, Any]) -> str:
    return "all"
