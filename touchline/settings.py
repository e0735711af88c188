"""The one typed settings object, read at the entry point only.

Precedence: command-line overrides > environment (``TOUCHLINE_`` prefix, ``__`` between
levels, e.g. ``TOUCHLINE_POLICY__HOLDOUT_SHARE=0.1``) > config file (TOML or YAML) >
defaults. Unknown keys are errors, so a typo is caught at start, by name.

>>> s = load_settings(None)
>>> s.state.url, s.source.kind, s.metrics.host
('memory://', 'simulator', '127.0.0.1')
"""

from __future__ import annotations

import inspect
import os
import re
import tomllib
from contextvars import ContextVar
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from touchline.decisions.errors import TouchlineError, did_you_mean
from touchline.decisions.journey_errors import keys_at
from touchline.decisions.custom_attributes import (
    AttributeSpec, CustomAttributes, TraitSpec, check_definitions, declared_features,
)
from touchline.decisions.events import KNOWN_TYPES, check_known_types
from touchline.decisions.experiments import ExperimentSettings
from touchline.decisions.send_time import SendTime
from touchline.decisions.no_action import AuditSettings
from touchline.decisions.estimators import ModelConfig, ScoreSettings, declare_features, resolve
from touchline.decisions.features import FEATURE_NAMES
from touchline.decisions.journeys import PROFILE_FIELDS, Vocabulary
from touchline.decisions.policy import PolicyConfig
from touchline.connectors.channels.config import DeliverySettings
from touchline.redact import redact_secrets, secret_name
from touchline.settings_env import misnamed_variables

if TYPE_CHECKING:
    from touchline.decisions.batch_run import LabelSettings as LabelRules
    from touchline.state.base import StoreOptions


