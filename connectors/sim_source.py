"""The simulator as a Bytewax source: the embedded default's event stream."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Iterator, Protocol

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from touchline.connectors.simulator import Simulator, SimulatorSpec
from touchline.decisions.batches import RawBatch


class LineSimulator(Protocol):
    """What the source needs of a simulator: :class:`Simulator` or a closed-loop one."""

    @property
    def spec(self) -> SimulatorSpec: ...

    @property
    def end_ms(self) -> int: ...

    def lines(self) -> Iterator[bytes]: ...


class _SimPartition(StatefulSourcePartition[RawBatch, int]):
    def __init__(self, sim: LineSimulator, batch_size: int, resume: int | None, progress: dict[str, float],
                 stop: threading.Event):
        self._stop = stop
        self._sim = sim
        self._lines: Iterator[bytes] = sim.lines()
        self._emitted = resume or 0
        self._batch_size = batch_size
        self._progress = progress
        self._done = False
        if self._emitted:
            for _ in itertools.islice(self._lines, self._emitted):
                pass

    def next_batch(self) -> list[RawBatch]:
        if self._done or self._stop.is_set():
            raise StopIteration()
        lines = list(itertools.islice(self._lines, self._batch_size))
        first = self._emitted + 1
        self._emitted += len(lines)
        end = None
        if len(lines) < self._batch_size:  # the period is over: let due timers up to its end fire
            self._done = True
            end = self._sim.end_ms
        self._progress["lines"] = self._emitted
        return [RawBatch(lines, "simulator", first, time.perf_counter_ns(), end, final=self._done)]

    def snapshot(self) -> int:
        return self._emitted


class SimulatorSource(FixedPartitionedSource[RawBatch, int]):
    """Deterministic simulated events (see :mod:`touchline.connectors.simulator`).

    Delivery: exactly once with recovery; the snapshot is the number of lines
    emitted, and a resumed run regenerates and skips them (same seed, same lines).
    Setting ``stop`` ends the input cleanly after the current batch.

    ``simulator`` replaces the open-loop :class:`Simulator` of ``spec`` with another
    line simulator, e.g. :class:`touchline.connectors.closed_loop.ClosedLoopSimulator`
    (whose ``spec`` then wins). Recovery of a closed-loop run is not exact: the skip on
    resume regenerates the natural lines only, and reactions come back only as the engine
    re-emits the decisions they answer.
    """

    def __init__(self, spec: SimulatorSpec, batch_size: int = 1000, stop: threading.Event | None = None,
                 simulator: LineSimulator | None = None):
        self.simulator = simulator
        self.spec = simulator.spec if simulator is not None else spec
        self.batch_size = batch_size
        self.stop = stop or threading.Event()
        self.progress: dict[str, float] = {"lines": 0}

    def list_parts(self) -> list[str]:
        return ["simulator"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _SimPartition:
        sim = self.simulator if self.simulator is not None else Simulator(self.spec)
        return _SimPartition(sim, self.batch_size, resume_state, self.progress, self.stop)
