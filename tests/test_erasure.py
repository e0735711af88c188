"""Erasure that sticks (issue 18, item 7): after ``contact erase``, a replay of the same events
brings back neither the profile nor a decision; an unsubscribe survives the erasure; only a
signup or consent grant newer than the erasure re-admits the contact; the tombstone keeps no
raw id and no TTL; ``--outputs`` removes the contact's lines from a run's JSONL outputs; an
engine running in another process honours an erasure from its next batch. Real Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from touchline.cli import main
from touchline.decisions.batch_run import DecisionCore, LabelSettings
from touchline.decisions.estimators import ModelConfig
from touchline.decisions.policy import PolicyConfig
from touchline.decisions.profile import DAY_MS, HOUR_MS
from touchline.batch_service import Engine
from touchline.decisions.batches import RawBatch
from touchline.metrics.engine_metrics import EngineMetrics
from touchline.state import open_store
from touchline.state.base import StateStore
from touchline.state.erasure import CONTACT

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "cart-contact.jsonl"  # ann: signup, push consent, product view, cart
T0 = 1767614400000  # 2026-01-05T12:00:00Z: long before any erasure a test makes


def engine_on(store: StateStore, policy: PolicyConfig | None = None) -> Engine:
    """A fresh engine (a new run) on ``store``: no holdout, event clock, default models."""
    models = {"lead": ModelConfig(name="lead"), "churn": ModelConfig(name="churn")}
    core = DecisionCore(policy or PolicyConfig(holdout_share=0.0), models,
                        LabelSettings(7.0, 7.0, frozenset({"purchase"})))
    return Engine(store, core, EngineMetrics(CollectorRegistry()))


def line(event_id: str, type_: str, ts: int, contact: str | None = "ann", **extra) -> bytes:
    doc = {"event_id": event_id, "type": type_, "ts": ts, **extra}
    if contact is not None:
        doc["contact_id"] = contact
    return orjson.dumps(doc)


@pytest.fixture(params=["memory", "redis"])
def store(request):
    """An empty store of each kind (Redis: a real server, flushed)."""
    made = open_store(request.getfixturevalue("redis_url") if request.param == "redis" else "memory://")
    yield made
    made.close()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ------------------------------------------------------------------ replay after erasure

def test_replay_after_erase_brings_back_no_profile_and_no_decision(store):
    """The same events again after an erasure: every one dropped and counted, nothing stored,
    no decision, no dead letter."""
    lines = EXAMPLE.read_bytes().splitlines()
    end = T0 + 20 * DAY_MS
    first = engine_on(store).process(RawBatch(lines, "cart.jsonl", advance_to_ms=end))
    assert {d["action"] for d in first.decisions} >= {"welcome", "cart_reminder"}
    assert store.erase("ann") is True
    assert store.export("ann") is None

    again = engine_on(store)
    result = again.process(RawBatch(lines, "cart.jsonl", advance_to_ms=end))
    assert result.decisions == [] and result.dead_letters == [] and result.experiments == []
    assert again.totals.erased == len(lines) and again.totals.events == 0
    assert again.metrics.registry.get_sample_value("touchline_erased_events_total") == len(lines)
    assert store.export("ann") is None


def test_cli_replay_after_erase_on_redis(redis_url, tmp_path, monkeypatch, capsys):
    """Through the command line on Redis: run, erase, run the same file again: no decision, no
    profile; the erase lists the JSONL lines of the first run that still mention the contact."""
    first, second = tmp_path / "first", tmp_path / "second"
    run = ["run", "--input", str(EXAMPLE), "--redis", redis_url, "--no-metrics", "--quiet", "--json"]
    assert main([*run, "--out", str(first)]) == 0
    decided = (first / "decisions.jsonl").read_bytes().splitlines()
    assert len(decided) >= 1
    capsys.readouterr()

    monkeypatch.setenv("TOUCHLINE_OUTPUT__DIR", str(first))
    assert main(["contact", "erase", "ann", "--redis", redis_url, "--settle-seconds", "0"]) == 0
    err = capsys.readouterr().err
    assert "erased contact 'ann'" in err
    assert f"still in {first / 'decisions.jsonl'}: {len(decided)} line(s)" in err
    monkeypatch.delenv("TOUCHLINE_OUTPUT__DIR")

    assert main([*run, "--out", str(second)]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["erased_events_dropped"] == 4 and summary["events_processed"] == 0
    assert summary["decisions_total"] == 0 and summary["dead_letters_total"] == 0
    assert (second / "decisions.jsonl").read_bytes() == b""
    assert main(["contact", "export", "ann", "--redis", redis_url]) == 1  # nothing stored
    client = redis.Redis.from_url(redis_url)
    assert not [k for k in client.scan_iter(match="*ann*")]


# ------------------------------------------------------------------ unsubscribe and re-admission

def test_an_unsubscribe_survives_erasure_and_readmission(store):
    """Unsubscribe from email, erase, a newer cart event: dropped (no email, no decision at all).
    A newer signup re-admits the contact afresh, with email still refused: its cart gets no email."""
    e = engine_on(store)
    e.process(RawBatch([line("s1", "signup", T0), line("u1", "unsubscribe", T0 + 1000, channel="email")],
                       "in", advance_to_ms=T0 + HOUR_MS))
    assert store.load(["ann"])["ann"].consent == {"email": False}
    store.erase("ann")

    new = now_ms() + DAY_MS  # newer than the erasure
    e = engine_on(store)
    cart = e.process(RawBatch([line("c1", "add_to_cart", new, properties={"value": 50.0})], "in",
                              advance_to_ms=new + DAY_MS))
    assert cart.decisions == [] and e.totals.erased == 1
    assert store.export("ann") is None

    e = engine_on(store)
    later = new + 2 * DAY_MS
    result = e.process(RawBatch([
        line("s2", "signup", later),
        line("c2", "add_to_cart", later + HOUR_MS, properties={"value": 50.0}),
    ], "in", advance_to_ms=later + 3 * DAY_MS))
    assert e.totals.erased == 0 and e.totals.events == 2
    profile = store.load(["ann"])["ann"]
    assert profile.consent == {"email": False} and profile.events_total == 2
    assert [d for d in result.decisions if d["channel"] == "email"] == []
    assert "no_consent" in e.totals.suppressions


def test_a_granting_consent_update_readmits_with_that_channel_granted(store):
    """A consent_update granting email, newer than the erasure, re-admits; that very event
    grants the channel refused before the erasure."""
    e = engine_on(store)
    e.process(RawBatch([line("u1", "unsubscribe", T0, channel="email")], "in"))
    store.erase("ann")
    new = now_ms() + DAY_MS
    refused = engine_on(store)
    refused.process(RawBatch([line("g0", "consent_update", new, channel="email", properties={"granted": False})],
                             "in"))
    assert refused.totals.erased == 1 and store.export("ann") is None  # a refusal re-admits no one
    e = engine_on(store)
    e.process(RawBatch([line("g1", "consent_update", new + 1, channel="email", properties={"granted": True})], "in"))
    assert store.load(["ann"])["ann"].consent == {"email": True}


def test_only_a_newer_signup_readmits_and_the_old_stream_stays_out(store):
    """The old stream's own signup (older than the erasure) re-admits no one; a new signup
    does; and replaying the old stream after that re-admission still changes nothing."""
    lines = EXAMPLE.read_bytes().splitlines()
    engine_on(store).process(RawBatch(lines, "cart.jsonl", advance_to_ms=T0 + 20 * DAY_MS))
    store.erase("ann")
    new = now_ms() + DAY_MS

    e = engine_on(store)
    result = e.process(RawBatch([line("s-new", "signup", new)], "in", advance_to_ms=new + HOUR_MS))
    assert e.totals.erased == 0 and [d["action"] for d in result.decisions] == ["welcome"]
    assert store.load(["ann"])["ann"].events_total == 1
    t = store.tombstones([(CONTACT, "ann")])[(CONTACT, "ann")]
    assert t.readmitted_ms == new and t.erased_ms < new

    replay = engine_on(store)
    result = replay.process(RawBatch(lines, "cart.jsonl", advance_to_ms=T0 + 20 * DAY_MS))
    assert result.decisions == [] and replay.totals.erased == len(lines)
    assert store.load(["ann"])["ann"].events_total == 1


def test_anonymous_events_of_an_erased_contact_do_not_rebuild_it(store):
    """Anonymous ids linked to the erased contact are tombstoned too: their replayed events,
    the identify that would link them back included, are dropped."""
    lines = [line("a1", "page_view", T0, contact=None, anonymous_id="dev-1"),
             line("a2", "identify", T0 + 1000, anonymous_id="dev-1"),
             line("a3", "add_to_cart", T0 + 2000, contact=None, anonymous_id="dev-1", properties={"value": 9.0})]
    engine_on(store).process(RawBatch(lines, "in"))
    assert store.export("ann")["aliases"] == ["dev-1"]
    store.erase("ann")
    e = engine_on(store)
    e.process(RawBatch(lines, "in", advance_to_ms=T0 + DAY_MS))
    assert e.totals.erased == 3
    assert store.export("ann") is None
    assert store.load(["anon:dev-1"])["anon:dev-1"].events_total == 0
    e = engine_on(store)  # another visitor is not affected
    e.process(RawBatch([line("b1", "page_view", T0, contact=None, anonymous_id="dev-2")], "in"))
    assert e.totals.erased == 0 and e.totals.events == 1


# ------------------------------------------------------------------ the tombstone itself

def test_redis_tombstone_has_no_ttl_and_no_raw_id(redis_url):
    """The tombstone hash has no TTL; its fields are keyed hashes; no key or value left in
    Redis holds the contact or anonymous id; the generated key is kept, and a different
    configured key is refused while tombstones exist."""
    from touchline.state.base import StoreError, StoreOptions
    from touchline.state.redis import ERASURE_KEY_KEY, TOMBSTONES_KEY

    store = open_store(redis_url)
    lines = [line("a1", "identify", T0, anonymous_id="device-ann"),
             line("u1", "unsubscribe", T0 + 1, channel="sms")]
    engine_on(store).process(RawBatch(lines, "in"))
    store.erase("ann")
    store.close()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.ttl(TOMBSTONES_KEY) == -1  # no expiry
    fields = client.hgetall(TOMBSTONES_KEY)
    assert len(fields) == 2
    for name, value in fields.items():
        assert len(name) == 64 and int(name, 16) >= 0
        assert set(orjson.loads(value)) <= {"at", "v", "unsub", "back"}
    assert sorted(orjson.loads(v).get("unsub", []) for v in fields.values()) == [[], ["sms"]]
    for key in client.scan_iter():
        assert "ann" not in key
        kind = client.type(key)
        dumped = (str(client.hgetall(key)) if kind == "hash" else str(client.get(key)) if kind == "string"
                  else str(client.zrange(key, 0, -1)) if kind == "zset" else str(client.smembers(key))
                  if kind == "set" else "")
        assert "ann" not in dumped, key

    generated = client.get(ERASURE_KEY_KEY)
    other = open_store(redis_url, StoreOptions(erasure_key="something else"))
    with pytest.raises(StoreError, match="erasure tombstone"):
        other.tombstones([(CONTACT, "ann")])
    other.close()
    same = open_store(redis_url, StoreOptions(erasure_key=generated))
    assert (CONTACT, "ann") in same.tombstones([(CONTACT, "ann")])
    same.close()


# ------------------------------------------------------------------ outputs

def _outputs(out: Path) -> dict[str, bytes]:
    """A run's JSONL outputs mentioning ann (and her anonymous id) among others."""
    files = {
        "decisions.jsonl": [{"decision_id": "d1", "contact_id": "ann", "channel": "email"},
                            {"decision_id": "d2", "contact_id": "annie", "channel": "email"},
                            {"decision_id": "d3", "contact_id": "bob", "channel": "push"}],
        "experiments.jsonl": [{"kind": "exposure", "contact_id": "bob", "arm": "control"}],
        "events.jsonl": [{"event_id": "e1", "type": "page_view", "anonymous_id": "dev-ann"},
                         {"event_id": "e2", "type": "signup", "contact_id": "ann"},
                         {"event_id": "e3", "type": "signup", "contact_id": "bob"}],
        "dead_letters.jsonl": [{"kind": "invalid_event", "reason": "bad_timestamp",
                                "raw": '{"event_id":"x","ts":"soon","contact_id":"ann"}'},
                               {"kind": "invalid_event", "reason": "bad_json", "raw": "{not json"}],
        "outbox/email.jsonl": [{"decision_id": "d1", "contact_id": "ann"}],
    }
    written = {}
    for name, docs in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = b"".join(orjson.dumps(d) + b"\n" for d in docs)
        path.write_bytes(data)
        written[name] = data
    return written


