"""Build and run the engine from settings: the one place where configuration meets I/O."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, TextIO

import orjson
from prometheus_client import CollectorRegistry

from touchline.connectors.files import JsonlSink, JsonlSource, check_readable
from touchline.decisions.clock import EventTimeClock, WallClock
from touchline.decisions.reorder import TimeRules
from touchline.flows.dataflow import build_flow
from touchline.decisions.batch_run import DecisionCore
from touchline.erasure_outputs import writing_outputs
from touchline.batch_service import Engine
from touchline.metrics.engine_metrics import EngineMetrics
from touchline.metrics.server import serve_metrics
from touchline.runtime import execute, hold
from touchline.settings import Settings
from touchline.state import open_store
from touchline.redact import redact_url, remember_settings
from touchline.stop_signals import aborted
from touchline.heap import startup_heap_frozen
from touchline.summary import build_summary

log = logging.getLogger(__name__)

if TYPE_CHECKING:

    from touchline.connectors.simulator import SimulatorSpec
    from touchline.decisions.experiments import Split
    from touchline.decisions.journey_runtime import JourneyRunner
    from touchline.decisions.journeys import Journey, Step
    from touchline.model_keeper import ModelKeeper
    from touchline.metrics.server import Health
    from touchline.state.model_store import ModelStore


def simulator_spec(settings: Settings) -> "SimulatorSpec":
    """The simulator spec the settings describe."""
    from touchline.connectors.simulator import SimulatorSpec

    sim = settings.simulator
    return SimulatorSpec(
        seed=sim.seed,
        contacts=sim.contacts,
        days=sim.days,
        start_ms=int(sim.start.timestamp() * 1000),
        malformed_rate=sim.malformed_rate,
        preferred_hours=sim.preferred_hours,
    )


def time_rules(settings: Settings) -> TimeRules:
    """The engine's event-time rules from its settings. Simulated input may lie in the
    future on purpose: only real input is held to the wall clock."""
    e = settings.engine
    return TimeRules(lateness_ms=int(e.allowed_lateness_seconds * 1000), max_ahead_ms=int(e.max_future_seconds * 1000),
                     floor_ms=int(e.min_event_time.timestamp() * 1000), quorum=e.time_jump_quorum,
                     check_wall=settings.source.kind != "simulator")


def build_engine(settings: Settings, registry: CollectorRegistry, trace: Any = None,
                 keep_models: bool = True) -> Engine:
    """The engine for these settings, its metrics on ``registry``; with ``keep_models`` its
    models come from (and are checkpointed to) the model store."""
    metrics = EngineMetrics(registry, reach_alert_share=settings.metrics.reach_alert_share)
    journeys = _journey_runner(settings, trace)
    check_splits(settings, journeys)
    store = open_store(settings.state.url, settings.state.options())
    try:
        keeper = model_keeper(settings, metrics, restore=resumes(settings)) if keep_models else None
    except Exception:
        store.close()
        raise
    core = _decision_core(settings, journeys, keeper)
    if journeys is not None:  # one round-robin rotation for every worker and process
        journeys.next_turn = store.next_turn
    engine = Engine(store, core, metrics)
    engine.source_kind = settings.source.kind
    engine.time = time_rules(settings)
    engine.keep_held = settings.source.kind == "kafka"  # files and the simulator are read again from their start
    engine.max_error_share = settings.engine.max_internal_error_share
    if keeper is not None:
        keeper.attach(core.models)
        keeper.saves = (settings.runtime.process_id or 0) == 0  # one checkpoint writer: no clobbering
        engine.keeper = keeper
    metrics.models.export(core.models, {})
    return engine


def _journey_runner(settings: Settings, trace: Any = None) -> "JourneyRunner | None":
    """The runner of the journeys in ``journeys.files`` (None when there are none); every problem
    in every file is reported at once, as a ConfigError naming the setting."""
    if not settings.journeys.files:
        return None
    from touchline.decisions.journey_runtime import JourneyRunner
    from touchline.decisions.journeys import JourneyError
    from touchline.journey_files import load_journeys
    from touchline.settings import ConfigError

    try:
        loaded, problems = load_journeys(list(settings.journeys.files), settings.vocabulary())
    except JourneyError as exc:
        raise ConfigError(f"journeys.files: {exc}") from None
    if problems:
        raise ConfigError("journeys.files:\n  " + "\n  ".join(line for p in problems for line in p.splitlines()))
    return JourneyRunner([j for _, j in loaded], settings.policy.quiet_hours.default_timezone,
                         settings.policy.consent_default, trace, settings.custom_attributes())


def _decision_core(settings: Settings, journeys: "JourneyRunner | None", keeper: "ModelKeeper | None") -> DecisionCore:
    """The decision core: policy, labels and clock from the settings; its models as the keeper
    reconciles them with the model store (else as configured), restored from its checkpoint."""
    scores = keeper.reconcile(settings.models.scores()) if keeper is not None else settings.models.scores()
    core = DecisionCore(
        policy=settings.policy,
        models=dict(scores),
        labels=settings.labels.rules(),
        clock=WallClock() if settings.engine.clock == "wall" else EventTimeClock(),
        retention_days=settings.state.retention_days,
        anonymous_retention_days=settings.state.anonymous_retention_days,
        journeys=journeys,
        restore=keeper.restore if keeper is not None else None,
        experiments=settings.experiments,
        no_action_share=settings.audit.no_action_share,
        attributes=settings.custom_attributes(),
        send_time=settings.send_time_learner(),
    )
    core.learn = settings.models.learn
    return core


def check_splits(settings: Settings, journeys: "JourneyRunner | None") -> None:
    """Journey splits name a loaded journey, and its steps: a typo is an error, not a split that never runs."""
    for name, split in settings.experiments.splits.items():
        if split.journey is None:
            continue
        key = f"experiments.splits.{name}"
        journey = _split_journey(key, split.journey, journeys)
        steps = {s.id: s for s in journey.steps}
        _check_split_steps(key, split, steps)


def _split_journey(key: str, name: str, journeys: "JourneyRunner | None") -> "Journey":
    """The loaded journey a split names; an unknown name is an error that lists the known ones."""
    from touchline.settings import ConfigError

    journey = journeys.by_name.get(name) if journeys is not None else None
    if journey is None:
        known = ", ".join(sorted(journeys.by_name)) if journeys is not None else "none loaded (use --journeys)"
        raise ConfigError(f"{key}.journey: unknown journey {name!r}; known: {known}")
    return journey


def _check_split_steps(key: str, split: "Split", steps: "dict[str, Step]") -> None:
    """The split's ``step`` is a step of its journey, every variant's ``waits`` names a wait step of
    it, and a send-time split covers a send step."""
    from touchline.decisions.journeys import WaitStep
    from touchline.settings import ConfigError

    if split.step is not None and split.step not in steps:
        raise ConfigError(f"{key}.step: journey {split.journey} has no step {split.step!r}; "
                          f"steps: {', '.join(steps)}")
    _check_split_sends(key, split, steps)
    for variant in split.variants:
        for step in variant.waits:
            if not isinstance(steps.get(step), WaitStep):
                waits = [s for s, st in steps.items() if isinstance(st, WaitStep)]
                raise ConfigError(f"{key}.variants.{variant.name}.waits: {step!r} is not a wait step of "
                                  f"journey {split.journey}; wait steps: {', '.join(waits) or 'none'}")


def _check_split_sends(key: str, split: "Split", steps: "dict[str, Step]") -> None:
    """A split with ``send_at`` variants covers at least one send step (else it would time nothing)."""
    from touchline.decisions.journeys import SendStep
    from touchline.settings import ConfigError

    if not any(v.send_at for v in split.variants):
        return
    sends = [s for s, st in steps.items() if isinstance(st, SendStep)]
    if not sends or (split.step is not None and split.step not in sends):
        where = f"{key}.step: {split.step!r} is not a send step" if split.step is not None else key
        raise ConfigError(f"{where}: send_at variants time send steps; journey {split.journey}'s send steps: "
                          f"{', '.join(sends) or 'none'}")


def model_store_url(settings: Settings) -> str | None:
    """Where this run keeps its models: ``models.store``, or with ``auto`` the state store's
    Redis (production) or a directory beside the outputs (embedded); None when ``off``."""
    chosen = settings.models.store
    if chosen == "off":
        return None
    if chosen != "auto":
        return chosen
    shared = state_redis_url(settings)
    return shared if shared is not None else f"file://{settings.output.dir / 'models'}"


def state_redis_url(settings: Settings) -> str | None:
    """The Redis the state store uses (the benchmark-only ``+naive`` scheme as the plain one),
    for what lives beside the state: models, the send ledger. None for other stores.

    >>> from touchline.settings import load_settings
    >>> state_redis_url(load_settings(None, {"state.url": "redis+naive://h:1/2"})), state_redis_url(load_settings(None, {}))
    ('redis://h:1/2', None)
    """
    scheme, _, rest = settings.state.url.partition("://")
    return f"{scheme.removesuffix('+naive')}://{rest}" if scheme.startswith("redis") else None


def open_models_store(settings: Settings) -> "ModelStore | None":
    """The model store the settings name (None when ``models.store = off``); with ``auto`` on
    Redis it logs in with the state store's credentials."""
    from touchline.state.model_store import open_model_store

    url = model_store_url(settings)
    if url is None:
        return None
    ms, state = settings.models, settings.state
    same_redis = ms.store == "auto"
    return open_model_store(url, state.username if same_redis else None,
                            state.password.get_secret_value() if same_redis and state.password else None)


