"""Kafka in and out: the events source, the decisions and dead-letter sinks, topic checks.

The source wraps Bytewax's ``KafkaSource`` partitions (one per Kafka partition, the
offset as snapshot) and groups their messages into the engine's micro-batches. The
sinks produce with delivery reports, because Bytewax's ``KafkaSink`` ignores them (a
produce to a missing topic would vanish silently) and it cannot carry per-message
headers we need for dead letters.

Connectivity is checked before the dataflow starts: ``KafkaSource`` would otherwise
wait forever on a broker that is down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from bytewax.connectors.kafka import KafkaError, KafkaSource
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaException, Producer, TopicPartition
from confluent_kafka import KafkaError as ConfluentError
from confluent_kafka.admin import AdminClient, NewTopic
from touchline.decisions.errors import TouchlineError
from touchline.decisions.batches import RawBatch

log = logging.getLogger(__name__)

_DUMP = orjson.OPT_SORT_KEYS
#: Consumer errors that mean "cannot reach the cluster" (retried by librdkafka; we bound the wait).
_OUTAGE_CODES = {ConfluentError._ALL_BROKERS_DOWN, ConfluentError._TRANSPORT, ConfluentError._RESOLVE}


#: librdkafka's own log lines (connection refused, retries) go here instead of raw to stderr:
#: outages are reported by the engine itself, once and clearly; turn on DEBUG to see these.
LIBRDKAFKA_LOG = logging.getLogger("touchline.librdkafka")
#: The longest a start-up wait for the brokers blocks in librdkafka between Python bytecodes.
SIGNAL_SLICE_SECONDS = 0.5


class _QuietLibrdkafka(logging.LoggerAdapter):
    """Logs librdkafka's lines at DEBUG whatever their syslog level."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)


def _with_logger(config: dict[str, Any]) -> dict[str, Any]:
    return {**config, "logger": _QuietLibrdkafka(LIBRDKAFKA_LOG, {})}


#: Consumer settings the engine changes from librdkafka's defaults (``kafka.config`` overrides them).
#: A fetch waits at most 100 ms for data. Kafka answers a fetch as soon as data arrives, so the
#: wait only sets how often an idle partition asks (librdkafka's default, 500 ms, is fine there);
#: some compatible brokers notice new data late within the wait (Tansu, measured: produce to
#: consume p50 115 ms at 500, 17 ms at 100, 3 ms at 10). Each input partition has its own
#: consumer, and an idle one sends a fetch per wait: at 10 ms three idle partitions cost Tansu
#: 15% of a core, at 100 ms under 4% (measured with the engine idle on three partitions).
CONSUMER_DEFAULTS = {"fetch.wait.max.ms": "100"}


#: An input partition with no messages for this long asks the cluster whether it is still there.
IDLE_PROBE_SECONDS = 5.0
#: After this long without a message a partition says it is idle (once): on the event clock
#: the engine then processes what it holds back for ordering instead of waiting for more.
IDLE_RELEASE_SECONDS = 1.0
#: Records a sink lets wait for their acknowledgement before it waits itself (backpressure):
#: bounds what the engine runs ahead of its outputs when the broker stops answering.
MAX_IN_FLIGHT = 250


class KafkaUnavailable(TouchlineError, RuntimeError):
    """The brokers cannot be reached, or a topic cannot be used; the message says which."""


class KafkaConfigError(TouchlineError, ValueError):
    """librdkafka rejected a configuration property (``kafka.config``)."""


def _admin(config: dict[str, str]) -> AdminClient:
    try:
        return AdminClient(_with_logger(config))
    except KafkaException as exc:
        raise KafkaConfigError(f"kafka.config: {exc.args[0].str() if exc.args else exc}") from None


def check_cluster(config: dict[str, str], timeout: float) -> set[str]:
    """The topic names on the cluster; a clear error if the brokers do not answer in time."""
    admin = _admin(config)
    deadline = time.monotonic() + timeout
    while True:
        # in short slices: librdkafka blocks in C, where a signal (SIGTERM at start-up) waits
        slice_s = max(0.05, min(SIGNAL_SLICE_SECONDS, deadline - time.monotonic()))
        try:
            return set(admin.list_topics(timeout=slice_s).topics)
        except KafkaException as exc:
            if time.monotonic() < deadline:
                time.sleep(0.05)  # an error that came back at once is not retried in a busy loop
                continue
            err = exc.args[0] if exc.args else exc
            text = err.str() if hasattr(err, "str") else str(err)
            raise KafkaUnavailable(f"Kafka at {config['bootstrap.servers']} unreachable within {timeout:g} s "
                                   f"({text}); is the broker running and kafka.bootstrap right?") from None


