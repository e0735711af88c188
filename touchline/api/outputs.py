"""Where the API's engine writes what it decides: the outputs a run writes, opened outside a dataflow.

Decisions go to the decisions output (the audit trail: the Kafka topic when Kafka is configured,
else ``decisions.jsonl`` in the output directory, appended to), dead letters, experiment records
and no-action records (a decide answered with no action among them) beside them, and the decisions of the timers the API's events set (a cart reminder by
email) to the channel connectors. A decision made on request is delivered by its HTTP answer,
never by a connector (:func:`touchline.batch_service.answered`).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

import orjson
from prometheus_client import CollectorRegistry

from touchline.batch_service import Engine, answered
from touchline.decisions.batches import BatchResult
from touchline.settings import Settings

_DUMP = orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE


class AppendJsonl:
    """Records appended to a JSONL file, one per line, flushed per call; thread-safe (channel
    connectors write failed deliveries here from their own threads). A server appends: its
    output directory keeps what earlier starts wrote."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("ab")
        self._lock = threading.Lock()

    def __call__(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        data = b"".join(orjson.dumps(r, option=_DUMP) for r in records)
        with self._lock:
            self._file.write(data)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


#: Writes a list of records to an output.
Write = Callable[[list[dict[str, Any]]], None]


class ApiOutputs:
    """The API engine's outputs; :meth:`emit` writes one batch's result, on the worker thread."""

    decisions: Write
    dead_letters: Write
    experiments: Write
    no_actions: Write | None

    def __init__(self, settings: Settings, engine: Engine, registry: CollectorRegistry, prefix: str = "") -> None:
        self.engine, self.prefix = engine, prefix
        self.where: dict[str, str] = {}
        self._closers: list[Callable[[], None]] = []
        try:
            if settings.kafka.bootstrap:
                self._open_kafka(settings)
            else:
                self._open_files(settings)
            self.delivery = self._open_delivery(settings, registry)
        except BaseException:
            self.close()
            raise

    def _open_files(self, settings: Settings) -> None:
        out = settings.output
        decisions, dead, experiments, no_actions = (AppendJsonl(out.dir / name) for name in
                                                    (out.decisions, out.dead_letters, out.experiments, out.no_actions))
        self._closers += [decisions.close, dead.close, experiments.close, no_actions.close]
        self.decisions, self.dead_letters, self.experiments = decisions, dead, experiments
        self.no_actions = no_actions if settings.audit.no_action_share > 0 else None
        self.engine.acks_on_write = True
        self.where.update({"decisions": str(decisions.path), "dead letters": str(dead.path),
                           "experiments": str(experiments.path), "no-action records": str(no_actions.path)})

    def _open_kafka(self, settings: Settings) -> None:
        from touchline.connectors.kafka import KafkaDeadLetters, KafkaRecordSink, ensure_topics

        ks, config, engine = settings.kafka, settings.kafka.client_config(), self.engine
        no_actions = ks.no_actions_topic if settings.audit.no_action_share > 0 else None
        ensure_topics(config, [ks.decisions_topic, ks.dead_letter_topic, ks.experiments_topic,
                               *([no_actions] if no_actions else []),
                               *settings.delivery.kafka_topics(ks.channel_topic_prefix).values()],
                      create=ks.create_topics, partitions=ks.partitions, replication_factor=ks.replication_factor,
                      timeout=ks.connect_timeout_seconds)
        decisions = KafkaRecordSink(config, ks.decisions_topic, engine.fail, timeout_seconds=ks.retry_seconds,
                                    on_acked=lambda records: engine.output_done(records, "d"),
                                    acknowledged_writes=False).build("api_decisions", 0, 1)
        experiments = KafkaRecordSink(config, ks.experiments_topic, engine.fail,
                                      timeout_seconds=ks.retry_seconds).build("api_experiments", 0, 1)
        self._closers += [decisions.close, experiments.close]
        self.decisions, self.experiments = decisions.write_batch, experiments.write_batch
        self.no_actions = None
        if no_actions:
            part = KafkaRecordSink(config, no_actions, engine.fail, timeout_seconds=ks.retry_seconds).build(
                "api_no_actions", 0, 1)
            self._closers.append(part.close)
            self.no_actions = part.write_batch
            self.where["no-action records"] = f"kafka topic {no_actions}"
        self.dead_letters = KafkaDeadLetters(config, ks.dead_letter_topic, engine.fail, timeout_seconds=ks.retry_seconds)
        self._closers.append(self.dead_letters.close)
        engine.acks_on_write = False  # the broker's acknowledgement confirms a decision
        self.where.update({"decisions": f"kafka topic {ks.decisions_topic}",
                           "dead letters": f"kafka topic {ks.dead_letter_topic}",
                           "experiments": f"kafka topic {ks.experiments_topic}"})

    def _open_delivery(self, settings: Settings, registry: CollectorRegistry) -> Any:
        """The channel connectors of the settings, started, their outcomes reported to the outbox."""
        from touchline.connectors.channels.base import DeliveryReport
        from touchline.connectors.channels.registry import BuildContext, Delivery
        from touchline.metrics.connectors import ConnectorMetrics
        from touchline.runner import send_ledger

        ks, engine = settings.kafka, self.engine
        ledger = send_ledger(settings)
        self._closers.append(ledger.close)
        report = DeliveryReport(ConnectorMetrics(registry), self.dead_letters)
        kafka = ks.client_config() if ks.bootstrap else None
        delivery = Delivery.build(settings.delivery, BuildContext(
            report, settings.output.dir / f"{self.prefix}outbox", kafka, ks.channel_topic_prefix, ks.retry_seconds,
            settings.simulator.seed, ledger=ledger))
        self._closers.insert(0, lambda: delivery.close(settings.delivery.flush_seconds))
        delivery.on_done = lambda records: engine.output_done(records, "c")
        engine.channel_outputs = frozenset(delivery.connectors)
        delivery.start()
        self.where.update({f"channel {channel}": where for channel, where in delivery.describe().items()})
        return delivery

    def emit(self, result: BatchResult) -> None:
        """Write one batch's records; the outputs' acknowledgements trim the outbox (next batch)."""
        engine = self.engine
        if result.decisions:
            started = time.perf_counter()
            self.decisions(result.decisions)
            engine.decisions_emitted(result.decisions, time.perf_counter() - started)
            pushed = [d for d in result.decisions if not answered(d)]
            if pushed:
                self.delivery.submit(pushed)
        if result.dead_letters:
            self.dead_letters(result.dead_letters)
        if result.experiments:
            self.experiments(result.experiments)
        if result.no_actions and self.no_actions is not None:
            self.no_actions(result.no_actions)

    def close(self) -> None:
        """Let deliveries in flight finish, then close the writers (each once, in order)."""
        closers, self._closers = self._closers, []
        for close in closers:
            close()