def resumes(settings: Settings) -> bool:
    """Whether a run continues from the stored checkpoints (``models.restore``): with ``auto``,
    when its input goes on (Kafka, a followed file), so a restart continues learning; a replay
    (a file read to its end, the simulator) starts fresh, so it decides alike run after run.

    >>> from touchline.settings import load_settings
    >>> resumes(load_settings(None, {})), resumes(load_settings(None, {"models.restore": True}))
    (False, True)
    >>> resumes(load_settings(None, {"kafka.bootstrap": "k:9092", "source.kind": "kafka"}))
    True
    """
    restore = settings.models.restore
    if restore != "auto":
        return bool(restore)
    return settings.source.kind == "kafka" or settings.source.follow


def model_keeper(settings: Settings, metrics: EngineMetrics | None = None, restore: bool = True) -> "ModelKeeper | None":
    """The keeper of this run's models, on the model store the settings name (None if off);
    with ``restore`` the models continue from their checkpoints."""
    from touchline.model_keeper import ModelKeeper

    store = open_models_store(settings)
    if store is None:
        return None
    ms = settings.models
    key = ms.checkpoint_key.get_secret_value().encode() if ms.checkpoint_key else None
    return ModelKeeper(store, poll_seconds=ms.poll_seconds, checkpoint_seconds=ms.checkpoint_seconds,
                       restore=restore, key=key, metrics=metrics.models if metrics is not None else None)