def test_erase_outputs_removes_only_the_contacts_lines(tmp_path, capsys):
    """--outputs rewrites the files that mention the contact without those lines (the others
    kept byte for byte) and leaves files that do not mention it untouched."""
    out = tmp_path / "out"
    before = _outputs(out)
    untouched = (out / "experiments.jsonl").stat().st_ino
    assert main(["contact", "erase", "ann", "--outputs", str(out)]) == 0  # memory:// state: outputs only
    err = capsys.readouterr().err
    assert f"removed 1 line(s) from {out / 'decisions.jsonl'}" in err
    after = {name: (out / name).read_bytes() for name in before}
    assert after["experiments.jsonl"] == before["experiments.jsonl"]
    assert (out / "experiments.jsonl").stat().st_ino == untouched
    kept = {name: [x for x in before[name].splitlines(keepends=True) if b'"ann"' not in x and b'\\"ann\\"' not in x]
            for name in before}
    for name in before:
        assert after[name] == b"".join(kept[name]), name
    assert b"annie" in after["decisions.jsonl"] and after["outbox/email.jsonl"] == b""
    assert b"dev-ann" in after["events.jsonl"]  # memory:// knows no aliases: only the contact id goes
    assert not [p for p in out.rglob("*.erasing")]


def test_erase_outputs_with_redis_removes_the_anonymous_ids_lines_too(redis_url, tmp_path):
    """On Redis the contact's linked anonymous ids are known: their lines go as well."""
    store = open_store(redis_url)
    engine_on(store).process(RawBatch([line("a1", "identify", T0, anonymous_id="dev-ann")], "in"))
    store.close()
    out = tmp_path / "out"
    before = _outputs(out)
    assert main(["contact", "erase", "ann", "--redis", redis_url, "--outputs", str(out),
                 "--settle-seconds", "0"]) == 0
    events = (out / "events.jsonl").read_bytes()
    assert events == before["events.jsonl"].splitlines(keepends=True)[2]


