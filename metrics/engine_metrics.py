"""Prometheus metrics of the engine, on an injected registry.

Label sets are bounded by construction: event types outside the known list count as
``other``, dead-letter and suppression reasons are fixed codes, and no contact id is
ever a label. Counters are fed once per micro-batch from local tallies, because a
labelled ``inc()`` per event would cost more than the event's own processing.

>>> from prometheus_client import CollectorRegistry
>>> reg = CollectorRegistry()
>>> m = EngineMetrics(reg)
>>> m.count_events({"page_view": 3, "wishlist_add": 1}, "jsonl")
>>> reg.get_sample_value("touchline_events_total", {"type": "other", "source": "jsonl"})
1.0

Process metrics (``process_*``, ``python_gc_*``, ``python_info``) are on the same registry:

>>> reg.get_sample_value("process_resident_memory_bytes") > 0
True
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from typing import Mapping, TypeVar

from prometheus_client import (
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    CollectorRegistry,
    Counter as PromCounter,
    Gauge,
    Histogram,
    Info,
)

from touchline.decisions.events import KNOWN_TYPES
from touchline.metrics.reach import DailyReach
from touchline.metrics.experiments import ExperimentMetrics
from touchline.metrics.model_metrics import ModelMetrics

#: A tally's key: one label value, or a tuple of them.
LabelValues = TypeVar("LabelValues", bound=str | tuple[str, ...])

#: Latency buckets (seconds) that resolve sub-second SLOs and still show slow tails.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Per-batch stage times are often well under a millisecond.
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, *LATENCY_BUCKETS[:-3])
#: The stages of a batch, in order (``touchline_stage_latency_seconds{stage}``).
STAGES = ("parse", "state", "score", "policy", "emit")
#: ``touchline_identity_events_total{identity}``: how an applied event's identity resolved.
IDENTITIES = ("known", "anonymous_resolved", "anonymous_unresolved")
SCORE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))


class EngineMetrics:
    """All engine series; create one per registry (tests use a fresh registry)."""

    def __init__(self, registry: CollectorRegistry, reach_alert_share: float = 0.2) -> None:
        self.registry = registry
        self.events = PromCounter("touchline_events", "Valid events applied, by type and source kind.",
                                  ["type", "source"], registry=registry)
        self.received_bytes = PromCounter(
            "touchline_received_bytes", "Raw event bytes read, invalid events included, by source kind.", ["source"],
            registry=registry)
        self.duplicates = PromCounter(
            "touchline_duplicate_events", "Events ignored because their event_id was already applied.", registry=registry
        )
        self.erased_events = PromCounter(
            "touchline_erased_events", "Events dropped because their contact or anonymous id was erased (never "
            "stored, decided on or dead-lettered).", registry=registry)
        self.feedback = PromCounter(
            "touchline_feedback_events",
            "Channel feedback applied (delivered, open, click, reply, bounce, unsubscribe), by channel, outcome "
            "and whether it named its decision id.", ["channel", "outcome", "linked"], registry=registry)
        self.journey_entries = PromCounter(
            "touchline_journey_entries", "Contacts entering a journey.", ["journey"], registry=registry)
        self.journey_exits = PromCounter(
            "touchline_journey_exits", "Contacts leaving a journey, by reason (goal, unsubscribed, preempted, "
            "completed; removed: the journey is gone from the files; unknown_version: no definition of the version "
            "they are in is kept).", ["journey", "reason"], registry=registry)
        self.journey_sends = PromCounter(
            "touchline_journey_step_sends", "Journey steps sent (won their decision point).", ["journey", "step"],
            registry=registry)
        self.journey_conversions = PromCounter(
            "touchline_journey_conversions", "Contacts reaching a journey's goal.", ["journey"], registry=registry)
        self.journey_suppressed = PromCounter(
            "touchline_journey_steps_suppressed", "Journey send steps held back, by what the journey did "
            "(deferred, skipped).", ["journey", "step", "handling"], registry=registry)
        self.dead_letters = PromCounter(
            "touchline_dead_letters", "Records sent to the dead-letter output, by reason.", ["reason"], registry=registry
        )
        self.out_of_order = PromCounter(
            "touchline_events_out_of_order", "Events later than engine.allowed_lateness_seconds behind their input "
            "partition's clock: processed at once, out of event-time order.", registry=registry)
        self.held_events = Gauge(
            "touchline_events_held", "Events held back to be processed in event-time order (or waiting for others "
            "to agree on a jump of the clock).", registry=registry)
        self.decisions = PromCounter(
            "touchline_decisions", "Decisions emitted, by action and channel.", ["action", "channel"], registry=registry
        )
        self.suppressions = PromCounter(
            "touchline_suppressions", "Candidate actions held back, by reason.", ["reason"], registry=registry
        )
        self.no_action_points = PromCounter(
            "touchline_no_action_points", "Decision points where every candidate was held back (nothing sent), by "
            "whether a no-action record was written (audit.no_action_share).", ["recorded"], registry=registry)
        self.labels = PromCounter(
            "touchline_model_labels", "Labels resolved and learned from, by model and label.", ["model", "label"],
            registry=registry,
        )
        self.timers_fired = PromCounter(
            "touchline_timers_fired", "Timers that came due on the engine clock, by kind.", ["kind"], registry=registry
        )
        self.event_to_decision = Histogram(
            "touchline_event_to_decision_seconds",
            "Event time of the trigger to the decision written to the decisions output (live, wall-clock mode "
            "only: a replay's event times are in the past).",
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.processing = Histogram(
            "touchline_processing_latency_seconds",
            "Wall time from an event entering the engine to its processing being emitted.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.stage_latency = Histogram(
            "touchline_stage_latency_seconds",
            "Time per micro-batch in each stage: parse (validate events), state (state store round trips), "
            "score (model predictions), policy (the rest of the decision loop: triggers, journeys, arbitration, "
            "experiments), emit (writing a batch's outputs).", ["stage"], buckets=STAGE_BUCKETS, registry=registry)
        self.store_latency = Histogram(
            "touchline_state_store_latency_seconds", "State store round-trip latency per batch, by operation "
            "(claim, resolve, load, reserve, save, delete, ack).", ["op"], buckets=STAGE_BUCKETS, registry=registry,
        )
        self.store_errors = PromCounter(
            "touchline_state_store_errors", "Failed state store attempts (each retried), by operation.", ["op"],
            registry=registry,
        )
        self.conflicts = PromCounter(
            "touchline_state_conflicts", "Profiles another writer changed while a batch ran (another process, an API "
            "worker, a timer), reloaded and redone.", registry=registry)
        self.store_reconnects = PromCounter(
            "touchline_state_store_reconnects", "Times the state store became reachable again after failures.",
            registry=registry,
        )
        self.store_up = Gauge(
            "touchline_state_store_up", "1 while the state store answers, 0 while it is being retried.",
            registry=registry,
        )
        self.store_up.set(1)
        self.scores = Histogram(
            "touchline_model_score", "Scores produced, by model.", ["model"], buckets=SCORE_BUCKETS, registry=registry
        )
        self.batch_size = Histogram(
            "touchline_batch_events", "Events per micro-batch.", buckets=(1, 10, 100, 500, 1000, 5000, 10000),
            registry=registry,
        )
        self.watermark = Gauge(
            "touchline_clock_seconds", "The engine clock (event-time watermark in replay), epoch seconds.",
            registry=registry,
        )
        self.identity_events = PromCounter(
            "touchline_identity_events", "Applied events by how their identity resolved: known (arrived with a "
            "contact id), anonymous_resolved (an anonymous id already linked to a contact), anonymous_unresolved.",
            ["identity"], registry=registry)
        self.identity_merges = PromCounter(
            "touchline_identity_merges", "Anonymous ids linked to a known contact (their history merged into it).",
            registry=registry)
        self.new_ids = PromCounter(
            "touchline_new_ids", "Profiles that received their first event, by identity (known, anonymous).",
            ["identity"], registry=registry)
        self.missing_attributes = PromCounter(
            "touchline_missing_attributes", "Events without an attribute the decisions rely on (a default was "
            "used), by event type and attribute.", ["type", "attribute"], registry=registry)
        #: model quality, deployment and checkpoints (see :mod:`touchline.metrics.model_metrics`)
        self.models = ModelMetrics(registry)
        self.experiments = ExperimentMetrics(registry)
        #: each action's reach today against the known contacts (see :mod:`touchline.metrics.reach`)
        self.reach = DailyReach(registry, reach_alert_share)
        self.build = Info("touchline_build", "Versions of the running engine and of what it runs on.",
                          registry=registry)
        self.build.info(build_labels())
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

    def count_events(self, by_type: Mapping[str, int], source: str) -> None:
        """Add a batch's event counts, folding unknown types into ``other``."""
        folded: Counter[str] = Counter()
        for type_, n in by_type.items():
            folded[type_ if type_ in KNOWN_TYPES else "other"] += n
        for type_, n in folded.items():
            self.events.labels(type_, source).inc(n)

    def count(self, counter: PromCounter, tallies: Mapping[LabelValues, int]) -> None:
        """Add a batch's tallies to a labelled counter (keys are label values)."""
        for labels, n in tallies.items():
            counter.labels(*((labels,) if isinstance(labels, str) else labels)).inc(n)


