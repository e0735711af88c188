"""``touchline serve --workers N``: N API processes on one port, so the API uses more than one core.

One Python process answers on one core (one GIL); past about 0.8 of it, requests queue. The
parent binds the port and starts N workers (``python -m touchline serve``, each told its
index) that accept on the same listening socket, so the kernel hands each new connection to
whichever worker takes it first. Each worker is a whole ``touchline serve`` on the same
Redis: its own engine, timer partition (``api.timer_partition`` + index), outbox recovery
(the first worker only) and output files (``worker-<index>-decisions.jsonl``, ...). The
versioned commits keep them correct on one store, as they keep the stream's processes.

``/metrics`` on the port answers for all of them: each worker writes its exposition to a
folder the parent made every :data:`PUBLISH_SECONDS`, and the worker asked merges them,
labelling every sample with ``worker``. The parent forwards SIGINT and SIGTERM, and stops the
others when a worker fails (:func:`touchline.runtime.supervise`).

What each worker keeps for itself: the rate limit (``api.rate_per_second`` is per key and
per worker), the send-time and model state between their shares through the store.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TextIO

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from touchline.logs import console
from touchline.settings import ConfigError, Settings
from touchline.state.base import StateStore

log = logging.getLogger(__name__)

#: How often a worker writes its metrics for the others to merge (a scrape sees them this late at most).
PUBLISH_SECONDS = 1.0
#: Options the parent sets for each worker itself.
_WORKER_OPTIONS = ("--workers", "--worker-index", "--listen-fd", "--metrics-dir")


@dataclass(frozen=True)
class WorkerSlot:
    """Which of the parent's workers this process is, and what the parent handed it."""

    index: int
    count: int
    listen_fd: int
    metrics_dir: Path

    @property
    def prefix(self) -> str:
        """Its output files' prefix: ``worker-0-decisions.jsonl`` and so on."""
        return f"worker-{self.index}-"


def check_workers(settings: Settings, replaying: bool) -> None:
    """Several workers need a store they can share, and no file to replay (each would replay it)."""
    workers = settings.api.workers
    if workers <= 1:
        return
    if settings.state.url.startswith("memory"):
        raise ConfigError(f"api.workers = {workers} (--workers) needs state in Redis (--redis URL): each worker "
                          "is a process of its own, and the in-process store cannot be shared between them")
    if replaying:
        raise ConfigError(f"--input replays a file in one process: with api.workers = {workers} (--workers) each "
                          "worker would apply it; replay it with 'touchline run --input FILE --redis URL' first")


def worker_argv(argv: Sequence[str], slot: WorkerSlot) -> list[str]:
    """The parent's ``serve`` arguments for one worker: without ``--workers``, with its slot.

    >>> worker_argv(["serve", "--redis", "r", "--workers", "2", "--port=0"], WorkerSlot(1, 2, 7, Path("/m")))
    ['serve', '--redis', 'r', '--port=0', '--worker-index', '1', '--workers', '2', '--listen-fd', '7', '--metrics-dir', '/m']
    """
    from touchline.runtime import without_options

    return without_options(argv, _WORKER_OPTIONS) + ["--worker-index", str(slot.index), "--workers", str(slot.count), "--listen-fd",
                  str(slot.listen_fd), "--metrics-dir", str(slot.metrics_dir)]


def serve_workers(settings: Settings, argv: Sequence[str], out: TextIO = sys.stderr,
                  on_ready: Callable[[str], None] | None = None) -> int:
    """Bind the port, start ``api.workers`` workers on it and wait for them; the first to fail
    stops the others. Returns the worst exit code (0 when stopped by SIGINT or SIGTERM)."""
    from touchline.api.server import bind
    from touchline.redact import redact_url
    from touchline.runtime import die_with_parent, supervise

    from touchline.state import open_store

    api = settings.api
    open_store(settings.state.url, settings.state.options()).close()  # unreachable: one error, not one per worker
    sock = bind(api.host, api.port)
    try:
        with tempfile.TemporaryDirectory(prefix="touchline-serve-") as scratch:
            fd = sock.fileno()
            slots = [WorkerSlot(i, api.workers, fd, Path(scratch)) for i in range(api.workers)]
            children = [subprocess.Popen([sys.executable, "-m", "touchline", *worker_argv(argv, slot)],
                                         pass_fds=(fd,), preexec_fn=die_with_parent) for slot in slots]
            host, port = sock.getsockname()[:2]
            url = f"http://{host}:{port}"
            pids = [c.pid for c in children]
            console(f"serving the API on {url} with {len(children)} workers (pids {', '.join(map(str, pids))}; "
                    f"state {redact_url(settings.state.url)}; OpenAPI at {url}/openapi.json; decisions to "
                    f"worker-<n>-{settings.output.decisions} in {settings.output.dir} or the decisions topic); "
                    "Ctrl-C to stop", stream=out, url=url, pids=pids)
            if on_ready is not None:
                on_ready(url)
            code = supervise(children)
    finally:
        sock.close()
    if code == 0:
        console("stopped: every worker answered its requests in flight and closed its outputs", stream=out)
    return code


