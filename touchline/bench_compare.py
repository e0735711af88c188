"""``touchline bench --kafka ... --compare``: Touchline's production path beside the two
pipelines a user writes by hand (:mod:`touchline.bench_loops`), on the same events, topic and Redis.

The events (``--events`` simulator lines) are produced once to a fresh events topic. Then
three runs, one after the other, each its own process on a flushed Redis database, each
reading the whole topic from its start (the loops under a fresh consumer group each):

1. the naive loop: one event at a time, one Redis round trip per command;
2. the hand-batched loop: 1,000 events at a time, one pipeline to read and one to write;
3. ``touchline run --kafka ... --redis ...`` to the end of the topic (``kafka.tail`` false),
   batch size ``--batch-size``: parse and validate, state, models, triggers, journeys if
   configured, policy, decisions topic.

Per run: events consumed, invalid lines (dead letters for the engine), duplicates ignored,
decisions; events/s on the run's own clock, from just before its consumer starts to its
outputs flushed (imports and model building are outside it, for all three); processing
latency per event, p50 and p99 (from the batch read to its decisions handed to the
producer; per event for the naive loop); the process's peak RSS and CPU seconds (whole
process, imports included); the CPU seconds Redis and the local broker used
meanwhile, and events per CPU second of the three together, the machine's work per event,
which depends far less than events/s on what else runs on the machine; the Redis memory the
run left, also per contact of the input; the 1-minute load average before the run. Then the
ratios Touchline / naive and Touchline / hand-batched, in events/s and per CPU second.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from touchline.bench_services import (Services, cell, cpu_seconds, create_round_topics, engine_command,
                                      engine_log_notes, flush_redis, log_notes_text, machine, peak_rss_mb,
                                      read_summaries, redis_cpu_seconds, redis_used_bytes, round_kafka, rounded,
                                      topic_env)
from touchline.settings import Settings

#: The runs, in the order they run and are shown.
RUNS = ("naive", "batched", "touchline")
#: The hand-written loops among them (:data:`touchline.bench_loops.LOOPS`).
LOOPS = RUNS[:2]
TITLES = {"naive": "naive loop", "batched": "hand-batched", "touchline": "touchline"}


@dataclass
class Finished:
    """A measured process that has exited."""

    code: int
    peak_rss_mb: float
    cpu_seconds: float
    stdout: Path
    log: str


def run_measured(cmd: list[str], env: dict[str, str], workdir: Path, name: str, timeout: float) -> Finished:
    """Run ``cmd`` to its end (stdout to ``name``.out, stderr to ``name``.log in ``workdir``);
    its exit code, peak RSS and CPU time."""
    workdir.mkdir(parents=True, exist_ok=True)
    stdout, log = workdir / f"{name}.out", workdir / f"{name}.log"
    with open(stdout, "wb") as out, open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
    code, cpu, peak = _wait(proc, name, timeout)
    return Finished(code, peak, cpu, stdout, log.read_text(errors="replace"))


def _wait(proc: subprocess.Popen, name: str, timeout: float) -> tuple[int, float, float]:
    """Reap ``proc``: its exit code, CPU seconds (``wait4``) and peak RSS in MB; kill it after
    ``timeout`` seconds. The peak is the process's VmHWM, read every 0.1 s while it runs
    (``wait4``'s maxrss would start from this process's, inherited at the fork)."""
    deadline = time.monotonic() + timeout
    peak = 0.0
    while True:
        peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_utime + usage.ru_stime, peak
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"the {name} run did not finish within {timeout:.0f} s")
        time.sleep(0.1)


@dataclass
class Sample:
    """The services at one moment: Redis's memory and CPU so far, the local broker's CPU so far, the load."""

    redis_bytes: int
    redis_cpu: float
    broker_cpu: float | None
    load: float

    @classmethod
    def take(cls, services: Services) -> "Sample":
        broker = services.broker
        return cls(redis_used_bytes(services.state_url), redis_cpu_seconds(services.state_url),
                   None if broker is None else cpu_seconds(broker.pid), os.getloadavg()[0])

    def until(self, later: "Sample") -> dict[str, Any]:
        """What the services used between this sample and ``later``."""
        broker = None if self.broker_cpu is None or later.broker_cpu is None else later.broker_cpu - self.broker_cpu
        return {"redis_bytes": later.redis_bytes - self.redis_bytes,
                "redis_cpu_seconds": round(later.redis_cpu - self.redis_cpu, 2),
                "broker_cpu_seconds": rounded(broker), "load_average_before": round(self.load, 2)}


def _measured(name: str, cmd: list[str], env: dict[str, str], services: Services, workdir: Path,
              timeout: float) -> tuple[Finished, dict[str, Any]]:
    """Run ``cmd`` on a flushed database; the process's figures and what Redis and the broker used meanwhile."""
    flush_redis(services.state_url)
    before = Sample.take(services)
    done = run_measured(cmd, env, workdir, name, timeout)
    after = Sample.take(services)
    if done.code != 0:
        raise RuntimeError(f"the {name} run exited with {done.code}: {done.log[-2000:]}")
    return done, {"exit_code": done.code, "peak_rss_mb": round(done.peak_rss_mb, 1),
                  "cpu_seconds": round(done.cpu_seconds, 2), **before.until(after)}


