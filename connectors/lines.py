"""Raw lines already in memory as a Bytewax source (benchmarks, tests, previews)."""

from __future__ import annotations

import time
from typing import Sequence

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from touchline.decisions.batches import RawBatch


class _LinesPartition(StatefulSourcePartition[RawBatch, int]):
    def __init__(self, lines: Sequence[bytes], name: str, batch_size: int, resume: int | None,
                 advance_to_ms: int | None):
        self._lines, self._name, self._batch = lines, name, batch_size
        self._pos = resume or 0
        self._end = advance_to_ms

    def next_batch(self) -> list[RawBatch]:
        if self._pos >= len(self._lines) and self._end is None:
            raise StopIteration()
        chunk = list(self._lines[self._pos:self._pos + self._batch])
        first = self._pos + 1
        self._pos += len(chunk)
        end = None
        final = self._pos >= len(self._lines)
        if final:
            end, self._end = self._end, None
        return [RawBatch(chunk, self._name, first, time.perf_counter_ns(), end, final=final)]

    def snapshot(self) -> int:
        return self._pos


class LinesSource(FixedPartitionedSource[RawBatch, int]):
    """Emit ``lines`` in batches, stamping each batch with its read time when emitted.

    Delivery: exactly once with recovery (the position is the snapshot).
    ``advance_to_ms`` moves the engine clock at the end, so timers up to it fire.
    """

    def __init__(self, lines: Sequence[bytes], name: str = "lines", batch_size: int = 1000,
                 advance_to_ms: int | None = None):
        self.lines, self.name, self.batch_size, self.advance_to_ms = lines, name, batch_size, advance_to_ms
        self.progress: dict[str, float] = {}

    def list_parts(self) -> list[str]:
        return [self.name]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _LinesPartition:
        return _LinesPartition(self.lines, self.name, self.batch_size, resume_state, self.advance_to_ms)