def observe_many(histogram: Histogram, value: float, times: int) -> None:
    """Record ``value`` ``times`` times in one step: what ``times`` calls of ``observe`` record
    (the sum up to float rounding), at the cost of one. Every event of a batch waits as
    long as the batch, so the per-event latency is one value observed once per event.

    >>> from prometheus_client import CollectorRegistry
    >>> reg = CollectorRegistry()
    >>> h = Histogram("t_seconds", "t", registry=reg, buckets=(0.1, 1.0))
    >>> observe_many(h, 0.5, 3)
    >>> reg.get_sample_value("t_seconds_bucket", {"le": "0.1"}), reg.get_sample_value("t_seconds_bucket", {"le": "1.0"})
    (0.0, 3.0)
    """
    histogram._sum.inc(value * times)
    histogram._buckets[bisect_left(histogram._upper_bounds, value)].inc(times)


def observe_each(histogram: Histogram, values: list[float]) -> None:
    """Record every value of ``values``: one increment per bucket instead of one per value.

    >>> from prometheus_client import CollectorRegistry
    >>> reg = CollectorRegistry()
    >>> h = Histogram("p", "p", registry=reg, buckets=(0.5, 1.0))
    >>> observe_each(h, [0.25, 0.25, 0.75])
    >>> reg.get_sample_value("p_bucket", {"le": "0.5"}), reg.get_sample_value("p_sum")
    (2.0, 1.25)
    """
    bounds = histogram._upper_bounds
    per_bucket = Counter(bisect_left(bounds, v) for v in values)
    for i, n in per_bucket.items():
        histogram._buckets[i].inc(n)
    histogram._sum.inc(sum(values))


def build_labels() -> dict[str, str]:
    """``touchline_build_info``: this engine's version and those of Python, Bytewax and River."""
    import touchline

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "unknown"

    return {"version": touchline.__version__, "python": platform.python_version(),
            "bytewax": installed("bytewax"), "river": installed("river")}