def _loop_run(name: str, settings: Settings, services: Services, kafka: Any, workdir: Path,
              timeout: float) -> dict[str, Any]:
    """One hand-written loop (``naive`` or ``batched``) over the topic, on a flushed database."""
    cmd = [sys.executable, "-m", "touchline.bench_loops", name, "--kafka", services.bootstrap,
           "--redis", services.state_url, "--topic", kafka.events_topic, "--out-topic", _out_topic(kafka, name),
           "--threshold", str(settings.policy.sales_lead_threshold), "--goals", ",".join(settings.labels.goal_types)]
    done, process = _measured(name, cmd, dict(os.environ), services, workdir, timeout)
    return {**orjson.loads(done.stdout.read_bytes()), **process}


def _out_topic(kafka: Any, name: str) -> str:
    return f"{kafka.events_topic}.{name}-decisions"


def _engine_run(services: Services, kafka: Any, batch_size: int, workdir: Path, timeout: float) -> dict[str, Any]:
    """``touchline run`` over the topic to its end, on a flushed database."""
    done, process = _measured("touchline", engine_command(services, batch_size, workdir / "out"),
                              topic_env(kafka, tail=False), services, workdir, timeout)
    (s,) = read_summaries(workdir / "out", 1, done.log[-2000:])
    return {"consumed": s["lines_read"], "invalid": s["dead_letters_total"], "duplicates": s["duplicates_ignored"],
            "decisions": s["decisions_total"], "seconds": s["wall_seconds"],
            "events_per_second": s["events_per_second"],
            "processing_ms": {"p50": s["latency_ms"]["processing_p50"], "p99": s["latency_ms"]["processing_p99"]},
            **process, "engine_log": engine_log_notes(done.log)}


def per_cpu_second(run: dict[str, Any]) -> float | None:
    """Events per CPU second of the run's process, Redis and the local broker together: the
    machine's work per event, which depends far less than events/s on what else shares it.

    >>> per_cpu_second({"consumed": 600, "cpu_seconds": 1.0, "redis_cpu_seconds": 0.5, "broker_cpu_seconds": None})
    400.0
    """
    cpu = run["cpu_seconds"] + run["redis_cpu_seconds"] + (run["broker_cpu_seconds"] or 0.0)
    return round(run["consumed"] / cpu, 1) if cpu > 0 else None


def _contacts(lines: list[bytes]) -> int:
    """Distinct contacts (else anonymous ids) in the input."""
    from touchline.connectors.loadgen import key_and_id

    return len({key for key, _ in map(key_and_id, lines) if key is not None})


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b to two decimals, None when either is missing.

    >>> _ratio(2348.0, 2141.0), _ratio(1.0, None)
    (1.1, None)
    """
    return None if not a or not b else round(a / b, 2)


def _ratios(runs: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Touchline over each loop, in events/s and in events per CPU second."""
    engine = runs["touchline"]
    return {f"touchline_over_{name}{suffix}": _ratio(engine[key], runs[name][key])
            for suffix, key in (("", "events_per_second"), ("_per_cpu_second", "events_per_cpu_second"))
            for name in LOOPS}


def _produce_once(settings: Settings, services: Services, events: int) -> tuple[Any, list[bytes]]:
    """The round's topics, with ``events`` simulator lines produced to its events topic."""
    from touchline.bench import generate
    from touchline.connectors.loadgen import produce_events

    kafka = round_kafka(settings, services.bootstrap, f"touchline-compare-{int(time.time())}",
                        settings.kafka.partitions, tail=False)
    create_round_topics(kafka, *(_out_topic(kafka, name) for name in LOOPS))
    lines = generate(settings, events)
    stats = produce_events(lines, kafka)
    if stats.failed:
        raise RuntimeError(f"{stats.failed} of {len(lines)} events were not produced")
    return kafka, lines


