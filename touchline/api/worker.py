"""The API's engine thread: every request becomes part of a batch of the engine.

One thread owns an :class:`~touchline.batch_service.Engine` over the state store the stream
uses. HTTP handlers hand it jobs (events to apply, requests to answer) through a queue; it
takes what has queued up (up to ``api.batch_size``) as one batch, so a burst of concurrent
requests costs one state-store round trip per stage. Profile requests are answered first, on
one load (nothing to write); the rest when their batch is committed and written out. Between requests it fires the timers the API's events set (its own
timer partition, ``api.timer_partition``) every ``api.tick_seconds``.

Writes go through the engine's own commit: each profile is written with a check of the
version it was loaded at, so of the stream and the API deciding for one contact at once, the
second is redone on the first's state (its sends, so its caps). Nothing here writes a profile
any other way.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from touchline.batch_service import Engine
from touchline.decisions.errors import TouchlineError
from touchline.decisions.batches import BatchResult, RawBatch
from touchline.decisions.requests import PROFILE, Ask, answer_reads, request_key
from touchline.state.base import StoreDataLost, StoreError

log = logging.getLogger(__name__)

#: Where the API's events say they were read, in dead letters: ``api:<request id>#<index>``.
SOURCE = "api"


class ApiError(TouchlineError, RuntimeError):
    """An answer other than 200: an HTTP status, a short code and a message (JSON to the client)."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


@dataclass(eq=False)
class Job:
    """One HTTP request's share of a batch: its events (raw lines) and requests; once the batch
    is done, each event's status and the requests' answers (on the asks), or the error."""

    label: str
    lines: list[bytes] = field(default_factory=list)
    asks: list[Ask] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    error: ApiError | None = None
    #: set by :meth:`ApiWorker.submit`: how the answer reaches the waiting handler
    _done: Callable[[], None] | None = None

    @property
    def reads_only(self) -> bool:
        """Profile requests alone: answered without a write."""
        return not self.lines and all(a.kind == PROFILE for a in self.asks)

    def finish(self) -> None:
        if self._done is not None:
            self._done()


