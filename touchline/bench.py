"""``touchline bench``: the engine flow on N simulated events, measured.

The events are generated before the clock starts (generation is not the engine's
cost) and fed through the same dataflow as ``touchline run``, with decisions and
dead letters written to a temporary directory. Figures: events/s over the whole
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
from touchline.flows.engine import build_flow
from touchline.runner import build_engine, simulator_spec
from touchline.settings import Settings
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


def run_bench(settings: Settings, events: int, batch_size: int) -> dict[str, Any]:
    """Run the flow over ``events`` simulated events and return the figures."""
    lines = generate(settings, events)
    baseline_mb = _rss_mb()
    engine = build_engine(settings, CollectorRegistry())
    with tempfile.TemporaryDirectory(prefix="touchline-bench-") as tmp:
        out = Path(tmp)
        flow = build_flow(LinesSource(lines, "bench", batch_size), engine,
                          JsonlSink(out / "decisions.jsonl"), JsonlSink(out / "dead_letters.jsonl"))
        start = time.perf_counter()
        run_main(flow)
        seconds = time.perf_counter() - start
    t = engine.totals
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "events": len(lines),
        "batch_size": batch_size,
        "seconds": round(seconds, 3),
        "events_per_second": round(len(lines) / seconds, 1),
        "processing_latency_ms": {
            "p50": round(weighted_percentile(t.batch_latency_ms, 0.5) or 0, 3),
            "p99": round(weighted_percentile(t.batch_latency_ms, 0.99) or 0, 3),
        },
        "decisions": sum(t.decisions.values()),
        "dead_letters": sum(t.dead_letters.values()),
        "memory_mb": {"baseline_with_input": round(baseline_mb, 1), "peak_rss": round(peak_mb, 1)},
        "state": engine.store.stats(),
        "machine": f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
                   f"{_cpus()} CPUs",
    }


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
        f"  memory            peak RSS {mem['peak_rss']:.0f} MB (before the run, with input held: "
        f"{mem['baseline_with_input']:.0f} MB)",
        f"  output            {f['decisions']:,} decisions, {f['dead_letters']:,} dead letters; state {f['state']}",
    ])
