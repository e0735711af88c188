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

``--processes 1,2`` runs the engine as ``touchline run --processes N`` (N Bytewax
processes of one worker, the events topic's partitions spread over them) on Redis state
(a redis-server this process starts on loopback unless ``--redis`` names one), once per
N, each round on fresh topics and a flushed Redis database with the same events. Each
engine process's CPU (user + system seconds from ``/proc/PID/stat``, and the share of
one core) is taken over the measured window, from the first event produced to the last
decision read.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from touchline.bench import generate
from touchline.bench_services import (Services, cell, child_pids, cpu_seconds, create_round_topics, engine_command,
                                      engine_log_notes, flush_redis, log_notes_text, machine, peak_rss_mb,
                                      quantiles_ms, read_summaries, round_kafka, rounded, topic_env)
from touchline.connectors.kafka import CONSUMER_DEFAULTS, ensure_topics
from touchline.connectors.loadgen import ProduceStats, produce_events, wait_for_slot
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


# ------------------------------------------------------------------ one measured window
@dataclass
class Window:
    """What one measurement saw, from the first event produced to the end of the drain."""

    stats: ProduceStats
    start_ns: int
    produced_ns: int
    end_ns: int  # the last decision read, or the last event produced if later
    cpu_used: list[float | None]  # CPU seconds of each engine process over the window
    cpu_wall: float  # seconds the CPU samples span
    peaks_mb: list[float | None]  # peak RSS of each engine process

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    def latencies_ms(self, reader: _DecisionReader) -> list[float]:
        """Event-to-decision latency of every decision an event triggered."""
        sent = self.stats.sent_ns or {}
        return [(now - sent[t["event_id"]]) / 1e6 for now, t in reader.received
                if t.get("kind") == "event" and t.get("event_id") in sent]

    def figures(self, reader: _DecisionReader) -> dict[str, Any]:
        """The figures every Kafka measurement reports."""
        latencies = self.latencies_ms(reader)
        return {
            "produced": self.stats.produced,
            "produce_failures": self.stats.failed,
            "achieved_offered_rate": round(self.stats.rate, 1),
            "decisions": len(reader.received),
            "event_triggered_decisions": len(latencies),
            "latency_ms": {**quantiles_ms(latencies), "max": rounded(max(latencies) if latencies else None)},
            "drain_seconds_after_last_event": round(max(0, self.end_ns - self.produced_ns) / 1e9, 2),
        }

    def rate(self, lines_read: int) -> float | None:
        """Lines read per second of the window."""
        return round(lines_read / self.seconds, 1) if self.seconds > 0 else None


def measure_window(engine: subprocess.Popen, pids: list[int], reader: _DecisionReader, lines: list[bytes],
                   kafka: Any, rate: float, drain_seconds: float) -> Window:
    """Offer ``lines`` at ``rate`` to the running engine, wait for its decisions to stop, and
    take each engine process's CPU and peak memory over that window."""
    cpu_start = [cpu_seconds(p) for p in pids]
    start_ns = time.perf_counter_ns()
    stats = produce_events(lines, kafka, rate=rate, record_ids=True)
    produced_ns = time.perf_counter_ns()
    _drain(reader, produced_ns, drain_seconds, engine)
    # the engine cannot finish before the last event exists; after it, the last decision read marks the end
    end_ns = max(reader.last_ns, produced_ns)
    cpu_end = [cpu_seconds(p) for p in pids]
    cpu_wall = (time.perf_counter_ns() - start_ns) / 1e9  # the CPU samples span this
    used = [None if a is None or b is None else b - a for a, b in zip(cpu_start, cpu_end)]
    return Window(stats, start_ns, produced_ns, end_ns, used, cpu_wall, [peak_rss_mb(p) for p in pids])


def _drain(reader: Any, produced_ns: int, drain_seconds: float, engine: Any) -> None:
    """Wait until decisions stop arriving for 3 s after the last event was produced, the
    engine exits, or the drain budget ends."""
    deadline = time.monotonic() + drain_seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if engine.poll() is not None:
            break
        if reader.last_ns and time.perf_counter_ns() - max(reader.last_ns, produced_ns) > 3e9:
            break


def share_of_core(used: float | None, wall: float) -> float | None:
    """CPU seconds as a percentage of one core over ``wall`` seconds.

    >>> share_of_core(1.5, 3.0), share_of_core(None, 3.0)
    (50.0, None)
    """
    return None if used is None or wall <= 0 else rounded(100 * used / wall)