def ensure_topics(config: dict[str, str], topics: list[str], *, create: bool, partitions: int,
                  replication_factor: int, timeout: float) -> list[str]:
    """Make sure ``topics`` exist (creating the missing ones if allowed); returns those created."""
    existing = check_cluster(config, timeout)
    missing = [t for t in dict.fromkeys(topics) if t not in existing]
    if not missing:
        return []
    if not create:
        raise KafkaUnavailable(f"Kafka topic(s) {', '.join(missing)} do not exist on {config['bootstrap.servers']}; "
                               "create them, or set kafka.create_topics = true")
    _create_topics(config, missing, partitions, replication_factor, timeout)
    _wait_visible(config, missing, timeout)
    return missing


def _create_topics(config: dict[str, str], topics: list[str], partitions: int, replication_factor: int,
                   timeout: float) -> None:
    """Create ``topics``; one that another client created meanwhile is fine."""
    admin = _admin(config)  # keep a reference: a collected client aborts its own requests
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=replication_factor) for t in topics],
        operation_timeout=timeout, request_timeout=timeout)
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() != ConfluentError.TOPIC_ALREADY_EXISTS:
                raise KafkaUnavailable(f"cannot create Kafka topic {topic}: {err.str()}") from None


def _wait_visible(config: dict[str, str], topics: list[str], timeout: float) -> None:
    """Wait (up to ``timeout``) until new topics show in the metadata: it reaches every
    broker a moment after the create."""
    deadline = time.monotonic() + timeout
    while set(topics) - check_cluster(config, timeout) and time.monotonic() < deadline:
        time.sleep(0.1)


# ---------------------------------------------------------------------------------- source
def catchup_size(batch_size: int, catchup_batch_size: int | None) -> int:
    """The size batches grow to while behind: never below ``batch_size`` (None: no growth).

    >>> catchup_size(100, 1000), catchup_size(100, 50), catchup_size(100, None)
    (1000, 100, 100)
    """
    return max(batch_size, catchup_batch_size or batch_size)


@dataclass(frozen=True)
class BatchSizes:
    """When a partition's buffer of messages is a full micro-batch.

    While the engine keeps up, a batch goes at ``read`` messages (what is asked of Kafka at a
    time) or once its first one has waited ``linger_s``. While it is behind (a restart, a
    replay, a burst longer than the engine can take: a read brought messages, and with those
    buffered at least ``catchup`` wait in the partition), the batch keeps filling up to
    ``catchup`` (a read that crosses it still goes in whole), for at most ``linger_s`` scaled
    by ``catchup / read``: each state-store round trip then serves more events while the
    backlog lasts, and the events, waiting anyway, lose nothing by it. A few hundred arriving
    at once do not count: a fetch brings them together, and the engine, idle, would only wait.

    >>> sizes = BatchSizes(100, 1000, 0.02)
    >>> sizes.due(100, behind=False, waited_s=0.0), sizes.due(100, behind=True, waited_s=0.05)
    (True, False)
    >>> sizes.due(1000, behind=True, waited_s=0.0), sizes.due(300, behind=True, waited_s=0.2)
    (True, True)
    """

    read: int
    catchup: int
    linger_s: float

    def due(self, buffered: int, behind: bool, waited_s: float) -> bool:
        if behind:
            return buffered >= self.catchup or waited_s >= self.linger_s * self.catchup / self.read
        return buffered >= self.read or waited_s >= self.linger_s


