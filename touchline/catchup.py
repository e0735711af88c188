"""Catch-up after a restart: how long a stopped engine takes to get back to the head of
its topic, with Bytewax recovery and without.

    python -m touchline.catchup --kafka tansu --events 10k,100k
    touchline bench --kafka tansu --catchup 10k,100k

For each K, twice (once with ``runtime.recovery`` on, once off), on fresh topics and a
flushed Redis database, with the same simulator events:

1. produce K events to the events topic;
2. run ``touchline run --kafka ... --redis ...`` with ``kafka.tail = false`` to the end of
   the topic (the recovery directory is kept);
3. append ``--extra`` more events (default 1,000);
4. start the engine again and time it until it reaches the end of the topic and exits.

With recovery the restart resumes at the offsets of the last snapshot; without, it
reads the topic from offset 0 and the state store's event ids make the K old events
duplicates. "Re-read" is what the restart read beyond the ``--extra`` new events.
Restart seconds are the process's wall time from start to exit (what an operator waits
for, imports included); the engine's own run time is beside it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import orjson

from touchline.redact import redact_secrets
from touchline.settings import ConfigError, Settings


def parse_counts(text: str, flag: str) -> list[int]:
    """``"1,2"`` or ``"10k,100k"`` as positive integers.

    >>> parse_counts("10k, 100k,1500", "--events")
    [10000, 100000, 1500]
    """
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        scale = 1
        if part[-1] in "km":
            scale, part = (1000 if part[-1] == "k" else 1_000_000), part[:-1]
        try:
            value = int(float(part) * scale)
        except ValueError:
            raise ConfigError(f"{flag}: {text!r} is not a comma-separated list of numbers (e.g. 1,2 or 10k,100k)") from None
        if value <= 0:
            raise ConfigError(f"{flag}: numbers must be positive, got {value}")
        out.append(value)
    if not out:
        raise ConfigError(f"{flag}: give at least one number")
    return out


def _engine_run(services: Any, kafka: Any, batch_size: int, processes: int, recovery: bool, out_dir: Path,
                recovery_dir: Path, log_path: Path, timeout: float) -> dict[str, Any]:
    """One ``touchline run`` to the end of the topic; its wall time and summed summaries."""
    from touchline.bench_services import engine_command, engine_log_notes, read_summaries, topic_env

    extra = ["--recovery-dir", str(recovery_dir), *(["--processes", str(processes)] if processes > 1 else [])]
    env = topic_env(kafka, tail=False)
    env["TOUCHLINE_RUNTIME__RECOVERY"] = "true" if recovery else "false"
    started = time.perf_counter()
    with open(log_path, "wb") as err:
        proc = subprocess.run(engine_command(services, batch_size, out_dir, *extra), stdout=subprocess.DEVNULL,
                              stderr=err, env=env, timeout=timeout)
    seconds = time.perf_counter() - started
    log_text = log_path.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"touchline run exited with {proc.returncode}: {log_text[-2000:]}")
    return {
        "seconds": round(seconds, 2),
        **_summed(read_summaries(out_dir, processes, log_text[-2000:])),
        "resumed_partitions": log_text.count("resuming "),
        "engine_log": engine_log_notes(log_text),
    }


def _summed(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The engine processes' summaries as one: the longest run time, the counts added up."""
    def total(key: str) -> int:
        return sum(s[key] for s in summaries)

    return {
        "engine_seconds": round(max(s["wall_seconds"] for s in summaries), 2),
        "lines_read": total("lines_read"),
        "events_processed": total("events_processed"),
        "duplicates_ignored": total("duplicates_ignored"),
        "dead_letters": total("dead_letters_total"),
    }


def _scenario(settings: Settings, services: Any, lines: list[bytes], k: int, extra: int, recovery: bool,
              batch_size: int, processes: int, partitions: int, workdir: Path, timeout: float) -> dict[str, Any]:
    from touchline.bench_services import create_round_topics, flush_redis, round_kafka
    from touchline.connectors.loadgen import produce_events

    flush_redis(services.state_url)
    stem = f"touchline-catchup-{int(time.time() * 1000)}-{k}-{'rec' if recovery else 'norec'}"
    kafka = round_kafka(settings, services.bootstrap, stem, partitions, tail=False)
    create_round_topics(kafka)
    workdir.mkdir(parents=True, exist_ok=True)
    stats = produce_events(lines[:k], kafka)
    if stats.failed:
        raise RuntimeError(f"{stats.failed} of {k} events were not produced")
    first = _engine_run(services, kafka, batch_size, processes, recovery, workdir / "out-1", workdir / "recovery",
                        workdir / "engine-1.log", timeout)
    stats = produce_events(lines[k:k + extra], kafka)
    if stats.failed:
        raise RuntimeError(f"{stats.failed} of {extra} appended events were not produced")
    restart = _engine_run(services, kafka, batch_size, processes, recovery, workdir / "out-2", workdir / "recovery",
                          workdir / "engine-2.log", timeout)
    restart["re_read"] = max(0, restart["lines_read"] - extra)
    return {"recovery": recovery, "first_run": first, "restart": restart}


