"""A load generator: produce events to the events topic at a steady rate.

Pacing is by schedule, not by sleeping a fixed time per event: event ``i`` is due at
``start + i / rate``, so a slow moment is caught up instead of lowering the rate.
Messages are keyed by contact (else anonymous id), so one person's events stay in
one partition, in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TextIO

import orjson

from touchline.connectors.kafka import ReportingProducer, ensure_topics


@dataclass
class ProduceStats:
    produced: int = 0
    failed: int = 0
    seconds: float = 0.0
    #: produce time (perf_counter_ns) per event id, when asked for (the benchmark's latency probe)
    sent_ns: dict[str, int] | None = None

    @property
    def rate(self) -> float:
        return self.produced / self.seconds if self.seconds > 0 else 0.0


def wait_for_slot(start: float, index: int, rate: float, poll: Callable[[float], Any]) -> None:
    """Pace by schedule: message ``index`` is due at ``start + index / rate`` (perf_counter
    seconds). Waits in ``poll`` so the producer serves delivery reports meanwhile."""
    ahead = start + index / rate - time.perf_counter()
    if ahead > 0.0005:
        poll(ahead)


def key_and_id(line: bytes) -> tuple[bytes | None, str | None]:
    """The partitioning key of an event line (its contact, else its anonymous id) and its event id.

    >>> key_and_id(b'{"event_id": "e1", "contact_id": "c-1", "anonymous_id": "a-9"}'), key_and_id(b'not json')
    ((b'c-1', 'e1'), (None, None))
    """
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(event, dict):
        return None, None
    key = event.get("contact_id") or event.get("anonymous_id")
    event_id = event.get("event_id")
    return (str(key).encode() if key is not None else None), (event_id if isinstance(event_id, str) else None)


def produce_events(lines: Iterable[bytes], kafka: Any, *, rate: float | None = None, limit: int | None = None,
                   progress: TextIO | None = None, record_ids: bool = False) -> ProduceStats:
    """Produce ``lines`` to ``kafka.events_topic``; ``rate`` events/s (None: as fast as possible)."""
    config = kafka.client_config()
    ensure_topics(config, [kafka.events_topic], create=kafka.create_topics, partitions=kafka.partitions,
                  replication_factor=kafka.replication_factor, timeout=kafka.connect_timeout_seconds)
    producer = ReportingProducer(config, kafka.retry_seconds, **{"linger.ms": 5})
    stats = ProduceStats(sent_ns={} if record_ids else None)

    def reported(err: Any, _msg: Any) -> None:
        if err is not None:
            stats.failed += 1

    start = time.perf_counter()
    next_report = start + 5
    try:
        for i, line in enumerate(lines):
            if limit is not None and i >= limit:
                break
            if rate:
                wait_for_slot(start, i, rate, producer.poll)
            key, event_id = key_and_id(line)
            if stats.sent_ns is not None and event_id is not None:
                stats.sent_ns[event_id] = time.perf_counter_ns()
            producer.produce(kafka.events_topic, line, key, None, reported)
            stats.produced += 1
            if progress is not None and time.perf_counter() >= next_report:
                elapsed = time.perf_counter() - start
                progress.write(f"produced {stats.produced:,} events ({stats.produced / elapsed:,.0f}/s)\n")
                progress.flush()
                next_report += 5
    finally:
        producer.flush(kafka.retry_seconds + 5)
        stats.seconds = time.perf_counter() - start
    return stats