def test_erase_outputs_refused_while_an_engine_writes_there(tmp_path, capsys):
    """A run holds its output directory: the rewrite refuses and changes nothing."""
    from touchline.erasure_outputs import writing_outputs

    out = tmp_path / "out"
    before = _outputs(out)
    with writing_outputs(out):
        assert main(["contact", "erase", "ann", "--outputs", str(out)]) == 1
    assert "an engine is writing to" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in before} == before
    assert main(["contact", "erase", "ann", "--outputs", str(out)]) == 0  # once it has finished


# ------------------------------------------------------------------ another process, a live engine

def test_erase_from_another_process_while_the_engine_runs(redis_url, tmp_path):
    """A live engine on Redis; `touchline contact erase` in another process: the contact's next
    events are dropped (counted), its profile does not come back, other contacts go on."""
    from live_engine import LiveEngine
    from waiting import wait_for

    store = open_store(redis_url)

    def append(*lines: bytes) -> None:
        with live.events.open("ab") as f:
            f.write(b"".join(x + b"\n" for x in lines))

    def erased_total() -> float:
        import urllib.request

        with urllib.request.urlopen(f"{live.url}/metrics", timeout=5) as answer:
            for text in answer.read().decode().splitlines():
                if text.startswith("touchline_erased_events_total "):
                    return float(text.split()[1])
        return 0.0

    with LiveEngine(tmp_path, rate=30, **{"state.url": redis_url}) as live:
        append(line("z1", "signup", now_ms(), contact="zed"), line("z2", "page_view", now_ms(), contact="zed"))
        wait_for(lambda: (store.export("zed") or {}).get("profile"), "zed's profile")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-m", "touchline", "contact", "erase", "zed", "--redis", redis_url,
                               "--settle-seconds", "0.5"], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "erased contact 'zed'" in done.stderr
        append(line("z3", "add_to_cart", now_ms(), contact="zed", properties={"value": 20.0}),
               line("z4", "page_view", now_ms(), contact="zed"))
        wait_for(lambda: erased_total() >= 2, "the engine to drop zed's new events")
        append(line("y1", "signup", now_ms(), contact="yan"))
        wait_for(lambda: store.export("yan"), "another contact to go on")
        assert store.export("zed") is None
    store.close()
    assert live.result["run"].summary["erased_events_dropped"] >= 2
    decisions = (tmp_path / "out" / "decisions.jsonl").read_bytes().splitlines()
    assert not [d for d in map(orjson.loads, decisions) if d["contact_id"] == "zed" and d["event_time_ms"] is not None
                and d.get("trigger_event_id") in ("z3", "z4")]


