"""Event-time order for one input partition: hold events until the watermark passes them.

Events arrive out of order (clients batch, networks retry, partitions lag). On the event
clock the engine processes a partition's events in event-time order: an event is held
until the partition's watermark (its clock minus the allowed lateness) passes it, then
released with the others in time order. Every step depends only on the sequence of
arrivals, never on how they were cut into micro-batches, so the same input gives the same
decisions at any batch size; and a stream out of order by less than the lateness gives
exactly the decisions of the sorted stream.

The clock is the median event time of the last ``2 * quorum - 1`` arrivals, not the newest
event time: events with a wrong device clock (fewer than ``quorum`` among any ``2 * quorum
- 1`` in a row) never move it, so they fire nobody's timers; each is applied to its own
contact, in time order. An event
later than the lateness cannot be put back in order: it is released at once, out of order,
at the watermark it arrived at (and counted). An event more than ``max_ahead_ms`` ahead of
the clock waits aside until ``quorum`` such events in a row agree the stream jumped ahead
(a gap in the data); else it is rejected once ``patience`` later positions went by, or at the end of
the input if an in-range event came after it (events ahead at the very end are let
through, but leave the clock where it was).

>>> from touchline.decisions.events import Event
>>> order = EventOrder(lateness_ms=10, max_ahead_ms=1_000, quorum=2)
>>> for pos, ts in enumerate([100, 95, 120, 90, 50_000, 130, 80, 140]):
...     order.add(Event(f"e{pos}", "page_view", ts, "c1"), pos)
>>> [(r.event.ts_ms, r.at_ms, r.late) for r in order.take()]
[(90, 90, False), (95, 95, False), (100, 100, False), (80, 110, True), (120, 120, False)]
>>> order.clock, order.watermark, len(order.held())
(130, 120, 3)
>>> [(r.event.ts_ms, r.late) for r in order.flush()], [ev.ts_ms for ev, _ in order.rejected]
([(130, False), (140, False)], [50000])
"""

from __future__ import annotations

import heapq
import logging
from bisect import bisect_left, insort
from collections import deque
from dataclasses import dataclass, field

from touchline.decisions.events import Event

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class Released:
    """An event let through, and where it goes among the timers: at its own time, or
    (late beyond the lateness) at the watermark it arrived at, after the timers due by then."""

    event: Event
    at_ms: int
    late: bool


