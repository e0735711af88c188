"""Kafka channel connector: one topic per channel, consumed by downstream senders."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from confluent_kafka import KafkaError
from touchline.connectors.channels import base
from touchline.connectors.channels.base import (
    ChannelConnector,
    DeliveryReport,
    PermanentError,
    RetryableError,
)
from touchline.connectors.kafka import (
    MAX_IN_FLIGHT,
    KafkaUnavailable,
    ReportingProducer,
)

log = logging.getLogger(__name__)

_DUMP = orjson.OPT_SORT_KEYS
#: Delivery errors that mean the broker was not there (as opposed to a message it refused).
_OUTAGE = {KafkaError._MSG_TIMED_OUT, KafkaError._PURGE_QUEUE, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN}
_quiet = threading.local()


class _OutageLines(logging.Filter):
    """Drops the per-decision failure warnings of an outage while a Kafka connector reports
    them (it logs one line per channel instead): an outage is one event, not thousands of
    lines. Only the reporting thread is affected; other connectors' lines pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet, "on", False)


base.log.addFilter(_OutageLines())


@contextmanager
def _quietly(on: bool) -> Iterator[None]:
    _quiet.on = on
    try:
        yield
    finally:
        _quiet.on = False


class KafkaChannelConnector(ChannelConnector):
    """Produces each decision to the channel's topic, keyed by contact, with a
    ``decision_id`` header.

    Delivery: at least once, never duplicated by our own retries: the idempotent
    producer retries inside librdkafka until ``timeout_seconds``; a message still
    undelivered then is reported failed (dead letters). At most ``MAX_IN_FLIGHT``
    decisions wait for the broker's acknowledgement: more and ``submit`` waits
    (backpressure), so an unreachable broker holds the engine back. ``close`` waits out
    librdkafka's own timeout; anything still in flight after it is reported failed
    (``shutdown``) there and then, never left to be purged unreported. Nothing is raised
    from ``submit``: it runs inside a Bytewax sink, where an exception is a panic.
    """

    kind = "kafka"

    def __init__(self, channel: str, report: DeliveryReport, client_config: dict[str, str], topic: str,
                 timeout_seconds: float = 60.0) -> None:
        super().__init__(channel, report)
        self.topic = topic
        self.timeout_seconds = timeout_seconds
        self._client_config = client_config
        self._producer: ReportingProducer | None = None
        self._pending = 0
        self._closing = False
        self._outage_failures = 0
        self._outage_error = ""

    @property
    def target(self) -> str:
        return self.topic

    def start(self) -> None:
        self._producer = ReportingProducer(self._client_config, self.timeout_seconds)

    def submit(self, decisions: list[dict[str, Any]]) -> None:
        assert self._producer is not None, "start() first"
        for decision in decisions:
            key = decision.get("contact_id")
            started = time.monotonic()
            try:
                self._producer.produce(self.topic, orjson.dumps(decision, option=_DUMP),
                                       str(key).encode() if key is not None else None,
                                       [("decision_id", str(decision.get("decision_id")).encode())],
                                       self._callback(decision, started))
            except KafkaUnavailable as exc:  # local queue full for timeout_seconds: the broker is gone
                self._failed(decision, RetryableError("kafka", str(exc)), started)
                continue
            except Exception as exc:  # noqa: BLE001 (a message librdkafka refuses: too large, bad config)
                self._failed(decision, PermanentError("kafka", f"topic {self.topic}: {exc}"), started)
                continue
            self._pending += 1
        # Bounded in flight; the wait ends by itself: librdkafka reports every message
        # within timeout_seconds.
        self._producer.wait_below(MAX_IN_FLIGHT, self.timeout_seconds + 5)

    def _callback(self, decision: dict[str, Any], start: float) -> Callable[[Any, Any], None]:
        def reported(err: Any, _msg: Any) -> None:
            self._pending -= 1
            if err is None:
                self.report.delivered(self.channel, self.kind, time.monotonic() - start, decision=decision)
                return
            self.report.error(self.channel, self.kind, "kafka")
            code = "shutdown" if self._closing and err.code() == KafkaError._PURGE_QUEUE else "kafka"
            outage = err.code() in _OUTAGE
            if outage:
                self._outage_failures += 1
                self._outage_error = self._outage_error or err.str()
            with _quietly(outage):
                self._failed(decision, RetryableError(code, f"topic {self.topic}: {err.str()}"), start)
        return reported

    def _failed(self, decision: dict[str, Any], error: RetryableError | PermanentError, start: float) -> None:
        self.report.failed(decision, self.channel, self.kind, error, 1, time.monotonic() - start)

    def flush(self, timeout: float) -> bool:
        if self._producer is None:
            return True
        return self._producer.flush(timeout) == 0 and self._pending == 0

    def close(self, timeout: float = 30.0) -> None:
        # Wait out librdkafka's own delivery timeout, so every message gets its report.
        if self._producer is not None and not self.flush(max(timeout, self.timeout_seconds + 5)):
            self._closing = True
            self._producer.abandon()  # reported failed (shutdown) now, not purged unreported later
        if self._outage_failures:
            log.warning("Kafka channel %s: %d decision(s) not delivered to topic %s (%s); reported failed",
                        self.channel, self._outage_failures, self.topic, self._outage_error)
            self._outage_failures = 0
