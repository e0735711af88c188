"""An engine running live (tailing a JSONL file on the wall clock) with its HTTP endpoints
up, fed simulator events re-stamped to now: what a scraper or a probe sees in production."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import orjson

from touchline.connectors.simulator import Simulator
from touchline.runner import run, simulator_spec
from touchline.settings import load_settings


def restamped(lines, now_ms) -> bytes:
    """Simulator lines with event time set to ``now_ms`` (malformed ones are kept as they are)."""
    out = []
    for line in lines:
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            out.append(line)
            continue
        if isinstance(doc, dict) and "ts" in doc:
            doc["ts"] = now_ms
            line = orjson.dumps(doc)
        out.append(line)
    return b"".join(x + b"\n" for x in out)


class LiveEngine:
    """``with LiveEngine(tmp_path, rate=300) as live:`` runs the engine until the block ends;
    ``live.url`` is its HTTP base URL. Extra settings are keyword overrides."""

    def __init__(self, tmp_path: Path, rate: float = 300.0, contacts: int = 400, **overrides: Any) -> None:
        self.events = tmp_path / "live.jsonl"
        self.events.write_bytes(b"")
        self.rate = rate
        sim_settings = load_settings(None, {"simulator.contacts": contacts, "simulator.days": 20})
        self._lines = Simulator(simulator_spec(sim_settings)).lines()
        self.settings = load_settings(None, {
            "source.kind": "jsonl", "source.path": self.events, "source.follow": True,
            "source.tick_seconds": 0.2, "source.batch_size": 50, "engine.clock": "wall",
            "output.dir": tmp_path / "out", "metrics.port": 0, **overrides,
        })
        self.stop = threading.Event()
        self._feeding = threading.Event()
        self._ready = threading.Event()
        self.url = ""
        self.result: dict[str, Any] = {}
        self.fed = 0

    def __enter__(self) -> "LiveEngine":
        def on_metrics(host: str, port: int) -> None:
            self.url = f"http://{host}:{port}"
            self._ready.set()

        def target() -> None:
            try:
                self.result["run"] = run(self.settings, progress=None, stop=self.stop, on_metrics=on_metrics)
            except Exception as exc:  # reported by __exit__ / the test
                self.result["error"] = exc
                self._ready.set()

        self._engine = threading.Thread(target=target, name="live-engine")
        self._engine.start()
        self._feeder = threading.Thread(target=self._feed, name="live-feeder", daemon=True)
        self._feeding.set()
        self._feeder.start()
        if not self._ready.wait(30) or "error" in self.result:
            self.__exit__(None, None, None)
            raise RuntimeError(f"engine did not start: {self.result.get('error')}")
        return self

    def _feed(self) -> None:
        chunk = max(1, int(self.rate / 10))
        with self.events.open("ab") as out:
            while self._feeding.is_set() and not self.stop.is_set():
                lines = [line for _, line in zip(range(chunk), self._lines)]
                if not lines:
                    return
                out.write(restamped(lines, time.time_ns() // 1_000_000))
                out.flush()
                self.fed += len(lines)
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self._feeding.clear()
        self._feeder.join(timeout=5)
        self.stop.set()
        self._engine.join(timeout=60)
        assert not self._engine.is_alive(), "the engine did not stop"