@dataclass
class RunResult:
    summary: dict[str, Any]
    engine: Engine
    interrupted: bool = False
    #: the signal that stopped the run (SIGINT, SIGTERM), when one did
    signal: int | None = None


class Progress:
    """A one-line live display on a terminal (a line every few seconds otherwise; with JSON logs,
    a JSON object every few seconds)."""

    def __init__(self, engine: Engine, source: Any, stream: TextIO, period_ms: tuple[int, int] | None):
        from touchline.logs import json_logs

        self.engine, self.source, self.stream, self.period = engine, source, stream, period_ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="touchline-progress", daemon=True)
        self._start = time.perf_counter()
        self._json = json_logs()
        self._tty = stream.isatty() and not self._json

    def __enter__(self) -> "Progress":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        if self._tty:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()

    def fraction(self) -> float | None:
        if "fraction" in self.source.progress:
            return self.source.progress["fraction"]
        if self.period and self.engine.totals.last_event_ms:
            start, end = self.period
            return min(1.0, max(0.0, (self.engine.totals.last_event_ms - start) / max(1, end - start)))
        return None

    def figures(self) -> dict[str, Any]:
        """The counts so far: what the line shows, and the fields of its JSON form."""
        t = self.engine.totals
        frac = self.fraction()
        return {"fraction": None if frac is None else round(frac, 4), "events": t.events,
                "events_per_second": round(t.lines / max(time.perf_counter() - self._start, 1e-9), 1),
                "decisions": sum(t.decisions.values()), "suppressed": sum(t.suppressions.values()),
                "dead_letters": sum(t.dead_letters.values())}

    def line(self) -> str:
        f = self.figures()
        bar = ""
        if f["fraction"] is not None:
            filled = int(f["fraction"] * 24)
            bar = f"[{'#' * filled}{'.' * (24 - filled)}] {f['fraction'] * 100:5.1f}% "
        return (f"{bar}{f['events']:>10,} events {f['events_per_second']:>9,.0f}/s | "
                f"{f['decisions']:,} decisions | {f['suppressed']:,} suppressed | "
                f"{f['dead_letters']:,} dead letters")

    def _loop(self) -> None:
        from touchline.logs import json_line

        interval = 0.25 if self._tty else 5.0
        while not self._stop.wait(interval):
            if self._tty:
                self.stream.write("\r" + self.line())
            elif self._json:
                self.stream.write(json_line("progress", logger="touchline.progress", **self.figures()) + "\n")
            else:
                self.stream.write(self.line() + "\n")
            self.stream.flush()


