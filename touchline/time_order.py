"""A file of events read back in event-time order, for an offline replay (``touchline scores --input``).

Exports are often sorted by customer, not by time. A stream engine reads events in the order
they come: once one customer's events have moved its clock on, the next customer's older
events arrive late (dead-lettered, or applied after their retention timer fired). A replay of
a file has no such excuse: it reads the whole file first. One pass keeps, per line, its event
time and where it starts (16 bytes a line, whatever its size); a stable sort puts the
lines in time order, ties in file order; a second pass reads them back by seeking. A file
already in time order is read straight through.

Lines that are not valid events keep their place after the valid line before them, so the
engine dead-letters them as it would in a run.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     f = Path(d, "e.jsonl")
...     _ = f.write_text('{"event_id":"b","type":"page_view","ts":9,"contact_id":"c"}\\n\\noops\\n'
...                      '{"event_id":"a","type":"page_view","ts":5,"contact_id":"d"}\\n'
...                      '{"event_id":"z","type":"page_view","ts":99,"contact_id":"e"}\\n')
...     replay = TimeOrdered.scan(f, until_ms=50)
...     [line[:20] for line in replay.lines()], replay.line_numbers([o for o, _ in replay.placed_lines()])
([b'{"event_id":"a","typ', b'{"event_id":"b","typ', b'oops'], {0: 1, 61: 3, 66: 4})
>>> replay.later, replay.reordered, replay.last_seen
(1, True, {'c': 9, 'd': 5})
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

#: Indexes turned into Python ints at a time.
CHUNK = 65_536
#: The sort key of an invalid line before any valid one: it goes first.
_BEFORE_ALL = -(2**63)


def input_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file of events, naming it; None when it can.

    >>> input_problem(Path("/")), input_problem(Path("/no/such.jsonl"))
    ('/: a directory, not a file of events', '/no/such.jsonl: no such file')
    """
    if path.is_file():
        return None
    return f"{path}: " + ("a directory, not a file of events" if path.is_dir() else "no such file")


@dataclass
class TimeOrdered:
    """The valid events of a file up to a time, and its invalid lines, in event-time order."""

    path: Path
    #: Per kept line: its event time (invalid lines: the previous valid line's) and byte offset.
    times: array = field(default_factory=lambda: array("q"))
    offsets: array = field(default_factory=lambda: array("q"))
    #: Valid events after the time, left out.
    later: int = 0
    #: The file was not already in time order.
    reordered: bool = False
    #: Each contact id of the events kept: its newest event time.
    last_seen: dict[str, int] = field(default_factory=dict)

    @classmethod
    def scan(cls, path: Path, until_ms: int, contacts: bool = True) -> "TimeOrdered":
        """Read ``path`` once: what to replay, and in which order; ``contacts``: also keep
        :attr:`last_seen` (memory per contact as well as per line)."""
        from touchline.decisions.events import Event, parse_event

        found = cls(path)
        key = newest = _BEFORE_ALL
        with open(path, "rb") as fh:
            offset = 0
            for line in fh:
                start, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                ev = parse_event(line.rstrip(b"\r\n"))
                if isinstance(ev, Event):
                    if ev.ts_ms > until_ms:
                        found.later += 1
                        continue
                    key = ev.ts_ms
                    if contacts:
                        found._saw(ev.contact_id, key)
                found.reordered |= key < newest
                newest = max(newest, key)
                found._keep(key, start)
        return found

    def _saw(self, contact_id: str | None, ts_ms: int) -> None:
        if contact_id:
            self.last_seen[contact_id] = max(ts_ms, self.last_seen.get(contact_id, ts_ms))

    def _keep(self, key: int, offset: int) -> None:
        self.times.append(key)
        self.offsets.append(offset)

    def __len__(self) -> int:
        return len(self.offsets)

    def lines(self) -> Iterator[bytes]:
        """Each kept line without its line end, in event-time order."""
        return (line for _, line in self.placed_lines())

    def placed_lines(self) -> Iterator[tuple[int, bytes]]:
        """Each kept line with its byte offset in the file, in event-time order."""
        offsets = self.offsets
        with open(self.path, "rb") as fh:
            for i in self._order():
                fh.seek(offsets[i])
                yield offsets[i], fh.readline().rstrip(b"\r\n")

    def line_numbers(self, offsets: Iterator[int] | list[int]) -> dict[int, int]:
        """The line number (from 1) of each byte offset given (one pass over the file: for the
        few lines a report names, not for every line)."""
        wanted = sorted(set(offsets))
        found: dict[int, int] = {}
        if not wanted:
            return found
        at, number, k = 0, 1, 0
        with open(self.path, "rb") as fh:
            for line in fh:
                while k < len(wanted) and wanted[k] < at + len(line):
                    found[wanted[k]] = number
                    k += 1
                if k == len(wanted):
                    break
                at, number = at + len(line), number + 1
        return found

    def _order(self) -> Iterator[int]:
        """Indexes of the kept lines in time order (a stable sort: ties keep the file's order)."""
        if not self.reordered:
            yield from range(len(self))
            return
        order = np.argsort(np.frombuffer(self.times, dtype=np.int64), kind="stable")
        for start in range(0, len(order), CHUNK):  # not one Python list of every index
            yield from order[start:start + CHUNK].tolist()
