"""JSONL sources and sinks: the embedded default's input and output.

Both are Bytewax fixed partitions (one file, one partition) that snapshot their
position, so a recovered run resumes where its last snapshot was taken.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from touchline.decisions.errors import TouchlineError
from touchline.decisions.events import MAX_EVENT_BYTES
from touchline.decisions.batches import RawBatch

_DUMP = orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE


class InputError(TouchlineError, RuntimeError):
    """An input file cannot be read (missing, a directory, no permission)."""


def check_readable(path: Path) -> None:
    """Fail early, naming the file, instead of deep inside the dataflow."""
    if not path.exists():
        raise InputError(f"input file {path} does not exist")
    if path.is_dir():
        raise InputError(f"input {path} is a directory, expected a JSONL file")
    if not os.access(path, os.R_OK):
        raise InputError(f"input file {path} is not readable")


class _JsonlPartition(StatefulSourcePartition[RawBatch, tuple[int, int]]):
    """One JSONL file read in batches; the snapshot is (byte offset, lines read so far)."""

    def __init__(self, path: Path, batch_size: int, resume: tuple[int, int] | None, progress: dict[str, float],
                 stop: threading.Event, follow: bool, tick_seconds: float):
        self._stop = stop
        self._file = path.open("rb")
        self._name = path.name
        self._size = max(1, path.stat().st_size)
        self._batch_size = batch_size
        self._progress = progress
        self._follow = follow
        self._tick = timedelta(seconds=tick_seconds)
        self._awake: datetime | None = None
        self._offset, self._line = resume or (0, 0)
        self._file.seek(self._offset)
        self._ended = False

    def next_batch(self) -> list[RawBatch]:
        """The next lines as one batch; the last batch of a file says so (``final``: events
        held for ordering are released). Following a growing file, an empty batch is a
        clock tick (``idle``), so timers fire while no lines come."""
        if self._stop.is_set() or self._ended:
            raise StopIteration()
        lines, numbers, first, ran_dry = self._read_batch()
        self._offset = self._file.tell()
        self._progress["fraction"] = self._offset / max(self._size, self._offset, 1)
        final = ran_dry and not self._follow  # following, the end is only the end for now
        self._ended = final
        if lines or final:
            self._awake = None
            return [RawBatch(lines, self._name, first, time.perf_counter_ns(), offsets=numbers, final=final)]
        self._awake = datetime.now(timezone.utc) + self._tick
        return [RawBatch([], self._name, first, time.perf_counter_ns(), idle=True)]

    def _read_batch(self) -> tuple[list[bytes], list[int], int, bool]:
        """Up to ``batch_size`` non-blank lines with their numbers in the file (blank lines
        are skipped, not renumbered), the number the batch starts at (past blank lines that
        open it), and whether the read ran out of whole lines."""
        lines: list[bytes] = []
        numbers: list[int] = []
        first = self._line + 1
        while len(lines) < self._batch_size:
            line = self._next_line()
            if line is None:
                return lines, numbers, first, True
            if line:
                lines.append(line)
                numbers.append(self._line)
            elif not lines:
                first = self._line + 1
        return lines, numbers, first, False

    def _next_line(self) -> bytes | None:
        """The next line without its line end (empty if blank), or None when no whole line is
        left yet. An oversized line comes back as its first ``MAX_EVENT_BYTES + 1`` bytes, so it
        is dead-lettered as ``oversized`` without being read whole into memory."""
        start = self._file.tell()
        line = self._file.readline(MAX_EVENT_BYTES + 1)
        if not line:
            return None
        if self._follow and not line.endswith(b"\n") and len(line) <= MAX_EVENT_BYTES:
            self._file.seek(start)  # a line still being written: read it whole next time
            return None
        self._line += 1
        if len(line) > MAX_EVENT_BYTES and not line.endswith(b"\n"):
            self._skip_rest_of_line()
            return line
        line = line.rstrip(b"\r\n")
        return line if line.strip() else b""

    def _skip_rest_of_line(self) -> None:
        """Read past the rest of an oversized line, a megabyte at a time."""
        while True:
            rest = self._file.readline(1 << 20)
            if not rest or rest.endswith(b"\n"):
                return

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> tuple[int, int]:
        return self._offset, self._line

    def close(self) -> None:
        self._file.close()


class JsonlSource(FixedPartitionedSource[RawBatch, tuple[int, int]]):
    """Events from a JSONL file, one event per line, in batches of raw lines.

    Delivery: exactly once per line with recovery (the byte offset is the snapshot).
    Lines over the event size limit are passed on truncated so they are dead-lettered
    as ``oversized`` without reading them whole into memory; blank lines are skipped.
    Dead letters name the source as ``file:line``. Setting ``stop`` ends the input
    cleanly after the current batch (Ctrl-C in ``touchline run``).

    With ``follow`` the file is tailed like ``tail -f`` (live mode): at its end the
    source waits for more lines, and emits an empty batch every ``tick_seconds`` so
    that wall-clock timers fire while no events arrive.
    """

    def __init__(self, path: Path, batch_size: int = 1000, stop: threading.Event | None = None,
                 follow: bool = False, tick_seconds: float = 1.0):
        check_readable(path)
        self.path = path
        self.batch_size = batch_size
        self.stop = stop or threading.Event()
        self.follow = follow
        self.tick_seconds = tick_seconds
        self.progress: dict[str, float] = {"fraction": 0.0}

    def list_parts(self) -> list[str]:
        return [str(self.path)]

    def build_part(self, step_id: str, for_part: str, resume_state: tuple[int, int] | None) -> _JsonlPartition:
        return _JsonlPartition(self.path, self.batch_size, resume_state, self.progress, self.stop,
                               self.follow, self.tick_seconds)


class _JsonlSinkPartition(StatefulSinkPartition[dict[str, Any], int]):
    def __init__(self, path: Path, resume: int | None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("r+b" if resume is not None and path.exists() else "wb")
        if resume is not None:
            self._file.truncate(resume)
            self._file.seek(resume)

    def write_batch(self, values: list[dict[str, Any]]) -> None:
        self._file.write(b"".join(orjson.dumps(v, option=_DUMP) for v in values))
        self._file.flush()

    def snapshot(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()


class JsonlSink(FixedPartitionedSink[dict[str, Any], int]):
    """Records as JSONL (sorted keys, so equal records are equal bytes).

    Delivery: exactly once with recovery: on resume the file is truncated back to
    the snapshot offset, dropping writes made after it, which the replay rewrites.
    """

    def __init__(self, path: Path):
        self.path = path

    def list_parts(self) -> list[str]:
        return [str(self.path)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _JsonlSinkPartition:
        return _JsonlSinkPartition(self.path, resume_state)


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records as JSONL outside a dataflow (reports, exports); returns the count."""
    n = 0
    with path.open("wb") as out:
        for record in records:
            out.write(orjson.dumps(record, option=_DUMP))
            n += 1
    return n