def run(settings: Settings, *, progress: TextIO | None = sys.stderr, registry: CollectorRegistry | None = None,
        on_metrics: Any = None, stop: threading.Event | None = None, on_start: Any = None) -> RunResult:
    """Run the engine to the end of its input (or until ``stop`` is set); returns the summary.

    Every check that can fail at start (input, journeys, state store, model store, broker,
    metrics port) runs before an output is opened, so a failed start leaves the outputs of
    the run before as they were; ``on_start()`` is called once they are opened."""
    remember_settings(settings)  # its secrets are masked wherever they surface (logs, dead letters)
    if settings.source.kind == "jsonl" and settings.source.path is not None:
        check_readable(Path(settings.source.path))  # before anything is opened or written: a failed start touches nothing
    registry = registry or CollectorRegistry()
    stop = stop or threading.Event()
    kafka = settings.kafka.client_config() if settings.kafka.bootstrap else None
    engine = build_engine(settings, registry)
    engine.halt = stop
    closers: list[Any] = [engine.shut_down, engine.store.close]
    started: list[bool] = []
    keeper = engine.keeper
    if keeper is not None:  # the final checkpoint, after the last batch (none if the run never started)
        closers.insert(0, lambda: keeper.close(checkpoint=bool(started)))
    try:
        with hold(settings), writing_outputs(settings.output.dir):
            recovery = _take_over(settings, engine)
            with _metrics_server(settings, engine, registry, on_metrics) as metrics_at:
                io = _build_io(settings, engine, registry, kafka, stop, closers)
                io.outputs.update(metrics_at)
                _start_api(settings, closers)
                started.append(True)
                if on_start is not None:
                    on_start()
                return _run_flow(settings, engine, io, progress, stop, recovery)
    finally:
        for close in closers:
            close()


def _start_api(settings: Settings, closers: list[Any]) -> None:
    """With ``api.enabled``, the HTTP API on a thread of this process, closed first at the end."""
    if not settings.api.enabled:
        return
    from touchline.api.server import EmbeddedApi

    api = EmbeddedApi(settings).start()
    closers.insert(0, api.close)


def _take_over(settings: Settings, engine: Engine) -> bool:
    """Before the first batch: resume or create the recovery partitions and check the store
    is the one this deployment wrote (and how it persists). Returns whether recovery is on."""
    from touchline.runtime import adopt_epoch, prepare_recovery, recovers, recovery_dir

    recovery = recovers(settings)
    if recovery:
        prepare_recovery(settings)
        adopt_epoch(engine.store, recovery_dir(settings) / "touchline.epoch")
    else:
        engine.store.claim_epoch(None)
    durability = engine.store.durability()
    if durability.startswith("WARNING"):
        log.warning("%s", durability.removeprefix("WARNING: "))
    index = settings.runtime.process_id or 0
    engine.recover_outbox = index == 0
    return recovery


@dataclass
class _Io:
    """A run's source, sinks and connectors, and how to close them (in order)."""

    source: Any
    decisions_sink: Any
    dead_letter_sink: Any
    delivery_sink: Any
    outputs: dict[str, str]
    period: tuple[int, int] | None
    experiments_sink: Any = None
    no_actions_sink: Any = None


