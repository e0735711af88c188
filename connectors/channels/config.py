"""Which connector delivers each channel, and how: the ``[delivery]`` settings section.

Pure configuration (no I/O), validated at start with errors that name the key::

    [delivery.channels.email]
    kind = "smtp"
    host = "smtp.internal"
    sender = "news@example.com"
    address_book = "contacts.csv"

    [delivery.channels.sms]
    kind = "webhook"
    url = "https://sms-gateway.internal/send"
    rate_per_second = 20

Channels left out use ``delivery.default``: ``auto`` is one Kafka topic per channel when
``kafka.bootstrap`` is set (production: downstream senders consume them), else a JSONL
file per channel in the output directory's ``outbox/`` (the embedded default).

>>> d = DeliverySettings.model_validate({"channels": {"sms": {"kind": "webhook", "url": "http://127.0.0.1:8080/"}}})
>>> d.for_channel("sms", kafka=False).kind, d.for_channel("email", kafka=False).kind, d.for_channel("email", kafka=True).kind
('webhook', 'jsonl', 'kafka')
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

from pydantic import (
    BaseModel, ConfigDict, Discriminator, Field, SecretStr, Tag, field_validator, model_validator,
)

from touchline.redact import redact_url

#: Channels a decision can name (the policy's channels plus the sales hand-off).
CHANNELS = ("email", "sms", "push", "sales_task")


class _Connector(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Retrying(_Connector):
    timeout_seconds: float = Field(default=5.0, gt=0, le=300, description="per attempt")
    max_attempts: int = Field(default=5, ge=1, le=100, description="first try included")
    backoff_seconds: float = Field(default=0.2, ge=0, le=60, description="first retry delay; doubles, with jitter")
    backoff_max_seconds: float = Field(default=30.0, ge=0, le=3600)
    rate_per_second: float = Field(default=50.0, gt=0, description="token bucket: sustained sends per second")
    burst: int = Field(default=10, ge=1, description="token bucket: sends allowed at once")
    queue_size: int = Field(default=1000, ge=1, le=1_000_000, description="waiting decisions before backpressure")
    concurrency: int = Field(default=4, ge=1, le=256, description="deliveries in flight")


class JsonlConnectorConfig(_Connector):
    """Append each decision to a JSONL file (``-`` for stdout)."""

    kind: Literal["jsonl"] = "jsonl"
    path: str | None = Field(default=None, description="default: <output.dir>/outbox/<channel>.jsonl")


class KafkaConnectorConfig(_Connector):
    """Produce each decision to a topic of its own channel, keyed by contact."""

    kind: Literal["kafka"] = "kafka"
    topic: str | None = Field(default=None, description="default: kafka.channel_topic_prefix + channel")


class WebhookConnectorConfig(_Retrying):
    """POST the decision JSON to an HTTP endpoint, with ``Idempotency-Key: <decision_id>``."""

    kind: Literal["webhook"] = "webhook"
    url: str = Field(description="printed with its password and query values masked")
    headers: dict[str, SecretStr] = Field(default_factory=dict, description="sent with every request; the values "
                                          "are secrets (printed as **********)")
    bearer_token: SecretStr | None = Field(default=None, description="sent as Authorization: Bearer ...")

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:  # a bad port or IPv6 literal
            ok = False
        if not ok:
            raise ValueError(f"expected an http:// or https:// URL with a host, got {redact_url(value)!r}")
        return value


class SmtpConnectorConfig(_Retrying):
    """Render a template per decision and send it as an email."""

    kind: Literal["smtp"] = "smtp"
    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "none"
    username: str | None = None
    password: SecretStr | None = None
    sender: str = Field(description="From: address")
    templates: Path | None = Field(default=None, description="directory of <template>.txt files (Jinja2)")
    address_book: Path | None = Field(default=None, description="CSV with columns contact_id,email")
    recipient: str | None = Field(default=None, description="address pattern, e.g. '{contact_id}@staging.example'")
    rate_per_second: float = Field(default=10.0, gt=0)
    concurrency: int = Field(default=2, ge=1, le=64)

    @model_validator(mode="after")
    def _where_to(self) -> "SmtpConnectorConfig":
        if self.address_book is None and self.recipient is None:
            raise ValueError("an smtp channel needs address_book (CSV contact_id,email) or recipient (a pattern)")
        if self.username and self.password is None:
            raise ValueError("username is set but password is not")
        return self


class PluginConnectorConfig(BaseModel):
    """A connector kind registered by a plug-in (entry-point group ``touchline.connectors``);
    its other keys are passed to the plug-in, which validates them."""

    model_config = ConfigDict(extra="allow")

    kind: str


class NoConnectorConfig(_Connector):
    """Do not deliver this channel (decisions still go to the decisions output)."""

    kind: Literal["none"] = "none"


BUILTIN_KINDS = ("jsonl", "kafka", "webhook", "smtp", "none")


def _kind_tag(value: Any) -> str:
    kind = value.get("kind", "jsonl") if isinstance(value, dict) else getattr(value, "kind", "jsonl")
    return kind if kind in BUILTIN_KINDS else "plugin"


ConnectorConfig = Annotated[
    Union[
        Annotated[JsonlConnectorConfig, Tag("jsonl")],
        Annotated[KafkaConnectorConfig, Tag("kafka")],
        Annotated[WebhookConnectorConfig, Tag("webhook")],
        Annotated[SmtpConnectorConfig, Tag("smtp")],
        Annotated[NoConnectorConfig, Tag("none")],
        Annotated[PluginConnectorConfig, Tag("plugin")],
    ],
    Discriminator(_kind_tag),
]


def _plugin_exists(kind: str) -> bool:
    from touchline.connectors.channels.registry import CONNECTORS

    return kind in CONNECTORS


class DeliverySettings(_Connector):
    """Connectors per channel."""

    default: Literal["auto", "jsonl", "kafka", "none"] = Field(
        default="auto", description="for channels not listed: auto = kafka when kafka.bootstrap is set, else jsonl"
    )
    channels: dict[str, ConnectorConfig] = Field(default_factory=dict)
    flush_seconds: float = Field(default=30.0, ge=0, le=3600,
                                 description="at the end of a run, wait this long for deliveries in flight")
    lease_seconds: float = Field(default=30.0, gt=0, le=3600,
                                 description="send ledger: a claim on a decision lapses this long after its "
                                 "process stopped renewing it (a crash), so a re-emission can deliver it")
    sent_ttl_days: float = Field(default=30.0, gt=0, le=3650,
                                 description="send ledger: remember a delivered decision this long")

    @field_validator("channels")
    @classmethod
    def _known(cls, value: dict[str, ConnectorConfig]) -> dict[str, ConnectorConfig]:
        unknown = sorted(set(value) - set(CHANNELS))
        if unknown:
            raise ValueError(f"unknown channel(s) {unknown}; known: {', '.join(CHANNELS)}")
        for channel, cfg in value.items():
            if isinstance(cfg, PluginConnectorConfig) and not _plugin_exists(cfg.kind):
                raise ValueError(f"{channel}: no connector of kind {cfg.kind!r}; known: "
                                 f"{', '.join(BUILTIN_KINDS)} (or a touchline.connectors plug-in)")
        return value

    def for_channel(self, channel: str, kafka: bool) -> ConnectorConfig:
        """The connector configuration of ``channel`` (listed, or the default)."""
        if channel in self.channels:
            return self.channels[channel]
        kind = ("kafka" if kafka else "jsonl") if self.default == "auto" else self.default
        if kind == "kafka" and not kafka:
            raise ValueError("delivery.default is kafka but kafka.bootstrap is not set")
        return {"jsonl": JsonlConnectorConfig, "kafka": KafkaConnectorConfig, "none": NoConnectorConfig}[kind]()

    def kafka_topics(self, prefix: str) -> dict[str, str]:
        """channel -> topic, for the channels delivered to Kafka when Kafka is configured.

        >>> DeliverySettings().kafka_topics("tl.")["sms"]
        'tl.sms'
        """
        out = {}
        for channel in CHANNELS:
            cfg = self.for_channel(channel, kafka=True)
            if isinstance(cfg, KafkaConnectorConfig):
                out[channel] = cfg.topic or prefix + channel
        return out
