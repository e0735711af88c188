"""Live mode: tailing a growing JSONL file, timers fire on the wall clock while idle."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import orjson

from touchline.runner import run
from touchline.settings import load_settings


def _line(event_id: str, type_: str, ts_ms: int, **extra) -> bytes:
    return orjson.dumps({"event_id": event_id, "type": type_, "ts": ts_ms, "contact_id": "c1", **extra}) + b"\n"


def test_cart_timer_fires_on_the_wall_clock_with_no_further_events(tmp_path):
    events = tmp_path / "live.jsonl"
    now = time.time_ns() // 1_000_000
    events.write_bytes(_line("e1", "page_view", now, context={"timezone": "UTC"}))
    settings = load_settings(None, {
        "source.kind": "jsonl", "source.path": events, "source.follow": True, "source.tick_seconds": 0.1,
        "engine.clock": "wall", "output.dir": tmp_path / "out", "metrics.enabled": False,
        "policy.holdout_share": 0.0, "policy.cart_abandon_minutes": 0.02,  # 1.2 s
    })
    stop = threading.Event()
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("r", run(settings, progress=None, stop=stop)))
    worker.start()
    try:
        time.sleep(0.3)
        with events.open("ab") as f:  # appended while the engine is tailing; a partial line first
            line = _line("e2", "add_to_cart", time.time_ns() // 1_000_000, properties={"value": 30.0})
            f.write(line[:20])
            f.flush()
            time.sleep(0.3)
            f.write(line[20:])
        decisions_path = tmp_path / "out" / "decisions.jsonl"
        deadline = time.monotonic() + 20
        decisions = []
        while time.monotonic() < deadline and not decisions:
            time.sleep(0.2)
            if decisions_path.exists():
                decisions = [orjson.loads(x) for x in decisions_path.read_bytes().splitlines()]
    finally:
        stop.set()
        worker.join(timeout=20)
    assert not worker.is_alive()
    assert [d["action"] for d in decisions] == ["cart_reminder"]
    d = decisions[0]
    assert d["trigger"] == {"kind": "timer", "timer": "cart"}
    due, decided = (datetime.fromisoformat(d[k].replace("Z", "+00:00")) for k in ("event_time", "decision_time"))
    assert decided >= due  # fired by a wall-clock tick once due, with no event after the cart
    summary = result["r"].summary
    assert summary["interrupted"] and summary["events_processed"] == 2 and summary["dead_letters_total"] == 0