class _BatchingPartition(StatefulSourcePartition[RawBatch, Any]):
    """One Kafka partition, read by Bytewax's partition and grouped into micro-batches."""

    def __init__(self, inner: StatefulSourcePartition, topic: str, partition: int, sizes: BatchSizes,
                 stop: threading.Event, tick_s: float | None, retry_s: float,
                 client_config: dict[str, str], on_fatal: Callable[[Exception], None]) -> None:
        self._inner = inner
        self._name, self._topic, self._partition = f"{topic}[{partition}]", topic, partition
        self._sizes, self._stop = sizes, stop
        self._behind = False
        #: Bytewax's partition's own consumer (a private attribute of bytewax 0.21): its cached
        #: high watermark tells how many messages wait (see _waiting); None: counted as none
        self._consumer = getattr(inner, "_consumer", None)
        self._tick, self._retry, self._on_fatal = tick_s, retry_s, on_fatal
        self._config, self._bootstrap = client_config, client_config["bootstrap.servers"]
        self._next_probe = 0.0
        self._last_data = time.monotonic()
        self._lines: list[bytes] = []
        self._offsets: list[int] = []
        self._first_at = 0.0
        self._next_tick = time.monotonic() + (tick_s or 0)
        self._resume = inner.snapshot()
        self._eof = False
        self._final_sent = False
        self._idle_said = False
        self._down_since: float | None = None
        self._awake: datetime | None = None

    def next_batch(self) -> list[RawBatch]:
        """What the engine gets on this poll: a full or lingered batch, a tick, an idle or
        final marker, or nothing yet.

        Read, note whether the cluster is still there, then decide; after the end of a
        finite read only the buffered rest and the final marker are left."""
        if self._stop.is_set():
            raise StopIteration()
        if self._eof:
            return self._after_end()
        got_items = self._read()
        now = time.monotonic()
        self._watch_cluster(got_items, now)
        self._awake = None
        if self._lines and self._batch_due(now):
            return self._emit()
        if self._tick is not None and now >= self._next_tick:  # live mode: let wall-clock timers fire
            self._next_tick = now + self._tick
            return [RawBatch([], self._name, 0, time.perf_counter_ns(), partition=self._partition)]
        if not got_items and not self._lines:
            return self._idle(now)
        return []

    def _after_end(self) -> list[RawBatch]:
        """The end of a finite read (tail off): the buffered rest, then one final marker so
        the engine releases the events it holds back for ordering, then StopIteration."""
        if self._lines:
            return self._emit()
        if not self._final_sent:
            self._final_sent = True
            return [RawBatch([], self._name, self._resume or 0, time.perf_counter_ns(),
                             partition=self._partition, final=True)]
        raise StopIteration()

    def _read(self) -> bool:
        """One read from Bytewax's partition into the buffer (consumer errors are reported,
        not buffered); returns whether it read anything, errors included. The inner
        partition's StopIteration marks the end of a finite read instead of ending this
        one: the buffer still has to go out."""
        try:
            items = list(self._inner.next_batch())
        except StopIteration:
            self._eof = True
            items = []
        for item in items:
            if isinstance(item, KafkaError):
                self._error(item.err)
                continue
            if not self._lines:
                self._first_at = time.monotonic()
            self._lines.append(item.value if item.value is not None else b"")
            self._offsets.append(item.offset)
        self._behind = bool(items) and len(self._lines) + self._waiting() >= self._sizes.catchup
        return bool(items)

    def _waiting(self) -> int:
        """Messages of the partition after those buffered, as the consumer last heard from the
        broker (its cached high watermark: no request); 0 when unknown or nothing is buffered."""
        if not self._offsets or self._consumer is None:
            return 0
        try:
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(self._topic, self._partition), cached=True)
        except (KafkaException, RuntimeError, TypeError):
            return 0
        return max(0, high - (self._offsets[-1] + 1))

    def _watch_cluster(self, got_items: bool, now: float) -> None:
        """Anything read (a consumer error too) resets the outage and idle clocks; with
        nothing read, ask the cluster whether it is there when a probe is due."""
        if got_items:
            self._down_since, self._last_data, self._idle_said = None, now, False
        elif now >= self._next_probe and (self._down_since is not None or now - self._last_data >= IDLE_PROBE_SECONDS):
            self._probe(now)

    def _batch_due(self, now: float) -> bool:
        """The buffer goes out when full or when its first message has waited long enough
        (both larger while the partition is behind: see :class:`BatchSizes`), or at the end
        of a finite read."""
        return self._eof or self._sizes.due(len(self._lines), self._behind, now - self._first_at)

    def _idle(self, now: float) -> list[RawBatch]:
        """Nothing read and nothing buffered: say idle once (the engine then stops holding
        events back for ordering), otherwise ask Bytewax to poll again in 5 ms rather than spin."""
        if not self._idle_said and now - self._last_data >= IDLE_RELEASE_SECONDS:
            self._idle_said = True
            return [RawBatch([], self._name, self._resume or 0, time.perf_counter_ns(), partition=self._partition,
                             idle=True)]
        self._awake = datetime.now(UTC) + timedelta(milliseconds=5)
        return []

    def _emit(self) -> list[RawBatch]:
        batch = RawBatch(self._lines, self._name, self._offsets[0], time.perf_counter_ns(), offsets=self._offsets,
                         partition=self._partition)
        self._resume = self._offsets[-1] + 1
        self._lines, self._offsets = [], []
        return [batch]

    def _probe(self, now: float) -> None:
        """While no messages arrive, ask the cluster now and then whether it is there: librdkafka
        reports an outage once (if at all) and never reports the end of one. An outage that
        outlasts the retry budget stops the run."""
        self._next_probe = now + 1.0
        try:
            check_cluster(self._config, timeout=1.0)
        except KafkaUnavailable:
            if self._down_since is None:
                self._down_since = now
                log.warning("Kafka at %s unreachable while reading %s; retrying for up to %.0f s",
                            self._bootstrap, self._name, self._retry)
            elif now - self._down_since > self._retry:
                self._on_fatal(KafkaUnavailable(
                    f"Kafka at {self._bootstrap} unreachable for {now - (self._down_since or now):.0f} s while "
                    f"reading {self._name}; the run stopped (kafka.retry_seconds = {self._retry:g})"))
                self._stop.set()
            return
        if self._down_since is not None:
            log.warning("Kafka at %s reachable again", self._bootstrap)
        self._down_since = None
        self._next_probe = now + IDLE_PROBE_SECONDS

    def _error(self, err: ConfluentError) -> None:
        if err.fatal():
            self._on_fatal(KafkaUnavailable(f"Kafka consumer on {self._name}: fatal error {err.str()}"))
            self._stop.set()
            return
        if err.code() in _OUTAGE_CODES:
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
                log.warning("Kafka at %s unreachable (%s); retrying for up to %.0f s",
                            self._bootstrap, err.str(), self._retry)
            return
        log.warning("Kafka consumer on %s: %s", self._name, err.str())

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> Any:
        """Resume at the first message not yet handed to the engine (buffered ones included)."""
        return self._offsets[0] if self._offsets else self._resume

    def close(self) -> None:
        self._inner.close()


