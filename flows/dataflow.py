"""The engine dataflow: source -> engine step -> decisions, deliveries and dead letters.

Wiring only; the logic is in :mod:`touchline.batch_service` and ``touchline.decisions``.
Items are whole micro-batches (lists of raw lines), so Bytewax's per-item cost is
paid once per batch and the state store sees one round trip per operation per batch.
"""

from __future__ import annotations

from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import FixedPartitionedSink, Sink

from touchline.flows.emit import timed
from touchline.batch_service import Engine
from touchline.decisions.batches import BatchResult


def build_flow(
    source: Source[Any],
    engine: Engine,
    decisions_sink: Sink[Any],
    dead_letter_sink: Sink[Any],
    delivery_sink: Sink[Any] | None = None,
    name: str = "touchline",
    experiments_sink: Sink[Any] | None = None,
    no_actions_sink: Sink[Any] | None = None,
) -> Dataflow:
    """Wire the engine flow. Decisions go to the decisions output (the audit trail) and,
    when given, to the channel connectors; exposures, outcomes and conversions to the
    experiments output, and the decision points where every candidate was held back to
    the no-action output, each when given. Every output's write time is the engine's "emit"
    stage; the decisions output's also ends the event-to-decision latency."""
    decisions_sink = timed(decisions_sink, engine.decisions_emitted)
    dead_letter_sink = timed(dead_letter_sink, engine.emitted)
    if delivery_sink is not None:
        delivery_sink = timed(delivery_sink, engine.emitted)
    if experiments_sink is not None:
        experiments_sink = timed(experiments_sink, engine.emitted)
    if no_actions_sink is not None:
        no_actions_sink = timed(no_actions_sink, engine.emitted)
    flow = Dataflow(name)
    raw = op.input("events", flow, source)
    results = op.map("process", raw, engine.process_or_halt)
    decisions = op.flat_map("decisions", results, _decisions)
    dead = op.flat_map("dead_letters", results, _dead_letters)
    _output("decisions_out", decisions, decisions_sink)
    _output("dead_letters_out", dead, dead_letter_sink)
    if delivery_sink is not None:
        op.output("deliver", decisions, delivery_sink)
    if experiments_sink is not None:
        _output("experiments_out", op.flat_map("experiments", results, _experiments), experiments_sink)
    if no_actions_sink is not None:
        _output("no_actions_out", op.flat_map("no_actions", results, _no_actions), no_actions_sink)
    return flow


def _output(step_id: str, stream: Any, sink: Sink[Any]) -> None:
    """A partitioned sink (one file) needs keyed items; a dynamic one (Kafka) takes them as they are."""
    if isinstance(sink, FixedPartitionedSink):
        stream = op.key_on(f"{step_id}_key", stream, _one_key)
    op.output(step_id, stream, sink)


def _decisions(result: BatchResult) -> list[dict[str, Any]]:
    return result.decisions


def _experiments(result: BatchResult) -> list[dict[str, Any]]:
    return result.experiments


def _no_actions(result: BatchResult) -> list[dict[str, Any]]:
    return result.no_actions


def _dead_letters(result: BatchResult) -> list[dict[str, Any]]:
    return result.dead_letters


def _one_key(_record: dict[str, Any]) -> str:
    return "all"