def regroup_timer_partitions(store: StateStore, base: int, count: int) -> int:
    """Give the ``count`` workers starting now the timers of partitions a run with more workers
    left behind (``base + count`` and up: no process would fire them), partition ``base + j``
    to ``base + j % count``; returns how many moved. Run by the first worker, before serving.

    >>> from touchline.state import MemoryStore
    >>> regroup_timer_partitions(MemoryStore(), 1000, 2)  # the in-process store has no partitions
    0
    """
    before = store.swap_count(f"api-workers@{base}", count) or 0
    return sum(store.move_timers(base + j, base + j % count) for j in range(count, before))


def inherited_socket(slot: WorkerSlot) -> socket.socket:
    """The listening socket the parent bound, by its descriptor."""
    sock = socket.socket(fileno=slot.listen_fd)
    sock.setblocking(False)
    return sock


# ------------------------------------------------------------------ /metrics of every worker
class MetricsPublisher:
    """Writes this worker's exposition to ``metrics_dir/worker-<index>.prom`` every
    :data:`PUBLISH_SECONDS` (whole files: written aside, then renamed), on a thread of its own."""

    def __init__(self, registry: CollectorRegistry, slot: WorkerSlot) -> None:
        self.registry, self.slot = registry, slot
        self.path = slot.metrics_dir / f"worker-{slot.index}.prom"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="touchline-metrics-publisher", daemon=True)

    def start(self) -> "MetricsPublisher":
        self._thread.start()
        return self

    def publish(self) -> None:
        aside = self.path.with_suffix(".tmp")
        aside.write_bytes(generate_latest(self.registry))
        os.replace(aside, self.path)

    def _loop(self) -> None:
        while not self._stop.wait(PUBLISH_SECONDS):
            try:
                self.publish()
            except OSError as exc:  # the parent's folder is gone: it is stopping
                log.debug("could not publish this worker's metrics: %s", exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class AllWorkers:
    """A collector for ``/metrics``: this worker's samples, live, and the others' as they last
    published them, each labelled ``worker``.

    >>> reg = CollectorRegistry()
    >>> from prometheus_client import Counter
    >>> Counter("touchline_demo", "a demo", registry=reg).inc(2)
    >>> merged = CollectorRegistry(); merged.register(AllWorkers(reg, WorkerSlot(0, 1, -1, Path("/nowhere"))))
    >>> [line for line in generate_latest(merged).decode().splitlines() if line.startswith("touchline_demo_total")]
    ['touchline_demo_total{worker="0"} 2.0']
    """

    def __init__(self, own: CollectorRegistry, slot: WorkerSlot) -> None:
        self.own, self.slot = own, slot

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for index, text in self._expositions():
            for family in text_string_to_metric_families(text):
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                into.samples += [s._replace(labels={**s.labels, "worker": str(index)}) for s in family.samples]
        yield from merged.values()

    def _expositions(self) -> Iterator[tuple[int, str]]:
        yield self.slot.index, generate_latest(self.own).decode()
        for index in range(self.slot.count):
            if index == self.slot.index:
                continue
            try:
                yield index, (self.slot.metrics_dir / f"worker-{index}.prom").read_text()
            except OSError:  # not published yet (starting), or gone: left out of this scrape
                continue


def metrics_of_all(own: CollectorRegistry, slot: WorkerSlot) -> CollectorRegistry:
    """The registry ``/metrics`` answers from on a worker: every worker's samples."""
    merged = CollectorRegistry(auto_describe=False)
    merged.register(AllWorkers(own, slot))
    return merged


def describe_slot(slot: WorkerSlot | None) -> dict[str, Any]:
    """Fields the worker's log lines carry."""
    return {} if slot is None else {"worker": slot.index, "workers": slot.count}