class ApiWorker:
    """Runs the API's batches on one thread (see the module docstring)."""

    def __init__(self, engine: Engine, emit: Callable[[BatchResult], None], partition: int, batch_size: int,
                 tick_seconds: float, on_fatal: Callable[[Exception], None]) -> None:
        self.engine, self.emit, self.partition = engine, emit, partition
        self.batch_size, self.tick_seconds, self.on_fatal = batch_size, tick_seconds, on_fatal
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._seq = 0
        self._last_tick = 0.0
        self._restore = False  # a batch failed mid-way: put back the timers it claimed
        #: why the last batch failed ("" once one succeeds): what a request that timed out is told
        self.last_error = ""
        self._thread = threading.Thread(target=self._loop, name="touchline-api-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the jobs queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    async def run(self, job: Job, timeout: float) -> Job:
        """Queue ``job`` and wait for its batch; a batch that takes longer than ``timeout`` is a 503
        (the job still completes: its events are applied, its answer is dropped)."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        job._done = lambda: _call_soon(loop, done)
        self._queue.put(job)
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except asyncio.TimeoutError:
            why = self.last_error if self.last_error else "the state store is slow or unreachable, or the engine is overloaded"
            raise ApiError(503, "unavailable", f"no answer within api.timeout_seconds ({timeout:g} s): {why}") from None
        if job.error is not None:
            raise job.error
        return job

    # ------------------------------------------------------------------ the engine thread
    def _loop(self) -> None:
        while True:
            jobs, stopping = self._take()
            if jobs or self._tick_due():
                try:
                    self._handle(jobs)
                except Exception as exc:  # noqa: BLE001 - a bug here must not end the thread every answer waits on
                    log.warning("the API's engine thread raised %s: %s", type(exc).__name__, exc, exc_info=True)
                    _fail(jobs, ApiError(500, "internal_error", f"{type(exc).__name__}: {exc} (a bug to report)"))
            if stopping:
                return

    def _take(self) -> tuple[list[Job], bool]:
        """The jobs queued, up to about ``batch_size`` items, waiting until the next tick for the first."""
        wait = max(0.0, self._last_tick + self.tick_seconds - time.monotonic())
        try:
            first = self._queue.get(timeout=wait)
        except queue.Empty:
            return [], False
        jobs: list[Job] = []
        size = 0
        item = first
        while item is not None:
            jobs.append(item)
            size += len(item.lines) + len(item.asks)
            if size >= self.batch_size:
                return jobs, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return jobs, False
        return jobs, True

    def _tick_due(self) -> bool:
        return time.monotonic() - self._last_tick >= self.tick_seconds

    def _handle(self, jobs: list[Job]) -> None:
        """One batch: the profile requests first, answered at once (one load, nothing written: they
        need not wait for the writes, and requests that came together have no order); then the
        jobs' events and decide requests with, when a tick is due, the timers due by now."""
        reads = [job for job in jobs if job.reads_only]
        writes = [job for job in jobs if not job.reads_only]
        tick = self._tick_due()
        if reads:
            self._settle(reads, lambda: self._read(reads))
            for job in reads:
                job.finish()
        if writes or tick:
            self._settle(writes, lambda: self._write(writes, tick))
        for job in writes:
            job.finish()

    def _settle(self, jobs: list[Job], work: Callable[[], None]) -> None:
        """Do ``work`` for ``jobs``; its error becomes theirs (and what a request that timed out is told)."""
        try:
            work()
            self.last_error = ""
        except ApiError as exc:
            self.last_error = exc.message
            for job in jobs:
                job.error = exc

    def _write(self, jobs: list[Job], tick: bool) -> None:
        sources = self._number(jobs)
        batch = RawBatch([line for job in jobs for line in job.lines], SOURCE, offsets=list(sources),
                         partition=self.partition, asks=[a for job in jobs for a in job.asks],
                         advance_to_ms=time.time_ns() // 1_000_000, idle=not jobs, fire_timers=tick)
        if tick:
            self._last_tick = time.monotonic()
        self._guarded(lambda: self._process(batch, sources))

    def _read(self, jobs: list[Job]) -> None:
        """Profile requests: one load of every profile asked for, nothing written."""
        asks = [a for job in jobs for a in job.asks]
        self._guarded(lambda: answer_reads(self.engine.core, *self._loaded(asks)))

    def _loaded(self, asks: list[Ask]) -> tuple[dict[str, Any], list[tuple[Ask, str]]]:
        """The profiles the requests are about (an anonymous id resolved through its link)."""
        store = self.engine.store
        lookups = [a.lookup() for a in asks if a.contact_id is None]
        resolved = iter(store.begin(lookups, None, partition=self.partition)[0] if lookups else [])
        keyed = [(a, request_key(a, "" if a.contact_id is not None else next(resolved)[0])) for a in asks]
        return store.load({key for _, key in keyed}), keyed

    def _number(self, jobs: list[Job]) -> dict[int, tuple[Job, int]]:
        """Give every line of the batch its position (its dead letter's source names the request)."""
        sources: dict[int, tuple[Job, int]] = {}
        for job in jobs:
            job.statuses = [{"index": i, "status": "accepted"} for i in range(len(job.lines))]
            for i in range(len(job.lines)):
                self._seq += 1
                sources[self._seq] = (job, i)
        return sources

    def _process(self, batch: RawBatch, sources: dict[int, tuple[Job, int]]) -> None:
        """Run the batch, note what became of each event, then write its outputs."""
        self._put_back_claims()
        result = self.engine.process(batch)
        _statuses(result, sources)
        self.emit(result)

    def _guarded(self, work: Callable[[], None]) -> None:
        """Do ``work`` on the store; a store that fails is a 503 for this batch only (the next one
        tries again), one that lost its data stops the API."""
        engine = self.engine
        engine.busy_since = time.monotonic()
        try:
            work()
        except StoreDataLost as exc:
            self.on_fatal(exc)
            raise ApiError(503, "unavailable", str(exc)) from None
        except StoreError as exc:
            self._restore = True
            raise ApiError(503, "unavailable", f"state store: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a bug: this batch fails, the API goes on
            self._restore = True
            log.warning("an API batch raised %s: %s", type(exc).__name__, exc, exc_info=True)
            raise ApiError(500, "internal_error", f"{type(exc).__name__}: {exc} (a bug to report)") from None
        finally:
            engine.busy_since = None
        if engine.failure is not None:  # an output failed for good (a broker gone for kafka.retry_seconds)
            self.on_fatal(engine.failure)

    def _put_back_claims(self) -> None:
        """After a failed batch, the timers it claimed go back to be due (this process is the only
        claimant of its partition, so nothing else holds them)."""
        restore = getattr(self.engine.store, "restore_claimed", None)
        if self._restore and restore is not None:
            restore(self.partition)
        self._restore = False


def _call_soon(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    """Resolve ``future`` on its loop's thread (the handler waiting for it runs there); a loop
    already closed (the server stopped) has nobody waiting."""
    try:
        loop.call_soon_threadsafe(_resolve, future)
    except RuntimeError:
        pass


def _fail(jobs: list[Job], exc: ApiError) -> None:
    """Answer every job with ``exc`` (those already answered keep their answer)."""
    for job in jobs:
        if job.error is None:
            job.error = exc
        job.finish()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _statuses(result: BatchResult, sources: dict[int, tuple[Job, int]]) -> None:
    """What became of each job's events: dead-lettered (the dead letter names the request),
    ignored as a replay, dropped for an erased identity, else accepted."""
    for record in result.dead_letters:
        found = _of(record.get("source"), sources)
        if found is not None:
            job, i = found
            record["source"] = f"{SOURCE}:{job.label}#{i}"
            job.statuses[i] = {"index": i, "status": "dead_letter", "reason": record["reason"],
                               "detail": record["detail"]}
    for where, status in ((result.duplicates, "duplicate"), (result.erased, "dropped")):
        for source in where:
            found = _of(source, sources)
            if found is not None:
                job, i = found
                job.statuses[i] = {"index": i, "status": status}
                if status == "dropped":
                    job.statuses[i]["reason"] = "erased: the identity was erased; its events are not kept"


def _of(source: Any, sources: dict[int, tuple[Job, int]]) -> tuple[Job, int] | None:
    """The job and index of an engine source ``api:<position>``."""
    if not isinstance(source, str) or not source.startswith(SOURCE + ":"):
        return None
    position = source[len(SOURCE) + 1:]
    return sources.get(int(position)) if position.isdigit() else None