class ConfigError(TouchlineError, ValueError):
    """Invalid configuration; the message names the file and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSettings(_Section):
    kind: Literal["simulator", "jsonl", "kafka"] = "simulator"
    path: Path | None = Field(default=None, description="JSONL file when kind = jsonl")
    batch_size: int = Field(default=100, ge=1, le=100_000)
    follow: bool = Field(default=False, description="tail the JSONL file (live mode) until stopped")
    tick_seconds: float = Field(default=1.0, gt=0, le=60, description="idle clock tick while following")


class SimulatorSettings(_Section):
    seed: int = 7
    contacts: int = Field(default=3000, ge=1, le=5_000_000)
    days: float = Field(default=30.0, gt=0, le=3650)
    start: datetime = datetime(2026, 1, 5, tzinfo=timezone.utc)
    malformed_rate: float = Field(default=0.002, ge=0.0, le=1.0)
    closed_loop: bool = Field(default=False, description="people react to the engine's decisions, with a true "
                              "effect the simulator knows (run --simulate): measured lift vs true lift")
    preferred_hours: bool = Field(default=False, description="each person reads at a preferred local hour: "
                                  "opens come at it, and a message that waits long for it is opened less "
                                  "(what best-time sending can win)")

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("start needs a time zone offset, e.g. 2026-01-05T00:00:00Z")
        return value


class OutputSettings(_Section):
    dir: Path = Field(default=Path("touchline-out"), description="where runs write their outputs")
    runs: bool = Field(default=True, description="each run in a fresh runs/<UTC time>-<id>/ under dir, and "
                       "dir/latest naming the last run that ended; false: straight into dir, replacing the files "
                       "of the run before (what --out DIR does)")
    keep_runs: int = Field(default=10, ge=0, description="run directories kept under dir/runs: the oldest beyond "
                           "go when a run ends, never the one latest names nor a running one (0: keep all)")
    decisions: str = "decisions.jsonl"
    dead_letters: str = "dead_letters.jsonl"
    experiments: str = Field(default="experiments.jsonl", description="exposures, outcomes and conversions")
    no_actions: str = Field(default="no_actions.jsonl", description="no-action records: decision points where every "
                            "candidate was held back (audit.no_action_share)")
    events: str = Field(default="events.jsonl", description="simulator runs: the events the engine was given")


class StateSettings(_Section):
    url: str = Field(
        default="memory://",
        description="memory://, redis://[user:pass@]host:port/db, rediss:// (TLS), redis+cluster://host:port",
    )
    retention_days: float = Field(default=730.0, gt=0, description="forget known contacts inactive this long (event "
                                  "time): long enough to see a customer buy again")
    anonymous_retention_days: float = Field(default=30.0, gt=0, description="forget anonymous visitors inactive "
                                            "this long (at most retention_days)")
    ttl_days: float | None = Field(
        default=None, gt=0, description="Redis TTL of a profile after its last write (default retention + 30 days)"
    )
    retry_seconds: float = Field(default=60.0, ge=0, le=3600, description="retry an unreachable Redis this long")
    socket_timeout: float = Field(default=5.0, gt=0, le=300)
    cache_profiles: int = Field(default=50_000, ge=0, description="profiles kept in memory, checked by version on load")
    username: str | None = Field(default=None, description="Redis ACL user (or put it in the URL)")
    password: SecretStr | None = Field(default=None, description="Redis password (or TOUCHLINE_STATE__PASSWORD)")
    erasure_key: SecretStr | None = Field(
        default=None, description="keys the hashes naming erased contacts' tombstones (or "
        "TOUCHLINE_STATE__ERASURE_KEY); unset: a random key generated once and kept in the store")

    def options(self) -> "StoreOptions":
        """What a networked store needs beside the URL."""
        from touchline.state.base import StoreOptions

        return StoreOptions(
            ttl_days=self.ttl_days or self.retention_days + 30,
            retry_seconds=self.retry_seconds,
            socket_timeout=self.socket_timeout,
            cache_profiles=self.cache_profiles,
            username=self.username,
            password=self.password.get_secret_value() if self.password else None,
            erasure_key=self.erasure_key.get_secret_value() if self.erasure_key else None,
        )


class MetricsSettings(_Section):
    enabled: bool = Field(default=True, description="serve /metrics, /healthz and /readyz while running")
    host: str = Field(default="127.0.0.1", description="address to bind; loopback unless you choose otherwise")
    port: int = Field(default=9464, ge=0, le=65535)
    stall_seconds: float = Field(default=300.0, gt=0, description="/healthz fails once one batch runs this "
                                 "long (keep it above state.retry_seconds and kafka.retry_seconds)")
    reach_alert_share: float = Field(default=0.2, gt=0, le=1, description="TouchlineActionReachTooWide fires when "
                                     "one action reaches more than this share of the known contacts in a day")


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="warning", description="info for production: operational lines, never personal data")
    format: Literal["text", "json"] = Field(default="text", description="json: one object per line, for "
                                            "log shippers")


LEARN_AT_HORIZON: tuple[Literal["lead", "churn"], ...] = ("lead",)


class LabelSettings(_Section):
    goal_types: Annotated[list[str], AfterValidator(check_known_types)] = Field(
        default_factory=lambda: ["purchase", "form_submit", "signup"], min_length=1)
    lead_horizon_days: float = Field(default=3.0, gt=0, description="a goal within this long after scoring is a positive")
    churn_horizon_days: float = Field(default=7.0, gt=0)
    churn_returns: Annotated[list[str], AfterValidator(check_known_types)] | None = Field(
        default=None, min_length=1, description="event types that count as coming back and end a churn observation "
        "(purchase data: [\"purchase\"], 'will this customer buy again'); unset: any activity")
    churn_observations: Literal["activity", "random_times"] = Field(
        default="activity", description="when churn observations are taken: at a contact's activity and "
        "inactivity check, or (random_times) for each known contact at random times, silent spells included, "
        "as a churn score is asked about at an arbitrary cut-off")
    sample_gap_hours: float = Field(default=24.0, ge=0, description="min time between observations per contact")
    sample_rate: float = Field(default=0.3, gt=0, le=1, description="share of intent events a lead observation may start at")
    learn_at_horizon: list[Literal["lead", "churn"]] = Field(
        default_factory=lambda: list(LEARN_AT_HORIZON), description="scores whose models learn each label at its observation's "
        "horizon instead of when it resolves, so the class that resolves early (a lead's conversion) does not skew "
        "them; graded when it resolves all the same. Costs the features of the labels held, per model")


    def rules(self) -> "LabelRules":
        """These settings as the decision core takes them."""
        from touchline.decisions.batch_run import LabelSettings as LabelRules

        return LabelRules(self.lead_horizon_days, self.churn_horizon_days, frozenset(self.goal_types),
                          self.sample_gap_hours, self.sample_rate,
                          None if self.churn_returns is None else frozenset(self.churn_returns),
                          self.churn_observations == "random_times", frozenset(self.learn_at_horizon))


#: The default lead model: logreg at a third of River's learning rate (a few thousand delayed labels a
#: month are too few for the noise of 0.01) with a calibration map; see python -m touchline.lead_bench.
LEAD_DEFAULT: dict[str, Any] = {"params": {"learning_rate": 0.003}, "calibration": "platt"}


class ModelSettings(_Section):
    """The lead and churn scores (champion, challenger, promotion rule) and where models are kept."""

    lead: ScoreSettings = Field(default_factory=lambda: ScoreSettings(name="lead", **LEAD_DEFAULT))
    churn: ScoreSettings = Field(default_factory=lambda: ScoreSettings(name="churn"))
    store: str = Field(
        default="auto",
        description="where deployment and checkpoints live: auto (the state store's Redis, else "
        "file://<output.dir>/models), file://DIR, redis://..., or off (models start fresh every run)",
    )
    checkpoint_seconds: float = Field(default=60.0, gt=0, le=86_400, description="save learned state this often")
    poll_seconds: float = Field(default=5.0, gt=0, le=3600, description="look for a new deployment this often")
    restore: bool | Literal["auto"] = Field(
        default="auto", description="continue from the model store's checkpoints (true), or start fresh "
        "models (false; still saved); auto: true when the input goes on (Kafka, --follow), "
        "so a restarted engine continues learning, false on a replay (a file, the simulator), so it is "
        "reproducible; touchline run --resume-models sets true")
    checkpoint_key: SecretStr | None = Field(
        default=None, description="sign checkpoints and refuse unsigned ones (TOUCHLINE_MODELS__CHECKPOINT_KEY)")
    learn: bool = Field(default=True, description="learn from resolved labels (false: models stay as restored, "
                        "so two runs of the same input decide exactly alike)")

    @model_validator(mode="after")
    def _names(self) -> "ModelSettings":
        self.lead.name = self.lead.name or "lead"
        self.churn.name = self.churn.name or "churn"
        return self

    @field_validator("store")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if value in ("auto", "off"):
            return value
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in ("file", "redis", "rediss", "redis+cluster", "rediss+cluster") or not rest:
            raise ValueError("use auto, off, file://DIR or a redis:// URL")
        return value

    def scores(self) -> dict[str, ScoreSettings]:
        return {"lead": self.lead, "churn": self.churn}


class EngineSettings(_Section):
    clock: Literal["event", "wall"] = Field(
        default="event", description="event: replay on event time; wall: live on the system clock"
    )
    allowed_lateness_seconds: float = Field(
        default=0.0, ge=0, le=86_400,
        description="event clock: hold events and timers this long behind the newest event time of their input "
        "partition and process them in event-time order, so events out of order by less than this give the "
        "decisions of the sorted stream (later ones are processed at once, out of order)",
    )
    max_future_seconds: float = Field(
        default=86_400, gt=0, le=10 * 365 * 86_400,
        description="an event time further ahead than this of the wall clock (or, on the event clock, of its "
        "partition's event clock, unless time_jump_quorum events agree) is a future_event dead letter",
    )
    min_event_time: datetime = Field(
        default=datetime(1990, 1, 1, tzinfo=timezone.utc),
        description="event times before this are before_floor dead letters (RFC 3339 with an offset)",
    )
    time_jump_quorum: int = Field(
        default=20, ge=1, le=100_000,
        description="event clock: a partition's clock is the newest time this many of its events reached, so "
        "fewer events with a wrong device clock never move it; events far ahead move it only when this many agree "
        "(a gap in the data)",
    )
    max_internal_error_share: float = Field(
        default=0.01, gt=0, le=1,
        description="the run stops when more than this share of recent events and timers raised an internal "
        "error (at least 10): a bug, not bad input",
    )

    @field_validator("min_event_time")
    @classmethod
    def _has_offset(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("min_event_time needs a time zone offset, e.g. 2000-01-01T00:00:00Z")
        return value


class RuntimeSettings(_Section):
    """How the production engine executes: Bytewax's runtime, recovery and processes."""

    recovery: bool = Field(default=True, description="with Kafka in and Redis state: snapshot the Kafka offsets "
                           "so a restart resumes where the last snapshot was, not at the start of the topic")
    recovery_dir: Path | None = Field(default=None, description="Bytewax recovery partitions (default "
                                      "<output.dir>/recovery, beside the run directories); created on first start; keep it "
                                      "across restarts")
    snapshot_seconds: float = Field(default=5.0, gt=0, le=3600, description="epoch length: a snapshot this "
                                    "often; a restart replays at most this much input")
    backup_seconds: float = Field(default=30.0, ge=0, le=86_400, description="keep superseded snapshots this "
                                  "long (time to back the recovery directory up elsewhere)")
    processes: int = Field(default=1, ge=1, le=256, description="engine processes on this host (touchline run "
                           "--processes N): each one worker, Kafka partitions spread over them")
    process_id: int | None = Field(default=None, ge=0, description="this process's index in a cluster "
                                   "(with addresses; one per host)")
    addresses: list[str] = Field(default_factory=list, description="host:port of every process of the cluster, "
                                 "in process-id order (Bytewax's -a)")

    @field_validator("addresses")
    @classmethod
    def _host_ports(cls, value: list[str]) -> list[str]:
        for address in value:
            host, sep, port = address.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{address!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _cluster(self) -> "RuntimeSettings":
        if self.process_id is not None and not self.addresses:
            raise ValueError("process_id needs addresses (host:port of every process, in order)")
        if self.addresses and self.process_id is None:
            raise ValueError("addresses need process_id (this process's index in them)")
        if self.process_id is not None and self.process_id >= len(self.addresses):
            raise ValueError(f"process_id {self.process_id} is not an index of the {len(self.addresses)} addresses")
        return self


class ApiSettings(_Section):
    """The HTTP API: ``touchline serve``, or ``touchline run --api`` beside the engine."""

    enabled: bool = Field(default=False, description="touchline run serves the API too (needs state in Redis)")
    host: str = Field(default="127.0.0.1", description="address to bind; loopback unless you choose otherwise")
    port: int = Field(default=8080, ge=0, le=65535, description="0: any free port")
    keys: list[SecretStr] = Field(
        default_factory=list, description="API keys (or TOUCHLINE_API__KEYS='[\"key1\",\"key2\"]'), each accepted "
        "as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'; none: a key is made at start and printed once")
    rate_per_second: float = Field(default=500.0, gt=0, description="requests per second per key (a token bucket)")
    burst: int = Field(default=1000, ge=1, description="requests a key may make at once before the rate applies")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576, description="larger bodies: 413")
    max_events: int = Field(default=1000, ge=1, le=100_000, description="events one POST /v1/events may carry")
    timeout_seconds: float = Field(default=5.0, gt=0, le=300, description="a request waits at most this long (an "
                                   "unreachable state store is retried as long, then 503)")
    batch_size: int = Field(default=200, ge=1, le=10_000, description="requests and events handled in one batch")
    timer_partition: int = Field(default=1000, ge=0, le=1_000_000, description="where the timers the API's events "
                                 "set are kept; this process fires them: give each API process its own")
    tick_seconds: float = Field(default=1.0, gt=0, le=60, description="fire due timers this often")
    workers: int = Field(default=1, ge=1, le=64, description="touchline serve's processes on the port, one core "
                         "each (state in Redis; worker n fires timer partition timer_partition + n and writes "
                         "worker-n- output files)")
    keep_alive_seconds: int = Field(
        default=75, ge=1, le=3600, description="an idle client connection stays open this long; longer than a "
        "load balancer's idle timeout (60 s on most), or it may send a request on a connection closing under it (a 502)")

    @field_validator("keys")
    @classmethod
    def _long_enough(cls, value: list[SecretStr]) -> list[SecretStr]:
        for i, key in enumerate(value):
            if len(key.get_secret_value()) < 16:
                raise ValueError(f"key {i} is shorter than 16 characters: too easy to guess")
        return value