class KafkaEventSource(FixedPartitionedSource[RawBatch, Any]):
    """Events from a Kafka topic, in micro-batches of raw message values.

    Partitions are Bytewax's (one per Kafka partition) and snapshot the offset, so with
    recovery a run resumes exactly after the last batch it processed. Delivery: at least
    once into the engine; the engine's event-id idempotency makes it effectively once
    for state. A batch is emitted when it holds ``batch_size`` messages or its first one
    has waited ``linger_ms``; while at least ``catchup_batch_size`` messages wait in the
    partition it keeps filling up to that size (see :class:`BatchSizes`). Dead letters name
    ``topic[partition]:offset``.
    """

    def __init__(self, client_config: dict[str, str], topic: str, *, batch_size: int, linger_ms: float,
                 start: str, tail: bool, stop: threading.Event, tick_seconds: float | None,
                 retry_seconds: float, on_fatal: Callable[[Exception], None],
                 catchup_batch_size: int | None = None) -> None:
        self.topic = topic
        self._inner = KafkaSource(
            [client_config["bootstrap.servers"]], [topic], tail=tail,
            starting_offset=OFFSET_BEGINNING if start == "earliest" else OFFSET_END,
            add_config=_with_logger({**CONSUMER_DEFAULTS,
                                     **{k: v for k, v in client_config.items() if k != "bootstrap.servers"}}),
            batch_size=batch_size, raise_on_errors=False)
        self._config = client_config
        self._sizes = BatchSizes(batch_size, catchup_size(batch_size, catchup_batch_size), linger_ms / 1000)
        self.stop, self._tick, self._retry, self._on_fatal = stop, tick_seconds, retry_seconds, on_fatal
        self.progress: dict[str, float] = {}

    def list_parts(self) -> list[str]:
        return self._inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _BatchingPartition:
        idx, topic = for_part.split("-", 1)
        if resume_state is None:
            log.info("reading %s[%s] from its %s offset (no snapshot)", topic, idx, "earliest"
                     if self._inner._starting_offset == OFFSET_BEGINNING else "latest")
        else:  # recovery: the offset the last completed snapshot holds
            log.info("resuming %s[%s] at offset %s", topic, idx, resume_state)
        return _BatchingPartition(self._inner.build_part(step_id, for_part, resume_state), topic, int(idx),
                                  self._sizes, self.stop,
                                  self._tick, self._retry, self._config, self._on_fatal)