def _kill_tree(engine: subprocess.Popen) -> None:
    """Kill an engine process still running, and its children."""
    if engine.poll() is None:
        for pid in child_pids(engine.pid):
            os.kill(pid, signal.SIGKILL)
        engine.kill()
        engine.wait()


# ------------------------------------------------------------------ one engine, in-process state
def run_kafka_bench(settings: Settings, bootstrap: str, rate: float, seconds: float, batch_size: int,
                    drain_seconds: float = 60.0) -> dict[str, Any]:
    """Offer ``rate`` events/s for ``seconds`` to an engine process on ``bootstrap`` ("tansu": start one)."""
    tmp = Path(tempfile.mkdtemp(prefix="touchline-kbench-"))
    try:
        with Services(bootstrap, None, tmp, with_redis=False) as services:
            stem = f"touchline-bench-{int(time.time())}"
            kafka = round_kafka(settings, services.bootstrap, stem, settings.kafka.partitions, tail=True)
            create_round_topics(kafka)
            hop = broker_hop_ms(kafka.client_config(), f"{stem}.probe", rate, min(seconds, 10.0))
            lines = generate(settings, int(rate * seconds))
            window, reader, summary = _in_memory_engine(services, kafka, lines, rate, batch_size, tmp / "out",
                                                        drain_seconds)
            return {
                "offered_rate": rate,
                "seconds": seconds,
                **window.figures(reader),
                "events_processed": summary["events_processed"] + summary["dead_letters_total"],
                "events_per_second": window.rate(summary["lines_read"]),
                "broker_hop_alone_ms": quantiles_ms(hop),
                "engine_processing_ms": {"p50": summary["latency_ms"]["processing_p50"],
                                         "p99": summary["latency_ms"]["processing_p99"]},
                "engine_peak_rss_mb": rounded(window.peaks_mb[0]),
                "engine_cpu_seconds": rounded(window.cpu_used[0]),
                "engine_cpu_percent_of_one_core": share_of_core(window.cpu_used[0], window.cpu_wall),
                "batch_size": batch_size,
                "linger_ms": kafka.linger_ms,
                "partitions": kafka.partitions,
                "broker": services.broker_name,
                "machine": machine("the engine, the load generator, the reader and the broker"),
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _in_memory_engine(services: Services, kafka: Any, lines: list[bytes], rate: float, batch_size: int,
                      out_dir: Path, drain_seconds: float) -> tuple[Window, _DecisionReader, dict[str, Any]]:
    """``touchline run --kafka`` (state in process) measured over one window; its summary."""
    engine = subprocess.Popen(
        [sys.executable, "-m", "touchline", "run", "--kafka", services.bootstrap, "--quiet", "--no-metrics", "--json",
         "--batch-size", str(batch_size), "--out", str(out_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=topic_env(kafka))
    reader = _DecisionReader(kafka.client_config(), kafka.decisions_topic, kafka.partitions)
    reader.start()
    try:
        time.sleep(3.0)  # let the engine start and assign its partitions; it reads from the earliest offset
        if engine.poll() is not None:
            _, early = engine.communicate()
            raise RuntimeError(f"the engine process exited early: {early.decode()[-2000:]}")
        window = measure_window(engine, [engine.pid], reader, lines, kafka, rate, drain_seconds)
        engine.send_signal(signal.SIGINT)
        out, err = engine.communicate(timeout=120)
    finally:
        _kill_tree(engine)
        reader.stop.set()
        reader.join(10)
    try:
        return window, reader, orjson.loads(out)
    except orjson.JSONDecodeError:
        raise RuntimeError(f"the engine did not print its summary: {err.decode()[-2000:]}") from None


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
        f"  cpu               engine {f['engine_cpu_seconds']} s user+sys, {f['engine_cpu_percent_of_one_core']}% of one "
        f"core, from the first event produced to the end of the drain",
        f"  settings          batch size {f['batch_size']}, linger {f['linger_ms']:g} ms, "
        f"{f['partitions']} partitions; {f['machine']}",
    ])


# ------------------------------------------------------------------ several engine processes, Redis state
def _bench_round(settings: Settings, services: Services, lines: list[bytes], rate: float, batch_size: int,
                 processes: int, partitions: int, workdir: Path, drain_seconds: float) -> dict[str, Any]:
    """One measurement: ``touchline run --processes N`` on fresh topics and a flushed Redis."""
    flush_redis(services.state_url)
    kafka = round_kafka(settings, services.bootstrap, f"touchline-bench-{int(time.time())}-p{processes}",
                        partitions, tail=True)
    create_round_topics(kafka)
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "engine.log"
    with open(log_path, "wb") as err, open(workdir / "engine.out", "wb") as out:
        engine = subprocess.Popen(engine_command(services, batch_size, workdir / "out", "--processes", str(processes)),
                                  stdout=out, stderr=err, env=topic_env(kafka))
    reader = None
    try:
        reader = _DecisionReader(kafka.client_config(), kafka.decisions_topic, partitions)
        reader.start()
        pids = _started(engine, processes, log_path)
        window = measure_window(engine, pids, reader, lines, kafka, rate, drain_seconds)
        engine.send_signal(signal.SIGINT)
        code = engine.wait(timeout=180)
    finally:
        _kill_tree(engine)
        if reader is not None:
            reader.stop.set()
            reader.join(10)
    log_text = log_path.read_text(errors="replace")
    summaries = read_summaries(workdir / "out", processes, f"exit code {code}: {log_text[-2000:]}")
    lines_read = sum(s["lines_read"] for s in summaries)
    return {
        "processes": processes,
        "exit_code": code,
        **window.figures(reader),
        "lines_read": lines_read,
        "events_processed": sum(s["events_processed"] + s["dead_letters_total"] for s in summaries),
        "duplicates_ignored": sum(s["duplicates_ignored"] for s in summaries),
        "events_per_second": window.rate(lines_read),
        "measured_seconds": round(window.cpu_wall, 2),
        "engine_processes": _per_process(pids, window, summaries),
        "engine_log": engine_log_notes(log_text),
        "engine_log_path": str(log_path),
    }


def _started(engine: subprocess.Popen, processes: int, log_path: Path) -> list[int]:
    """The engine's processes once they are up (the process itself, or its ``processes``
    children), after a pause for them to join and take their partitions."""
    deadline = time.monotonic() + 30
    pids = [engine.pid]
    while processes > 1:
        pids = child_pids(engine.pid)
        if len(pids) >= processes or engine.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    time.sleep(3.0 + 1.0 * processes)  # let the processes start, join and assign their partitions
    if engine.poll() is not None or len(pids) < processes:
        raise RuntimeError(f"the engine ({processes} processes) did not start: "
                           f"{log_path.read_text(errors='replace')[-2000:]}")
    return pids


def _per_process(pids: list[int], window: Window, summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each engine process's share: lines, CPU, memory, batch processing time."""
    return [{
        "index": i, "pid": pid, "lines_read": s["lines_read"],
        "cpu_seconds": rounded(used),
        "cpu_percent_of_one_core": share_of_core(used, window.cpu_wall),
        "peak_rss_mb": rounded(peak),
        "processing_ms": {"p50": s["latency_ms"]["processing_p50"], "p99": s["latency_ms"]["processing_p99"]},
    } for i, (pid, used, peak, s) in enumerate(zip(pids, window.cpu_used, window.peaks_mb, summaries))]


def run_kafka_bench_processes(settings: Settings, bootstrap: str, rate: float, seconds: float, batch_size: int,
                              processes: list[int], redis_url: str | None = None,
                              drain_seconds: float = 60.0, keep: bool = False) -> dict[str, Any]:
    """Offer the same ``rate`` x ``seconds`` events to ``touchline run --processes N`` for each N,
    on Redis state (started here unless ``redis_url``) and fresh topics per round."""
    tmp = Path(tempfile.mkdtemp(prefix="touchline-kbench-"))
    partitions = max(3, settings.kafka.partitions, *processes)
    try:
        with Services(bootstrap, redis_url, tmp) as services:
            probe = round_kafka(settings, services.bootstrap, f"touchline-bench-{int(time.time())}", 1)
            hop = broker_hop_ms(probe.client_config(), f"{probe.events_topic}.probe", rate, min(seconds, 10.0))
            lines = generate(settings, int(rate * seconds))
            rounds = [_bench_round(settings, services, lines, rate, batch_size, n, partitions,
                                   tmp / f"round-{i}-p{n}", drain_seconds) for i, n in enumerate(processes)]
            return {
                "offered_rate": rate,
                "seconds": seconds,
                "events": len(lines),
                "rounds": rounds,
                "broker_hop_alone_ms": quantiles_ms(hop),
                "batch_size": batch_size,
                "linger_ms": settings.kafka.linger_ms,
                "partitions": partitions,
                "recovery": settings.runtime.recovery,
                "snapshot_seconds": settings.runtime.snapshot_seconds,
                "broker": services.broker_name,
                "redis": services.redis_name,
                "machine": machine("the engine processes, the load generator, the reader, the broker and Redis"),
                "workdir": str(tmp) if keep else None,
            }
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ the rounds side by side
def _cpu_cell(p: dict[str, Any] | None) -> str:
    """'seconds (share of a core)' of one engine process, '-' when not measured."""
    if p is None or p["cpu_seconds"] is None:
        return "-"
    return f"{p['cpu_seconds']:.1f} ({p['cpu_percent_of_one_core']:.0f}%)"


def _round_rows(rounds: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """The rows every round has one figure of."""
    def each(key: str, fmt: str = ",.0f") -> list[str]:
        return [cell(r[key], fmt) for r in rounds]

    def latency(q: str) -> list[str]:
        return [cell(r["latency_ms"][q], ",.1f") for r in rounds]

    return [
        ("events produced", each("produced")),
        ("achieved offered rate /s", each("achieved_offered_rate")),
        ("lines read by the engine", each("lines_read")),
        ("duplicates ignored", each("duplicates_ignored")),
        ("events/s end to end", each("events_per_second")),
        ("drain after last event (s)", each("drain_seconds_after_last_event", ".2f")),
        ("event->decision p50 (ms)", latency("p50")),
        ("event->decision p99 (ms)", latency("p99")),
        ("decisions read back", each("decisions")),
    ]


def _process_rows(rounds: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """CPU, lines and memory of process i in each round ('-' in rounds with fewer processes)."""
    out = []
    for i in range(max(len(r["engine_processes"]) for r in rounds)):
        procs = [r["engine_processes"][i] if i < len(r["engine_processes"]) else None for r in rounds]
        out += [(f"process {i} CPU s (% of a core)", [_cpu_cell(p) for p in procs]),
                (f"process {i} lines read", [cell(None if p is None else p["lines_read"]) for p in procs]),
                (f"process {i} peak RSS (MB)", [cell(None if p is None else p["peak_rss_mb"]) for p in procs])]
    return out


def _total_rows(rounds: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """All processes together, the window, the exit codes."""
    return [
        ("engine CPU s, all processes", [cell(sum(p["cpu_seconds"] or 0 for p in r["engine_processes"]), ".1f")
                                         for r in rounds]),
        ("measured window (s)", [cell(r["measured_seconds"], ".1f") for r in rounds]),
        ("exit code", [str(r["exit_code"]) for r in rounds]),
    ]


def format_processes_bench(f: dict[str, Any]) -> str:
    """The rounds side by side: one column per process count."""
    rounds = f["rounds"]
    head = [f"{r['processes']} process{'es' if r['processes'] > 1 else ''}" for r in rounds]
    width = max(16, *(len(h) + 2 for h in head))

    def row(label: str, values: list[str]) -> str:
        return f"  {label:<30}" + "".join(f"{v:>{width}}" for v in values)

    notes = [f"{r['processes']} process(es): {log_notes_text(r['engine_log'])}" for r in rounds if r["engine_log"]]
    return "\n".join([
        f"touchline bench --kafka --processes {','.join(str(r['processes']) for r in rounds)}: offered "
        f"{f['offered_rate']:,.0f} events/s for {f['seconds']:g} s ({f['events']:,} events, the same each round), "
        f"broker {f['broker']}, state {f['redis']}",
        row("", head),
        *(row(label, values) for label, values in _round_rows(rounds) + _process_rows(rounds) + _total_rows(rounds)),
        f"  engine log          {'; '.join(notes) if notes else 'no conflicts, errors or tracebacks'}",
        f"  of which            broker hop alone p50 {f['broker_hop_alone_ms']['p50']} ms, "
        f"p99 {f['broker_hop_alone_ms']['p99']} ms (no engine; crossed twice)",
        f"  settings            batch size {f['batch_size']}, linger {f['linger_ms']:g} ms, {f['partitions']} "
        f"partitions, recovery {'on' if f['recovery'] else 'off'} (snapshot every {f['snapshot_seconds']:g} s); "
        f"{f['machine']}",
    ])
