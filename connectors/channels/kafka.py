"""Kafka channel connector: one topic per channel, consumed by downstream senders."""

from __future__ import annotations

import time
from typing import Any

import orjson

from touchline.connectors.channels.base import ChannelConnector, DeliveryReport, RetryableError
from touchline.connectors.kafka import ReportingProducer

_DUMP = orjson.OPT_SORT_KEYS


class KafkaChannelConnector(ChannelConnector):
    """Produces each decision to the channel's topic, keyed by contact, with a
    ``decision_id`` header.

    Delivery: at least once, never duplicated by our own retries: the idempotent
    producer retries inside librdkafka until ``timeout_seconds``; a message still
    undelivered then is reported failed (dead letters). A full producer queue blocks
    ``submit`` (backpressure).
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

    @property
    def target(self) -> str:
        return self.topic

    def start(self) -> None:
        self._producer = ReportingProducer(self._client_config, self.timeout_seconds)

    def submit(self, decisions: list[dict[str, Any]]) -> None:
        assert self._producer is not None, "start() first"
        for decision in decisions:
            key = decision.get("contact_id")
            self._pending += 1
            self._producer.produce(self.topic, orjson.dumps(decision, option=_DUMP),
                                   str(key).encode() if key is not None else None,
                                   [("decision_id", str(decision.get("decision_id")).encode())],
                                   self._callback(decision, time.monotonic()))

    def _callback(self, decision: dict[str, Any], start: float):
        def reported(err: Any, _msg: Any) -> None:
            self._pending -= 1
            seconds = time.monotonic() - start
            if err is None:
                self.report.delivered(self.channel, self.kind, seconds)
            else:
                self.report.error(self.channel, self.kind, "kafka")
                self.report.failed(decision, self.channel, self.kind,
                                   RetryableError("kafka", f"topic {self.topic}: {err.str()}"), 1, seconds)
        return reported

    def flush(self, timeout: float) -> bool:
        if self._producer is None:
            return True
        return self._producer.flush(timeout) == 0 and self._pending == 0

    def close(self, timeout: float = 30.0) -> None:
        # Wait out librdkafka's own delivery timeout, so every message gets its report.
        self.flush(max(timeout, self.timeout_seconds + 5))
