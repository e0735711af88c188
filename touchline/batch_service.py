"""One micro-batch through the engine: parse, screen, order, load state, decide, save, account.

The I/O half of the engine step. Per batch the state store is asked: ``tombstones`` (are
any of these identities erased), ``claim_ids`` (event ids store-wide), ``ack`` (what the
outputs confirmed), ``begin`` (identities and due timers), ``load`` (the profiles) and
``commit`` (changed profiles with their decisions, merged-away ones, new timers), plus
``hold`` on Kafka when the reorder buffer changed, ``reserve`` per decision (no round trip:
the commit stores the send) and ``delete`` per contact past retention, around the pure
decision loop in
:mod:`touchline.decisions.batch_run`. A networked store makes each call one round trip.
Metrics are counted once per batch.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import orjson

from touchline.decisions.errors import TouchlineError
from touchline.decisions.batches import BatchResult, RawBatch
from touchline.decisions.clock import Clock
from touchline.decisions.batch_run import BatchRun, DecisionCore
from touchline.decisions.outcome import BatchOutcome, JourneyTallies
from touchline.decisions.events import Event, Rejected, parse_event
from touchline.decisions.journey_versions import JourneyVersions
from touchline.decisions.reorder import EventOrder, TimeRules
from touchline.decisions.requests import Ask, request_key
from touchline.decisions.send_time import MAX_POPULATION_TOTAL
from touchline.model_keeper import ModelKeeper
from touchline.metrics.engine_metrics import EngineMetrics, observe_each, observe_many
from touchline.state.base import OutboxEntry, Pending, StateStore, StoreError, StoreHealth, contact_key
from touchline.state.erasure import screen as screen_erased

log = logging.getLogger(__name__)

#: Latency samples kept for the end-of-run percentiles (batches and decisions each).
LATENCY_SAMPLES = 200_000
#: How often a worker adds its engagement by local hour to the store's population counters
#: and reads everyone's back (best send time): one call, not one per batch.
SEND_HOURS_SHARE_SECONDS = 10.0



@dataclass
class Totals:
    """Running tallies for the end-of-run summary (the metrics hold the same, for scrapes)."""

    events: int = 0
    lines: int = 0
    duplicates: int = 0
    #: events of erased identities, dropped
    erased: int = 0
    by_type: Counter = field(default_factory=Counter)
    dead_letters: Counter = field(default_factory=Counter)
    decisions: Counter = field(default_factory=Counter)
    suppressions: Counter = field(default_factory=Counter)
    #: decision points where every candidate was held back, by whether one was recorded ("true", "false")
    no_action_points: Counter = field(default_factory=Counter)
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
    #: events later than the allowed lateness (processed out of event-time order)
    out_of_order: int = 0
    feedback: Counter = field(default_factory=Counter)
    journeys: Counter = field(default_factory=Counter)
    #: whole days between consecutive purchases of a contact -> how often (bounded: <= 3,651 keys)
    purchase_gap_days: Counter = field(default_factory=Counter)


def keep_journey_versions(versions: JourneyVersions, store: StateStore) -> None:
    """The journeys' versions into the store, for every process and every restart, and the
    older versions kept there out of it (and from it later, one another process kept since),
    so a contact finishes the version it entered however the files were edited."""
    store.keep_journey_versions(versions.definitions())
    versions.adopt(store.journey_versions())

    def find(name: str, version: str) -> str | None:
        return store.journey_versions([(name, version)]).definitions.get((name, version))

    versions.find = find


class Engine:
    """Per-worker engine: owns the decision core (models, clock), borrows the store."""

    def __init__(self, store: StateStore, core: DecisionCore, metrics: EngineMetrics) -> None:
        self.store = store
        self.core = core
        self.metrics = metrics
        self.totals = Totals()
        #: connection health of the state store's server, as seen by each of its clients
        self.healths: list[StoreHealth] = [store.health] if store.health is not None else []
        if self.healths:  # read at scrape time: during an outage the engine is inside a retry loop
            metrics.store_up.set_function(lambda: 1.0 if all(h.up for h in self.healths) else 0.0)
        #: Set when the state store (or the broker) failed for good: the run stops and reports it.
        self.failure: Exception | None = None
        #: What event times are believed, and how long events wait to be put in order. By
        #: default every time (a jump needs no quorum); ``build_engine`` applies the settings.
        self.time = TimeRules(quorum=1, check_wall=False)
        #: Input partition -> its reorder buffer (event clock only).
        self._orders: dict[int, EventOrder] = {}
        #: Keep events held for ordering in the store: for an input a restart resumes mid-way
        #: (Kafka, whose offsets a snapshot may commit past them); a file or the simulator is
        #: read again from its start.
        self.keep_held = False
        #: positions of held events the store keeps, and of those released but not yet dropped
        self._stored_held: dict[int, set[int]] = {}
        self._released: dict[int, set[int]] = {}
        #: The largest share of events and timers that may raise before the run stops.
        self.max_error_share = 0.01
        self._errors = _ErrorWindow()
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
        self._clocks: dict[int, int | None] = {}
        #: Channels with a connector: their decisions stay in the outbox until delivered too.
        self.channel_outputs: frozenset[str] = frozenset()
        #: The decisions output confirms a decision by writing it (a file); False when the
        #: output's own acknowledgement does (Kafka: the broker's).
        self.acks_on_write = True
        #: Emit the decisions earlier runs left in the outbox, before the first batch (one worker).
        self.recover_outbox = False
        #: (profile key, decision id, output) confirmed by the outputs, for the next batch's ack
        self._done: deque[tuple[str, str, str]] = deque()
        #: where the events of erased identities the batch in progress dropped were read
        self._erased_sources: list[str] = []
        #: when this worker last shared the population's send hours with the store (monotonic)
        self._send_hours_shared: float | None = None
        if core.journeys is not None:
            keep_journey_versions(core.journeys.versions, store)

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
        except Exception as exc:  # noqa: BLE001 - a bug outside one event's handling: stop, say where
            log.debug("batch from %s raised", batch.source, exc_info=True)
            self.fail(InternalErrorFlood(f"internal error in a batch read from {batch.source} at position "
                                         f"{batch.first_offset}: {type(exc).__name__}: {exc} (a bug to report; "
                                         "the batch was not committed, a restart reads it again)"))
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
        """Run one batch end to end; the result is ready to emit. Parse (bad lines and
        unbelievable times become dead letters), drop erased identities' events, put the rest
        in event-time order (:mod:`touchline.decisions.reorder`), claim their ids, then decide
        and commit what was released."""
        if self.keeper is not None:
            self.keeper.tick()  # between batches: a swap never splits one
        started_ns = time.perf_counter_ns()
        dead: list[dict[str, Any]] = []
        events, positions = self._parse(batch, dead)
        self._erased_sources = []
        parsed_ns = time.perf_counter_ns()
        timings = dict[str, float]()
        events, positions = self._drop_erased(events, positions, timings)
        events, at, horizon = self._in_order(batch, events, positions, dead)
        if self.keep_held:
            self._keep_held(batch, timings)
        events, at = self._claim_ids(events, at, dead, timings)
        self._flush_acks(timings)
        self._share_send_hours(timings)
        resolved, due, asks = self._begin(batch, events, horizon, timings)
        out, expired = self._decide_and_commit(events, at, resolved, due, horizon or 0, timings, batch.partition, asks)
        if batch.final and self.keep_held:  # no next batch to drop what this one released
            self._keep_held(batch, timings)
        run_ns = out.run_ns - int(timings.get("reserve", 0.0) * 1e9)
        for key in expired:
            _timed(timings, "delete", self.store.delete, key)
        dead.extend(out.dead)
        dead.extend(out.errors)
        stages = {"parse": (parsed_ns - started_ns) / 1e9, "state": sum(timings.values()),
                  "score": out.score_ns / 1e9, "policy": max(0, run_ns - out.score_ns) / 1e9}
        self._account(batch, events, out, dead, timings, stages)
        self._watch_errors(len(events) + len(due), len(out.errors))
        result = BatchResult(out.decisions, dead, out.exp.records, out.no_actions, out.duplicated, self._erased_sources)
        for listener in self.listeners:
            listener(result)
        return result

    def _begin(self, batch: RawBatch, events: list[Event], horizon: int | None, timings: dict[str, float]
               ) -> tuple[list[tuple[str, str | None]], list[tuple[int, str, str]], list[tuple[Ask, str]]]:
        """Resolve the events' and the requests' identities and claim the timers due by
        ``horizon`` (unless the batch leaves them for later), in one store call."""
        lookups = [ask.lookup() for ask in batch.asks]
        resolved, due = _timed(timings, "resolve", self.store.begin, [*events, *lookups],
                               horizon if batch.fire_timers else None, partition=batch.partition)
        asks = [(ask, request_key(ask, key)) for ask, (key, _) in zip(batch.asks, resolved[len(events):])]
        return resolved[:len(events)], due, asks

    def _parse(self, batch: RawBatch, dead: list[dict[str, Any]]) -> tuple[list[Event], list[int]]:
        """Valid, believable events with their input positions; the rest into ``dead``."""
        events: list[Event] = []
        positions: list[int] = []
        rules = self.time
        wall_ms = time.time_ns() // 1_000_000
        offsets = batch.offsets
        for i, raw in enumerate(batch.lines):
            pos = offsets[i] if offsets is not None else batch.first_offset + i
            at = f"{batch.source}:{pos}"
            try:
                parsed = parse_event(raw)
            except Exception as exc:  # noqa: BLE001 - a parser bug must not end the run
                parsed = Rejected("internal_error", f"parsing raised {type(exc).__name__}: {exc}"[:1000], raw)
            if isinstance(parsed, Event):
                bad = rules.out_of_bounds(parsed.ts_ms, wall_ms)
                if bad is None:
                    parsed.source = at
                    events.append(parsed)
                    positions.append(pos)
                    continue
                parsed = Rejected(*bad, raw)
            dead.append(parsed.to_dead_letter(at))
        return events, positions

    def _claim_ids(self, events: list[Event], at: list[tuple[int, bool]] | None, dead: list[dict[str, Any]],
                   timings: dict[str, float]) -> tuple[list[Event], list[tuple[int, bool]] | None]:
        """The events whose ``event_id`` is theirs: an id another identity already used within
        the idempotency window is a dead letter (``duplicate_id``), never applied to this one's
        profile. The same identity again is a replay, left to the profile's own dedupe. In the
        order they are applied in (event time, as released): the earlier event keeps the id."""
        if not events:
            return events, at
        free = _timed(timings, "claim", self.store.claim_ids, events)
        if all(free):
            return events, at
        kept = []
        for ev, ok in zip(events, free):
            if ok:
                kept.append(ev)
            else:  # the other identity is not named: one contact's dead letter never shows another's id
                dead.append(ev.to_dead_letter("duplicate_id", f"event_id {ev.event_id!r} already used by another identity"))
        return kept, None if at is None else [place for place, ok in zip(at, free) if ok]

    def _drop_erased(self, events: list[Event], positions: list[int],
                     timings: dict[str, float]) -> tuple[list[Event], list[int]]:
        """Events of erased contacts and anonymous ids go no further: counted, never stored,
        decided on or dead-lettered (a dead letter would keep what was erased); a newer signup
        or consent grant re-admits the contact (see :mod:`touchline.state.erasure`). The
        lookup is timed as part of identity resolution."""
        if not events:
            return events, positions
        kept, dropped = _timed(timings, "resolve", screen_erased, self.store, events)
        if not dropped:
            return events, positions
        self.totals.erased += dropped
        self.metrics.erased_events.inc(dropped)
        still = set(map(id, kept))
        self._erased_sources = [ev.source or "" for ev in events if id(ev) not in still]
        return kept, [pos for ev, pos in zip(events, positions) if id(ev) in still]

    def _in_order(self, batch: RawBatch, events: list[Event], positions: list[int],
                  dead: list[dict[str, Any]]) -> tuple[list[Event], list[tuple[int, bool]] | None, int | None]:
        """The events to process now, in order, with their places among the timers, and the
        horizon timers fire up to. Live: as they came (sorted within the batch), on the wall
        clock. Event clock: through the partition's reorder buffer (:mod:`..decisions.reorder`)."""
        if self.core.live:
            events.sort(key=lambda ev: ev.ts_ms)  # stable: ties keep arrival order
            return events, None, self.core.advance(events, batch.advance_to_ms)
        order = self._orders.get(batch.partition)
        if not order:  # none yet, or emptied: a fresh one at the committed clock, held events read only once
            order = self._resume_order(batch, restore=order is None)
        released = self._release(batch, order, events, positions, dead)
        out = [r.event for r in released]
        self.core.advance(out, batch.advance_to_ms)
        self._clocks[batch.partition] = order.clock  # None until enough events: nothing to resume from
        return out, [(r.at_ms, r.late) for r in released], order.clock if batch.final else order.watermark

    def _release(self, batch: RawBatch, order: EventOrder, events: list[Event], positions: list[int],
                 dead: list[dict[str, Any]]) -> list[Any]:
        """Add the batch to the partition's reorder buffer and take what may go now: everything
        at the end of the input, everything held when the source is idle, else what the
        watermark passed. Counts events later than the allowed lateness and those held."""
        for ev, pos in zip(events, positions):
            order.add(ev, pos)
        if batch.advance_to_ms is not None:
            order.advance(batch.advance_to_ms)
        released = order.flush() if batch.final else order.catch_up() if batch.idle else order.take()
        for ev, why in order.rejected:
            dead.append(ev.to_dead_letter("future_event", why))
        order.rejected.clear()
        late = sum(r.late for r in released)
        if late:
            self.totals.out_of_order += late
            self.metrics.out_of_order.inc(late)
        self.metrics.held_events.set(sum(map(len, self._orders.values())))
        return released

    def _resume_order(self, batch: RawBatch, restore: bool = True) -> EventOrder:
        """The partition's reorder buffer, at the event clock its last committed batch left,
        holding what it held then (an input a restart resumes mid-way: see ``keep_held``).
        Only the first one of a run restores: once a buffer has emptied, what the store still
        lists as held was released and committed here (it is dropped after the next batch)."""
        clock = self.store.watermark(batch.partition) or None  # 0: an earlier version's "no clock yet"
        if clock is not None:
            self.core.clock.observe(clock)
        order = self._orders[batch.partition] = self.time.order(clock)
        if not restore:
            return order
        kept = self.store.held(batch.source) if self.keep_held else []
        again = _redelivered_from(batch)
        for pos, source, line in kept:
            if again is not None and pos >= again:
                continue  # read again from the input (a batch that stored it never committed): it arrives with the rest
            parsed = parse_event(line)
            if isinstance(parsed, Event):
                parsed.source = source
                order.restore(parsed, pos)
        self._stored_held[batch.partition] = {pos for pos, _, _ in kept}
        if kept:
            log.info("%s: %d event(s) held for ordering when the last run stopped", batch.source, len(kept))
        return order

    def _keep_held(self, batch: RawBatch, timings: dict[str, float]) -> None:
        """Store what the partition's buffer holds now (the input may commit past it), and drop
        what the previous batch released, now that it has committed."""
        partition = batch.partition
        now = dict(self._orders[partition].held())
        stored = self._stored_held.get(partition, set())
        add = {pos: (ev.source or "", ev.raw or b"") for pos, ev in now.items() if pos not in stored}
        drop = self._released.pop(partition, set())
        if batch.final:  # committed already: nothing comes after it
            drop |= stored - now.keys()
            stored = set(now)
        if add or drop:
            _timed(timings, "hold", self.store.hold, batch.source, add, drop)
        self._released[partition] = stored - now.keys()
        self._stored_held[partition] = set(now)

    def _watch_errors(self, items: int, errors: int) -> None:
        """Stop the run when events and timers raise too often: a bug, not bad input."""
        share = self._errors.add(items, errors)
        if share is not None and share > self.max_error_share:
            self.fail(InternalErrorFlood(
                f"{self._errors.errors} of the last {self._errors.items} events and timers raised an internal "
                f"error ({share:.1%} > engine.max_internal_error_share {self.max_error_share:.1%}): stopping, this "
                "is a bug to report, not bad input (the internal_error dead letters say where)"))

    def _decide_and_commit(self, events: list[Event], at: list[tuple[int, bool]] | None,
                           resolved: list[tuple[str, str | None]], due: list[tuple[int, str, str]], horizon: int,
                           timings: dict[str, float], partition: int = 0,
                           asks: list[tuple[Ask, str]] | None = None) -> tuple[BatchOutcome, set[str]]:
        """Run the batch over loaded profiles and commit it with its decisions (the outbox);
        returns what it did and the profiles that expired. Profiles another writer changed
        meanwhile (a contact whose events arrive on two partitions, a timer fired by another
        worker, a request to the API) are reloaded and redone, alone; so are profiles where an
        event, a timer or a request raised, without that item."""
        retry_keys: set[str] | None = None
        skip: set[Any] = set()
        outcome: BatchOutcome | None = None
        expired: set[str] = set()
        attempt = 0  # redos for conflicts; a redo for an item that raised leaves that item out, so it ends
        while attempt <= MAX_CONFLICT_RETRIES:
            run, conflicts = self._attempt(_only(events, at, resolved, due, retry_keys, asks or []), horizon, timings,
                                           partition, redo=retry_keys is not None, skip=skip)
            redo = conflicts | set(run.failed)
            run.outcome.drop_profiles(redo, contact_key)
            expired |= run.expired - redo
            if outcome is None:
                outcome = run.outcome
            else:
                outcome.absorb(run.outcome)
            if not redo:
                return outcome, expired
            skip.update(run.failed.values())
            retry_keys = redo | {a for a, c in run.merged_into.items() if c in redo}
            if conflicts:
                self._conflicted(conflicts, attempt)
                attempt += 1
        raise StoreError(f"profiles {', '.join(sorted(retry_keys or ()))} kept changing under this worker for "
                         f"{MAX_CONFLICT_RETRIES} retries")

    def _conflicted(self, conflicts: set[str], attempt: int) -> None:
        """Count profiles another writer changed, and redo them: at once the first time (that
        writer's commit has landed, so the reload sees it), then backing off, with jitter, if
        they keep changing (two writers must not meet again in step)."""
        self.totals.conflicts += len(conflicts)
        self.metrics.conflicts.inc(len(conflicts))
        log.info("%d profile(s) changed by another writer during the batch; redoing them (attempt %d)",
                 len(conflicts), attempt + 1)
        if attempt:
            time.sleep(min(0.5, 0.005 * 2 ** attempt * random.uniform(0.5, 1.5)))

    def _attempt(self, items: "_Items", horizon: int, timings: dict[str, float], partition: int, redo: bool,
                 skip: set[Any]) -> tuple[BatchRun, set[str]]:
        """Load, decide and commit once; returns the run and the profiles that were not written.
        Profiles where an item raised (``run.failed``) are not written either."""
        due = items[3]
        run = self._run_loaded(items, horizon, timings, skip)
        keep_out = _kept_out(run)
        live = {k: run.profiles[k] for k in run.touched - run.deleted - keep_out}
        timers = _timers_to_set(run, live, keep_out, redo)
        decisions = [d for d in run.outcome.decisions if not keep_out or contact_key(d["contact_id"]) not in keep_out]
        conflicts = _timed(timings, "save", self.store.commit, live, run.merged_away - keep_out, timers,
                           outbox=self._outbox(decisions), fired=[t for t in due if t[1] not in keep_out],
                           merged_into=run.merged_into,
                           watermark=None if self.core.live else self._clocks.get(partition), partition=partition)
        if decisions and log.isEnabledFor(logging.DEBUG):
            log.debug("committed decisions %s", " ".join(d["decision_id"] for d in decisions))
        return run, conflicts

    def _run_loaded(self, items: "_Items", horizon: int, timings: dict[str, float], skip: set[Any]) -> BatchRun:
        """Load the profiles the items touch and run the decision loop over them (timed)."""
        store = self.store
        events, at, resolved, due, asks = items
        keys = {k for k, _ in resolved} | {m for _, m in resolved if m} | {k for _, k, _ in due} | {k for _, k in asks}
        profiles = _timed(timings, "load", store.load, keys) if keys else {}
        run = BatchRun(self.core, profiles, lambda *args: _timed(timings, "reserve", store.reserve, *args))
        run.skip = skip
        started_ns = time.perf_counter_ns()
        run.run(events, resolved, due, horizon, at, asks)
        run.outcome.run_ns = time.perf_counter_ns() - started_ns
        return run

    def _outbox(self, decisions: list[dict[str, Any]]) -> dict[str, list[OutboxEntry]]:
        """Each decision, by the profile it belongs to (the key of its contact id), for the same
        atomic write as that profile."""
        out: dict[str, list[OutboxEntry]] = {}
        channels = self.channel_outputs
        for record in decisions:
            out.setdefault(contact_key(record["contact_id"]), []).append(OutboxEntry(
                record["decision_id"], orjson.dumps(record, option=orjson.OPT_SORT_KEYS),
                record["channel"] in channels and not answered(record)))
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

    def shut_down(self) -> None:
        """At shutdown: write the model figures not yet written (see :meth:`ModelMetrics.export`),
        pass on what the outputs confirmed after the last batch, and the engagement by local
        hour counted since the last share."""
        self.metrics.models.grade(self.models)
        try:
            self._flush_acks({})
        except StoreError as exc:  # the entries stay: the next start emits them again
            log.warning("could not trim the outbox at shutdown: %s", exc)
        if self.failure is not None or not any(self.core.send_time.unshared()):
            return  # nothing to pass on, or a store that failed: no wait for it at shutdown
        try:
            self._share_send_hours({}, now=True)
        except StoreError as exc:
            log.warning("could not add the last engagement by local hour to the store's: %s", exc)

    def _share_send_hours(self, timings: dict[str, float], now: bool = False) -> None:
        """Add what this worker counted of the population's engagement by local hour to the
        store's counters and take back everyone's (other processes', earlier runs'): before
        the first batch, then every :data:`SEND_HOURS_SHARE_SECONDS` (``now``: at once)."""
        clock = time.monotonic()
        last = self._send_hours_shared
        if not now and last is not None and clock - last < SEND_HOURS_SHARE_SECONDS:
            return
        learner = self.core.send_time
        delta = learner.unshared()  # kept until the store has it: a failed call loses nothing
        learner.adopt(_timed(timings, "send_hours", self.store.add_send_hours, delta, MAX_POPULATION_TOTAL), delta)
        self._send_hours_shared = clock

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

    def _account(self, batch: RawBatch, events: list[Event], out: BatchOutcome, dead: list[dict[str, Any]],
                 timings: dict[str, float], stages: dict[str, float]) -> None:
        """Count one batch, once: the run's totals (summary) and the metrics (scrapes)."""
        latency_ms = (time.perf_counter_ns() - batch.read_ns) / 1e6
        dead_by_reason = Counter(d["reason"] for d in dead)
        self._add_totals(batch, events, out, dead_by_reason, latency_ms)
        self._count_outcome(batch, out, dead_by_reason)
        self._count_journeys(out.journeys)
        self._observe_latencies(batch, len(events), latency_ms, stages)
        self._observe_models(out)
        self.metrics.reach.add(out.decisions, self.store.known_contacts(), self.clock.now())
        for op, seconds_spent in timings.items():
            self.metrics.store_latency.labels(op).observe(seconds_spent)
        self._count_store_health()

    def _add_totals(self, batch: RawBatch, events: list[Event], out: BatchOutcome, dead_by_reason: Counter[str],
                    latency_ms: float) -> None:
        """The end-of-run summary's tallies."""
        t = self.totals
        t.lines += len(batch.lines)
        t.events += sum(out.by_type.values())
        t.duplicates += out.duplicates
        t.by_type.update(out.by_type)
        t.dead_letters.update(dead_by_reason)
        t.suppressions.update(out.suppressed)
        t.no_action_points.update(out.no_action_points)
        t.decisions.update(out.decided)
        t.timers.update(out.timers_fired)
        t.feedback.update(out.feedback)
        t.purchase_gap_days.update(out.purchase_gap_days)
        if events:
            t.batch_latency_ms.append((latency_ms, len(events)))
            first, last = events[0].ts_ms, events[-1].ts_ms
            t.first_event_ms = first if t.first_event_ms is None else min(t.first_event_ms, first)
            t.last_event_ms = last if t.last_event_ms is None else max(t.last_event_ms, last)
        t.decision_latency_ms.extend(latency_ms for _ in out.decisions)

    def _count_outcome(self, batch: RawBatch, out: BatchOutcome, dead_by_reason: Counter[str]) -> None:
        """The batch's counters, one increment per label set (never per event)."""
        m = self.metrics
        m.count_events(out.by_type, self.source_kind)
        if batch.lines:
            m.received_bytes.labels(self.source_kind).inc(sum(map(len, batch.lines)))
        tallies: list[tuple[Any, Mapping[Any, int]]] = [
            (m.identity_events, out.identities), (m.new_ids, out.new_ids), (m.missing_attributes, out.missing),
            (m.dead_letters, dead_by_reason), (m.suppressions, out.suppressed), (m.decisions, out.decided),
            (m.no_action_points, out.no_action_points),
            (m.timers_fired, out.timers_fired), (m.labels, out.labelled), (m.feedback, out.feedback)]
        for counter, tally in tallies:
            m.count(counter, tally)
        if out.merges:
            m.identity_merges.inc(out.merges)
        if out.duplicates:
            m.duplicates.inc(out.duplicates)
        m.experiments.count(out.exp)

    def _count_journeys(self, j: JourneyTallies) -> None:
        """Journey entries, exits, sends and held-back steps: metrics and the summary."""
        m, t = self.metrics, self.totals
        m.count(m.journey_entries, j.entries)
        m.count(m.journey_exits, j.exits)
        m.count(m.journey_sends, j.sends)
        m.count(m.journey_suppressed, j.suppressed)
        m.count(m.journey_conversions, {name: n for (name, reason), n in j.exits.items() if reason == "goal"})
        t.journeys.update({f"{name} entered": n for name, n in j.entries.items()})
        t.journeys.update({f"{name} exited {reason}": n for (name, reason), n in j.exits.items()})
        t.journeys.update({f"{name} sent {step}": n for (name, step), n in j.sends.items()})
        t.journeys.update({f"{name} {how} {step}": n for (name, step, how), n in j.suppressed.items()})

    def _observe_latencies(self, batch: RawBatch, n: int, latency_ms: float, stages: dict[str, float]) -> None:
        """Batch size, per-event processing latency and time per stage (idle ticks are not batches)."""
        m = self.metrics
        if batch.lines:
            m.batch_size.observe(n)
            for stage, seconds_spent in stages.items():
                m.stage_latency.labels(stage).observe(seconds_spent)
        if n:
            observe_many(m.processing, latency_ms / 1000, n)
        if self._emit_seconds:  # what the previous batch's outputs took to write
            m.stage_latency.labels("emit").observe(self._emit_seconds)
            self._emit_seconds = 0.0

    def _observe_models(self, out: BatchOutcome) -> None:
        """Model quality (when labels resolved), the score histograms and the watermark."""
        m = self.metrics
        if out.label_delays or out.drifts:
            m.models.export(self.models, out.label_delays, out.drifts)
            if self.keeper is not None:
                self.keeper.after_batch(out.drifts)
        for name, scores in out.scores.items():
            if scores:
                observe_each(m.scores.labels(name), scores)
        m.watermark.set(self.clock.now() / 1000)

    def _count_store_health(self) -> None:
        """Failures the store (and the send ledger on the same Redis) retried through since the
        last batch, and the store's reconnects."""
        m = self.metrics
        for health in self.healths:
            for op, n in health.take_errors().items():
                m.store_errors.labels(op).inc(n)
            if health.reconnects:
                m.store_reconnects.inc(health.reconnects)
                self.totals.store_reconnects += health.reconnects
                health.reconnects = 0