# ---------------------------------------------------------------------------------- producing
class ReportingProducer:
    """A confluent-kafka producer that reports every delivery and applies backpressure.

    Idempotent producer (``enable.idempotence``): librdkafka's own retries never write a
    message twice. A full local queue blocks ``produce`` (polling) for at most
    ``timeout_seconds``, then raises :class:`KafkaUnavailable`. Delivery reports are
    served only by ``poll``/``flush``/``wait_below``, so on the caller's thread.
    """

    def __init__(self, client_config: dict[str, str], timeout_seconds: float, **extra: Any) -> None:
        config: dict[str, Any] = {"enable.idempotence": True, "acks": "all", "linger.ms": 2,
                                  "message.timeout.ms": int(timeout_seconds * 1000), **client_config, **extra}
        self.bootstrap, self.timeout_seconds = client_config["bootstrap.servers"], timeout_seconds
        try:
            self._producer = Producer(_with_logger(config))
        except KafkaException as exc:
            raise KafkaConfigError(f"kafka.config: {exc.args[0].str() if exc.args else exc}") from None

    def produce(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, str | bytes | None]] | None,
                on_delivery: Callable[[Any, Any], None]) -> None:
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: wait for deliveries (backpressure), not forever
                if time.monotonic() >= deadline:
                    raise KafkaUnavailable(f"Kafka at {self.bootstrap} took no writes to topic {topic} for "
                                           f"{self.timeout_seconds:g} s (local queue full)") from None
                self._producer.poll(0.05)
        self._producer.poll(0)

    def poll(self, timeout: float = 0) -> None:
        self._producer.poll(timeout)

    def in_flight(self) -> int:
        """Messages produced but not yet acknowledged (or failed), or whose report is not yet served."""
        return len(self._producer)

    def flush(self, timeout: float) -> int:
        return self._producer.flush(timeout)

    def wait_below(self, bound: int, timeout: float, give_up: Callable[[], bool] = lambda: False) -> bool:
        """Serve delivery reports until at most ``bound`` messages are in flight; False if
        ``timeout`` passed or ``give_up()`` became true first.

        Waiting for all of them (``bound`` 0) flushes: librdkafka then sends what it holds at
        once instead of after ``linger.ms`` (measured on Tansu, 5 records: 0.6 ms against 3.0 ms
        by polling), and that wait is paid once per batch by every sink whose writes must be
        acknowledged before the dataflow moves on."""
        deadline = time.monotonic() + timeout
        self._producer.poll(0)
        serve = self._producer.flush if bound == 0 else self._producer.poll
        while len(self._producer) > bound:
            if give_up() or time.monotonic() >= deadline:
                return False
            serve(0.05)
        return True

    def abandon(self) -> None:
        """Give up on the messages in flight and serve their (failed) reports now: left to the
        producer's destruction they would be purged later, after their outcome could count."""
        self._producer.purge()
        self._producer.poll(0)
        self._producer.flush(1.0)  # purged reports arrive through the queue a moment later


def _write_error(topic: str, bootstrap: str, err: Any, timeout_seconds: float) -> KafkaUnavailable:
    """The one-line error of a write the broker did not acknowledge."""
    if err.code() in (ConfluentError._MSG_TIMED_OUT, *_OUTAGE_CODES):
        return KafkaUnavailable(f"Kafka at {bootstrap} did not acknowledge writes to topic {topic} within "
                                f"{timeout_seconds:g} s ({err.str()}); the run stopped "
                                f"(kafka.retry_seconds = {timeout_seconds:g})")
    return KafkaUnavailable(f"could not write to Kafka topic {topic} at {bootstrap}: {err.str()}")


