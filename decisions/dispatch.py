"""The time-ordered queue of one batch, the timers that feed it, and the dispatch loop.

Events and due timers run as one queue ordered by (time, rank, arrival), so a timer that
comes due between two events of a batch fires between them and batch boundaries do not
change the decisions. Rank breaks ties at one instant: events first, then timers, then
events that came later than the allowed lateness (they go after the timers due by their
place), then requests (the HTTP API's: :mod:`.requests`), which see all of it.

>>> q = TimeQueue()
>>> q.push_timer(5, ("c1", "cart", 5)); q.push_event(5, ("e", "c1", None), late=False)
>>> [q.pop()[0] for _ in range(len(q))]
['event', 'timer']
"""

from __future__ import annotations

import heapq
from typing import Any, Callable

from touchline.decisions.profile import Profile

#: An event item: (event, profile key, anonymous key merged into it or None).
EventItem = tuple[Any, str, "str | None"]
#: A timer item: (profile key, timer kind, due time in ms).
TimerItem = tuple[str, str, int]
#: A request item: (request, profile key).
RequestItem = tuple[Any, str]
_EVENT, _TIMER, _LATE, _REQUEST = 0, 1, 2, 3


class TimeQueue:
    """Events and timers of one batch, popped in time order."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int, str, Any]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push_event(self, place_ms: int, item: EventItem, late: bool) -> None:
        self._push(place_ms, _LATE if late else _EVENT, "event", item)

    def push_timer(self, due_ms: int, item: TimerItem) -> None:
        self._push(due_ms, _TIMER, "timer", item)

    def push_request(self, at_ms: int, item: RequestItem) -> None:
        self._push(at_ms, _REQUEST, "request", item)

    def _push(self, ts_ms: int, rank: int, kind: str, item: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (ts_ms, rank, self._seq, kind, item))

    def pop(self) -> tuple[str, Any]:
        """The next (kind, item): ``event`` with an :data:`EventItem`, ``timer`` with a :data:`TimerItem`,
        ``request`` with a :data:`RequestItem`."""
        *_, kind, item = heapq.heappop(self._heap)
        return kind, item


class TimerBook:
    """One pending timer per contact and kind. A timer due within the batch's horizon goes
    into the queue (it fires in this batch); a later one is scheduled in the store."""

    def __init__(self, queue: TimeQueue) -> None:
        self.queue = queue
        self.horizon_ms = 0
        #: (profile key, kind) -> due: what the store schedules after the batch
        self.to_schedule: dict[tuple[str, str], int] = {}

    def set(self, profile: Profile, kind: str, due_ms: int) -> None:
        profile.timers[kind] = due_ms
        if due_ms <= self.horizon_ms:
            self.queue.push_timer(due_ms, (profile.key, kind, due_ms))
            self.to_schedule.pop((profile.key, kind), None)
        else:
            self.to_schedule[(profile.key, kind)] = due_ms

    def forget(self, key: str, kinds: Any) -> None:
        """Drop the scheduling of a profile's timers (it was merged away)."""
        for kind in kinds:
            self.to_schedule.pop((key, kind), None)


def item_id(kind: str, item: Any) -> Any:
    """What names an event, a timer or a request of the queue across runs of one batch."""
    return item if kind == "timer" else id(item[0])


def item_key(kind: str, item: Any) -> str:
    """The profile an event, a timer or a request belongs to."""
    return str(item[0] if kind == "timer" else item[1])


def dispatch(queue: TimeQueue, handlers: dict[str, Callable[..., None]], skip: set[Any], failed: dict[str, Any],
             on_error: Callable[[str, str, Any, Exception], None]) -> None:
    """Hand each item to the handler of its kind, in time order. An exception in one item does
    not stop the rest: ``on_error`` records it, and later items of that profile are left out
    (the caller redoes the profile without the item)."""
    while queue:
        kind, item = queue.pop()
        key = item_key(kind, item)
        if key in failed or item_id(kind, item) in skip:
            continue
        try:
            handlers[kind](*item)
        except Exception as exc:  # a bug met by one input: that profile is redone without it
            on_error(key, kind, item, exc)