#: How often one batch redoes profiles that other writers keep changing before giving up.
MAX_CONFLICT_RETRIES = 20


_Items = tuple[list[Event], "list[tuple[int, bool]] | None", list[tuple[str, str | None]], list[tuple[int, str, str]],
               list[tuple[Ask, str]]]


def _only(events: list[Event], at: list[tuple[int, bool]] | None, resolved: list[tuple[str, str | None]],
          due: list[tuple[int, str, str]], keys: set[str] | None, asks: list[tuple[Ask, str]]) -> _Items:
    """The events (with their places), timers and requests of ``keys`` (all when None)."""
    if keys is None:
        return events, at, resolved, due, asks
    picked = [i for i, r in enumerate(resolved) if r[0] in keys]
    return ([events[i] for i in picked], None if at is None else [at[i] for i in picked],
            [resolved[i] for i in picked], _of_keys(due, 1, keys), _of_keys(asks, 1, keys))


def _of_keys(items: list[Any], place: int, keys: set[str]) -> list[Any]:
    """The items whose profile key (at ``place``) is one of ``keys``."""
    return [item for item in items if item[place] in keys]


def answered(record: dict[str, Any]) -> bool:
    """A decision made on request: the HTTP answer delivers it, never a channel connector.

    >>> answered({"trigger": {"kind": "request"}}), answered({"trigger": {"kind": "timer"}})
    (True, False)
    """
    return record["trigger"].get("kind") == "request"