def run_compare(settings: Settings, bootstrap: str, events: int, batch_size: int, *,
                redis_url: str | None = None, keep: bool = False) -> dict[str, Any]:
    """The naive loop, the hand-batched loop and the engine over the same ``events`` events
    (see the module's docstring)."""
    from touchline.connectors.kafka import catchup_size

    tmp = Path(tempfile.mkdtemp(prefix="touchline-compare-"))
    timeout = 300 + events / 100  # far beyond the slowest run, which makes hundreds of events a second
    try:
        with Services(bootstrap, redis_url, tmp) as services:
            kafka, lines = _produce_once(settings, services, events)
            runs = {name: _loop_run(name, settings, services, kafka, tmp / name, timeout) for name in LOOPS}
            runs["touchline"] = _engine_run(services, kafka, batch_size, tmp / "touchline", timeout)
            for run in runs.values():
                run["events_per_cpu_second"] = per_cpu_second(run)
            return {
                "events": len(lines),
                "contacts": _contacts(lines),
                "topic": kafka.events_topic,
                "partitions": kafka.partitions,
                "batch_size": batch_size,
                "catchup_batch_size": catchup_size(batch_size, settings.kafka.catchup_batch_size),
                "hand_batch_size": 1000,
                "runs": runs,
                "ratios": _ratios(runs),
                "broker": services.broker_name,
                "redis": services.redis_name,
                "machine": machine("the run, the broker and Redis (and this process, idle while a run goes)"),
                "workdir": str(tmp) if keep else None,
            }
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _rows(f: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """Label and one cell per run, for each line of the table."""
    runs = [f["runs"][name] for name in RUNS]

    def each(key: str, fmt: str = ",.0f") -> list[str]:
        return [cell(run[key], fmt) for run in runs]

    def latency(q: str) -> list[str]:
        return [cell(run["processing_ms"][q], ".2f") for run in runs]

    def redis_memory(run: dict[str, Any]) -> str:
        return f"{run['redis_bytes'] / 2**20:.1f} ({run['redis_bytes'] / max(1, f['contacts']) / 1024:.1f})"

    return [
        ("events consumed", each("consumed")),
        ("invalid lines / dead letters", each("invalid")),
        ("duplicates ignored", each("duplicates")),
        ("decisions", each("decisions")),
        ("events/s", each("events_per_second")),
        ("run time (s)", each("seconds", ".2f")),
        ("processing latency p50 (ms)", latency("p50")),
        ("processing latency p99 (ms)", latency("p99")),
        ("peak RSS (MB)", each("peak_rss_mb")),
        ("CPU s, whole process", each("cpu_seconds", ".1f")),
        ("CPU s, Redis", each("redis_cpu_seconds", ".1f")),
        ("CPU s, broker", each("broker_cpu_seconds", ".1f")),
        ("events per CPU second", each("events_per_cpu_second")),
        ("Redis MB (KB per contact)", [redis_memory(run) for run in runs]),
        ("load average before", each("load_average_before", ".1f")),
    ]


def format_compare(f: dict[str, Any]) -> str:
    """The three runs side by side, then the ratios."""
    def row(label: str, cells: list[str]) -> str:
        return f"  {label:<30}" + "".join(f"{text:>16}" for text in cells)

    ratios = f["ratios"]
    notes = log_notes_text(f["runs"]["touchline"]["engine_log"])
    return "\n".join([
        f"touchline bench --compare: the same {f['events']:,} events ({f['contacts']:,} contacts, {f['partitions']} "
        f"partitions) read from the start of one topic by each run; broker {f['broker']}, state {f['redis']}, "
        "flushed before each run",
        row("", [TITLES[name] for name in RUNS]),
        *(row(label, cells) for label, cells in _rows(f)),
        *(f"  touchline / {TITLES[name]:<17} {cell(ratios[f'touchline_over_{name}'], '.2f')}x events/s, "
          f"{cell(ratios[f'touchline_over_{name}_per_cpu_second'], '.2f')}x events per CPU second" for name in LOOPS),
        f"  engine log                    {notes or 'no conflicts, errors or tracebacks'}",
        "  naive loop: poll one event, orjson, HGETALL + ZRANGE, River learn + predict, ZADD, ZREMRANGEBYSCORE, HSET, "
        "2 EXPIRE (a round trip each), produce",
        f"  hand-batched: consume {f['hand_batch_size']:,}, orjson, one pipeline to read, River per event, one "
        "pipeline to write, produce the batch",
        f"  touchline: touchline run --kafka --redis, one process, batch size {f['batch_size']} "
        f"(up to {f['catchup_batch_size']:,} while behind) (validation, "
        "ordering, idempotency, identities, timers, labels, two models, journeys if configured, policy, caps)",
        "  the loops do far less than the engine: see python -m touchline.bench_loops --help",
        f"  {f['machine']}",
    ])