def run_catchup(settings: Settings, bootstrap: str, counts: list[int], *, redis_url: str | None = None,
                extra: int = 1000, batch_size: int = 100, processes: int = 1, keep: bool = False,
                timeout: float = 1800.0) -> dict[str, Any]:
    """Measure restart catch-up at each K in ``counts`` (see the module's docstring)."""
    from touchline.bench import _cpus, generate
    from touchline.bench_services import Services

    if extra <= 0:
        raise ConfigError("--extra must be positive")
    tmp = Path(tempfile.mkdtemp(prefix="touchline-catchup-"))
    partitions = max(3, settings.kafka.partitions, processes)
    try:
        with Services(bootstrap, redis_url, tmp) as services:
            lines = generate(settings, max(counts) + extra)
            rows = []
            for k in counts:
                with_rec = _scenario(settings, services, lines, k, extra, True, batch_size, processes, partitions,
                                     tmp / f"k{k}-recovery", timeout)
                without = _scenario(settings, services, lines, k, extra, False, batch_size, processes, partitions,
                                    tmp / f"k{k}-no-recovery", timeout)
                rows.append({"k": k, "with_recovery": with_rec, "without_recovery": without})
            return {
                "rows": rows,
                "extra": extra,
                "processes": processes,
                "partitions": partitions,
                "batch_size": batch_size,
                "snapshot_seconds": settings.runtime.snapshot_seconds,
                "broker": services.broker_name,
                "redis": services.redis_name,
                "machine": f"{_cpus()} CPUs",
                "workdir": str(tmp) if keep else None,
            }
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def format_catchup(f: dict[str, Any]) -> str:
    header = (f"{'K':>9} | {'restart s, recovery':>20} {'re-read':>9} | {'restart s, no recovery':>23} "
              f"{'re-read':>9} | {'first run s (rec / no rec)':>27}")
    out = [f"touchline catch-up: restart after K events plus {f['extra']:,} appended, tail=false to the end; "
           f"{f['processes']} process(es), {f['partitions']} partitions, batch {f['batch_size']}, snapshot every "
           f"{f['snapshot_seconds']:g} s; broker {f['broker']}, state {f['redis']}; {f['machine']}",
           header, "-" * len(header)]
    for r in f["rows"]:
        a, b = r["with_recovery"], r["without_recovery"]
        ra, rb = a["restart"], b["restart"]
        out.append(f"{r['k']:>9,} | {ra['seconds']:>9.2f} ({ra['engine_seconds']:>6.2f} run) {ra['re_read']:>9,} | "
                   f"{rb['seconds']:>12.2f} ({rb['engine_seconds']:>6.2f} run) {rb['re_read']:>9,} | "
                   f"{a['first_run']['seconds']:>12.2f} / {b['first_run']['seconds']:>8.2f}")
    out.append("  restart s: process start to exit (imports included); run: the engine's own run time")
    for r in f["rows"]:
        for key in ("with_recovery", "without_recovery"):
            rs = r[key]["restart"]
            out.append(f"  K={r['k']:,} {key.replace('_', ' ')}: restart read {rs['lines_read']:,} lines, "
                       f"{rs['duplicates_ignored']:,} duplicates ignored, {rs['events_processed']:,} events processed"
                       + (f"; log: {', '.join(f'{w} x{n}' for w, n in rs['engine_log'].items())}"
                          if rs["engine_log"] else ""))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    from touchline.settings import load_settings

    p = argparse.ArgumentParser(prog="python -m touchline.catchup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kafka", required=True, metavar="HOST:PORT", help="broker, or 'tansu' to start a local one")
    p.add_argument("--redis", metavar="URL", help="Redis for the state (FLUSHDB before each scenario); "
                   "default: a local redis-server started here")
    p.add_argument("--events", default="10k,100k", metavar="K[,K...]", help="events in the topic before the "
                   "stop (default 10k,100k)")
    p.add_argument("--extra", type=int, default=1000, help="events appended before the restart (default 1000)")
    p.add_argument("--processes", type=int, default=1, help="engine processes (default 1)")
    p.add_argument("--batch-size", type=int, default=100, help="events per micro-batch (default 100)")
    p.add_argument("--config", type=Path, help="settings file")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, summaries)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    try:
        settings = load_settings(args.config, {})
        figures = run_catchup(settings, args.kafka, parse_counts(args.events, "--events"), redis_url=args.redis,
                              extra=args.extra, batch_size=args.batch_size, processes=args.processes, keep=args.keep)
    except ConfigError as exc:
        print(f"touchline.catchup: {redact_secrets(str(exc))}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"touchline.catchup: error: {redact_secrets(str(exc))}", file=sys.stderr)
        return 1
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode() if args.json else format_catchup(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