def _redelivered_from(batch: RawBatch) -> int | None:
    """The input position from which a resumed input hands everything out again: the first
    batch's first line (or, for a batch without lines, where reading resumes); None when that
    is not a position (a Kafka sentinel such as "the end" or "the group's committed offset").

    >>> _redelivered_from(RawBatch([b"{}"], "t[0]", 7, offsets=[7])), _redelivered_from(RawBatch([], "t[0]", -1))
    (7, None)
    """
    first = batch.offsets[0] if batch.offsets else batch.first_offset
    return first if first >= 0 else None


def _kept_out(run: BatchRun) -> set[str]:
    """Profiles not to write from ``run``: where an item raised, and what merged into them
    (all of it is redone)."""
    keep_out = set(run.failed)
    if keep_out:
        keep_out |= {a for a, c in run.merged_into.items() if c in keep_out}
    return keep_out


def _timers_to_set(run: BatchRun, live: dict[str, Any], keep_out: set[str], redo: bool) -> list[tuple[str, str, int]]:
    """The timers to schedule in the store. A redo of conflicted profiles may have scheduled
    stale times: then every timer of the written profiles is set right."""
    timers = {kk: t for kk, t in run.timers.to_schedule.items() if kk[0] not in keep_out}
    if redo:
        timers.update({(k, kind): t for k, p in live.items() for kind, t in p.timers.items()})
    return [(k, kind, t) for (k, kind), t in timers.items()]


