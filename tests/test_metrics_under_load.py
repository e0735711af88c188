"""/metrics keeps answering while the engine runs flat out (issue 18, item 10).

``touchline run`` replays simulator events as fast as it can in its own process while this
process scrapes /metrics back to back, with one client holding a connection open and silent
the whole time. Every scrape must complete; the bound asserted is generous (a loaded CI
machine is not a latency benchmark) and the figures are printed: on a quiet 2-core machine
p99 is well under a second (see the README, Metrics).
"""

from __future__ import annotations

import http.client
import itertools
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson

from touchline.connectors.simulator import Simulator
from touchline.runner import simulator_spec
from touchline.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
EVENTS = 120_000
BOUND_SECONDS = 5.0  # per scrape; the 1 s goal is a figure measured, not a test that flakes


def _scrape(port: int, path: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=BOUND_SECONDS)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        body = answer.read()
        assert answer.status == 200, (path, answer.status, body[:200])
    finally:
        conn.close()
    return time.perf_counter() - started, body


def test_scrapes_complete_while_the_engine_is_busy(tmp_path: Path):
    settings = load_settings(None, {"simulator.contacts": 6000, "simulator.days": 30})
    events = tmp_path / "events.jsonl"
    with events.open("wb") as out:
        for line in itertools.islice(Simulator(simulator_spec(settings)).lines(), EVENTS):
            out.write(line + b"\n")
    engine = subprocess.Popen(
        [sys.executable, "-m", "touchline", "run", "--input", str(events), "--out", str(tmp_path / "out"),
         "--metrics-port", "0", "--batch-size", "1000", "--journeys", str(ROOT / "examples" / "journeys"),
         "--log-level", "info", "--log-format", "json", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert engine.stderr is not None
    stderr: list[bytes] = []
    port = 0
    for line in engine.stderr:  # the first log line names the port
        stderr.append(line)
        try:
            port = int(orjson.loads(line).get("metrics_port") or 0)
        except orjson.JSONDecodeError:
            continue
        if port:
            break
    assert port, b"".join(stderr).decode()
    drain = threading.Thread(target=lambda: stderr.extend(engine.stderr or ()), daemon=True)
    drain.start()
    silent = socket.create_connection(("127.0.0.1", port))  # a client that says nothing
    times: list[float] = []
    health_times: list[float] = []
    last = b""
    try:
        while engine.poll() is None:
            try:
                seconds, body = _scrape(port, "/metrics")
            except (ConnectionRefusedError, ConnectionResetError):
                # the run ended between poll() and connect(): the engine must be exiting
                engine.wait(30)
                break
            times.append(seconds)
            last = body or last
            if len(times) % 5 == 0:
                health_times.append(_scrape(port, "/healthz")[0])
            time.sleep(0.05)
        assert engine.wait(120) == 0, b"".join(stderr).decode()[-3000:]
    finally:
        silent.close()
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    drain.join(10)
    times.sort()

    def q(share: float) -> float:
        return times[min(len(times) - 1, int(share * len(times)))] * 1000

    print(f"\n{len(times)} scrapes of {len(last)} bytes during the run: p50 {q(0.5):.0f} ms, "
          f"p99 {q(0.99):.0f} ms, max {times[-1] * 1000:.0f} ms; /healthz max "
          f"{max(health_times, default=0) * 1000:.0f} ms")
    assert len(times) >= 20, f"only {len(times)} scrapes during the run"
    assert times[-1] < BOUND_SECONDS
    assert b"touchline_events_total" in last
    assert b"Traceback" not in b"".join(stderr)
