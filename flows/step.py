"""One micro-batch through the engine: parse, load state, decide, save state, account.

The I/O half of the engine step: the state store is called three times per batch
(``begin``: identities and due timers; ``load``: the profiles; ``commit``: changed
profiles, merged-away ones and new timers), plus ``reserve`` per decision and
``delete`` per contact past retention, around the pure decision loop in
:mod:`touchline.decisions.engine`. A networked store makes each call one round trip.
Metrics are counted once per batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from touchline.decisions.clock import Clock
from touchline.decisions.engine import BatchRun, DecisionCore
from touchline.decisions.events import Event, Rejected, parse_event
from touchline.flows.models import ModelKeeper
from touchline.metrics.engine import EngineMetrics
from touchline.state.base import StateStore, StoreError

log = logging.getLogger(__name__)

#: Latency samples kept for the end-of-run percentiles (batches and decisions each).
LATENCY_SAMPLES = 200_000



@dataclass(slots=True)
class RawBatch:
    """Raw lines as read from a source, with where they came from and when."""

    lines: list[bytes]
    source: str
    first_offset: int = 0
    read_ns: int = field(default_factory=time.perf_counter_ns)
    #: Move the engine clock to at least this time after the lines (end of a
    #: simulated period, or an idle tick in live mode).
    advance_to_ms: int | None = None
    #: Per-line positions when they are not consecutive (Kafka offsets); else first_offset + i.
    offsets: list[int] | None = None


@dataclass(slots=True)
class BatchResult:
    """What one batch produced: decisions to emit and records for dead letters."""

    decisions: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]
    #: exposures, outcomes and conversions (the experiments output)
    experiments: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Totals:
    """Running tallies for the end-of-run summary (the metrics hold the same, for scrapes)."""

    events: int = 0
    lines: int = 0
    duplicates: int = 0
    by_type: Counter = field(default_factory=Counter)
    dead_letters: Counter = field(default_factory=Counter)
    decisions: Counter = field(default_factory=Counter)
    suppressions: Counter = field(default_factory=Counter)
    timers: Counter = field(default_factory=Counter)
    #: the most recent samples only, so a long live run does not grow memory without bound
    decision_latency_ms: deque = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    #: (batch latency in ms, events in it): every event of a batch waits as long as the batch
    batch_latency_ms: deque = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    first_event_ms: int | None = None
    last_event_ms: int | None = None
    store_reconnects: int = 0
    feedback: Counter = field(default_factory=Counter)
    journeys: Counter = field(default_factory=Counter)


class Engine:
    """Per-worker engine: owns the decision core (models, clock), borrows the store."""

    def __init__(self, store: StateStore, core: DecisionCore, metrics: EngineMetrics) -> None:
        self.store = store
        self.core = core
        self.metrics = metrics
        self.totals = Totals()
        health = store.health
        if health is not None:  # read at scrape time: during an outage the engine is inside a retry loop
            metrics.store_up.set_function(lambda: 1.0 if health.up else 0.0)
        #: Set when the state store (or the broker) failed for good: the run stops and reports it.
        self.failure: Exception | None = None
        #: Event clock: claim timers only this long behind the newest event (late partitions).
        self.lateness_ms = 0
        #: Set on failure, so the source stops reading (the runner's stop event).
        self.halt: threading.Event | None = None
        #: Deployment polling, promotion and checkpoints (None: models live and die with the run).
        self.keeper: ModelKeeper | None = None
        #: Called with every batch's result before it is emitted (the closed-loop simulator reacts here).
        self.listeners: list[Callable[[BatchResult], None]] = []
        #: A closed-loop simulation driving this engine (runner.ClosedLoop), if any.
        self.closed_loop: Any = None
        #: Where a simulator run records the events it was given (for reports and replays).
        self.recorded_events: Any = None
        #: The ``source`` label of this engine's event metrics (simulator, jsonl, kafka):
        #: the kind of source, never a file or topic name, so the label set stays bounded.
        self.source_kind = "unknown"
        #: Output write time since the last batch was accounted (the "emit" stage).
        self._emit_seconds = 0.0
        #: When the batch in progress started (monotonic seconds), for the liveness probe.
        self.busy_since: float | None = None

    def not_alive(self, stall_seconds: float) -> str | None:
        """Why a liveness probe should fail (restart me), or None: the run stopped on a
        failure, or one batch has been running for longer than ``stall_seconds``."""
        if self.failure is not None:
            return f"the engine stopped: {self.failure}"
        started = self.busy_since
        if started is not None and time.monotonic() - started > stall_seconds:
            return (f"one batch has been running for {time.monotonic() - started:.0f} s "
                    f"(metrics.stall_seconds = {stall_seconds:g})")
        return None

    def emitted(self, _records: list[Any], seconds: float) -> None:
        """An output wrote a batch of records (called by the timed sinks, on this worker's thread)."""
        self._emit_seconds += seconds

    def decisions_emitted(self, records: list[Any], seconds: float) -> None:
        """Decisions were written to the decisions output: in live mode, the end of their
        event-to-decision latency (event time of the trigger to now)."""
        self._emit_seconds += seconds
        if self.core.live and records:
            wall_ms = time.time_ns() / 1e6
            hist = self.metrics.event_to_decision
            for record in records:
                event_ms = record.get("event_time_ms") if isinstance(record, dict) else None
                if isinstance(event_ms, int):
                    hist.observe(max(0.0, (wall_ms - event_ms) / 1000))

    def process_or_halt(self, batch: RawBatch) -> BatchResult:
        """:meth:`process`, except that a state store that stays unreachable stops the run
        cleanly: the batch is not committed (a restart replays it) and the runner reports
        the error, instead of the dataflow dying with a backtrace."""
        if self.failure is not None:
            return BatchResult([], [])
        self.busy_since = time.monotonic()
        try:
            return self.process(batch)
        except StoreError as exc:
            self.fail(exc)
            return BatchResult([], [])
        finally:
            self.busy_since = None

    def fail(self, exc: Exception) -> None:
        """Stop the run because a dependency failed for good (thread-safe; the first error wins)."""
        if self.failure is None:
            log.error("stopping: %s", exc)
            self.failure = exc
        if self.halt is not None:
            self.halt.set()

    @property
    def models(self):
        """The live models, by name."""
        return self.core.models

    @property
    def clock(self) -> Clock:
        return self.core.clock

    # ------------------------------------------------------------------ batch
    def process(self, batch: RawBatch) -> BatchResult:
        """Run one batch end to end; the result is ready to emit."""
        if self.keeper is not None:
            self.keeper.tick()  # between batches: a swap never splits one
        started_ns = time.perf_counter_ns()
        dead: list[dict[str, Any]] = []
        events: list[Event] = []
        for i, raw in enumerate(batch.lines):
            parsed = parse_event(raw)
            if isinstance(parsed, Rejected):
                at = batch.offsets[i] if batch.offsets is not None else batch.first_offset + i
                dead.append(parsed.to_dead_letter(f"{batch.source}:{at}"))
            else:
                events.append(parsed)
        events.sort(key=lambda ev: ev.ts_ms)  # stable: ties keep arrival order
        parsed_ns = time.perf_counter_ns()
        store, timings = self.store, dict[str, float]()
        horizon = self.core.advance(events, batch.advance_to_ms)
        timer_horizon = horizon - self.lateness_ms if not self.core.live else horizon
        resolved, due = _timed(timings, "resolve", store.begin, events, timer_horizon)
        keys = {k for k, _ in resolved} | {m for _, m in resolved if m} | {k for _, k, _ in due}
        profiles = _timed(timings, "load", store.load, keys) if keys else {}
        run = BatchRun(self.core, profiles, lambda *args: _timed(timings, "reserve", store.reserve, *args))
        run_started_ns = time.perf_counter_ns()
        run.run(events, resolved, due, timer_horizon)
        run_ns = time.perf_counter_ns() - run_started_ns - int(timings.get("reserve", 0.0) * 1e9)
        live = {k: profiles[k] for k in run.touched - run.deleted}
        _timed(timings, "save", store.commit, live, run.merged_away,
               [(k, kind, due_ms) for (k, kind), due_ms in run.to_schedule.items()])
        for key in run.expired:
            _timed(timings, "delete", store.delete, key)
        dead.extend(run.dead)
        stages = {"parse": (parsed_ns - started_ns) / 1e9, "state": sum(timings.values()),
                  "score": run.score_ns / 1e9, "policy": max(0, run_ns - run.score_ns) / 1e9}
        self._account(batch, events, run, dead, timings, stages)
        result = BatchResult(run.decisions, dead, run.exp.records)
        for listener in self.listeners:
            listener(result)
        return result

    def _account(self, batch: RawBatch, events: list[Event], run: BatchRun, dead: list[dict[str, Any]],
                 timings: dict[str, float], stages: dict[str, float]) -> None:
        done_ns = time.perf_counter_ns()
        m, t = self.metrics, self.totals
        latency_ms = (done_ns - batch.read_ns) / 1e6
        n = len(events)
        t.lines += len(batch.lines)
        t.events += sum(run.by_type.values())
        t.duplicates += run.duplicates
        t.by_type.update(run.by_type)
        dead_by_reason = Counter(d["reason"] for d in dead)
        t.dead_letters.update(dead_by_reason)
        t.suppressions.update(run.suppressed)
        t.decisions.update(run.decided)
        t.timers.update(run.timers_fired)
        if n:
            t.batch_latency_ms.append((latency_ms, n))
            first, last = events[0].ts_ms, events[-1].ts_ms
            t.first_event_ms = first if t.first_event_ms is None else min(t.first_event_ms, first)
            t.last_event_ms = last if t.last_event_ms is None else max(t.last_event_ms, last)
        t.decision_latency_ms.extend(latency_ms for _ in run.decisions)
        source = self.source_kind
        m.count_events(run.by_type, source)
        if batch.lines:
            m.received_bytes.labels(source).inc(sum(map(len, batch.lines)))
        m.count(m.identity_events, run.identities)
        m.count(m.new_ids, run.new_ids)
        m.count(m.missing_attributes, run.missing)
        if run.merges:
            m.identity_merges.inc(run.merges)
        m.count(m.dead_letters, dead_by_reason)
        m.count(m.suppressions, run.suppressed)
        m.count(m.decisions, run.decided)
        m.count(m.timers_fired, run.timers_fired)
        m.count(m.labels, run.labelled)
        m.count(m.feedback, run.feedback)
        m.experiments.count(run.exp)
        t.feedback.update(run.feedback)
        journeys = self.core.journeys
        if journeys is not None:
            j = journeys.tallies
            m.count(m.journey_entries, j.entries)
            m.count(m.journey_exits, j.exits)
            m.count(m.journey_sends, j.sends)
            m.count(m.journey_suppressed, j.suppressed)
            m.count(m.journey_conversions, {name: n for (name, reason), n in j.exits.items() if reason == "goal"})
            t.journeys.update({f"{name} entered": n for name, n in j.entries.items()})
            t.journeys.update({f"{name} exited {reason}": n for (name, reason), n in j.exits.items()})
            t.journeys.update({f"{name} sent {step}": n for (name, step), n in j.sends.items()})
            t.journeys.update({f"{name} {how} {step}": n for (name, step, how), n in j.suppressed.items()})
            for counter in (j.entries, j.exits, j.sends, j.suppressed):
                counter.clear()
        if run.duplicates:
            m.duplicates.inc(run.duplicates)
        if batch.lines:  # idle ticks are not batches
            m.batch_size.observe(n)
        seconds = latency_ms / 1000
        for _ in range(n):
            m.processing.observe(seconds)
        if batch.lines:  # idle ticks are not batches
            for stage, seconds_spent in stages.items():
                m.stage_latency.labels(stage).observe(seconds_spent)
        if self._emit_seconds:  # what the previous batch's outputs took to write
            m.stage_latency.labels("emit").observe(self._emit_seconds)
            self._emit_seconds = 0.0
        if run.label_delays or run.drifts:
            m.models.export(self.models, run.label_delays, run.drifts)
            if self.keeper is not None:
                self.keeper.after_batch(run.drifts)
        for name, scores in run.scores.items():
            hist = m.scores.labels(name)
            for s in scores:
                hist.observe(s)
        m.watermark.set(self.clock.now() / 1000)
        for op, seconds_spent in timings.items():
            m.store_latency.labels(op).observe(seconds_spent)
        health = self.store.health
        if health is not None:  # failures the store retried through since the last batch
            for op, n in health.errors.items():
                m.store_errors.labels(op).inc(n)
            health.errors.clear()
            if health.reconnects:
                m.store_reconnects.inc(health.reconnects)
                self.totals.store_reconnects += health.reconnects
                health.reconnects = 0


def _timed(timings: dict[str, float], op: str, fn, *args):
    """Call ``fn`` and add its wall time to ``timings[op]`` (state-store latency metric)."""
    start = time.perf_counter()
    try:
        return fn(*args)
    finally:
        timings[op] = timings.get(op, 0.0) + time.perf_counter() - start