class InternalErrorFlood(TouchlineError, RuntimeError):
    """Too many events and timers raised: the engine has a bug, the input is not to blame."""


class _ErrorWindow:
    """Internal errors among the last :data:`ERROR_WINDOW` or so events and timers."""

    def __init__(self) -> None:
        self._batches: deque[tuple[int, int]] = deque()
        self.items = 0
        self.errors = 0

    def add(self, items: int, errors: int) -> float | None:
        """Count a batch; the error share once there are enough errors to judge (else None)."""
        if not items and not errors:
            return None
        self._batches.append((items, errors))
        self.items += items
        self.errors += errors
        while len(self._batches) > 1 and self.items - self._batches[0][0] >= ERROR_WINDOW:
            old_items, old_errors = self._batches.popleft()
            self.items -= old_items
            self.errors -= old_errors
        if self.errors < MIN_ERRORS_TO_STOP:
            return None
        return self.errors / max(self.items, 1)


#: Internal errors are judged over about this many recent events and timers...
ERROR_WINDOW = 10_000
#: ...and only once there are this many (one odd event is not a flood).
MIN_ERRORS_TO_STOP = 10


def _timed(timings: dict[str, float], op: str, fn, *args, **kwargs):
    """Call ``fn`` and add its wall time to ``timings[op]`` (state-store latency metric)."""
    start = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        timings[op] = timings.get(op, 0.0) + time.perf_counter() - start
