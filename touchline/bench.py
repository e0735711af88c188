"""``touchline bench``: the engine flow on N simulated events, measured.

The events are generated before the clock starts (generation is not the engine's
cost) and fed through the same dataflow as ``touchline run``, with decisions, no-action
records and dead letters written to a temporary directory. Figures: events/s over the whole
flow, p50/p99 processing latency per event (batch read to batch processed), and
peak resident memory of the process.
"""

from __future__ import annotations

import itertools
import platform
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bytewax.testing import run_main
from prometheus_client import CollectorRegistry

from touchline.connectors.files import JsonlSink
from touchline.connectors.lines import LinesSource
from touchline.connectors.simulator import Simulator
from touchline.flows.dataflow import build_flow
from touchline.heap import startup_heap_frozen
from touchline.redact import redact_url
from touchline.runner import build_engine, simulator_spec
from touchline.settings import Settings
from touchline.state.memory import MemoryStore
from touchline.summary import weighted_percentile


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def generate(settings: Settings, events: int) -> list[bytes]:
    """At least ``events`` simulator lines (the population grows until there are enough)."""
    spec = simulator_spec(settings)
    while True:
        # bytes(memoryview(...)) copies each line to an exact-size object: orjson's output
        # keeps its larger build buffer, ~3 KB a line, which would inflate the memory figure.
        lines = [bytes(memoryview(line)) for line in itertools.islice(Simulator(spec).lines(), events)]
        if len(lines) >= events:
            return lines
        spec = replace(spec, contacts=spec.contacts * 2)


def _flow_run(settings: Settings, lines: list[bytes], batch_size: int) -> tuple[Any, float, CollectorRegistry]:
    registry = CollectorRegistry()
    engine = build_engine(settings, registry, keep_models=False)  # a benchmark starts from fresh models
    try:
        with tempfile.TemporaryDirectory(prefix="touchline-bench-") as tmp:
            out = Path(tmp)
            flow = build_flow(LinesSource(lines, "bench", batch_size), engine,
                              JsonlSink(out / "decisions.jsonl"), JsonlSink(out / "dead_letters.jsonl"),
                              no_actions_sink=JsonlSink(out / "no_actions.jsonl"))
            start = time.perf_counter()
            with startup_heap_frozen():  # as `touchline run` does: what start-up built, out of the collector's sight
                run_main(flow)
            seconds = time.perf_counter() - start
        if engine.failure is not None:
            raise engine.failure
        return engine, seconds, registry
    finally:
        engine.store.close()


def _store_ms_per_batch(registry: CollectorRegistry) -> dict[str, float]:
    """Mean state-store time per batch and operation, from the engine's own histogram."""
    return _ms_per_batch(registry, "touchline_state_store_latency_seconds", "op")


def _stage_ms_per_batch(registry: CollectorRegistry) -> dict[str, float]:
    """Mean time per batch in each stage (parse, state, score, policy, emit)."""
    from touchline.metrics.engine_metrics import STAGES

    found = _ms_per_batch(registry, "touchline_stage_latency_seconds", "stage")
    return {stage: found[stage] for stage in STAGES if stage in found}