def _build_io(settings: Settings, engine: Engine, registry: CollectorRegistry, kafka: dict[str, str] | None,
              stop: threading.Event, closers: list[Any]) -> _Io:
    """Build the run's outputs, connectors and source, then open the outputs: every check that
    can fail comes first, so a failed start leaves the files of the run before as they were.
    Each part registers its close in ``closers`` as soon as it exists, so a failure half-way
    closes what was built."""
    from touchline.connectors.channels.base import DeliveryReport
    from touchline.connectors.channels.registry import BuildContext, Delivery, DeliverySink
    from touchline.connectors.deadletters import DeadLetterSink
    from touchline.metrics.connectors import ConnectorMetrics

    out_dir = settings.output.dir
    out_dir.mkdir(parents=True, exist_ok=True)
    ks = settings.kafka
    sinks = _kafka_records(settings, engine, kafka) if kafka is not None else _file_records(settings)
    closers.insert(0, sinks.dead_writer.close)
    report = DeliveryReport(ConnectorMetrics(registry), sinks.dead_writer)
    ledger = send_ledger(settings)
    closers.insert(0, ledger.close)
    ledger_health = getattr(ledger, "health", None)
    if ledger_health is not None and engine.healths:  # the same Redis: its outage is the store's
        engine.healths.append(ledger_health)
    delivery = Delivery.build(settings.delivery, BuildContext(
        report, out_dir / "outbox", kafka, ks.channel_topic_prefix, ks.retry_seconds, settings.simulator.seed,
        ledger=ledger))
    closers.insert(0, lambda: delivery.close(settings.delivery.flush_seconds))
    delivery.on_done = lambda records: engine.output_done(records, "c")
    engine.channel_outputs = frozenset(delivery.connectors)
    source, period = _build_source(settings, engine, kafka, stop)
    delivery.start()  # connectors that connect somewhere first, the outbox files last
    for open_output in sinks.opens:
        open_output()
    outputs = dict(sinks.outputs)
    for channel, where in delivery.describe().items():
        outputs[f"channel {channel}"] = where
    return _Io(source, sinks.decisions, DeadLetterSink(sinks.dead_writer),
               DeliverySink(delivery, engine.fail) if delivery.connectors else None, outputs, period,
               sinks.experiments, sinks.no_actions)


@dataclass
class _Records:
    """Where a run's records go: decisions, dead letters (a writer the connectors share),
    experiment records and no-action records (None: not recorded); how the summary names
    them, and what opens them once every check of the start has passed."""

    decisions: Any
    dead_writer: Any
    experiments: Any
    no_actions: Any
    outputs: dict[str, str]
    opens: list[Any] = field(default_factory=list)


def _kafka_records(settings: Settings, engine: Engine, kafka: dict[str, str]) -> _Records:
    """The record topics, checked (or created) before any client exists, so a broker that is
    down is one clear error. The decisions may be in flight (the outbox keeps them until the
    broker acknowledges them); nothing else keeps the other records, so their writes wait
    for the broker's acknowledgement."""
    from touchline.connectors.kafka import KafkaDeadLetters, KafkaRecordSink, ensure_topics

    ks = settings.kafka
    no_actions = ks.no_actions_topic if settings.audit.no_action_share > 0 else None
    topics = [ks.decisions_topic, ks.dead_letter_topic, ks.experiments_topic, *([no_actions] if no_actions else []),
              *settings.delivery.kafka_topics(ks.channel_topic_prefix).values()]
    if settings.source.kind == "kafka":
        topics.insert(0, ks.events_topic)
    ensure_topics(kafka, topics, create=ks.create_topics, partitions=ks.partitions,
                  replication_factor=ks.replication_factor, timeout=ks.connect_timeout_seconds)
    decisions = KafkaRecordSink(kafka, ks.decisions_topic, engine.fail, timeout_seconds=ks.retry_seconds,
                                on_acked=lambda records: engine.output_done(records, "d"), acknowledged_writes=False)
    engine.acks_on_write = False  # the broker's acknowledgement confirms a decision, not the write
    outputs = {"decisions": f"kafka topic {ks.decisions_topic}", "dead letters": f"kafka topic {ks.dead_letter_topic}",
               "experiments": f"kafka topic {ks.experiments_topic}"}
    if no_actions:
        outputs["no-action records"] = f"kafka topic {no_actions}"
    return _Records(decisions, KafkaDeadLetters(kafka, ks.dead_letter_topic, engine.fail, timeout_seconds=ks.retry_seconds),
                    KafkaRecordSink(kafka, ks.experiments_topic, engine.fail, timeout_seconds=ks.retry_seconds),
                    KafkaRecordSink(kafka, no_actions, engine.fail, timeout_seconds=ks.retry_seconds) if no_actions else None,
                    outputs)