# ------------------------------------------------------------------ opt-in consent defaults

def test_the_opt_in_example_config_loads_and_sends_no_email_without_consent(tmp_path):
    """examples/opt-in.toml: email, SMS and push default to no consent; a contact with no
    consent_update gets no message on them, while one who grants email does."""
    from touchline.settings import load_settings

    settings = load_settings(ROOT / "examples" / "opt-in.toml", {"policy.holdout_share": 0.0})
    defaults = settings.policy.consent_default
    assert defaults["email"] is False and defaults["sms"] is False and defaults["push"] is False
    e = engine_on(open_store("memory://"), settings.policy)
    result = e.process(RawBatch(
        [line("s1", "signup", T0), line("c1", "add_to_cart", T0 + HOUR_MS, properties={"value": 80.0}),
         line("g2", "consent_update", T0 - 1, contact="bea", channel="email", properties={"granted": True}),
         line("s2", "signup", T0, contact="bea")],
        "in", advance_to_ms=T0 + 3 * DAY_MS))
    sent = {(d["contact_id"], d["channel"]) for d in result.decisions}
    assert not [c for c in sent if c[0] == "ann" and c[1] in ("email", "sms", "push")]
    assert ("bea", "email") in sent
    assert e.totals.suppressions["no_consent"] >= 1


def test_erase_names_the_kafka_topics_and_compaction(tmp_path, monkeypatch, capsys):
    """With Kafka configured, erase lists the topics that may hold the contact and says how a
    tombstone on a compacted topic removes its records (nothing is sent to a broker)."""
    monkeypatch.setenv("TOUCHLINE_KAFKA__BOOTSTRAP", "127.0.0.1:1")
    out = tmp_path / "out"
    out.mkdir()
    assert main(["contact", "erase", "ann", "--outputs", str(out)]) == 0
    err = capsys.readouterr().err
    assert "keyed by contact id 'ann': touchline.decisions, touchline.experiments" in err
    assert "touchline.events" in err and "touchline.dead-letters" in err
    assert "cleanup.policy=compact" in err and "null value" in err
