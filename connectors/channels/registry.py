"""Build the connectors that configuration names, and route decisions to them by channel.

Connector kinds are looked up in :data:`BUILDERS`, and plug-ins add kinds through the
``touchline.connectors`` entry-point group: an entry point named ``kind`` whose object
is called as ``builder(channel, config, context) -> ChannelConnector``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from touchline.connectors.channels.base import ChannelConnector, DeliveryReport
from touchline.connectors.channels.config import CHANNELS, DeliverySettings

log = logging.getLogger(__name__)


@dataclass
class BuildContext:
    """What connectors may need beyond their own section."""

    report: DeliveryReport
    outbox_dir: Path
    kafka_config: dict[str, str] | None = None
    channel_topic_prefix: str = "touchline.channel."
    kafka_timeout_seconds: float = 60.0
    seed: int | None = None


def _jsonl(channel: str, cfg: Any, ctx: BuildContext) -> ChannelConnector:
    from touchline.connectors.channels.jsonl import JsonlConnector

    path = None if cfg.path == "-" else Path(cfg.path) if cfg.path else ctx.outbox_dir / f"{channel}.jsonl"
    return JsonlConnector(channel, ctx.report, path)


def _kafka(channel: str, cfg: Any, ctx: BuildContext) -> ChannelConnector:
    from touchline.connectors.channels.kafka import KafkaChannelConnector

    if ctx.kafka_config is None:
        raise ValueError(f"delivery.channels.{channel}: kind kafka needs kafka.bootstrap (or --kafka HOST:PORT)")
    topic = cfg.topic or ctx.channel_topic_prefix + channel  # as DeliverySettings.kafka_topics names it
    return KafkaChannelConnector(channel, ctx.report, ctx.kafka_config, topic, ctx.kafka_timeout_seconds)


def _webhook(channel: str, cfg: Any, ctx: BuildContext) -> ChannelConnector:
    from touchline.connectors.channels.webhook import WebhookConnector

    return WebhookConnector(channel, ctx.report, cfg, ctx.seed)


def _smtp(channel: str, cfg: Any, ctx: BuildContext) -> ChannelConnector:
    from touchline.connectors.channels.smtp import SmtpConnector, TemplateError

    try:
        return SmtpConnector(channel, ctx.report, cfg, ctx.seed)
    except TemplateError as exc:
        raise ValueError(f"delivery.channels.{channel}: {exc}") from None


BUILDERS: dict[str, Callable[[str, Any, BuildContext], ChannelConnector]] = {
    "jsonl": _jsonl, "kafka": _kafka, "webhook": _webhook, "smtp": _smtp,
}


def builder_for(kind: str) -> Callable[[str, Any, BuildContext], ChannelConnector]:
    if kind in BUILDERS:
        return BUILDERS[kind]
    for ep in entry_points(group="touchline.connectors"):
        if ep.name == kind:
            return ep.load()
    raise ValueError(f"no channel connector of kind {kind!r}; known: {', '.join(sorted(BUILDERS))}")


class Delivery:
    """The connectors of a run, one per delivered channel; routes decisions by channel."""

    def __init__(self, connectors: dict[str, ChannelConnector], report: DeliveryReport) -> None:
        self.connectors = connectors
        self.report = report
        self._closed = False

    @classmethod
    def build(cls, settings: DeliverySettings, ctx: BuildContext) -> "Delivery":
        connectors: dict[str, ChannelConnector] = {}
        for channel in CHANNELS:
            cfg = settings.for_channel(channel, kafka=ctx.kafka_config is not None)
            if cfg.kind == "none":
                continue
            connectors[channel] = builder_for(cfg.kind)(channel, cfg, ctx)
        return cls(connectors, ctx.report)

    def start(self) -> None:
        for connector in self.connectors.values():
            connector.start()

    def submit(self, decisions: list[dict[str, Any]]) -> None:
        by_channel: dict[str, list[dict[str, Any]]] = {}
        for decision in decisions:
            by_channel.setdefault(decision.get("channel", ""), []).append(decision)
        for channel, batch in by_channel.items():
            connector = self.connectors.get(channel)
            if connector is not None:
                connector.submit(batch)

    def close(self, timeout: float) -> None:
        """Wait for deliveries in flight (up to ``timeout`` each), then release; idempotent."""
        if self._closed:
            return
        self._closed = True
        for connector in self.connectors.values():
            try:
                connector.close(timeout)
            except Exception:  # one connector's trouble must not keep the others from closing
                log.exception("closing the %s connector for %s", connector.kind, connector.channel)

    def describe(self) -> dict[str, str]:
        """channel -> connector kind and where it delivers (summary, startup line)."""
        return {channel: f"{c.kind} {c.target}" for channel, c in self.connectors.items()}


class _DeliveryPartition(StatelessSinkPartition[dict[str, Any]]):
    def __init__(self, delivery: Delivery) -> None:
        self._delivery = delivery

    def write_batch(self, items: list[dict[str, Any]]) -> None:
        self._delivery.submit(items)


class DeliverySink(DynamicSink[dict[str, Any]]):
    """Decisions into the channel connectors.

    Delivery: each connector's (see :mod:`touchline.connectors.channels.base`); a full
    connector queue blocks here, which holds the dataflow back (backpressure).
    """

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeliveryPartition:
        return _DeliveryPartition(self.delivery)