def _file_records(settings: Settings) -> _Records:
    """The record files in the output directory; a run must not leave an older run's records,
    so each starts empty (the no-action file too when nothing is recorded), but only when the
    run starts: a start that fails leaves the files of the run before as they were."""
    from touchline.connectors.deadletters import JsonlDeadLetters

    out, o = settings.output.dir, settings.output
    paths = {"decisions": out / o.decisions, "dead letters": out / o.dead_letters,
             "experiments": out / o.experiments, "no-action records": out / o.no_actions}
    dead = JsonlDeadLetters(paths["dead letters"])
    emptied = [paths[name] for name in ("decisions", "experiments", "no-action records")]
    return _Records(JsonlSink(paths["decisions"]), dead, JsonlSink(paths["experiments"]),
                    JsonlSink(paths["no-action records"]), {name: str(path) for name, path in paths.items()},
                    [dead.start, *(partial(Path.write_bytes, path, b"") for path in emptied)])


def send_ledger(settings: Settings) -> Any:
    """Where deliveries are claimed and marked: beside the state in Redis (shared by every
    process and kept across restarts), else in this process."""
    from touchline.state.ledger import MemorySendLedger, RedisSendLedger

    url, ds = state_redis_url(settings), settings.delivery
    if url is not None:
        return RedisSendLedger(url, settings.state.options(), lease_seconds=ds.lease_seconds,
                               delivered_ttl_days=ds.sent_ttl_days, retry_seconds=settings.state.retry_seconds)
    return MemorySendLedger(lease_seconds=ds.lease_seconds, delivered_ttl_days=ds.sent_ttl_days)


def _build_source(settings: Settings, engine: Engine, kafka: dict[str, str] | None,
                  stop: threading.Event) -> tuple[Any, tuple[int, int] | None]:
    src = settings.source
    if src.kind == "jsonl":
        if src.path is None:
            raise ValueError("source.kind is jsonl but source.path is not set (use --input FILE)")
        return JsonlSource(Path(src.path), src.batch_size, stop, follow=src.follow,
                           tick_seconds=src.tick_seconds), None
    if src.kind == "kafka":
        from touchline.connectors.kafka import KafkaEventSource
        from touchline.metrics.connectors import BytewaxKafkaLag

        engine.metrics.registry.register(BytewaxKafkaLag())

        assert kafka is not None  # the settings validator requires kafka.bootstrap
        ks = settings.kafka
        return KafkaEventSource(kafka, ks.events_topic, batch_size=ks.batch_size, linger_ms=ks.linger_ms,
                                catchup_batch_size=ks.catchup_batch_size,
                                start=ks.start, tail=ks.tail, stop=stop,
                                tick_seconds=src.tick_seconds if settings.engine.clock == "wall" else None,
                                retry_seconds=ks.retry_seconds, on_fatal=engine.fail), None
    from touchline.connectors.sim_source import SimulatorSource

    spec = simulator_spec(settings)
    sim: Any
    if settings.simulator.closed_loop:
        from touchline.connectors.closed_loop import ClosedLoopSimulator

        sim = ClosedLoopSimulator(spec)
        loop = ClosedLoop(sim)
        engine.listeners.append(loop.on_batch)
        engine.closed_loop = loop
    else:
        from touchline.connectors.simulator import Simulator

        sim = Simulator(spec)
    recorded = RecordedLines(sim, settings.output.dir / settings.output.events)
    engine.recorded_events = recorded.path
    return (SimulatorSource(spec, src.batch_size, stop, simulator=recorded),
            (spec.start_ms, spec.start_ms + int(spec.days * 86_400_000)))


