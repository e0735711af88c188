"""What travels between the dataflow's steps: a batch of raw lines as a source read it,
and what the engine made of it. Plain data, so sources (connectors/) and the engine share
them without either importing the other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class RawBatch:
    """Raw lines as read from a source, with where they came from and when."""

    lines: list[bytes]
    source: str
    first_offset: int = 0
    read_ns: int = field(default_factory=time.perf_counter_ns)
    #: Move the engine clock to at least this time after the lines (end of a
    #: simulated period, or an idle tick in live mode).
    advance_to_ms: int | None = None
    #: Per-line positions when they are not consecutive (Kafka offsets); else first_offset + i.
    offsets: list[int] | None = None
    #: The input partition (Kafka partition; 0 for a file or the simulator). Timers set while
    #: processing it fire on its own event clock, by the worker that reads it.
    partition: int = 0
    #: The last batch of a finite input: events held back for ordering are released.
    final: bool = False
    #: The source has had nothing new for a while (a tailed topic or file): events held back
    #: for ordering are processed rather than kept waiting for newer ones.
    idle: bool = False
    #: Requests to answer after the lines (the HTTP API's: :class:`touchline.decisions.requests.Ask`).
    asks: list[Any] = field(default_factory=list)
    #: Claim and fire the timers due by the batch's clock (False: leave them to a later batch, as
    #: the API does between its ticks, so a request does not wait for a backlog of timers).
    fire_timers: bool = True


@dataclass(slots=True)
class BatchResult:
    """What one batch produced: decisions to emit and records for dead letters."""

    decisions: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]
    #: exposures, outcomes and conversions (the experiments output)
    experiments: list[dict[str, Any]] = field(default_factory=list)
    #: decision points where every candidate was held back (the no-action output)
    no_actions: list[dict[str, Any]] = field(default_factory=list)
    #: where each event ignored as a replay of one already applied was read
    duplicates: list[str] = field(default_factory=list)
    #: where each event of an erased identity (dropped, never stored) was read
    erased: list[str] = field(default_factory=list)
