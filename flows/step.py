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

import orjson

from touchline.decisions.clock import Clock
from touchline.decisions.engine import BatchRun, DecisionCore
from touchline.decisions.events import Event, Rejected, parse_event
from touchline.flows.models import ModelKeeper
from touchline.metrics.engine import EngineMetrics
from touchline.state.base import OutboxEntry, Pending, StateStore, StoreError, contact_key

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
    #: The input partition (Kafka partition; 0 for a file or the simulator). Timers set while
    #: processing it fire on its own event clock, by the worker that reads it.
    partition: int = 0


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
    #: profiles redone because another writer changed them during a batch
    conflicts: int = 0
    #: decisions emitted again at start from the outbox
    recovered: int = 0
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
        #: Input partition -> its event clock (timers set on a partition fire on its clock).
        self._clocks: dict[int, int] = {}
        #: Channels with a connector: their decisions stay in the outbox until delivered too.
        self.channel_outputs: frozenset[str] = frozenset()
        #: The decisions output confirms a decision by writing it (a file); False when the
        #: output's own acknowledgement does (Kafka: the broker's).
        self.acks_on_write = True
        #: Emit the decisions earlier runs left in the outbox, before the first batch (one worker).
        self.recover_outbox = False
        #: (profile key, decision id, output) confirmed by the outputs, for the next batch's ack
        self._done: deque[tuple[str, str, str]] = deque()

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
        if self.acks_on_write:
            self.output_done(records, "d")
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
            log.info("stopping: %s", exc)  # the caller reports it (the CLI: one line, exit 1)
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
            at = f"{batch.source}:{batch.offsets[i] if batch.offsets is not None else batch.first_offset + i}"
            if isinstance(parsed, Rejected):
                dead.append(parsed.to_dead_letter(at))
            else:
                parsed.source = at
                events.append(parsed)
        events.sort(key=lambda ev: ev.ts_ms)  # stable: ties keep arrival order
        parsed_ns = time.perf_counter_ns()
        timings = dict[str, float]()
        events = self._claim_ids(events, dead, timings)
        horizon = self.core.advance(events, batch.advance_to_ms)
        timer_horizon = horizon if self.core.live else self._partition_clock(batch, events) - self.lateness_ms
        self._flush_acks(timings)
        resolved, due = _timed(timings, "resolve", self.store.begin, events, timer_horizon,
                               partition=batch.partition)
        run = self._decide_and_commit(events, resolved, due, timer_horizon, timings, batch.partition)
        run_ns = run.run_ns - int(timings.get("reserve", 0.0) * 1e9)
        for key in run.expired:
            _timed(timings, "delete", self.store.delete, key)
        dead.extend(run.dead)
        stages = {"parse": (parsed_ns - started_ns) / 1e9, "state": sum(timings.values()),
                  "score": run.score_ns / 1e9, "policy": max(0, run_ns - run.score_ns) / 1e9}
        self._account(batch, events, run, dead, timings, stages)
        result = BatchResult(run.decisions, dead, run.exp.records)
        for listener in self.listeners:
            listener(result)
        return result

    def _claim_ids(self, events: list[Event], dead: list[dict[str, Any]], timings: dict[str, float]) -> list[Event]:
        """The events whose ``event_id`` is theirs: an id another identity already used within
        the idempotency window is a dead letter (``duplicate_id``), never applied to this one's
        profile. The same identity again is a replay, left to the profile's own dedupe. In the
        batch's (event time) order, the order it is applied in: the earlier event keeps the id."""
        if not events:
            return events
        free = _timed(timings, "claim", self.store.claim_ids, events)
        if all(free):
            return events
        kept = []
        for ev, ok in zip(events, free):
            if ok:
                kept.append(ev)
            else:  # the other identity is not named: one contact's dead letter never shows another's id
                dead.append({"kind": "invalid_event", "reason": "duplicate_id", "source": ev.source or "engine",
                             "detail": f"event_id {ev.event_id!r} already used by another identity",
                             "raw": orjson.dumps(ev.to_dict(), option=orjson.OPT_SORT_KEYS).decode()})
        return kept

    def _partition_clock(self, batch: RawBatch, events: list[Event]) -> int:
        """The event clock of the batch's input partition: the newest event time it has seen
        (from where its last committed batch left it, after a restart). Timers set while
        processing a partition fire on its clock, so a contact's timers and events interleave
        alike however many workers read the partitions and however they interleave."""
        part = batch.partition
        clock = self._clocks.get(part)
        if clock is None:
            clock = self.store.watermark(part) or 0
            self.core.clock.observe(clock)
        for ev in events:
            if ev.ts_ms > clock:
                clock = ev.ts_ms
        if batch.advance_to_ms is not None and batch.advance_to_ms > clock:
            clock = batch.advance_to_ms
        self._clocks[part] = clock
        return clock

    def _decide_and_commit(self, events: list[Event], resolved: list[tuple[str, str | None]],
                           due: list[tuple[int, str, str]], horizon: int, timings: dict[str, float],
                           partition: int = 0) -> "_Committed":
        """Run the batch over loaded profiles and commit it with its decisions (the outbox).
        Profiles another writer changed meanwhile (a contact whose events arrive on two
        partitions, a timer fired by another worker) are reloaded and redone, alone."""
        retry_keys: set[str] | None = None
        done = _Committed()
        for attempt in range(MAX_CONFLICT_RETRIES + 1):
            run, conflicts = self._attempt(_only(events, resolved, due, retry_keys), horizon, timings, partition,
                                           redo=retry_keys is not None)
            done.absorb(run, conflicts)
            if not conflicts:
                return done
            self.totals.conflicts += len(conflicts)
            retry_keys = conflicts | {a for a, c in run.merged_into.items() if c in conflicts}
            log.info("%d profile(s) changed by another writer during the batch; redoing them (attempt %d)",
                     len(conflicts), attempt + 1)
            time.sleep(min(0.5, 0.01 * 2 ** attempt))
        raise StoreError(f"profiles {', '.join(sorted(retry_keys or ()))} kept changing under this worker for "
                         f"{MAX_CONFLICT_RETRIES} retries")

    def _attempt(self, items: tuple[list[Event], list[tuple[str, str | None]], list[tuple[int, str, str]]],
                 horizon: int, timings: dict[str, float], partition: int, redo: bool) -> tuple[BatchRun, set[str]]:
        """Load, decide and commit once; returns the run and the profiles that were not written."""
        store = self.store
        events, resolved, due = items
        keys = {k for k, _ in resolved} | {m for _, m in resolved if m} | {k for _, k, _ in due}
        profiles = _timed(timings, "load", store.load, keys) if keys else {}
        run = BatchRun(self.core, profiles, lambda *args: _timed(timings, "reserve", store.reserve, *args))
        started_ns = time.perf_counter_ns()
        run.run(events, resolved, due, horizon)
        run.run_ns = time.perf_counter_ns() - started_ns
        live = {k: profiles[k] for k in run.touched - run.deleted}
        timers = dict(run.to_schedule)
        if redo:  # a conflicted attempt may have scheduled stale times: set every timer right
            timers.update({(k, kind): t for k, p in live.items() for kind, t in p.timers.items()})
        conflicts = _timed(timings, "save", store.commit, live, run.merged_away,
                           [(k, kind, t) for (k, kind), t in timers.items()],
                           outbox=self._outbox(run.decisions), fired=due, merged_into=run.merged_into,
                           watermark=None if self.core.live else self._clocks.get(partition), partition=partition)
        if run.decisions and log.isEnabledFor(logging.DEBUG):
            log.debug("committed decisions %s", " ".join(d["decision_id"] for d in run.decisions))
        return run, conflicts

    def _outbox(self, decisions: list[dict[str, Any]]) -> dict[str, list[OutboxEntry]]:
        """Each decision, by the profile it belongs to (the key of its contact id), for the same
        atomic write as that profile."""
        out: dict[str, list[OutboxEntry]] = {}
        channels = self.channel_outputs
        for record in decisions:
            out.setdefault(contact_key(record["contact_id"]), []).append(OutboxEntry(
                record["decision_id"], orjson.dumps(record, option=orjson.OPT_SORT_KEYS),
                record["channel"] in channels))
        return out

    def output_done(self, records: list[dict[str, Any]], part: str) -> None:
        """An output is done with these decisions (``d``: the decisions output acknowledged them;
        ``c``: the channel delivery reached an outcome). Any thread; the store hears of it
        at the start of the next batch, on the engine's own thread."""
        done = self._done
        for record in records:
            done.append((contact_key(record["contact_id"]), record["decision_id"], part))

    def _flush_acks(self, timings: dict[str, float]) -> None:
        done = self._done
        if done:
            taken = [done.popleft() for _ in range(len(done))]
            _timed(timings, "ack", self.store.ack, taken)

    def close_outbox(self) -> None:
        """Pass on what the outputs confirmed after the last batch (at shutdown)."""
        try:
            self._flush_acks({})
        except StoreError as exc:  # the entries stay: the next start emits them again
            log.warning("could not trim the outbox at shutdown: %s", exc)

    def recovered(self) -> list[Pending]:
        """Decisions an earlier run committed that an output never confirmed (a crash between
        the commit and the broker's acknowledgement), with the outputs that still owe them;
        taken once, by one worker, at start."""
        if not self.recover_outbox:
            return []
        self.recover_outbox = False
        found = self.store.pending()
        self.totals.recovered += len(found)
        return found

    def _account(self, batch: RawBatch, events: list[Event], run: "_Committed", dead: list[dict[str, Any]],
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


#: How often one batch redoes profiles that other writers keep changing before giving up.
MAX_CONFLICT_RETRIES = 20


class _Committed:
    """What a batch's runs (the first, and any redo of conflicted profiles) produced."""

    def __init__(self) -> None:
        self.runs: list[BatchRun] = []

    def absorb(self, run: BatchRun, conflicts: set[str]) -> None:
        """Keep ``run``'s output except the decisions of profiles that were not written."""
        if conflicts:
            run.decisions = [d for d in run.decisions if contact_key(d["contact_id"]) not in conflicts]
            run.expired -= conflicts
        self.runs.append(run)

    def __getattr__(self, name: str) -> Any:
        """Tallies of the first run, plus the redone runs' (rare: a conflict) for lists and counters."""
        runs = self.__dict__["runs"]
        first = getattr(runs[0], name)
        if len(runs) == 1:
            return first
        if isinstance(first, Counter):
            return sum((getattr(r, name) for r in runs[1:]), Counter(first))
        if isinstance(first, list):
            return [x for r in runs for x in getattr(r, name)]
        if isinstance(first, set):
            return set().union(*(getattr(r, name) for r in runs))
        if isinstance(first, int) and not isinstance(first, bool):
            return sum(getattr(r, name) for r in runs)
        return first


def _only(events: list[Event], resolved: list[tuple[str, str | None]], due: list[tuple[int, str, str]],
          keys: set[str] | None) -> tuple[list[Event], list[tuple[str, str | None]], list[tuple[int, str, str]]]:
    """The events and timers of ``keys`` (all when None)."""
    if keys is None:
        return events, resolved, due
    picked = [(ev, r) for ev, r in zip(events, resolved) if r[0] in keys]
    return [ev for ev, _ in picked], [r for _, r in picked], [t for t in due if t[1] in keys]


def _timed(timings: dict[str, float], op: str, fn, *args, **kwargs):
    """Call ``fn`` and add its wall time to ``timings[op]`` (state-store latency metric)."""
    start = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        timings[op] = timings.get(op, 0.0) + time.perf_counter() - start
