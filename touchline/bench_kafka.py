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
        cpu_start = cpu_seconds(engine.pid)
        start_ns = time.perf_counter_ns()
        stats = produce_events(lines, kafka, rate=rate, record_ids=True)
        produced_ns = time.perf_counter_ns()
        _drain(reader, produced_ns, drain_seconds, engine)
        peak_mb = _peak_rss_mb(engine.pid)
        cpu_end = cpu_seconds(engine.pid)
        cpu_wall = (time.perf_counter_ns() - start_ns) / 1e9
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
            "engine_cpu_seconds": _round(None if cpu_start is None or cpu_end is None else cpu_end - cpu_start),
            "engine_cpu_percent_of_one_core": _round(None if cpu_start is None or cpu_end is None or cpu_wall <= 0
                                                     else 100 * (cpu_end - cpu_start) / cpu_wall),
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
        f"  cpu               engine {f['engine_cpu_seconds']} s user+sys, {f['engine_cpu_percent_of_one_core']}% of one "
        f"core, from the first event produced to the end of the drain",
        f"  settings          batch size {f['batch_size']}, linger {f['linger_ms']:g} ms, "
        f"{f['partitions']} partitions; {f['machine']}",
    ])


# ------------------------------------------------------------------ several engine processes
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


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


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (``/proc/PID/stat``), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime: fields 14 and 15 of stat(5)


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from ``/proc/*/stat``), in pid order."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append(int(entry))
    return sorted(out)


def start_redis(directory: Path, timeout: float = 15.0) -> tuple[subprocess.Popen, str]:
    """A redis-server on a free loopback port, its files in ``directory`` (append-only file,
    fsync every second, as production runs it). Returns the process and its URL."""
    import shutil

    import redis

    from touchline.connectors.tansu import free_port

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: install the Debian package redis-server, or pass --redis URL")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                             "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                             "--daemonize", "no", "--logfile", "redis.log"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if client.ping():
                    return proc, f"redis://127.0.0.1:{port}/0"
            except redis.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                from touchline.connectors.tansu import stop_process

                stop_process(proc)
                raise RuntimeError(f"redis-server did not start on port {port}; see {directory / 'redis.log'}")
            time.sleep(0.05)
    finally:
        client.close()


def flush_redis(url: str) -> None:
    """Empty the database at ``url`` (a fresh start for a round: state, ledger, models)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


class Services:
    """The broker and Redis a measurement needs: those given, or local ones started here
    (``bootstrap == "tansu"``; ``redis_url`` None) and stopped on exit."""

    def __init__(self, bootstrap: str, redis_url: str | None, directory: Path) -> None:
        self.bootstrap, self.redis_url, self.directory = bootstrap, redis_url, directory
        self.broker: subprocess.Popen | None = None
        self.redis: subprocess.Popen | None = None

    def __enter__(self) -> "Services":
        try:
            if self.bootstrap == "tansu":
                from touchline.connectors.tansu import free_port, start_tansu

                port = free_port()
                self.broker = start_tansu(self.directory / "tansu", port)
                self.bootstrap = f"127.0.0.1:{port}"
            if self.redis_url is None:
                self.redis, self.redis_url = start_redis(self.directory / "redis")
        except BaseException:
            self.__exit__()
            raise
        return self

    @property
    def broker_name(self) -> str:
        return "tansu (local, memory storage)" if self.broker is not None else self.bootstrap

    @property
    def redis_name(self) -> str:
        from touchline.redact import redact_url

        return "redis-server (local, appendonly everysec)" if self.redis is not None else redact_url(self.redis_url or "")

    def __exit__(self, *_exc: Any) -> None:
        from touchline.connectors.tansu import stop_process

        stop_process(self.redis)
        stop_process(self.broker)


def topic_env(kafka: Any, **extra: Any) -> dict[str, str]:
    """The environment that points an engine process at ``kafka``'s topics."""
    values = {"events_topic": kafka.events_topic, "decisions_topic": kafka.decisions_topic,
              "dead_letter_topic": kafka.dead_letter_topic, "experiments_topic": kafka.experiments_topic,
              "channel_topic_prefix": kafka.channel_topic_prefix, "partitions": kafka.partitions,
              "linger_ms": kafka.linger_ms, **extra}
    return {**os.environ, **{f"TOUCHLINE_KAFKA__{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
                             for k, v in values.items()}}


def round_kafka(settings: Settings, bootstrap: str, stem: str, partitions: int, **update: Any) -> Any:
    """Kafka settings of one round: its own topics (``stem``.*), ``partitions`` each."""
    return settings.kafka.model_copy(update={
        "bootstrap": bootstrap, "events_topic": f"{stem}.events", "decisions_topic": f"{stem}.decisions",
        "dead_letter_topic": f"{stem}.dead", "experiments_topic": f"{stem}.experiments",
        "channel_topic_prefix": f"{stem}.channel.", "partitions": partitions, "start": "earliest", **update})


_NOTEWORTHY = ("changed by another writer", "CONFLICT", "Traceback", "ERROR", "lost", "exited with")


def engine_log_notes(text: str) -> dict[str, int]:
    """Counts of lines worth a look in engine logs (conflicts redone, errors, tracebacks).

    >>> sorted(engine_log_notes("x CONFLICT y\\n3 profile(s) changed by another writer\\nok\\n").items())
    [('CONFLICT', 1), ('changed by another writer', 1)]
    """
    found: dict[str, int] = {}
    for line in text.splitlines():
        for word in _NOTEWORTHY:
            if word in line:
                found[word] = found.get(word, 0) + 1
    return found


def _bench_round(settings: Settings, services: Services, lines: list[bytes], rate: float, seconds: float,
                 batch_size: int, processes: int, partitions: int, workdir: Path,
                 drain_seconds: float) -> dict[str, Any]:
    """One measurement: ``touchline run --processes N`` on fresh topics and a flushed Redis."""
    assert services.redis_url is not None
    flush_redis(services.redis_url)
    stem = f"touchline-bench-{int(time.time())}-p{processes}"
    kafka = round_kafka(settings, services.bootstrap, stem, partitions, tail=True)
    config = kafka.client_config()
    ensure_topics(config, [kafka.events_topic, kafka.decisions_topic, kafka.dead_letter_topic,
                           kafka.experiments_topic], create=True, partitions=partitions,
                  replication_factor=kafka.replication_factor, timeout=kafka.connect_timeout_seconds)
    workdir.mkdir(parents=True, exist_ok=True)
    out_dir = workdir / "out"
    stderr_path = workdir / "engine.log"
    cmd = [sys.executable, "-m", "touchline", "run", "--kafka", services.bootstrap, "--redis", services.redis_url,
           "--processes", str(processes), "--quiet", "--no-metrics", "--json", "--log-level", "info",
           "--batch-size", str(batch_size), "--out", str(out_dir)]
    with open(stderr_path, "wb") as err, open(workdir / "engine.out", "wb") as out:
        engine = subprocess.Popen(cmd, stdout=out, stderr=err, env=topic_env(kafka))
    reader = None
    try:
        reader = _DecisionReader(config, kafka.decisions_topic, partitions)
        reader.start()
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
                               f"{stderr_path.read_text(errors='replace')[-2000:]}")
        cpu_start = [cpu_seconds(p) for p in pids]
        start_ns = time.perf_counter_ns()
        stats = produce_events(lines, kafka, rate=rate, record_ids=True)
        produced_ns = time.perf_counter_ns()
        _drain(reader, produced_ns, drain_seconds, engine)
        # the engine cannot finish before the last event exists; after it, the last decision read marks the end
        end_ns = max(reader.last_ns, produced_ns)
        cpu_end = [cpu_seconds(p) for p in pids]
        cpu_wall = (time.perf_counter_ns() - start_ns) / 1e9  # the CPU samples span this
        peaks = [_peak_rss_mb(p) for p in pids]
        engine.send_signal(signal.SIGINT)
        code = engine.wait(timeout=180)
        reader.stop.set()
        reader.join(10)
    finally:
        if engine.poll() is None:
            for pid in child_pids(engine.pid):
                os.kill(pid, signal.SIGKILL)
            engine.kill()
            engine.wait()
        if reader is not None:
            reader.stop.set()
    log_text = stderr_path.read_text(errors="replace")
    names = ["summary.json"] if processes == 1 else [f"summary-{i}.json" for i in range(processes)]
    summaries = []
    for name in names:
        try:
            summaries.append(orjson.loads((out_dir / name).read_bytes()))
        except (OSError, orjson.JSONDecodeError):
            raise RuntimeError(f"engine process did not write {out_dir / name} (exit code {code}): "
                               f"{log_text[-2000:]}") from None
    sent = stats.sent_ns or {}
    latencies = [(now - sent[t["event_id"]]) / 1e6 for now, t in reader.received
                 if t.get("kind") == "event" and t.get("event_id") in sent]
    wall = (end_ns - start_ns) / 1e9
    lines_read = sum(s["lines_read"] for s in summaries)
    per_process = []
    for i, (pid, a, b, peak, s) in enumerate(zip(pids, cpu_start, cpu_end, peaks, summaries)):
        used = None if a is None or b is None else b - a
        per_process.append({
            "index": i, "pid": pid, "lines_read": s["lines_read"],
            "cpu_seconds": _round(used),
            "cpu_percent_of_one_core": _round(100 * used / cpu_wall) if used is not None and cpu_wall > 0 else None,
            "peak_rss_mb": _round(peak),
            "processing_ms": {"p50": s["latency_ms"]["processing_p50"], "p99": s["latency_ms"]["processing_p99"]},
        })
    return {
        "processes": processes,
        "exit_code": code,
        "produced": stats.produced,
        "produce_failures": stats.failed,
        "achieved_offered_rate": round(stats.rate, 1),
        "lines_read": lines_read,
        "events_processed": sum(s["events_processed"] + s["dead_letters_total"] for s in summaries),
        "duplicates_ignored": sum(s["duplicates_ignored"] for s in summaries),
        "events_per_second": round(lines_read / wall, 1) if wall > 0 else None,
        "decisions": len(reader.received),
        "event_triggered_decisions": len(latencies),
        "latency_ms": {"p50": _round(_percentile(latencies, 0.5)), "p99": _round(_percentile(latencies, 0.99)),
                       "max": _round(max(latencies) if latencies else None)},
        "drain_seconds_after_last_event": round(max(0, end_ns - produced_ns) / 1e9, 2),
        "measured_seconds": round(cpu_wall, 2),
        "engine_processes": per_process,
        "engine_log": engine_log_notes(log_text),
        "engine_log_path": str(stderr_path),
    }


def run_kafka_bench_processes(settings: Settings, bootstrap: str, rate: float, seconds: float, batch_size: int,
                              processes: list[int], redis_url: str | None = None,
                              drain_seconds: float = 60.0, keep: bool = False) -> dict[str, Any]:
    """Offer the same ``rate`` x ``seconds`` events to ``touchline run --processes N`` for each N,
    on Redis state (started here unless ``redis_url``) and fresh topics per round."""
    import shutil

    tmp = Path(tempfile.mkdtemp(prefix="touchline-kbench-"))
    partitions = max(3, settings.kafka.partitions, *processes)
    try:
        with Services(bootstrap, redis_url, tmp) as services:
            probe = round_kafka(settings, services.bootstrap, f"touchline-bench-{int(time.time())}", 1)
            hop = broker_hop_ms(probe.client_config(), f"{probe.events_topic}.probe", rate, min(seconds, 10.0))
            lines = generate(settings, int(rate * seconds))
            rounds = [_bench_round(settings, services, lines, rate, seconds, batch_size, n, partitions,
                                   tmp / f"round-{i}-p{n}", drain_seconds) for i, n in enumerate(processes)]
            return {
                "offered_rate": rate,
                "seconds": seconds,
                "events": len(lines),
                "rounds": rounds,
                "broker_hop_alone_ms": {"p50": _round(_percentile(hop, 0.5)), "p99": _round(_percentile(hop, 0.99))},
                "batch_size": batch_size,
                "linger_ms": settings.kafka.linger_ms,
                "partitions": partitions,
                "recovery": settings.runtime.recovery,
                "snapshot_seconds": settings.runtime.snapshot_seconds,
                "broker": services.broker_name,
                "redis": services.redis_name,
                "machine": f"{_cpus()} CPUs shared by the engine processes, the load generator, the reader, "
                           "the broker and Redis",
                "workdir": str(tmp) if keep else None,
            }
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def format_processes_bench(f: dict[str, Any]) -> str:
    """The rounds side by side: one column per process count."""
    rounds = f["rounds"]
    head = [f"{r['processes']} process{'es' if r['processes'] > 1 else ''}" for r in rounds]
    width = max(16, *(len(h) + 2 for h in head))

    def row(label: str, values: list[str]) -> str:
        return f"  {label:<30}" + "".join(f"{v:>{width}}" for v in values)

    def num(v: Any, fmt: str = ",.0f") -> str:
        return "-" if v is None else format(v, fmt)

    out = [
        f"touchline bench --kafka --processes {','.join(str(r['processes']) for r in rounds)}: offered "
        f"{f['offered_rate']:,.0f} events/s for {f['seconds']:g} s ({f['events']:,} events, the same each round), "
        f"broker {f['broker']}, state {f['redis']}",
        row("", head),
        row("events produced", [num(r["produced"]) for r in rounds]),
        row("achieved offered rate /s", [num(r["achieved_offered_rate"]) for r in rounds]),
        row("lines read by the engine", [num(r["lines_read"]) for r in rounds]),
        row("duplicates ignored", [num(r["duplicates_ignored"]) for r in rounds]),
        row("events/s end to end", [num(r["events_per_second"]) for r in rounds]),
        row("drain after last event (s)", [num(r["drain_seconds_after_last_event"], ".2f") for r in rounds]),
        row("event->decision p50 (ms)", [num(r["latency_ms"]["p50"], ",.1f") for r in rounds]),
        row("event->decision p99 (ms)", [num(r["latency_ms"]["p99"], ",.1f") for r in rounds]),
        row("decisions read back", [num(r["decisions"]) for r in rounds]),
    ]
    most = max(len(r["engine_processes"]) for r in rounds)
    for i in range(most):
        procs = [r["engine_processes"][i] if i < len(r["engine_processes"]) else None for r in rounds]
        out.append(row(f"process {i} CPU s (% of a core)", [
            "-" if p is None or p["cpu_seconds"] is None else f"{p['cpu_seconds']:.1f} ({p['cpu_percent_of_one_core']:.0f}%)"
            for p in procs]))
        out.append(row(f"process {i} lines read", ["-" if p is None else num(p["lines_read"]) for p in procs]))
        out.append(row(f"process {i} peak RSS (MB)", ["-" if p is None else num(p["peak_rss_mb"]) for p in procs]))
    out.append(row("engine CPU s, all processes", [num(sum(p["cpu_seconds"] or 0 for p in r["engine_processes"]),
                                                       ".1f") for r in rounds]))
    out.append(row("measured window (s)", [num(r["measured_seconds"], ".1f") for r in rounds]))
    out.append(row("exit code", [str(r["exit_code"]) for r in rounds]))
    notes = [f"{r['processes']} process(es): " + ", ".join(f"{k} x{v}" for k, v in r["engine_log"].items())
             for r in rounds if r["engine_log"]]
    out.append(f"  engine log          {'; '.join(notes) if notes else 'no conflicts, errors or tracebacks'}")
    out.append(f"  of which            broker hop alone p50 {f['broker_hop_alone_ms']['p50']} ms, "
               f"p99 {f['broker_hop_alone_ms']['p99']} ms (no engine; crossed twice)")
    out.append(f"  settings            batch size {f['batch_size']}, linger {f['linger_ms']:g} ms, {f['partitions']} "
               f"partitions, recovery {'on' if f['recovery'] else 'off'} (snapshot every {f['snapshot_seconds']:g} s); "
               f"{f['machine']}")
    return "\n".join(out)
