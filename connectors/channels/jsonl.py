"""The embedded default connector: one JSONL file per channel (or stdout)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from touchline.connectors.channels.base import (
    ChannelConnector,
    DeliveryError,
    DeliveryReport,
)

_DUMP = orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE


class JsonlConnector(ChannelConnector):
    """Appends each decision as one JSON line: the outbox a local sender or a test reads.

    Delivery: synchronous; a decision is delivered when its line is written and flushed.
    A write error (disk full) fails the batch's decisions into dead letters.
    """

    kind = "jsonl"

    def __init__(self, channel: str, report: DeliveryReport, path: Path | None) -> None:
        super().__init__(channel, report)
        self.path = path  # None: stdout
        self._out: BinaryIO | None = None
        self._lock = threading.Lock()

    @property
    def target(self) -> str:
        return str(self.path) if self.path is not None else "stdout"

    def start(self) -> None:
        if self.path is None:
            self._out = sys.stdout.buffer
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.path.open("wb")

    def submit(self, decisions: list[dict[str, Any]]) -> None:
        if not decisions:
            return
        start = time.monotonic()
        assert self._out is not None, "start() first"
        try:
            with self._lock:
                self._out.write(b"".join(orjson.dumps(d, option=_DUMP) for d in decisions))
                self._out.flush()
        except OSError as exc:
            for decision in decisions:
                self.report.error(self.channel, self.kind, "write")
                self.report.failed(decision, self.channel, self.kind, DeliveryError("write", str(exc)), 1,
                                   time.monotonic() - start)
            return
        seconds = time.monotonic() - start
        for decision in decisions:
            self.report.delivered(self.channel, self.kind, seconds, decision=decision)

    def close(self, timeout: float = 30.0) -> None:
        if self._out is not None and self.path is not None:
            self._out.close()
        self._out = None
