"""What the Kafka benchmarks share: a broker and a redis-server (started here or given), the
topics and environment of one round, and figures read from ``/proc`` about the processes
measured (CPU, peak memory, children)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ------------------------------------------------------------------ figures
def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) of ``values``, None when there are none.

    >>> percentile([3.0, 1.0, 2.0], 0.5), percentile([], 0.99)
    (2.0, None)
    """
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rounded(value: float | None) -> float | None:
    """Two decimals, None kept."""
    return None if value is None else round(value, 2)


def quantiles_ms(values: list[float]) -> dict[str, float | None]:
    """p50 and p99 of ``values``, two decimals."""
    return {"p50": rounded(percentile(values, 0.5)), "p99": rounded(percentile(values, 0.99))}


def cell(value: Any, fmt: str = ",.0f") -> str:
    """A figure in a table cell, '-' when missing.

    >>> cell(13830.4), cell(None), cell(1.234, ".2f")
    ('13,830', '-', '1.23')
    """
    return "-" if value is None else format(value, fmt)


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of a running process, None if gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


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


def machine(who: str) -> str:
    """The CPUs this process may use, and what shares them."""
    return f"{len(os.sched_getaffinity(0))} CPUs shared by {who}"


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


def log_notes_text(notes: dict[str, int]) -> str:
    """Engine log notes as text.

    >>> log_notes_text({"CONFLICT": 2}), log_notes_text({})
    ('CONFLICT x2', '')
    """
    return ", ".join(f"{word} x{n}" for word, n in notes.items())


# ------------------------------------------------------------------ Redis and the broker
def start_redis(directory: Path, timeout: float = 15.0) -> tuple[subprocess.Popen, str]:
    """A redis-server on a free loopback port, its files in ``directory`` (append-only file,
    fsync every second, as production runs it). Returns the process and its URL."""
    import shutil

    from touchline.connectors.tansu import free_port, stop_process

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: install the Debian package redis-server, or pass --redis URL")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                             "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                             "--daemonize", "no", "--logfile", "redis.log"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not _answers(port, proc, time.monotonic() + timeout):
        stop_process(proc)
        raise RuntimeError(f"redis-server did not start on port {port}; see {directory / 'redis.log'}")
    return proc, f"redis://127.0.0.1:{port}/0"


def _answers(port: int, proc: subprocess.Popen, deadline: float) -> bool:
    """Whether the redis-server on ``port`` answers PING before ``deadline`` (False if it exits)."""
    import redis

    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if client.ping():
                    return True
            except redis.ConnectionError:
                pass
            time.sleep(0.05)
        return False
    finally:
        client.close()


def flush_redis(url: str) -> None:
    """Empty the database at ``url`` (a fresh start for a round: state, ledger, models); a Redis
    that cannot be reached is a clear error naming it (``--redis``), not a traceback."""
    import redis

    from touchline.redact import redact_url
    from touchline.settings import ConfigError

    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        raise ConfigError(f"--redis: cannot empty the Redis at {redact_url(url)}: {exc}") from None
    finally:
        client.close()


def redis_used_bytes(url: str) -> int:
    """Memory the Redis server at ``url`` uses for data (``INFO memory``'s used_memory)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def redis_cpu_seconds(url: str) -> float:
    """User + system CPU seconds the Redis server at ``url`` has used (``INFO cpu``)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        cpu = client.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    finally:
        client.close()


class Services:
    """The broker and Redis a measurement needs: those given, or local ones started here
    (``bootstrap == "tansu"``; ``redis_url`` None, unless ``with_redis`` is false) and
    stopped on exit."""

    def __init__(self, bootstrap: str, redis_url: str | None, directory: Path, with_redis: bool = True) -> None:
        self.bootstrap, self.redis_url, self.directory = bootstrap, redis_url, directory
        self.with_redis = with_redis
        self.broker: subprocess.Popen | None = None
        self.redis: subprocess.Popen | None = None

    def __enter__(self) -> "Services":
        try:
            if self.bootstrap == "tansu":
                from touchline.connectors.tansu import free_port, start_tansu

                port = free_port()
                self.broker = start_tansu(self.directory / "tansu", port)
                self.bootstrap = f"127.0.0.1:{port}"
            if self.redis_url is None and self.with_redis:
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

    @property
    def state_url(self) -> str:
        """The Redis URL (there is one once entered)."""
        assert self.redis_url is not None, "Services not entered"
        return self.redis_url

    def __exit__(self, *_exc: Any) -> None:
        from touchline.connectors.tansu import stop_process

        stop_process(self.redis)
        stop_process(self.broker)


# ------------------------------------------------------------------ one round's topics
def topic_env(kafka: Any, **extra: Any) -> dict[str, str]:
    """The environment that points an engine process at ``kafka``'s topics."""
    values = {"events_topic": kafka.events_topic, "decisions_topic": kafka.decisions_topic,
              "dead_letter_topic": kafka.dead_letter_topic, "experiments_topic": kafka.experiments_topic,
              "channel_topic_prefix": kafka.channel_topic_prefix, "partitions": kafka.partitions,
              "linger_ms": kafka.linger_ms, **extra}
    return {**os.environ, **{f"TOUCHLINE_KAFKA__{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
                             for k, v in values.items()}}


def round_kafka(settings: Any, bootstrap: str, stem: str, partitions: int, **update: Any) -> Any:
    """Kafka settings of one round: its own topics (``stem``.*), ``partitions`` each."""
    return settings.kafka.model_copy(update={
        "bootstrap": bootstrap, "events_topic": f"{stem}.events", "decisions_topic": f"{stem}.decisions",
        "dead_letter_topic": f"{stem}.dead", "experiments_topic": f"{stem}.experiments",
        "channel_topic_prefix": f"{stem}.channel.", "partitions": partitions, "start": "earliest", **update})


def create_round_topics(kafka: Any, *more: str) -> None:
    """The round's events, decisions, dead-letter and experiments topics (and ``more``)."""
    from touchline.connectors.kafka import ensure_topics

    ensure_topics(kafka.client_config(), [kafka.events_topic, kafka.decisions_topic, kafka.dead_letter_topic,
                                          kafka.experiments_topic, *more], create=True,
                  partitions=kafka.partitions, replication_factor=kafka.replication_factor,
                  timeout=kafka.connect_timeout_seconds)


def engine_command(services: Services, batch_size: int, out_dir: Path, *extra: str) -> list[str]:
    """``touchline run`` on the services' broker and Redis, quiet, its summary as JSON in ``out_dir``."""
    import sys

    return [sys.executable, "-m", "touchline", "run", "--kafka", services.bootstrap, "--redis", services.state_url,
            "--quiet", "--json", "--no-metrics", "--log-level", "info", "--batch-size", str(batch_size),
            "--out", str(out_dir), *extra]


def read_summaries(out_dir: Path, processes: int, why: str) -> list[dict[str, Any]]:
    """The summary each engine process wrote to ``out_dir``; RuntimeError naming ``why`` if one is missing."""
    import orjson

    names = ["summary.json"] if processes == 1 else [f"summary-{i}.json" for i in range(processes)]
    try:
        return [orjson.loads((out_dir / name).read_bytes()) for name in names]
    except (OSError, orjson.JSONDecodeError) as exc:
        raise RuntimeError(f"an engine process did not write its summary in {out_dir} ({exc}): {why}") from None
