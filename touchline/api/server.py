"""Serving the API: ``touchline serve`` (a process of its own beside the engine, on the same
state store and settings) and ``touchline run --api`` (a thread of the engine's process).

The API has an engine of its own over the state store (:mod:`touchline.api.worker`): the same
decision core as the stream (policy, journeys, experiments, models from the model store), on
the wall clock, writing profiles only through the store's versioned commit. On Redis it runs
beside any number of engine processes; on the in-process store (``memory://``) it is the only
engine, fed by ``POST /v1/events`` and, with ``--input FILE``, by a file replayed first.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, TextIO

from prometheus_client import CollectorRegistry

from touchline.heap import startup_heap_frozen
from touchline.logs import console
from touchline.api.app import Api, build_app
from touchline.api.guard import Keys
from touchline.api.outputs import ApiOutputs
from touchline.api.worker import ApiWorker
from touchline.api.workers import (
    MetricsPublisher, WorkerSlot, describe_slot, inherited_socket, metrics_of_all, regroup_timer_partitions,
)
from touchline.batch_service import Engine
from touchline.decisions.clock import EventTimeClock, WallClock
from touchline.metrics.server import Health
from touchline.redact import redact_url
from touchline.settings import ConfigError, Settings

log = logging.getLogger(__name__)


def api_settings(settings: Settings, prefix: str = "") -> Settings:
    """The settings the API's engine runs with: the wall clock (it answers "now"), an unreachable
    store retried for half as long as a request waits (so the answer can say why), and
    (``prefix``) output files of its own."""
    api, state, out = settings.api, settings.state, settings.output
    half = api.timeout_seconds / 2
    update: dict[str, Any] = {
        "engine": settings.engine.model_copy(update={"clock": "wall"}),
        "state": state.model_copy(update={"retry_seconds": min(state.retry_seconds, half),
                                          "socket_timeout": min(state.socket_timeout, half)})}
    if prefix:
        update["output"] = out.model_copy(update={name: prefix + getattr(out, name)
                                                   for name in ("decisions", "dead_letters", "experiments", "no_actions")})
    return settings.model_copy(update=update)


@dataclass
class ApiService:
    """Everything a running API holds, and how to close it (in order)."""

    settings: Settings
    engine: Engine
    outputs: ApiOutputs
    worker: ApiWorker
    keys: list[str]
    registry: CollectorRegistry
    failure: list[Exception] = field(default_factory=list)
    on_failure: Callable[[], None] = lambda: None
    #: what ``/metrics`` answers from (``serve --workers``: every worker's)
    metrics_registry: CollectorRegistry | None = None
    #: run first at close (a worker's metrics publisher)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def fail(self, exc: Exception) -> None:
        """A dependency failed for good (the store lost its data, an output's broker is gone): stop serving."""
        if not self.failure:
            log.warning("the API stops: %s", exc)
            self.failure.append(exc)
        self.on_failure()

    def app(self) -> Any:
        health = Health({"state_store": self.engine.store.ping},
                        alive=lambda: f"stopped: {self.failure[0]}" if self.failure else None)
        return build_app(Api(self.worker, self.settings.api, Keys(self.keys), health, self.registry,
                             self.metrics_registry))

    def close(self) -> None:
        for close in self.closers:
            close()
        self.worker.stop()
        self.outputs.close()
        self.engine.shut_down()
        if self.engine.keeper is not None:
            self.engine.keeper.close()
        self.engine.store.close()


def open_service(settings: Settings, *, prefix: str = "", replay: Path | None = None,
                 recover: bool = True) -> ApiService:
    """The API's engine, outputs and worker (started), after replaying ``replay`` if given."""
    from touchline.runner import build_engine

    tuned = api_settings(settings, prefix)
    registry = CollectorRegistry()
    engine = build_engine(tuned, registry)
    try:
        return _start(tuned, engine, registry, replay, recover, prefix)
    except BaseException:
        engine.store.close()
        raise


def _start(settings: Settings, engine: Engine, registry: CollectorRegistry, replay: Path | None, recover: bool,
           prefix: str) -> ApiService:
    from touchline.runner import time_rules

    api = settings.api
    engine.source_kind, engine.keep_held = "api", False
    engine.time = replace(time_rules(settings), check_wall=True)  # real input: future times are refused
    if engine.keeper is not None:
        engine.keeper.saves = False  # the stream's first process checkpoints the models
    engine.store.claim_epoch(None)
    outputs = ApiOutputs(settings, engine, registry, prefix)
    try:
        if replay is not None:
            replay_file(engine, outputs, replay, settings.source.batch_size, api.timer_partition)
        engine.recover_outbox = recover
        _emit_recovered(engine, outputs)
    except BaseException:
        outputs.close()
        raise
    service = ApiService(settings, engine, outputs, ApiWorker(engine, outputs.emit, api.timer_partition, api.batch_size,
                                                              api.tick_seconds, lambda exc: None),
                         api_keys(settings), registry)
    service.worker.on_fatal = service.fail
    service.worker.start()
    return service


def api_keys(settings: Settings, out: TextIO = sys.stderr) -> list[str]:
    """The configured keys; none configured: one made now and printed once (on stderr)."""
    keys = [k.get_secret_value() for k in settings.api.keys]
    if keys:
        return keys
    made = Keys.generate()
    console(f"no api.keys configured: this run accepts the key {made} (send it as 'Authorization: Bearer {made}'; "
            "set api.keys or TOUCHLINE_API__KEYS to choose your own)", level="warning", stream=out)
    return [made]


def replay_file(engine: Engine, outputs: ApiOutputs, path: Path, batch_size: int, partition: int) -> None:
    """Apply a JSONL file on its own event time, as ``touchline run --input`` does (dead letters,
    decisions and timers alike), then turn the engine's clock to the wall clock: timers still
    pending then are due, and fire at the first tick, as in a live engine after a pause."""
    from touchline.connectors.files import JsonlSource

    core = engine.core
    core.clock, core.live = EventTimeClock(), False
    part = JsonlSource(path, batch_size).build_part("replay", str(path), None)
    try:
        while True:
            try:
                (batch,) = part.next_batch()
            except StopIteration:
                break
            batch.partition = partition  # its timers are this process's to fire
            outputs.emit(engine.process(batch))
    finally:
        part.close()
        core.clock, core.live = WallClock(), True
    if engine.failure is not None:
        raise engine.failure
    t = engine.totals
    log.warning("replayed %s: %d events, %d decisions, %d dead letters", path, t.events, sum(t.decisions.values()),
                sum(t.dead_letters.values()))


def _emit_recovered(engine: Engine, outputs: ApiOutputs) -> None:
    """Decisions committed but never confirmed by an output (a crash in between), emitted again
    with their ids before the first request (at least once: a consumer dedupes on decision_id)."""
    found = engine.recovered()
    again = [p.record for p in found if p.to_decisions]
    if again:
        outputs.decisions(again)
        if engine.acks_on_write:
            engine.output_done(again, "d")
    pushed = [p.record for p in found if p.to_channel]
    if pushed:
        outputs.delivery.submit(pushed)
    if found:
        log.warning("emitted %d decision(s) again that an earlier run committed but no output confirmed", len(found))


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port`` (port 0: any free one); a clear error if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot serve the API on {host}:{port} (api.host, api.port): {exc.strerror or exc}") from None
    sock.listen(2048)  # connections wait in the backlog until the server takes them: no refusal at start
    sock.set_inheritable(True)
    return sock


def uvicorn_server(app: Any, keep_alive_seconds: int = 75) -> Any:
    """A uvicorn server for ``app``: its own log lines off (ours say what matters), the fastest
    loop and parser installed, idle connections kept ``keep_alive_seconds`` (``api.keep_alive_seconds``)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            loop="uvloop" if _has("uvloop") else "asyncio",
                            http="httptools" if _has("httptools") else "h11", timeout_graceful_shutdown=5,
                            timeout_keep_alive=keep_alive_seconds)
    return uvicorn.Server(config)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def serve(settings: Settings, replay: Path | None = None, out: TextIO = sys.stderr,
          on_ready: Callable[[str], None] | None = None, slot: WorkerSlot | None = None) -> None:
    """``touchline serve``: the API until SIGINT or SIGTERM (or a dependency fails for good: raised).
    ``slot``: one of the workers of ``serve --workers`` (:mod:`touchline.api.workers`), on the
    socket its parent bound."""
    from touchline.erasure_outputs import writing_outputs

    api = settings.api
    sock = bind(api.host, api.port) if slot is None else inherited_socket(slot)
    with writing_outputs(settings.output.dir):
        service = _open_for(settings, replay, slot)
        server = uvicorn_server(service.app(), api.keep_alive_seconds)
        service.on_failure = lambda: setattr(server, "should_exit", True)
        host, port = sock.getsockname()[:2]
        url = f"http://{host}:{port}"
        who = "" if slot is None else f"worker {slot.index} of {slot.count}: "
        caught: list[str] = []
        with _stop_signals(server, caught), _tuned_for_latency():
            console(f"{who}serving the API on {url} (state {redact_url(settings.state.url)}; OpenAPI at "
                    f"{url}/openapi.json; decisions to {service.outputs.where['decisions']}); Ctrl-C to stop",
                    stream=out, url=url, **describe_slot(slot))
            if on_ready is not None:
                on_ready(url)
            server.run(sockets=[sock])
        stopped = caught[0] if caught else "a failure"
        service.close()
    if service.failure:
        raise service.failure[0]
    console(f"{who}stopped by {stopped}: requests in flight answered, outputs closed", stream=out, signal=stopped,
            **describe_slot(slot))


def _open_for(settings: Settings, replay: Path | None, slot: WorkerSlot | None) -> ApiService:
    """The service of ``serve``, or of one of its workers: its own timer partition, output files
    and metrics (every worker's at ``/metrics``); only the first emits what the outbox holds
    and takes over the timers of workers a larger run had."""
    api = settings.api
    if slot is not None:
        settings = settings.model_copy(update={"api": api.model_copy(
            update={"timer_partition": api.timer_partition + slot.index})})
    service = open_service(settings, replay=replay, prefix="" if slot is None else slot.prefix,
                           recover=slot is None or slot.index == 0)
    try:
        if slot is None or slot.index == 0:
            regroup_timer_partitions(service.engine.store, api.timer_partition, 1 if slot is None else slot.count)
        if slot is not None:
            publisher = MetricsPublisher(service.registry, slot).start()
            service.closers.append(publisher.close)
            service.metrics_registry = metrics_of_all(service.registry, slot)
    except BaseException:
        service.close()
        raise
    return service


#: How long a thread holds the GIL while another waits for it (Python's default: 5 ms).
SWITCH_SECONDS = 0.001


@contextmanager
def _tuned_for_latency() -> Iterator[None]:
    """Two waits every request of ``touchline serve`` could meet, shortened while it serves:

    - a full collection of the cyclic GC holds the GIL, so every request in flight waits for it:
      what start-up built is frozen out of its sight (:func:`~touchline.heap.startup_heap_frozen`,
      as ``touchline run`` does);
    - the event loop (HTTP) and the engine thread (the batches) share the GIL: while a batch
      computes, the loop gets it back only when the batch thread is made to let go, after the
      switch interval. 1 ms instead of 5 lets a request be read, and an answer written, sooner.
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_SECONDS)
    try:
        with startup_heap_frozen():
            yield
    finally:
        sys.setswitchinterval(previous)


@contextmanager
def _stop_signals(server: Any, caught: list[str]) -> Iterator[None]:
    """SIGINT and SIGTERM stop ``server`` from now on, before it runs too (a signal in the
    start-up's last steps, the heap freeze, is not lost): noted in ``caught``, and the server
    told to exit. While it serves, uvicorn's own handlers finish the requests in flight, then
    hand the signal back to these."""
    def stop(num: int, _frame: Any) -> None:
        caught.append(signal.Signals(num).name)
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class EmbeddedApi:
    """``touchline run --api``: the API on a thread of the engine's process, on the same Redis
    (its own store connection and engine), its JSONL outputs prefixed ``api-``."""

    def __init__(self, settings: Settings) -> None:
        if settings.state.url.startswith("memory"):
            raise ConfigError("api.enabled (run --api) needs state in Redis (--redis URL): the in-process store "
                              "cannot be shared by the stream and the API; for a demo on it use touchline serve "
                              "(with --input FILE to start from a file)")
        if settings.api.workers > 1:
            raise ConfigError(f"api.workers = {settings.api.workers} is for touchline serve: run --api serves on one "
                              "thread of the engine's process; for more cores run touchline serve --workers N beside it")
        self.sock = bind(settings.api.host, settings.api.port)
        self.service = open_service(settings, prefix="api-", recover=False)
        self.server = uvicorn_server(self.service.app(), settings.api.keep_alive_seconds)
        self.service.on_failure = lambda: setattr(self.server, "should_exit", True)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="touchline-api", daemon=True)
        host, port = self.sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"

    def start(self) -> "EmbeddedApi":
        self.thread.start()
        log.warning("serving the API on %s", self.url)
        return self

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.service.close()
