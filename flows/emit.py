"""Timed outputs: the "emit" stage of the engine's latency, and event time to decision emit.

Any Bytewax sink can be wrapped; the wrapper forwards every call to the wrapped sink
and reports how long each ``write_batch`` took, with the items written, to a callback.
Delivery guarantees are the wrapped sink's own (the wrapper adds no buffering).

>>> from bytewax.testing import TestingSink
>>> seen = []
>>> out = []
>>> sink = timed(TestingSink(out), lambda items, seconds: seen.append(len(items)))
>>> part = sink.build("step", 0, 1)
>>> part.write_batch([1, 2, 3])
>>> out, seen
([1, 2, 3], [3])
"""

from __future__ import annotations

import time
from typing import Any, Callable

from bytewax.outputs import DynamicSink, FixedPartitionedSink, Sink, StatefulSinkPartition, StatelessSinkPartition

#: Called after each write with the items written and the seconds it took.
OnWrite = Callable[[list[Any], float], None]


def timed(sink: Sink[Any], on_write: OnWrite) -> Sink[Any]:
    """``sink``, with each batch write timed into ``on_write``."""
    if isinstance(sink, FixedPartitionedSink):
        return _TimedPartitionedSink(sink, on_write)
    if isinstance(sink, DynamicSink):
        return _TimedDynamicSink(sink, on_write)
    raise TypeError(f"cannot time a {type(sink).__name__}: not a FixedPartitionedSink or DynamicSink")


class _TimedPartitionedSink(FixedPartitionedSink[Any, Any]):
    def __init__(self, inner: FixedPartitionedSink[Any, Any], on_write: OnWrite) -> None:
        self.inner, self.on_write = inner, on_write

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def part_fn(self, item_key: str) -> int:
        return self.inner.part_fn(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> "_TimedStatefulPartition":
        return _TimedStatefulPartition(self.inner.build_part(step_id, for_part, resume_state), self.on_write)


class _TimedWrites:
    """What both kinds of timed partition do: time each write, forward the close."""

    inner: Any

    def __init__(self, inner: Any, on_write: OnWrite) -> None:
        self.inner, self.on_write = inner, on_write

    def write_batch(self, items: list[Any]) -> None:
        started = time.perf_counter()
        self.inner.write_batch(items)
        self.on_write(items, time.perf_counter() - started)

    def close(self) -> None:
        self.inner.close()


class _TimedStatefulPartition(_TimedWrites, StatefulSinkPartition[Any, Any]):
    def snapshot(self) -> Any:
        return self.inner.snapshot()


class _TimedDynamicSink(DynamicSink[Any]):
    def __init__(self, inner: DynamicSink[Any], on_write: OnWrite) -> None:
        self.inner, self.on_write = inner, on_write

    def build(self, step_id: str, worker_index: int, worker_count: int) -> "_TimedStatelessPartition":
        return _TimedStatelessPartition(self.inner.build(step_id, worker_index, worker_count), self.on_write)


class _TimedStatelessPartition(_TimedWrites, StatelessSinkPartition[Any]):
    pass