class ClosedLoop:
    """The closed-loop simulator and what it needs from the engine: each batch's decisions
    (people react to them) and the outcomes (to compute the true lift at the end)."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self.outcomes: list[dict[str, Any]] = []

    def on_batch(self, result: Any) -> None:
        self.sim.react(result.decisions)
        self.outcomes.extend(r for r in result.experiments if r["kind"] == "outcome")


class RecordedLines:
    """A simulator whose lines are also written to a file, so ``touchline report`` (and any
    replay) sees exactly the events this run was given, reactions included."""

    def __init__(self, sim: Any, path: Path) -> None:
        self.sim, self.path = sim, path

    @property
    def spec(self) -> Any:
        return self.sim.spec

    @property
    def end_ms(self) -> int:
        return self.sim.end_ms

    def lines(self):
        with self.path.open("wb") as out:
            for line in self.sim.lines():
                out.write(line + b"\n")
                yield line


def attach_truth(summary: dict[str, Any], engine: Engine) -> None:
    """A closed-loop simulation knows the true lift on purchases: put it beside each measured one
    (only when purchases are the conversions; a lift in opens has no truth to compare with)."""
    loop = engine.closed_loop
    if loop is None:
        return
    experiments = engine.core.experiments
    if experiments.conversion_types != {"purchase"}:
        summary["experiments"]["truth"] = {
            "experiment": experiments.holdout_name, "note": "no true lift: the simulator knows its effect on "
            f"purchases, and this run converts on {', '.join(sorted(experiments.conversion_types))}"}
        return
    truth = loop.sim.true_lift(loop.outcomes, experiments.holdout_name)
    for est in summary["experiments"]["lift"].get(experiments.holdout_name, []):
        seg = est["segment"]
        found = truth.get((seg["dimension"], seg["value"]))
        est["true_lift"] = None if found is None else round(found.lift, 6)
    summary["experiments"]["truth"] = {
        "experiment": experiments.holdout_name,
        "note": "true lift: the simulator's own average treatment effect on the treated contacts of each segment",
    }


def emit_recovered(engine: Engine, io: _Io) -> int:
    """Before the flow starts: send the decisions an earlier run committed but no output
    confirmed, with their ids, to the outputs that still owe them: the decisions output,
    and the channel delivery (whose send ledger drops those already delivered). Returns how many."""
    found = engine.recovered()
    if not found:
        return 0
    log.warning("emitting %d decision(s) again that an earlier run committed but no output confirmed",
                len(found), extra={"decisions": len(found)})
    _write_recovered(engine, io.decisions_sink, [p.record for p in found if p.to_decisions])
    to_channels = [p.record for p in found if p.to_channel]
    if io.delivery_sink is not None and to_channels:
        io.delivery_sink.delivery.submit(to_channels)
    return len(found)


def _write_recovered(engine: Engine, sink: Any, records: list[dict[str, Any]]) -> None:
    if not records:
        return
    if isinstance(sink, JsonlSink):  # the run's own file starts empty: these go beside it
        path = sink.path.with_suffix(".recovered.jsonl")
        with path.open("ab") as out:
            out.write(b"".join(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) + b"\n" for r in records))
        engine.output_done(records, "d")
        log.warning("the decisions emitted again are in %s", path)
    else:
        part = sink.build("recovered", 0, 1)
        try:
            part.write_batch(records)
        finally:
            part.close()
    if engine.failure is not None:
        raise engine.failure


def _run_flow(settings: Settings, engine: Engine, io: _Io, progress: TextIO | None, stop: threading.Event,
              recovery: bool = False) -> RunResult:
    emit_recovered(engine, io)
    flow = build_flow(io.source, engine, io.decisions_sink, io.dead_letter_sink, io.delivery_sink,
                      experiments_sink=io.experiments_sink, no_actions_sink=io.no_actions_sink)
    outputs = dict(io.outputs)
    started = time.perf_counter()
    log.info("run started: source %s, state %s", settings.source.kind, redact_url(settings.state.url),
             extra={"source": settings.source.kind, "state": redact_url(settings.state.url),
                    "clock": settings.engine.clock, "batch_size": settings.source.batch_size})
    received: list[int] = []
    restore = _stop_on_signals(stop, received)
    try:
        with startup_heap_frozen():  # what was built so far lives as long as the run
            _execute_flow(flow, settings, recovery, engine, io, progress)
    finally:
        restore()
    wall = time.perf_counter() - started
    _log_run_end(engine, stop, wall, received)
    result = _close_and_summarise(settings, engine, io, outputs, wall, stop)
    result.signal = received[0] if received else None
    return result


@contextmanager
def _metrics_server(settings: Settings, engine: Engine, registry: CollectorRegistry,
                    on_metrics: Any) -> Iterator[dict[str, str]]:
    """Serve /metrics, /healthz and /readyz while the run lasts (bound before any output is
    opened: a port in use is a failed start); yields the address as the summary names it,
    also passed to ``on_metrics`` (the port may have been 0: any free one)."""
    if not settings.metrics.enabled:
        yield {}
        return
    host, port, server = serve_metrics(registry, settings.metrics.host, settings.metrics.port,
                                       health_checks(settings, engine))
    try:
        log.info("serving /metrics, /healthz and /readyz on %s:%s", host, port,
                 extra={"metrics_host": host, "metrics_port": port})
        if on_metrics:
            on_metrics(host, port)
        yield {"metrics": f"http://{host}:{port}/metrics (served while running; also /healthz, /readyz)"}
    finally:
        server.shutdown()
        server.server_close()


def _execute_flow(flow: Any, settings: Settings, recovery: bool, engine: Engine, io: _Io,
                  progress: TextIO | None) -> None:
    """Run the dataflow to its end, with a live progress line on ``progress`` when there is one."""
    if progress is not None:
        with Progress(engine, io.source, progress, io.period):
            execute(flow, settings, recovery)
    else:
        execute(flow, settings, recovery)


def _log_run_end(engine: Engine, stop: threading.Event, wall: float, received: list[int]) -> None:
    """One line on how the run ended (stopped by a failure, terminated by SIGTERM, interrupted,
    finished) and its totals."""
    t = engine.totals
    ended = ("stopped" if engine.failure is not None else "terminated" if signal.SIGTERM in received
             else "interrupted" if stop.is_set() else "finished")
    log.info("run %s after %.1f s: %d events, %d decisions, %d dead letters, %d decisions emitted again from the "
             "outbox, %d profiles redone after a concurrent write", ended, wall,
             t.events, sum(t.decisions.values()), sum(t.dead_letters.values()), t.recovered, t.conflicts,
             extra={"seconds": round(wall, 3), "events": t.events, "decisions": sum(t.decisions.values()),
                    "dead_letters": sum(t.dead_letters.values()), "failed": engine.failure is not None,
                    "recovered": t.recovered, "conflicts": t.conflicts})


def _close_and_summarise(settings: Settings, engine: Engine, io: _Io, outputs: dict[str, str], wall: float,
                         stop: threading.Event) -> RunResult:
    """Let deliveries in flight finish (or fail into dead letters) and close the outbox, so the
    summary counts them; a failure that stopped the engine is raised instead of a summary."""
    delivery = io.delivery_sink.delivery if io.delivery_sink is not None else None
    if delivery is not None:
        delivery.close(settings.delivery.flush_seconds)
    engine.shut_down()
    if engine.failure is not None:
        raise engine.failure
    if engine.recorded_events is not None:
        outputs["events"] = str(engine.recorded_events)
    summary = build_summary(engine, wall, outputs, delivery.report.outcomes if delivery else None)  # reads store stats
    attach_truth(summary, engine)
    interrupted = stop.is_set() and engine.failure is None
    summary["interrupted"] = interrupted
    return RunResult(summary, engine, interrupted)


def health_checks(settings: Settings, engine: Engine) -> "Health":
    """Readiness: the state store answers, and the Kafka brokers when Kafka is used.
    Liveness: the engine has not stopped and no batch is stuck."""
    from touchline.metrics.server import Health

    checks = {"state_store": engine.store.ping}
    if settings.kafka.bootstrap:
        from touchline.connectors.kafka import check_cluster

        config = settings.kafka.client_config()

        def broker() -> str:
            topics = check_cluster(config, timeout=1.0)
            return f"{config['bootstrap.servers']} answered ({len(topics)} topics)"

        checks["broker"] = broker
    stall = settings.metrics.stall_seconds
    return Health(checks, alive=lambda: engine.not_alive(stall))


def stopping_message(signum: int) -> str:
    """What a run says when a signal stops it (SIGTERM is a termination, not a Ctrl-C).

    >>> stopping_message(signal.SIGTERM)
    'terminating on SIGTERM: finishing the current batch and flushing the outputs (exit code 143; another signal aborts)'
    """
    if signum == signal.SIGTERM:
        return ("terminating on SIGTERM: finishing the current batch and flushing the outputs "
                "(exit code 143; another signal aborts)")
    return "stopping after the current batch (Ctrl-C again to abort)"


def _stop_on_signals(stop: threading.Event, received: list[int]):
    """First Ctrl-C/SIGTERM: finish the current batch, flush outputs, summarise (the signal is
    added to ``received``). Second: abort (:func:`aborted`)."""
    from touchline.logs import console

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, _frame):
        if stop.is_set():
            raise aborted(signum)
        received.append(signum)
        stop.set()
        console(stopping_message(signum), level="warning", newline_first=True,
                signal=signal.Signals(signum).name)

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