@dataclass(slots=True)
class EventOrder:
    """One partition's reorder buffer: ``add`` events as they arrive, ``take`` what is released."""

    lateness_ms: int
    max_ahead_ms: int
    quorum: int
    #: the median time of the recent arrivals in range (None before there were enough)
    clock: int | None = None
    #: how many later positions an event waiting ahead gets before it is taken for a wrong clock
    patience: int = 0
    #: events taken for a wrong clock, with why (for dead letters); the caller empties it
    rejected: list[tuple[Event, str]] = field(default_factory=list)
    #: events released beyond the lateness (counted, processed out of order)
    out_of_order: int = 0
    _held: list[tuple[int, int, Event]] = field(default_factory=list)
    _ahead: list[tuple[int, int, Event]] = field(default_factory=list)
    _positions: set[int] = field(default_factory=set)
    _out: list[Released] = field(default_factory=list)
    #: event times of the last ``2 * quorum - 1`` arrivals in range, in arrival order and sorted
    _recent: deque[int] = field(default_factory=deque)
    _recent_sorted: list[int] = field(default_factory=list)
    #: position of the last event that was not ahead
    _last_in_range: int = -1

    def __post_init__(self) -> None:
        if not self.patience:
            self.patience = 50 * self.quorum

    @property
    def watermark(self) -> int | None:
        """Events and timers up to here are released; None before the first event."""
        return None if self.clock is None else self.clock - self.lateness_ms

    def add(self, event: Event, pos: int) -> None:
        """One arrival at input position ``pos`` (a line number, a Kafka offset)."""
        if pos in self._positions:  # re-read after a restart: held already
            return
        self._expire_ahead(pos)
        clock = self.clock
        if clock is not None and event.ts_ms > clock + self.max_ahead_ms:
            self._positions.add(pos)
            self._ahead.append((event.ts_ms, pos, event))
            if sum(1 for a in self._ahead if a[1] > self._last_in_range) >= self.quorum:
                self._jump()
            return
        self._last_in_range = pos
        if clock is not None and event.ts_ms < clock - self.lateness_ms:
            self.out_of_order += 1
            self._out.append(Released(event, clock - self.lateness_ms, True))
            return
        self._hold(event, pos)
        self._reach(event.ts_ms)
        if self.clock is not None:
            self._release(self.clock - self.lateness_ms)

    def advance(self, to_ms: int) -> None:
        """Move the clock to at least ``to_ms`` (the end of a simulated period)."""
        self._set_clock(to_ms)
        self._release(to_ms - self.lateness_ms)

    def restore(self, event: Event, pos: int) -> None:
        """Put back an event held when the previous run stopped (before any new arrival)."""
        if pos in self._positions:
            return
        if self.clock is not None and event.ts_ms > self.clock + self.max_ahead_ms:
            self._positions.add(pos)
            self._ahead.append((event.ts_ms, pos, event))
        else:
            self._hold(event, pos)
            self._reach(event.ts_ms)

    def take(self) -> list[Released]:
        """What was released since the last call, in processing order."""
        out, self._out = self._out, []
        return out

    def flush(self) -> list[Released]:
        """End of the input: release everything held (with fewer than ``quorum`` events in
        all, the clock becomes the newest of them). Of what waits ahead, the events no
        in-range event came after (a gap at the end of the data) are released too, after the
        others, without moving the clock; the rest are rejected."""
        if self.clock is None and self._recent:
            self.clock = max(self._recent)
        self._release(None)
        trailing = sorted((a for a in self._ahead if a[1] > self._last_in_range), key=lambda a: (a[0], a[1]))
        for ts, pos, event in sorted(self._ahead, key=lambda a: (a[0], a[1])):
            self._positions.discard(pos)
            if pos <= self._last_in_range:
                self.rejected.append((event, self._why(event, "the input ended")))
        self._out += [Released(event, ts, False) for ts, _, event in trailing]
        self._ahead.clear()
        return self.take()

    def catch_up(self) -> list[Released]:
        """The input went quiet (a tailed topic): release what is held, moving the clock to the
        newest of it, instead of waiting for newer events that may not come for a long time.
        Events waiting ahead keep waiting. (Only a pause in the input triggers this, so a
        replay of a full topic is processed the same whatever its batches.)"""
        if self._held:
            self._set_clock(max(ts for ts, _, _ in self._held))
            self._release(None)
        return self.take()

    def __len__(self) -> int:
        """How many events are held or waiting ahead."""
        return len(self._held) + len(self._ahead)

    def held(self) -> list[tuple[int, Event]]:
        """Events held or waiting ahead, by position (what a restart must not lose)."""
        return [(pos, ev) for _, pos, ev in self._held] + [(pos, ev) for _, pos, ev in self._ahead]

    # ---------------------------------------------------------------- steps
    def _hold(self, event: Event, pos: int) -> None:
        self._positions.add(pos)
        heapq.heappush(self._held, (event.ts_ms, pos, event))

    def _release(self, watermark: int | None) -> None:
        held, out = self._held, self._out
        while held and (watermark is None or held[0][0] <= watermark):
            ts, pos, event = heapq.heappop(held)
            self._positions.discard(pos)
            out.append(Released(event, ts, False))

    def _reach(self, ts_ms: int) -> None:
        """An event in range arrived: the clock is the median event time of the last
        ``2 * quorum - 1`` such arrivals (never going back), so fewer than ``quorum`` of them
        with a wrong clock cannot move it, whatever their share of the whole stream."""
        recent, ranked = self._recent, self._recent_sorted
        recent.append(ts_ms)
        insort(ranked, ts_ms)
        if len(recent) > 2 * self.quorum - 1:
            del ranked[bisect_left(ranked, recent.popleft())]
        if len(recent) == 2 * self.quorum - 1:
            median = ranked[self.quorum - 1]
            if self.clock is None or median > self.clock:
                self.clock = median

    def _set_clock(self, to_ms: int) -> None:
        """Move the clock to ``to_ms`` if that is ahead."""
        if self.clock is None or to_ms > self.clock:
            self.clock = to_ms

    def _jump(self) -> None:
        """``quorum`` events in a row agree the stream moved ahead (a gap in the data: every
        event after it is ahead, none in range in between): move the clock to their median and
        take in every waiting event near it; far outliers keep waiting."""
        ahead = sorted(self._ahead, key=lambda a: (a[0], a[1]))
        median = ahead[len(ahead) // 2][0]
        limit = median + self.max_ahead_ms
        taken = [a for a in ahead if a[0] <= limit]
        self._ahead = [a for a in self._ahead if a[0] > limit]  # kept in arrival order
        log.info("input partition's event clock jumps ahead by %.0f s: %d events agree on a gap in the data",
                 (median - (self.clock or median)) / 1000, len(taken))
        self._set_clock(median)
        for ts, pos, event in sorted(taken, key=lambda a: a[1]):  # arrival order
            self._positions.discard(pos)
            self._hold(event, pos)
            self._reach(ts)
        assert self.clock is not None
        self._release(self.clock - self.lateness_ms)

    def _expire_ahead(self, pos: int) -> None:
        """Reject what waited ahead for ``patience`` positions (``_ahead`` is in arrival order)."""
        if not self._ahead or self._ahead[0][1] + self.patience > pos:
            return
        keep = []
        for entry in self._ahead:
            if entry[1] + self.patience <= pos:
                self._positions.discard(entry[1])
                self.rejected.append((entry[2], self._why(entry[2], f"{self.patience} later events went by")))
            else:
                keep.append(entry)
        self._ahead = keep

    def _why(self, event: Event, until: str) -> str:
        return (f"event time {event.ts_ms} ms is more than {self.max_ahead_ms // 1000} s ahead of its input "
                f"partition's event clock ({self.clock} ms) and fewer than {self.quorum} events agreed on a "
                f"jump before {until} (engine.max_future_seconds, engine.time_jump_quorum): taken for a wrong clock")


#: 1990-01-01T00:00:00Z: the default floor of event time. Old enough for real order histories
#: (CDNOW's public log is from 1997), new enough that a zero, a time in seconds read as
#: milliseconds or a year-1 placeholder (all in or before 1970) is a dead letter.
DEFAULT_FLOOR_MS = 631_152_000_000


@dataclass(slots=True, frozen=True)
class TimeRules:
    """What event times the engine believes (``engine.*`` settings).

    >>> rules = TimeRules(max_ahead_ms=60_000)
    >>> rules.out_of_bounds(1_767_225_600_000, wall_ms=1_767_225_600_000) is None
    True
    >>> rules.out_of_bounds(253_402_300_799_000, wall_ms=1_767_225_600_000)[0]
    'future_event'
    >>> rules.out_of_bounds(-62_135_596_800_000, wall_ms=1_767_225_600_000)[0]
    'before_floor'

    Old order histories pass the default floor; a time in seconds read as milliseconds does not:

    >>> rules.out_of_bounds(852_076_800_000, wall_ms=1_767_225_600_000) is None  # 1997-01-01
    True
    >>> rules.out_of_bounds(1_767_225_600, wall_ms=1_767_225_600_000)[0]
    'before_floor'
    """

    lateness_ms: int = 0
    max_ahead_ms: int = 86_400_000
    floor_ms: int = DEFAULT_FLOOR_MS
    quorum: int = 20
    #: False for simulated input, whose times may lie in the future on purpose
    check_wall: bool = True

    def out_of_bounds(self, ts_ms: int, wall_ms: int) -> tuple[str, str] | None:
        """(reason, detail) when an event time is not believable, else None."""
        if ts_ms < self.floor_ms:
            return "before_floor", (f"event time {ts_ms} ms is before engine.min_event_time ({self.floor_ms} ms)")
        if self.check_wall and ts_ms > wall_ms + self.max_ahead_ms:
            return "future_event", (f"event time {ts_ms} ms is more than {self.max_ahead_ms // 1000} s ahead of the "
                                    f"wall clock ({wall_ms} ms; engine.max_future_seconds)")
        return None

    def order(self, clock_ms: int | None) -> EventOrder:
        """A reorder buffer for one input partition, resuming at its clock."""
        return EventOrder(self.lateness_ms, self.max_ahead_ms, self.quorum, clock_ms)