class SendTimeSettings(_Section):
    """Best send time (``send_at: best_time`` in a journey's send step or an experiment's variant)."""

    prior_weight: float = Field(default=10.0, ge=0.0, le=10_000.0, description="how many engagements' worth "
                                "of the population's hourly pattern a contact's own opens and clicks are shrunk "
                                "toward (0: the contact's own alone)")


class JourneySettings(_Section):
    files: list[Path] = Field(default_factory=list,
                              description="journey files or directories of them (e.g. examples/journeys)")


class EventSettings(_Section):
    custom_types: list[str] = Field(default_factory=list, description="your own event types (e.g. "
                                    "review_submitted): usable in journeys and custom attributes like built-in ones")

    @field_validator("custom_types")
    @classmethod
    def _custom_types(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.match(r"^[a-z][a-z0-9_]{0,63}$", name):
                raise ValueError(f"{name!r}: an event type is lowercase letters, digits and _, starting with a letter")
            if name in KNOWN_TYPES:
                raise ValueError(f"{name!r} is a built-in event type already")
        if len(set(value)) != len(value):
            raise ValueError("an event type is listed twice")
        return value


def _trait(value: Any) -> TraitSpec:
    return value if isinstance(value, TraitSpec) else TraitSpec.parse(value)


class KafkaSettings(_Section):
    """The broker and topics of the production engine (``touchline run --kafka HOST:PORT``)."""

    bootstrap: str | None = Field(default=None, description="host:port[,host:port...]; set to read from Kafka")
    events_topic: str = "touchline.events"
    decisions_topic: str = "touchline.decisions"
    dead_letter_topic: str = "touchline.dead-letters"
    experiments_topic: str = "touchline.experiments"
    no_actions_topic: str = Field(default="touchline.no-actions", description="no-action records (not created or "
                                  "written when audit.no_action_share is 0)")
    channel_topic_prefix: str = Field(default="touchline.channel.", description="+ channel name: the per-channel topics")
    start: Literal["earliest", "latest"] = Field(default="earliest", description="where a new run starts reading")
    tail: bool = Field(default=True, description="at the end of the topic wait for more (false: stop there, a replay)")
    create_topics: bool = Field(default=True, description="create missing topics at start (else: a clear error)")
    partitions: int = Field(default=3, ge=1, le=10_000, description="partitions of topics created at start")
    replication_factor: int = Field(default=1, ge=1, le=16)
    linger_ms: float = Field(default=20.0, ge=0, le=10_000, description="wait at most this long to fill a batch")
    batch_size: int = Field(default=100, ge=1, le=100_000,
                            description="events per micro-batch read from Kafka, at most, while the engine keeps "
                                        "up: a batch goes when it holds this many or its first event waited "
                                        "linger_ms; larger batches share each state-store round trip among more "
                                        "events (behind: catchup_batch_size)")
    catchup_batch_size: int = Field(default=1000, ge=1, le=100_000,
                                    description="while the engine is behind (at least this many events wait in "
                                                "the partition, those buffered included), a batch keeps filling up to "
                                                "this many events, for at most linger_ms x catchup_batch_size / "
                                                "batch_size: catching up costs fewer round trips per event; at or "
                                                "below batch_size, batches stay at batch_size")
    connect_timeout_seconds: float = Field(default=10.0, gt=0, le=600, description="broker check at start")
    retry_seconds: float = Field(default=60.0, gt=0, le=3600,
                                 description="a broker outage is retried this long before the run stops")
    config: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="librdkafka properties passed through, e.g. security.protocol, sasl.mechanism, "
        "sasl.username, ssl.ca.location",
    )
    sasl_password: SecretStr | None = Field(default=None, description="sasl.password (or TOUCHLINE_KAFKA__SASL_PASSWORD)")
    ssl_key_password: SecretStr | None = Field(default=None, description="ssl.key.password")

    @field_validator("config")
    @classmethod
    def _no_secrets_inline(cls, value: dict[str, Any]) -> dict[str, Any]:
        owned = {"bootstrap.servers": "bootstrap", "sasl.password": "sasl_password",
                 "ssl.key.password": "ssl_key_password"}
        for key, field_name in owned.items():
            if key in value:
                raise ValueError(f"{key!r} is set by kafka.{field_name}; use that key instead")
        return value

    def client_config(self) -> dict[str, str]:
        """librdkafka configuration shared by consumers, producers and the admin client."""
        if not self.bootstrap:
            raise ConfigError("kafka.bootstrap is not set (use --kafka HOST:PORT)")
        out = {"bootstrap.servers": self.bootstrap}
        out.update({k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in self.config.items()})
        if self.sasl_password is not None:
            out["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_key_password is not None:
            out["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        return out


_file_data: ContextVar[dict[str, Any]] = ContextVar("touchline_file_settings", default={})


class _FileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field, field_name):  # pragma: no cover - unused, __call__ gives all
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _file_data.get()


class Settings(BaseSettings):
    """Everything configurable about a run."""

    model_config = SettingsConfigDict(env_prefix="TOUCHLINE_", env_nested_delimiter="__", extra="forbid")

    source: SourceSettings = Field(default_factory=SourceSettings)
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    labels: LabelSettings = Field(default_factory=LabelSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    journeys: JourneySettings = Field(default_factory=JourneySettings)
    send_time: SendTimeSettings = Field(default_factory=SendTimeSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    experiments: ExperimentSettings = Field(default_factory=ExperimentSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    delivery: "DeliverySettings" = Field(default_factory=lambda: DeliverySettings())
    events: EventSettings = Field(default_factory=EventSettings)
    attributes: dict[str, AttributeSpec] = Field(
        default_factory=dict, description="custom attributes: [attributes.NAME] event, where, aggregate, property, window")
    traits: dict[str, Annotated[TraitSpec, BeforeValidator(_trait)]] = Field(
        default_factory=dict, description='traits: NAME = "event.property", the newest value (e.g. tier = "identify.tier")')

    @model_validator(mode="before")
    @classmethod
    def _declare_custom_features(cls, data: Any) -> Any:
        """Models may read custom attributes: their names are known before the models are checked."""
        if isinstance(data, dict):
            declare_features(*declared_features(data.get("attributes"), data.get("traits")))
        return data

    @model_validator(mode="after")
    def _kafka_source_needs_bootstrap(self) -> "Settings":
        if self.source.kind == "kafka" and not self.kafka.bootstrap:
            raise ValueError("source.kind is kafka but kafka.bootstrap is not set (use --kafka HOST:PORT)")
        _check_shared_state(self)
        _check_labels_can_resolve(self)
        _check_custom_attributes(self)
        _check_churn_models_ask_the_label_question(self)
        for name, split in self.experiments.splits.items():
            if split.action is not None and split.action not in self.policy.actions:
                raise ValueError(f"experiments.splits.{name}.action: unknown action {split.action!r}; "
                                 f"known: {', '.join(sorted(self.policy.actions))}")
        return self

    def custom_attributes(self) -> CustomAttributes:
        """The configured custom attributes and traits, as the decision core runs them."""
        return CustomAttributes(self.attributes, self.traits)

    def send_time_learner(self) -> SendTime:
        """The send-time learner the decision core runs: quiet hours and zones from the policy."""
        quiet = self.policy.quiet_hours
        return SendTime(quiet.default_timezone, quiet, self.send_time.prior_weight)

    def vocabulary(self) -> Vocabulary:
        """What journey files may name beyond the built-ins: custom event types and attributes."""
        return Vocabulary(frozenset(self.events.custom_types), frozenset((*self.attributes, *self.traits)))

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (init_settings, env_settings, _FileSource(settings_cls))


def _check_shared_state(settings: "Settings") -> None:
    """Several engine processes, or the engine and its API, share one state store: Redis.

    >>> load_settings(None, {"api.enabled": True})
    Traceback (most recent call last):
    ...
    touchline.settings.ConfigError: invalid configuration (defaults, environment, command line):
      api.enabled (run --api) needs state in Redis (--redis URL): the in-process store cannot be shared by the stream and the API; for a demo on it use touchline serve
    """
    in_process = settings.state.url.startswith("memory")
    cluster = settings.runtime.processes > 1 or settings.runtime.addresses
    if cluster and (settings.source.kind != "kafka" or in_process):
        raise ValueError("runtime.processes / addresses: several processes need Kafka in (--kafka) and a shared "
                         "state store (--redis)")
    if settings.api.enabled and in_process:
        raise ValueError("api.enabled (run --api) needs state in Redis (--redis URL): the in-process store cannot "
                         "be shared by the stream and the API; for a demo on it use touchline serve")


def _check_labels_can_resolve(settings: "Settings") -> None:
    """Refuse label horizons a contact is forgotten before: such a label never resolves and its
    model never learns. A churn observation can start once the contact has been inactive for
    ``policy.inactivity_days`` (the win-back moment), so that counts towards its horizon.

    >>> load_settings(None, {"labels.churn_horizon_days": 273, "state.retention_days": 90})
    Traceback (most recent call last):
    ...
    touchline.settings.ConfigError: invalid configuration (defaults, environment, command line):
      labels.churn_horizon_days (273) + policy.inactivity_days (7) must be shorter than state.retention_days (90): \
a contact is forgotten before its churn label can resolve, so the churn model would never learn; raise \
state.retention_days or shorten the horizon
    """
    labels, state = settings.labels, settings.state
    retention = state.retention_days
    if state.anonymous_retention_days > retention:
        raise ValueError(f"state.anonymous_retention_days ({state.anonymous_retention_days:g}) is longer than "
                         f"state.retention_days ({retention:g}): anonymous visitors would outlive known contacts")
    inactive = settings.policy.inactivity_days
    if labels.churn_horizon_days + inactive >= retention:
        raise ValueError(f"labels.churn_horizon_days ({labels.churn_horizon_days:g}) + policy.inactivity_days "
                         f"({inactive:g}) must be shorter than state.retention_days ({retention:g}): a contact is "
                         "forgotten before its churn label can resolve, so the churn model would never learn; "
                         "raise state.retention_days or shorten the horizon")
    if labels.lead_horizon_days >= state.anonymous_retention_days:
        raise ValueError(f"labels.lead_horizon_days ({labels.lead_horizon_days:g}) must be shorter than "
                         f"state.anonymous_retention_days ({state.anonymous_retention_days:g}): an anonymous visitor "
                         "is forgotten before its lead label can resolve")


def _check_custom_attributes(settings: "Settings") -> None:
    """Custom attributes name known event types, free names and windows a contact is kept for."""
    problems = check_definitions(settings.attributes, settings.traits,
                                 KNOWN_TYPES | frozenset(settings.events.custom_types),
                                 frozenset((*PROFILE_FIELDS, *FEATURE_NAMES)), settings.state.retention_days)
    if problems:
        raise ValueError("\n  ".join(problems))


def _check_churn_models_ask_the_label_question(settings: "Settings") -> None:
    """A churn model with a horizon of its own (``bgnbd``'s ``horizon_days``) must predict over
    the horizon its labels resolve on, or it is graded, and picked, on another question: left
    unset, it takes ``labels.churn_horizon_days``; set to another number, it is refused.

    >>> load_settings(None, {"models.churn.estimator": "bgnbd"}).models.churn.params
    {'horizon_days': 7.0}
    >>> load_settings(None, {"models.churn.challenger": {"estimator": "bgnbd", "params": {"horizon_days": 90}}})
    Traceback (most recent call last):
    ...
    touchline.settings.ConfigError: invalid configuration (defaults, environment, command line):
      models.churn.challenger.params.horizon_days (90) differs from labels.churn_horizon_days (7): \
set them to the same number of days (or leave horizon_days out: it follows the label)
    """
    horizon = settings.labels.churn_horizon_days
    churn = settings.models.churn
    for key, config in (("models.churn", churn), ("models.churn.challenger", churn.challenger)):
        if config is not None:
            follow_churn_horizon(key, config, horizon)


def follow_churn_horizon(key: str, config: ModelConfig, horizon: float) -> None:
    """A churn model with a ``horizon_days`` of its own takes the labels' ``horizon`` when it
    has none; a different one is refused (ValueError naming ``key``). The settings and
    ``touchline models deploy`` both apply it."""
    if "horizon_days" not in inspect.signature(resolve(config.estimator)[1]).parameters:
        return
    value = config.params.setdefault("horizon_days", horizon)
    if value != horizon:
        raise ValueError(f"{key}.params.horizon_days ({value:g}) differs from labels.churn_horizon_days "
                         f"({horizon:g}): set them to the same number of days (or leave horizon_days out: it "
                         "follows the label)")


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a TOML or YAML config file into a dict, with errors naming the file and line."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_bytes()
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text.decode("utf-8"))
        elif path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {path}: unsupported extension {path.suffix!r} (use .toml, .yaml or .yml)")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: invalid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a table/mapping, got {type(data).__name__}")
    return data


def _unknown_key(loc: tuple[int | str, ...]) -> str:
    """An unknown key, with the near miss among the keys its table accepts (aliases as written).

    >>> _unknown_key(("delivery", "channels", "sms", "bearer_tokn")), _unknown_key(("policy", "zzz"))
    ("unknown key (did you mean 'bearer_token'?)", 'unknown key (typo?)')
    """
    hint = did_you_mean(str(loc[-1]), keys_at(Settings, tuple(loc))) if loc else ""
    return f"unknown key ({hint})" if hint else "unknown key (typo?)"


def _format(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = _unknown_key(err["loc"])
        value = err.get("input")
        secret = any(secret_name(str(part)) or part == "headers" for part in err["loc"])
        shown = "" if isinstance(value, (dict, list)) or value is None or secret else f" (got {value!r})"
        if not key:  # a check across keys: its message names them
            lines.append(redact_secrets(f"  {msg.removeprefix('Value error, ')}"))
            continue
        lines.append(redact_secrets(f"  {key}: {msg}{shown}"))
    return "\n".join(lines)


def _deep_set(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value


def load_settings(path: Path | None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build the settings from file, environment and dotted-key overrides.

    >>> load_settings(None, {"policy.holdout_share": 2}).policy.holdout_share
    Traceback (most recent call last):
    ...
    touchline.settings.ConfigError: invalid configuration (defaults, environment, command line):
      policy.holdout_share: Input should be less than or equal to 1 (got 2)
    """
    data = read_config_file(path) if path is not None else {}
    misnamed = misnamed_variables(os.environ, Settings.model_fields)
    if misnamed:
        raise ConfigError("invalid configuration (environment):\n" + "\n".join(f"  {p}" for p in misnamed))
    init: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _deep_set(init, dotted, value)
    token = _file_data.set(data)
    try:
        return Settings(**init)
    except SettingsError as exc:  # an environment variable that is not the JSON its list or table needs
        raise ConfigError(f"invalid configuration (environment): {exc}; a list or table in a TOUCHLINE_ variable "
                          """is JSON, e.g. TOUCHLINE_API__KEYS='["key-one-0123456789"]'""") from None
    except ValidationError as exc:
        origin = f"{path}, environment, command line" if path else "defaults, environment, command line"
        raise ConfigError(_format(exc, origin)) from None
    finally:
        _file_data.reset(token)
