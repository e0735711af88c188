"""``touchline bench --kafka``: the production path measured from outside, end to end.

A separate engine process (``touchline run --kafka``) reads the events topic and writes
the decisions topic; this process produces simulated events at a steady offered rate
and consumes the decisions. Event-to-decision latency is measured for every decision
an event triggered: from just before its event was handed to the producer to the
moment its decision was read back from the decisions topic, both on this process's
monotonic clock, so it includes both Kafka hops, the engine's batching and the
broker. Throughput is the engine's own count of events processed over the time from
the first event produced to the last decision read. The engine's peak memory is its
VmHWM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from touchline.bench import _cpus, generate
from touchline.connectors.kafka import CONSUMER_DEFAULTS, ensure_topics
from touchline.connectors.loadgen import produce_events, wait_for_slot
from touchline.settings import Settings


class _DecisionReader(threading.Thread):
    """Reads the decisions topic from its start; records receive times by trigger event id."""

    def __init__(self, client_config: dict[str, str], topic: str, partitions: int) -> None:
        super().__init__(name="bench-decisions", daemon=True)
        self.consumer = Consumer({**CONSUMER_DEFAULTS, **client_config, "group.id": "touchline-bench",
                                  "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.received: list[tuple[int, dict[str, Any]]] = []
        self.last_ns = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for msg in self.consumer.consume(1000, 0.05):
                value = msg.value()
                if msg.error() or value is None:
                    continue
                now = time.perf_counter_ns()
                trigger = orjson.loads(value).get("trigger") or {}
                self.received.append((now, trigger))
                self.last_ns = now
        self.consumer.close()


def broker_hop_ms(config: dict[str, str], topic: str, rate: float, seconds: float) -> list[float]:
    """Produce-to-consume latency of the broker alone at ``rate`` messages/s: the floor under
    the end-to-end figure, which crosses the broker twice."""
    from confluent_kafka import Producer

    ensure_topics(config, [topic], create=True, partitions=1, replication_factor=1, timeout=10)
    consumer = Consumer({**CONSUMER_DEFAULTS, **config, "group.id": "touchline-bench-probe"})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    producer = Producer({**config, "linger.ms": 5})
    sent: dict[int, int] = {}
    latencies: list[float] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            for msg in consumer.consume(1000, 0.05):
                value = msg.value()
                if not msg.error() and value is not None:
                    latencies.append((time.perf_counter_ns() - sent[int(value)]) / 1e6)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    start, n = time.perf_counter(), int(rate * seconds)
    for i in range(n):
        wait_for_slot(start, i, rate, producer.poll)
        sent[i] = time.perf_counter_ns()
        producer.produce(topic, str(i).encode())
        producer.poll(0)
    producer.flush(30)
    deadline = time.monotonic() + 10
    while len(latencies) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    reader.join(5)
    consumer.close()
    return latencies


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _peak_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_kafka_bench(settings: Settings, bootstrap: str, rate: float, seconds: float, batch_size: int,
                    drain_seconds: float = 60.0) -> dict[str, Any]:
    """Offer ``rate`` events/s for ``seconds`` to an engine process on ``bootstrap`` ("tansu": start one)."""
    broker = None
    tmp = Path(tempfile.mkdtemp(prefix="touchline-kbench-"))
    if bootstrap == "tansu":
        from touchline.connectors.tansu import free_port, start_tansu

        port = free_port()
        broker = start_tansu(tmp / "tansu", port)
        bootstrap = f"127.0.0.1:{port}"
    engine = None
    try:
        stem = f"touchline-bench-{int(time.time())}"
        kafka = settings.kafka.model_copy(update={
            "bootstrap": bootstrap, "events_topic": f"{stem}.events", "decisions_topic": f"{stem}.decisions",
            "dead_letter_topic": f"{stem}.dead", "channel_topic_prefix": f"{stem}.channel.",
            "start": "earliest", "tail": True})
        config = kafka.client_config()
        ensure_topics(config, [kafka.events_topic, kafka.decisions_topic, kafka.dead_letter_topic],
                      create=True, partitions=kafka.partitions, replication_factor=kafka.replication_factor,
                      timeout=kafka.connect_timeout_seconds)
        hop = broker_hop_ms(config, f"{stem}.probe", rate, min(seconds, 10.0))
        lines = generate(settings, int(rate * seconds))
        env = {**os.environ, **{f"TOUCHLINE_KAFKA__{k.upper()}": str(v) for k, v in {
            "events_topic": kafka.events_topic, "decisions_topic": kafka.decisions_topic,
            "dead_letter_topic": kafka.dead_letter_topic, "channel_topic_prefix": kafka.channel_topic_prefix,
            "partitions": kafka.partitions, "linger_ms": kafka.linger_ms}.items()}}
        engine = subprocess.Popen(
            [sys.executable, "-m", "touchline", "run", "--kafka", bootstrap, "--quiet", "--no-metrics", "--json",
             "--batch-size", str(batch_size), "--out", str(tmp / "out")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        reader = _DecisionReader(config, kafka.decisions_topic, kafka.partitions)
        reader.start()
        time.sleep(3.0)  # let the engine start and assign its partitions; it reads from the earliest offset
        if engine.poll() is not None:
            _, early = engine.communicate()
            raise RuntimeError(f"the engine process exited early: {early.decode()[-2000:]}")
        start_ns = time.perf_counter_ns()
        stats = produce_events(lines, kafka, rate=rate, record_ids=True)
        produced_ns = time.perf_counter_ns()
        # Drain: wait until decisions stop arriving for 3 s (or the drain budget ends).
        deadline = time.monotonic() + drain_seconds
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if reader.last_ns and time.perf_counter_ns() - max(reader.last_ns, produced_ns) > 3e9:
                break
        peak_mb = _peak_rss_mb(engine.pid)
        engine.send_signal(signal.SIGINT)
        out, err = engine.communicate(timeout=120)
        reader.stop.set()
        reader.join(10)
        try:
            summary = orjson.loads(out)
        except orjson.JSONDecodeError:
            raise RuntimeError(f"the engine did not print its summary: {err.decode()[-2000:]}") from None
        sent = stats.sent_ns or {}
        latencies = [(now - sent[t["event_id"]]) / 1e6 for now, t in reader.received
                     if t.get("kind") == "event" and t.get("event_id") in sent]
        end_ns = reader.last_ns or produced_ns
        wall = (end_ns - start_ns) / 1e9
        return {
            "offered_rate": rate,
            "seconds": seconds,
            "produced": stats.produced,
            "produce_failures": stats.failed,
            "achieved_offered_rate": round(stats.rate, 1),
            "events_processed": summary["events_processed"] + summary["dead_letters_total"],
            "events_per_second": round((summary["lines_read"]) / wall, 1) if wall > 0 else None,
            "decisions": len(reader.received),
            "event_triggered_decisions": len(latencies),
            "latency_ms": {"p50": _round(_percentile(latencies, 0.5)), "p99": _round(_percentile(latencies, 0.99)),
                           "max": _round(max(latencies) if latencies else None)},
            "broker_hop_alone_ms": {"p50": _round(_percentile(hop, 0.5)), "p99": _round(_percentile(hop, 0.99))},
            "engine_processing_ms": {"p50": summary["latency_ms"]["processing_p50"],
                                     "p99": summary["latency_ms"]["processing_p99"]},
            "drain_seconds_after_last_event": round(max(0, end_ns - produced_ns) / 1e9, 2),
            "engine_peak_rss_mb": _round(peak_mb),
            "batch_size": batch_size,
            "linger_ms": kafka.linger_ms,
            "partitions": kafka.partitions,
            "broker": "tansu (local, memory storage)" if broker else bootstrap,
            "machine": f"{_cpus()} CPUs shared by the engine, the load generator, the reader and the broker",
        }
    finally:
        if engine is not None and engine.poll() is None:
            engine.kill()
            engine.wait()
        if broker is not None:
            from touchline.connectors.tansu import stop_process

            stop_process(broker)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def format_kafka_bench(f: dict[str, Any]) -> str:
    lat = f["latency_ms"]
    return "\n".join([
        f"touchline bench --kafka: offered {f['offered_rate']:,.0f} events/s for {f['seconds']:g} s "
        f"({f['produced']:,} events; achieved {f['achieved_offered_rate']:,.0f}/s), broker {f['broker']}",
        f"  engine            {f['events_processed']:,} events processed, {f['events_per_second']:,.0f} events/s "
        f"end to end; backlog drained {f['drain_seconds_after_last_event']:.2f} s after the last event",
        f"  event->decision   p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms "
        f"over {f['event_triggered_decisions']:,} event-triggered decisions ({f['decisions']:,} in all), "
        f"Kafka in and out",
        f"  of which          broker hop alone p50 {f['broker_hop_alone_ms']['p50']} ms, "
        f"p99 {f['broker_hop_alone_ms']['p99']} ms (produce->consume at the same rate, no engine; crossed twice); "
        f"engine batch processing p50 {f['engine_processing_ms']['p50']} ms, p99 {f['engine_processing_ms']['p99']} ms",
        f"  memory            engine peak RSS {f['engine_peak_rss_mb']} MB",
        f"  settings          batch size {f['batch_size']}, linger {f['linger_ms']:g} ms, "
        f"{f['partitions']} partitions; {f['machine']}",
    ])
