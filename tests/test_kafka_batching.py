"""Micro-batches from a real Kafka-protocol broker (Tansu on loopback): small while the engine
keeps up, larger while it is behind, and never an event lost or read twice."""

from __future__ import annotations

import threading
import time

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

from touchline.connectors.kafka import KafkaEventSource


def _batches(broker, topic: str, catchup: int | None, linger_ms: float = 1_000.0, *, tail: bool = False,
             stop: threading.Event | None = None) -> list[list[bytes]]:
    """The non-empty batches a read of ``topic`` hands the engine (batch size 100): to its end,
    or with ``tail`` until ``stop`` is set."""
    source = KafkaEventSource({"bootstrap.servers": broker.bootstrap}, topic, batch_size=100, linger_ms=linger_ms,
                              start="earliest", tail=tail, stop=stop or threading.Event(), tick_seconds=None,
                              retry_seconds=10, on_fatal=lambda exc: None, catchup_batch_size=catchup)
    out: list[list[bytes]] = []
    flow = Dataflow("batching")
    op.output("out", op.filter("lines", op.map("batch", op.input("in", flow, source), lambda b: b.lines), bool),
              TestingSink(out))
    run_main(flow)
    return out


def test_a_backlog_is_read_in_catch_up_batches_and_nothing_is_lost(kafka_broker, topics):
    topic = topics["kafka.events_topic"]
    kafka_broker.create_topics(topic, partitions=1)
    lines = [b'{"n": %d}' % i for i in range(3_000)]
    kafka_broker.produce(topic, lines)
    grown = _batches(kafka_broker, topic, catchup=1_000)
    assert [line for batch in grown for line in batch] == lines  # in order, once each
    assert max(map(len, grown)) > 100 and max(map(len, grown)) < 1_100  # a read crossing 1,000 goes in whole
    fixed = _batches(kafka_broker, topic, catchup=None)  # catch-up size at or below batch_size: fixed batches
    assert [line for batch in fixed for line in batch] == lines and max(map(len, fixed)) == 100


def test_a_stream_the_engine_keeps_up_with_stays_in_small_batches(kafka_broker, topics):
    """Events trickling in (10 every 50 ms): each read comes back short, so a batch goes at
    linger_ms (20 ms) with a few events, not growing towards the catch-up size."""
    topic = topics["kafka.events_topic"]
    kafka_broker.create_topics(topic, partitions=1)
    lines = [b'{"n": %d}' % i for i in range(300)]
    stop = threading.Event()

    def trickle() -> None:
        for i in range(0, len(lines), 10):
            kafka_broker.produce(topic, lines[i:i + 10])
            time.sleep(0.05)
        time.sleep(1.0)  # the reader takes the last ones
        stop.set()

    feeder = threading.Thread(target=trickle)
    feeder.start()
    try:
        batches = _batches(kafka_broker, topic, catchup=1_000, linger_ms=20, tail=True, stop=stop)
    finally:
        stop.set()
        feeder.join()
    assert [line for batch in batches for line in batch] == lines
    # what arrived before the consumer connected is a backlog, read as one; after it, small batches
    sizes = sorted(map(len, batches))
    assert len(batches) >= 10 and sizes[len(sizes) // 2] <= 50, [len(b) for b in batches]
