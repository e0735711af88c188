"""The dead-letter output: one writer shared by the engine's invalid events and the
connectors' failed deliveries (which happen on their own threads, outside the dataflow).

A writer is any callable taking a list of records; this module has the JSONL one and
the Bytewax sink that feeds a writer from the dataflow. The Kafka one is
:class:`touchline.connectors.kafka.KafkaDeadLetters`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition

_DUMP = orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE

DeadLetterWriter = Callable[[list[dict[str, Any]]], None]


class JsonlDeadLetters:
    """Dead letters appended to a JSONL file, one record per line, flushed per call. Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._closed = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Create (or empty) the file: when the run starts, not when it is built, so a start that
        fails leaves the dead letters of the run before."""
        with self._lock:
            if self._file is None and not self._closed:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("wb")

    def __call__(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        data = b"".join(orjson.dumps(r, option=_DUMP) for r in records)
        self.start()
        with self._lock:
            if self._file is None:
                raise ValueError(f"dead letters {self.path}: written after close")
            self._file.write(data)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._file is not None:
                self._file.close()


class _WriterPartition(StatelessSinkPartition[dict[str, Any]]):
    def __init__(self, write: DeadLetterWriter) -> None:
        self._write = write

    def write_batch(self, items: list[dict[str, Any]]) -> None:
        self._write(items)


class DeadLetterSink(DynamicSink[dict[str, Any]]):
    """The dataflow's dead letters into a shared writer.

    Delivery: as the writer's (JSONL: written and flushed per batch; Kafka: at least
    once, each batch's delivery reports checked).
    """

    def __init__(self, write: DeadLetterWriter) -> None:
        self.write = write

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _WriterPartition:
        return _WriterPartition(self.write)
