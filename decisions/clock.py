"""One notion of "now" for windows, horizons and timers.

Replay runs on event time: now is the newest event time seen (a watermark), so a
week of events replayed in a minute fires the same timers at the same (event) times
as living through it. Live mode runs on the wall clock through the same interface,
and timers then fire on idle ticks too.

>>> clock = EventTimeClock()
>>> clock.observe(5_000); clock.observe(3_000); clock.now()
5000
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """What the engine asks of time."""

    def observe(self, event_ts_ms: int) -> None:
        """Tell the clock an event with this event time was seen."""

    def now(self) -> int:
        """The current time in epoch milliseconds."""


class EventTimeClock:
    """Now is the largest event time observed (monotonic; late events don't move it back)."""

    def __init__(self, start_ms: int = 0) -> None:
        self._now = start_ms

    def observe(self, event_ts_ms: int) -> None:
        if event_ts_ms > self._now:
            self._now = event_ts_ms

    def now(self) -> int:
        return self._now


class WallClock:
    """Now is the system clock; observing events changes nothing."""

    def observe(self, event_ts_ms: int) -> None:
        return None

    def now(self) -> int:
        return time.time_ns() // 1_000_000
