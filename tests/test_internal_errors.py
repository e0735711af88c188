"""One event cannot end the run: what raises is dead-lettered, its profile redone without it;
a flood of internal errors stops the run with a clear error; a poison pill is not one."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from prometheus_client import CollectorRegistry

import touchline.decisions.event_handler as event_module
import touchline.decisions.timer_handler as timer_module
from touchline.decisions.batch_run import DecisionCore, LabelSettings
from touchline.decisions.estimators import ModelConfig
from touchline.decisions.policy import PolicyConfig
from touchline.batch_service import Engine, InternalErrorFlood
from touchline.decisions.batches import RawBatch
from touchline.metrics.engine_metrics import EngineMetrics
from touchline.runner import run
from touchline.state.memory import MemoryStore

T0 = 1_767_614_400_000  # 2026-01-05 12:00 UTC
MIN = 60_000
DAY_MS = 86_400_000


def _engine() -> Engine:
    core = DecisionCore(PolicyConfig(holdout_share=0.0),
                        {"lead": ModelConfig(name="lead"), "churn": ModelConfig(name="churn")},
                        LabelSettings(7.0, 7.0, frozenset({"purchase"})))
    return Engine(MemoryStore(), core, EngineMetrics(CollectorRegistry()))


def _line(eid: str, type_: str, ts: int, contact: str, **properties) -> bytes:
    return orjson.dumps({"event_id": eid, "type": type_, "ts": ts, "contact_id": contact,
                         **({"properties": properties} if properties else {})})


def _raise_for(contact: str, real):
    def wrapped(profile, *args, **kwargs):
        if profile.key == contact:
            raise ZeroDivisionError("boom")
        return real(profile, *args, **kwargs)
    return wrapped


def test_an_event_that_raises_is_dead_lettered_and_its_profile_redone_without_it(monkeypatch):
    real, raised = event_module.features, []

    def second_event_raises_once(profile, now_ms, *rest):
        if profile.key == "c-bad" and profile.events_total == 2 and not raised:
            raised.append(now_ms)
            raise ZeroDivisionError("boom")
        return real(profile, now_ms, *rest)

    monkeypatch.setattr(event_module, "features", second_event_raises_once)
    e = _engine()
    lines = [_line("ok1", "add_to_cart", T0, "c-ok", value=30), _line("b1", "page_view", T0 + 1, "c-bad"),
             _line("b2", "signup", T0 + 2, "c-bad"), _line("ok2", "checkout_start", T0 + 3, "c-ok", value=30)]
    result = e.process(RawBatch(lines, "in.jsonl", 1))
    errors = [d for d in result.dead_letters if d["reason"] == "internal_error"]
    assert [d["source"] for d in errors] == ["in.jsonl:3"]
    assert "ZeroDivisionError: boom" in errors[0]["detail"] and orjson.loads(errors[0]["raw"])["event_id"] == "b2"
    c_bad = e.store.load(["c-bad"])["c-bad"]
    assert c_bad.events_total == 1  # b1 applied once, b2 not at all (no half-applied state)
    assert e.store.load(["c-ok"])["c-ok"].events_total == 2
    assert e.failure is None
    # the next batch of the same contact goes on
    e.process(RawBatch([_line("b3", "page_view", T0 + MIN, "c-bad")], "in.jsonl", 5))
    assert e.store.load(["c-bad"])["c-bad"].events_total == 2


def test_a_timer_that_raises_is_dead_lettered_and_the_others_fire(monkeypatch):
    real = timer_module.cart_candidates
    monkeypatch.setattr(timer_module, "cart_candidates", _raise_for("c-bad", real))
    e = _engine()
    carts = [_line(f"a-{c}", "add_to_cart", T0, c, value=40) for c in ("c-bad", "c-ok")]
    e.process(RawBatch(carts, "in.jsonl", 1))
    later = e.process(RawBatch([], "tick", 0, advance_to_ms=T0 + DAY_MS))
    errors = [d for d in later.dead_letters if d["reason"] == "internal_error"]
    assert [(d["kind"], d["profile"], d["timer"]) for d in errors] == [("timer", "c-bad", "cart")]
    assert any(d["contact_id"] == "c-ok" for d in later.decisions)
    assert e.failure is None


def test_a_flood_of_internal_errors_stops_the_run(monkeypatch):
    monkeypatch.setattr(event_module, "features", lambda *a, **k: 1 / 0)
    e = _engine()
    lines = [_line(f"e{i}", "signup", T0 + i, f"c{i}") for i in range(50)]
    e.process_or_halt(RawBatch(lines, "in.jsonl", 1))
    assert isinstance(e.failure, InternalErrorFlood)
    assert "engine.max_internal_error_share" in str(e.failure)


def test_a_few_internal_errors_among_many_events_do_not_stop_it(monkeypatch):
    monkeypatch.setattr(event_module, "features", _raise_for("c-bad", event_module.features))
    e = _engine()
    lines = [_line(f"e{i}", "signup", T0 + i, "c-bad" if i % 500 == 0 else f"c{i}") for i in range(3000)]
    for start in range(0, len(lines), 100):
        e.process_or_halt(RawBatch(lines[start:start + 100], "in.jsonl", start + 1))
    assert e.failure is None
    assert e.totals.dead_letters["internal_error"] == 6


def _nested(depth: int) -> dict:
    doc: dict = {"leaf": 1}
    for _ in range(depth):
        doc = {"n": doc}
    return doc


def test_a_deeply_nested_late_event_is_not_a_poison_pill(small_settings, tmp_path):
    """253 levels of nesting in an event older than its contact's memory: a late_event dead
    letter quoting the line as read, and the rest of the file is processed."""
    deep = orjson.dumps({"event_id": "deep", "type": "page_view", "ts": T0, "contact_id": "c1",
                         "properties": _nested(250)})
    lines = [_line("e1", "page_view", T0, "c1"), _line("e2", "page_view", T0 + 31 * DAY_MS, "c1"), deep,
             _line("e3", "page_view", T0 + 31 * DAY_MS + MIN, "c1"), _line("e4", "page_view", T0 + 31 * DAY_MS, "c2")]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    settings = small_settings(**{"source.kind": "jsonl", "source.path": path, "source.batch_size": 2,
                                 "engine.time_jump_quorum": 1})
    result = run(settings, progress=None)
    dead = [orjson.loads(x) for x in (settings.output.dir / "dead_letters.jsonl").read_bytes().splitlines()]
    assert [(d["reason"], d["source"]) for d in dead] == [("late_event", "events.jsonl:3")]
    assert dead[0]["raw"].encode() == deep
    assert result.engine.totals.events == 4


@pytest.mark.parametrize("depth", [253, 2000])
def test_the_cli_never_panics_on_deep_nesting(tmp_path, depth):
    deep = b'{"event_id":"d","type":"page_view","ts":1767614400000,"contact_id":"c1","properties":' + (
        b'{"a":' * depth) + b"1" + b"}" * depth + b"}"
    path = tmp_path / "events.jsonl"
    path.write_bytes(_line("e1", "page_view", T0, "c1") + b"\n" + deep + b"\n" + _line("e2", "page_view", T0 + 1, "c2")
                     + b"\n")
    proc = subprocess.run([sys.executable, "-m", "touchline", "run", "--input", str(path), "--out", str(tmp_path / "out"),
                           "--no-metrics"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "panicked" not in proc.stderr