class _RecordSinkPartition(StatelessSinkPartition[dict[str, Any]]):
    """One worker's records to the sink's topic.

    Delivery: at least once. ``write_batch`` hands its records to librdkafka and returns
    once at most ``MAX_IN_FLIGHT`` of this partition's records wait for the broker's
    acknowledgement, so a broker that stops answering holds the dataflow back (no new
    events are taken) instead of letting it run ahead of its outputs; ``close`` waits for
    every acknowledgement. A record the broker did not acknowledge within
    ``timeout_seconds`` stops the run through ``on_fatal``; nothing is raised here (an
    exception in a sink is a Rust panic in Bytewax), and after the failure nothing more
    is written (a restart replays from the source).
    """

    def __init__(self, sink: KafkaRecordSink) -> None:
        self._sink = sink
        self._producer = ReportingProducer(sink.client_config, sink.timeout_seconds)
        self._acked: list[dict[str, Any]] = []
        self._failed = False
        self._closed = False

    def write_batch(self, items: list[dict[str, Any]]) -> None:
        if not self._failed:
            try:
                self._produce(items)
                # Bounded wait, not a flush per batch (a broker round trip), unless every record
                # must be acknowledged before the dataflow's snapshot can cover it.
                limit = 0 if self._sink.acknowledged_writes and items else MAX_IN_FLIGHT
                if not self._producer.wait_below(limit, self._sink.timeout_seconds + 5, self._has_failed):
                    self._unacknowledged()
            except Exception as exc:  # noqa: BLE001 (never out of write_batch: see the class docstring)
                self._fail(exc)
        self._hand_over_acked()

    def _produce(self, items: list[dict[str, Any]]) -> None:
        sink, track = self._sink, self._sink.on_acked is not None
        for record in items:
            key = record.get(sink.key_field)
            self._producer.produce(sink.topic, orjson.dumps(record, option=_DUMP),
                                   str(key).encode() if key is not None else None, None,
                                   self._tracked(record) if track else self._reported)

    def _tracked(self, record: dict[str, Any]) -> Callable[[Any, Any], None]:
        def reported(err: Any, _msg: Any) -> None:
            if err is None:
                self._acked.append(record)  # handed over after the poll, never from inside a report
            else:
                self._reported(err, _msg)
        return reported

    def _reported(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._fail(_write_error(self._sink.topic, self._producer.bootstrap, err, self._sink.timeout_seconds))

    def _has_failed(self) -> bool:
        return self._failed

    def _unacknowledged(self) -> None:
        if not self._failed:
            self._fail(KafkaUnavailable(
                f"Kafka at {self._producer.bootstrap} did not acknowledge {self._producer.in_flight()} write(s) to "
                f"topic {self._sink.topic} within {self._sink.timeout_seconds + 5:g} s; the run stopped"))

    def _fail(self, exc: Exception) -> None:
        """Stop the run (once per partition: one outage is one error, not one per record)."""
        if not self._failed:
            self._failed = True
            self._sink.on_fatal(exc)

    def _hand_over_acked(self) -> None:
        on_acked = self._sink.on_acked
        if not self._acked or on_acked is None:
            return
        acked, self._acked = self._acked, []
        try:
            on_acked(acked)
        except Exception as exc:  # noqa: BLE001
            self._fail(RuntimeError(f"on_acked of Kafka topic {self._sink.topic} failed: {exc!r}"))

    def close(self) -> None:
        """Wait for every acknowledgement (up to ``timeout_seconds``); after a failure, give up
        on the rest at once (quietly: the run already reports the error)."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self._failed and not self._producer.wait_below(0, self._sink.timeout_seconds + 5, self._has_failed):
                self._unacknowledged()
            if self._producer.in_flight():
                self._producer.abandon()
        except Exception as exc:  # noqa: BLE001 (an exception in close is a panic too)
            self._fail(exc)
        self._hand_over_acked()


class KafkaRecordSink(DynamicSink[dict[str, Any]]):
    """JSON records (decisions) to a topic, keyed by ``key_field`` (the contact: per-contact order).

    Delivery: at least once. Every delivery report is checked; a record not acknowledged
    within ``timeout_seconds`` (``kafka.retry_seconds``) stops the run with one error naming
    the broker (never dropped silently); a broker back within that time loses nothing.

    - ``acknowledged_writes=True`` (records nothing else keeps, such as experiment records):
      each batch write returns only once the broker acknowledged all of it, so the
      dataflow's snapshot, taken after its writes, never covers a record a ``kill -9`` could
      lose. One broker round trip per batch that has records.
    - ``acknowledged_writes=False`` (decisions, which the state store's outbox keeps until
      ``on_acked`` reports them, and hands out again after a crash): at most
      ``MAX_IN_FLIGHT`` records per worker wait for their acknowledgement (more and the
      dataflow waits: backpressure); the end of the run waits for all of them.

    ``on_acked``, when given, is called on the dataflow thread (at the end of a batch
    write, and on close) with the records the broker acknowledged since its last call,
    the same dict objects written; records whose delivery failed are never passed.
    """

    def __init__(self, client_config: dict[str, str], topic: str, on_fatal: Callable[[Exception], None],
                 key_field: str = "contact_id", timeout_seconds: float = 60.0, *,
                 on_acked: Callable[[list[dict[str, Any]]], None] | None = None,
                 acknowledged_writes: bool = True) -> None:
        self.client_config, self.topic, self.on_fatal = client_config, topic, on_fatal
        self.key_field, self.timeout_seconds, self.on_acked = key_field, timeout_seconds, on_acked
        self.acknowledged_writes = acknowledged_writes

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RecordSinkPartition:
        return _RecordSinkPartition(self)


class KafkaDeadLetters:
    """Dead letters to a topic: the original payload as the value, the reason in headers.

    Headers: ``touchline.reason``, ``touchline.detail``, ``touchline.kind``, ``touchline.source``
    (invalid events), or ``touchline.channel``/``touchline.error``/``touchline.attempts``
    (failed deliveries, whose value is the decision JSON). Thread-safe: the engine and
    the connectors' threads write here. Delivery: at least once, as :class:`KafkaRecordSink`
    with ``acknowledged_writes`` (a call returns once the broker acknowledged its records, so
    no snapshot of the input covers a dead letter still in flight; every report checked; a
    failure stops the run once, never raised).
    """

    HEADERS = ("reason", "detail", "kind", "source", "channel", "connector", "error", "attempts", "decision_id")

    def __init__(self, client_config: dict[str, str], topic: str, on_fatal: Callable[[Exception], None],
                 timeout_seconds: float = 60.0) -> None:
        self.topic, self.on_fatal, self.bootstrap = topic, on_fatal, client_config["bootstrap.servers"]
        self._producer = ReportingProducer(client_config, timeout_seconds)
        self._lock = threading.Lock()
        self.timeout_seconds = timeout_seconds
        self._failed = False

    def __call__(self, records: list[dict[str, Any]]) -> None:
        with self._lock:
            if self._failed:
                return
            try:
                for record in records:
                    self._produce(record)
                if not self._producer.wait_below(0, self.timeout_seconds + 5, self._has_failed):
                    self._fail(KafkaUnavailable(f"Kafka at {self.bootstrap} did not acknowledge dead letters "
                                                f"within {self.timeout_seconds + 5:g} s"))
            except Exception as exc:  # noqa: BLE001 (called from sinks and connector threads: never raise)
                self._fail(exc)

    def _produce(self, record: dict[str, Any]) -> None:
        if record.get("kind") == "delivery_failed":
            value = orjson.dumps(record["decision"], option=_DUMP)
            key = record.get("contact_id")
        else:  # the original bytes as far as they were UTF-8 (invalid bytes stay \\xNN escapes)
            value = str(record.get("raw", "")).encode("utf-8", "surrogateescape")
            key = None
        headers: list[tuple[str, str | bytes | None]] = [(f"touchline.{h}", str(record[h]).encode("utf-8", "replace")[:4096])
                                                         for h in self.HEADERS if record.get(h) is not None]
        self._producer.produce(self.topic, value, str(key).encode() if key else None, headers, self._reported)

    def _reported(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._fail(_write_error(self.topic, self.bootstrap, err, self.timeout_seconds))

    def _has_failed(self) -> bool:
        return self._failed

    def _fail(self, exc: Exception) -> None:
        if not self._failed:
            self._failed = True
            self.on_fatal(exc)

    def close(self) -> None:
        with self._lock:
            try:
                if not self._failed and not self._producer.wait_below(0, self.timeout_seconds + 5, self._has_failed):
                    self._fail(KafkaUnavailable(f"Kafka at {self.bootstrap} did not acknowledge "
                                                f"{self._producer.in_flight()} dead letter(s) within "
                                                f"{self.timeout_seconds + 5:g} s"))
                if self._producer.in_flight():
                    self._producer.abandon()
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)