def _ms_per_batch(registry: CollectorRegistry, histogram: str, label: str) -> dict[str, float]:
    """Mean milliseconds per observation of ``histogram``, by the value of ``label``."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for metric in registry.collect():
        if metric.name == histogram:
            for sample in metric.samples:
                op = sample.labels.get(label, "")
                if sample.name.endswith("_sum"):
                    sums[op] = sample.value
                elif sample.name.endswith("_count"):
                    counts[op] = sample.value
    return {op: round(1000 * sums[op] / counts[op], 3) for op in sorted(sums) if counts.get(op)}


def _path_figures(settings: Settings, url: str, lines: list[bytes], batch_size: int) -> dict[str, Any]:
    """One store URL over ``lines``, on an emptied database."""
    import redis

    plain = url.replace("+naive", "")
    client = redis.Redis.from_url(plain)
    client.flushdb()
    before = int(client.info("memory")["used_memory"])
    try:
        engine, seconds, registry = _flow_run(settings.model_copy(update={
            "state": settings.state.model_copy(update={"url": url})}), lines, batch_size)
        held = int(client.info("memory")["used_memory"]) - before
    finally:
        client.close()
    t = engine.totals
    profiles = engine.store.stats()["profiles"]
    return {
        "url": redact_url(url),
        "events": len(lines),
        "seconds": round(seconds, 3),
        "events_per_second": round(len(lines) / seconds, 1),
        "processing_latency_ms": {
            "p50": round(weighted_percentile(t.batch_latency_ms, 0.5) or 0, 3),
            "p99": round(weighted_percentile(t.batch_latency_ms, 0.99) or 0, 3),
        },
        "store_ms_per_batch": _store_ms_per_batch(registry),
        "decisions": sum(t.decisions.values()),
        # Redis's own used_memory after the run less before it, over the stored profiles
        # (aliases, timers, claims and outbox included: what a contact costs the server)
        "redis_kb_per_profile": round(held / 1024 / profiles, 2) if profiles else None,
    }


def run_redis_comparison(settings: Settings, url: str, events: int, naive_events: int,
                         batch_size: int) -> dict[str, Any]:
    """The Redis paths on the same data in one run: batched (pipelines of Lua scripts) over
    ``events``, and batched against naive (one call per command) over the first
    ``naive_events`` of them; each on a flushed database."""
    if not url.startswith(("redis://", "rediss://")):
        raise ValueError(f"bench --redis needs a redis:// or rediss:// URL, got {redact_url(url)!r}")
    lines = generate(settings, events)
    head = lines[:naive_events]
    naive_url = url.replace("redis://", "redis+naive://", 1).replace("rediss://", "rediss+naive://", 1)
    batched_head = _path_figures(settings, url, head, batch_size)
    naive_head = _path_figures(settings, naive_url, head, batch_size)
    if naive_head["decisions"] != batched_head["decisions"]:
        raise RuntimeError("batched and naive Redis paths decided differently on the same data")
    return {
        "batch_size": batch_size,
        "batched": _path_figures(settings, url, lines, batch_size),
        "same_data": {"batched": batched_head, "naive": naive_head,
                      "ratio": round(batched_head["events_per_second"] / naive_head["events_per_second"], 1)},
    }


def format_redis(f: dict[str, Any]) -> str:
    """The Redis comparison as text."""
    def line(name: str, p: dict[str, Any]) -> str:
        lat = p["processing_latency_ms"]
        ops = ", ".join(f"{op} {ms:.2f}" for op, ms in p["store_ms_per_batch"].items())
        return (f"  {name:<18}{p['events_per_second']:>10,.0f} events/s over {p['events']:,} events; "
                f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms; store ms/batch: {ops}; "
                f"Redis memory {_kb(p['redis_kb_per_profile'])} per stored profile")

    same = f["same_data"]
    return "\n".join([
        f"Redis ({f['batched']['url']}), batch size {f['batch_size']}:",
        line("batched", f["batched"]),
        line("batched (same)", same["batched"]),
        line("naive (same)", same["naive"]),
        f"  batched / naive   {same['ratio']}x on the same {same['naive']['events']:,} events",
    ])


def run_bench(settings: Settings, events: int, batch_size: int) -> dict[str, Any]:
    """Run the flow over ``events`` simulated events and return the figures."""
    lines = generate(settings, events)
    baseline_mb = _rss_mb()
    engine, seconds, registry = _flow_run(settings, lines, batch_size)
    t = engine.totals
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    state = engine.store.stats()
    held_kb = (_rss_mb() - baseline_mb) * 1024  # the engine is alive: its state is still held
    return {
        "events": len(lines),
        "batch_size": batch_size,
        "seconds": round(seconds, 3),
        "events_per_second": round(len(lines) / seconds, 1),
        "processing_latency_ms": {
            "p50": round(weighted_percentile(t.batch_latency_ms, 0.5) or 0, 3),
            "p99": round(weighted_percentile(t.batch_latency_ms, 0.99) or 0, 3),
        },
        "stage_ms_per_batch": _stage_ms_per_batch(registry),
        "decisions": sum(t.decisions.values()),
        "dead_letters": sum(t.dead_letters.values()),
        "memory_mb": {"baseline_with_input": round(baseline_mb, 1), "peak_rss": round(peak_mb, 1)},
        "memory_kb_per_profile": round(held_kb / state["profiles"], 1) if state["profiles"] else None,
        "state": {**state, "dormant": engine.store.dormant()} if isinstance(engine.store, MemoryStore) else state,
        "machine": f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
                   f"{_cpus()} CPUs",
    }


def _kb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f} KB"


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def format_bench(f: dict[str, Any]) -> str:
    """The figures as text."""
    lat = f["processing_latency_ms"]
    mem = f["memory_mb"]
    return "\n".join([
        f"touchline bench: {f['events']:,} events, batch size {f['batch_size']}, {f['machine']}",
        f"  throughput        {f['events_per_second']:,.0f} events/s ({f['seconds']:.2f} s)",
        f"  processing        p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms per event (batch read -> processed)",
        "  stages            " + ", ".join(f"{k} {v:.2f}" for k, v in f["stage_ms_per_batch"].items())
        + " ms per batch (mean)",
        f"  memory            peak RSS {mem['peak_rss']:.0f} MB (before the run, with input held: "
        f"{mem['baseline_with_input']:.0f} MB)",
        f"  state memory      {_kb(f['memory_kb_per_profile'])} per stored profile in process (RSS held after the "
        "run, less the RSS before it, over the profiles)",
        f"  output            {f['decisions']:,} decisions, {f['dead_letters']:,} dead letters; state {f['state']}",
    ])
