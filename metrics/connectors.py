"""Prometheus series of the channel connectors (integration latency is what SREs page on).

Labels are the channel and the connector kind, plus a fixed outcome or error code:
bounded by construction. Recorded per delivery, which is per decision (a small share
of events), off the event hot path.

>>> from prometheus_client import CollectorRegistry
>>> reg = CollectorRegistry()
>>> m = ConnectorMetrics(reg)
>>> m.delivered("sms", "webhook", 0.012, attempts=2)
>>> reg.get_sample_value("touchline_connector_deliveries_total", {"channel": "sms", "connector": "webhook",
...                                                              "outcome": "delivered"})
1.0
>>> reg.get_sample_value("touchline_connector_retries_total", {"channel": "sms", "connector": "webhook"})
1.0
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

from touchline.metrics.engine_metrics import LATENCY_BUCKETS


class ConnectorMetrics:
    """Delivery outcomes, latency, errors, retries and queue depth per channel."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "touchline_connector_deliveries", "Decisions handed to a channel connector, by final outcome.",
            ["channel", "connector", "outcome"], registry=registry)
        self.latency = Histogram(
            "touchline_connector_latency_seconds",
            "From handing a decision to the connector to its final outcome (queue wait and retries included).",
            ["channel", "connector"], buckets=LATENCY_BUCKETS, registry=registry)
        self.errors = Counter(
            "touchline_connector_errors", "Failed delivery attempts, by error code (retried or not).",
            ["channel", "connector", "error"], registry=registry)
        self.retries = Counter(
            "touchline_connector_retries", "Delivery attempts after the first.", ["channel", "connector"],
            registry=registry)
        self.queue_depth = Gauge(
            "touchline_connector_queue_depth", "Decisions waiting in a connector's bounded queue.",
            ["channel", "connector"], registry=registry)

    def delivered(self, channel: str, connector: str, seconds: float, attempts: int = 1) -> None:
        self.deliveries.labels(channel, connector, "delivered").inc()
        self.latency.labels(channel, connector).observe(seconds)
        if attempts > 1:
            self.retries.labels(channel, connector).inc(attempts - 1)

    def failed(self, channel: str, connector: str, seconds: float, attempts: int) -> None:
        self.deliveries.labels(channel, connector, "failed").inc()
        self.latency.labels(channel, connector).observe(seconds)
        if attempts > 1:
            self.retries.labels(channel, connector).inc(attempts - 1)

    def error(self, channel: str, connector: str, code: str) -> None:
        self.errors.labels(channel, connector, code).inc()


class BytewaxKafkaLag:
    """Re-exports Bytewax's ``bytewax_kafka_consumer_lag{step_id,topic,partition}`` gauge,
    which Bytewax keeps on the global default registry, on the run's injected registry.

    Bytewax sets it from librdkafka's statistics every second once a partition has
    consumed its first message: messages on the broker not yet read, per partition.
    """

    def collect(self) -> Iterable[Metric]:
        from bytewax.connectors.kafka import BYTEWAX_CONSUMER_LAG_GAUGE

        return BYTEWAX_CONSUMER_LAG_GAUGE.collect()
