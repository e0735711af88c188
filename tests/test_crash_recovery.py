"""The production engine killed, stopped and restarted as an operator would, against a real
broker (Tansu) and a real redis-server: nothing lost, nothing delivered twice, no restart
from the start of the topic."""

from __future__ import annotations

import random
import re
from collections import Counter
from contextlib import contextmanager
from types import SimpleNamespace
import signal
import time

import orjson
import pytest
import redis

from engine_process import EngineProcess, cap_violations, crash_repeatedly, ids_of, write_config
from http_server import WebhookServer
from touchline.connectors.simulator import Simulator
from touchline.decisions.policy import PolicyConfig
from touchline.runner import simulator_spec
from touchline.settings import load_settings
from touchline.state.redis import RedisStore


def _db(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


def _events(contacts: int, days: float) -> list[bytes]:
    settings = load_settings(None, {"simulator.contacts": contacts, "simulator.days": days})
    return list(Simulator(simulator_spec(settings)).lines())


def _suffixed(topics: dict[str, str], suffix: str) -> dict[str, str]:
    """The same events topic, outputs of one's own."""
    return {k: v if k == "kafka.events_topic" else v.replace(".", f"-{suffix}.", 1) for k, v in topics.items()}


def _resumed_offsets(stderr: str) -> list[int]:
    return [int(n) for n in re.findall(r"resuming .*? at offset (\d+)", stderr)]


@pytest.fixture
def stream(kafka_broker, topics):
    """~57k events of 2,000 contacts over 20 days on one partition (one partition: the order of
    events is the topic's, so two runs of it can be compared decision by decision)."""
    lines = _events(2000, 20)
    kafka_broker.create_topics(topics["kafka.events_topic"], partitions=1)
    kafka_broker.produce(topics["kafka.events_topic"], lines)
    return lines


@contextmanager
def _beside_a_reference(kafka_broker, topics, redis_url, tmp_path, name: str):
    """An uninterrupted reference run of the stream (Redis db 1, outputs of its own), then an
    engine of the same settings on db 2 and outputs of its own, for the test to disturb;
    email goes to a webhook endpoint for each."""
    ref_topics, run_topics = _suffixed(topics, "ref"), _suffixed(topics, name)
    with WebhookServer() as ref_hook, WebhookServer() as hook:
        ref = EngineProcess(tmp_path / "ref", write_config(tmp_path / "ref.toml", ref_topics, ref_hook.url),
                            kafka_broker.bootstrap, _db(redis_url, 1))
        assert ref.start().wait() == 0, ref.stderr()
        engine = EngineProcess(tmp_path / name, write_config(tmp_path / f"{name}.toml", run_topics, hook.url),
                               kafka_broker.bootstrap, _db(redis_url, 2))
        yield SimpleNamespace(ref=ref, engine=engine, ref_topics=ref_topics, topics=run_topics, ref_hook=ref_hook,
                              hook=hook)


def test_sigkill_at_ten_random_moments_loses_nothing_and_delivers_once(kafka_broker, topics, redis_url, stream,
                                                                        tmp_path):
    with _beside_a_reference(kafka_broker, topics, redis_url, tmp_path, "crash") as runs:
        ref, engine, ref_topics, crash_topics, ref_hook, hook = (
            runs.ref, runs.engine, runs.ref_topics, runs.topics, runs.ref_hook, runs.hook)
        moments = crash_repeatedly(engine, kills=10, rng=random.Random(17), low=0.4, high=1.2)
        assert len(moments) == 10
    expected = ids_of(kafka_broker.consume_all(ref_topics["kafka.decisions_topic"]))
    got = ids_of(kafka_broker.consume_all(crash_topics["kafka.decisions_topic"]))
    assert ref.summary()["decisions_total"] == sum(expected.values()) == len(expected) > 100
    missing = set(expected) - set(got)
    assert not missing, f"{len(missing)} of {len(expected)} decisions never reached the decisions topic"
    assert set(got) == set(expected)  # and no decision the uninterrupted run did not make
    # the endpoint: every email decision delivered, none twice
    emails = {i for i, d in _records(kafka_broker, ref_topics).items() if d["channel"] == "email"}
    assert set(hook.delivered) == emails == set(ref_hook.delivered)
    # Sent twice only when a kill came between the request and its answer (the two generals:
    # no sender can know): the same Idempotency-Key then, which the endpoint answers once.
    # At most the requests in flight at each kill: kills x the connector's concurrency.
    assert hook.replays <= len(moments) * 4, f"{hook.replays} decisions reached the endpoint twice"
    # every bad line dead-lettered (a replay may send one again: see README "Running in production")
    def sources(t):
        return Counter(dict(m.headers())["touchline.source"].decode().rsplit(":", 1)[1]
                       for m in kafka_broker.consume_all(t["kafka.dead_letter_topic"]))
    ref_dead, crash_dead = sources(ref_topics), sources(crash_topics)
    assert set(crash_dead) == set(ref_dead) and ref_dead
    print(f"dead letters: {len(ref_dead)} bad lines, {sum(crash_dead.values())} messages after {len(moments)} kills")
    # every restart resumed from a snapshot, none from before an earlier one. A kill before the
    # first snapshot resumes nothing; one before the first snapshot past a batch resumes at 0
    # and reads again what that run may have committed (applied once: a profile ignores an
    # event id it has seen)
    offsets = [_resumed_offsets(engine.stderr(n)) for n in range(2, engine.starts + 1)]
    resumed = [o[0] for o in offsets if o]
    assert len(resumed) >= 5 and resumed == sorted(resumed) and resumed[-1] > 0, offsets
    assert all(len(o) == 1 for o in offsets[offsets.index([resumed[0]]):]), offsets
    print(f"crash suite: {len(expected)} decisions, 0 missing; {hook.replays} re-sent to the endpoint with their "
          f"key; restarts resumed at offsets {resumed} of {len(stream)}")
    # stored state equal, for a sample of contacts
    a, b = RedisStore(_db(redis_url, 1)), RedisStore(_db(redis_url, 2))
    contacts = sorted({orjson.loads(line)["contact_id"] for line in stream[:3000]
                       if line.startswith(b"{") and b'"contact_id"' in line})[:40]
    for contact in contacts:
        ea, eb = a.export(contact), b.export(contact)
        assert ea["aliases"] == eb["aliases"], contact  # the identity links
        assert ea == eb, contact  # the profile's own merged aliases too (see the ``link`` script)


def _records(broker, topics) -> dict[str, dict]:
    return {orjson.loads(m.value())["decision_id"]: orjson.loads(m.value())
            for m in broker.consume_all(topics["kafka.decisions_topic"])}


def test_sigterm_then_restart_finishes_with_nothing_lost_or_repeated(kafka_broker, topics, redis_url, stream,
                                                                     tmp_path):
    with _beside_a_reference(kafka_broker, topics, redis_url, tmp_path, "term") as runs:
        engine, ref_topics, run_topics, ref_hook, hook = runs.engine, runs.ref_topics, runs.topics, runs.ref_hook, runs.hook
        engine.start()
        engine.wait_reading()  # start-up done (the signal handlers are in place): under load it takes a while
        time.sleep(1.5)
        assert engine.running()
        engine.kill(signal.SIGTERM)
        assert engine.wait(60) == 143  # documented: terminated by SIGTERM, with a summary of what was processed
        first = engine.summary()
        assert first["interrupted"] is True and 0 < first["events_processed"] < len(stream)
        assert engine.start().wait() == 0, engine.stderr()
        assert _resumed_offsets(engine.stderr())[0] > 0
    expected = ids_of(kafka_broker.consume_all(ref_topics["kafka.decisions_topic"]))
    got = ids_of(kafka_broker.consume_all(run_topics["kafka.decisions_topic"]))
    assert set(got) == set(expected)
    assert max(got.values()) == 1, "a clean stop and restart sent a decision to the topic twice"
    assert set(hook.delivered) == set(ref_hook.delivered) and hook.replays == 0


def test_redis_restarted_without_persistence_stops_the_run_before_caps_break(kafka_broker, topics, stream, tmp_path):
    from redis_servers import RedisServer

    server = RedisServer(tmp_path / "redis")
    server.start()
    client = redis.Redis.from_url(server.url)
    client.config_set("appendonly", "no")  # as a cache-style Redis is often run: nothing survives a restart
    engine = EngineProcess(tmp_path / "run", write_config(tmp_path / "run.toml", topics),
                           kafka_broker.bootstrap, server.url)
    try:
        engine.start()
        engine.wait_reading()
        deadline = time.monotonic() + 60  # until decisions are out (on a loaded machine a while)
        while time.monotonic() < deadline and engine.running() \
                and not kafka_broker.consume_all(topics["kafka.decisions_topic"], timeout=2.0):
            time.sleep(0.2)
        assert engine.running()
        server.proc.kill()  # type: ignore[union-attr]
        server.proc.wait()  # type: ignore[union-attr]
        server.start()  # empty: appendonly was off
        code = engine.wait(90)
    finally:
        server.stop()
    err = engine.stderr()
    assert code == 1, err
    assert "lost its data" in err and server.url.rsplit("/", 1)[0].split("//")[1] in err
    assert "Traceback" not in err and "panicked" not in err
    assert "no persistence" in err  # the warning at start
    decisions = [orjson.loads(m.value()) for m in kafka_broker.consume_all(topics["kafka.decisions_topic"])]
    assert decisions
    assert cap_violations(decisions, PolicyConfig().caps) == []


def _person_key(lines: list[bytes]):
    """Key each event by the person: the contact, or for an anonymous event the contact its
    anonymous id is later linked to (so one person's events share a partition)."""
    owner: dict[str, str] = {}
    for line in lines:
        event = _json(line)
        if event.get("contact_id") and event.get("anonymous_id"):
            owner.setdefault(str(event["anonymous_id"]), str(event["contact_id"]))

    def key_of(line: bytes) -> bytes:
        event = _json(line)
        anon = str(event.get("anonymous_id"))
        return str(event.get("contact_id") or owner.get(anon) or anon).encode()

    return key_of


def _json(line: bytes) -> dict:
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return {}
    return event if isinstance(event, dict) else {}


def _decide(kafka_broker, topics, redis_url, tmp_path, name: str, processes: int, db: int) -> list[dict]:
    t = _suffixed(topics, name)
    engine = EngineProcess(tmp_path / name, write_config(tmp_path / f"{name}.toml", t), kafka_broker.bootstrap,
                           _db(redis_url, db), "--processes", str(processes))
    assert engine.start().wait(240) == 0, engine.stderr()
    err = engine.stderr()
    assert "Traceback" not in err and "panicked" not in err
    return [orjson.loads(m.value()) for m in kafka_broker.consume_all(t["kafka.decisions_topic"])]


def test_two_processes_over_three_partitions_decide_as_one(kafka_broker, topics, redis_url, tmp_path):
    """With learning off, one person's events on one partition: 2 processes over 3 partitions
    give exactly the decision ids of 1 process (timers fire on their partition's clock)."""
    lines = _events(600, 14)
    kafka_broker.create_topics(topics["kafka.events_topic"], partitions=3)
    kafka_broker.produce(topics["kafka.events_topic"], lines, _person_key(lines))
    one = {d["decision_id"] for d in _decide(kafka_broker, topics, redis_url, tmp_path, "p1", 1, 1)}
    two_runs = _decide(kafka_broker, topics, redis_url, tmp_path, "p2", 2, 2)
    two = {d["decision_id"] for d in two_runs}
    assert len(one) > 100
    assert one == two, f"{len(one - two)} only with 1 process, {len(two - one)} only with 2"
    assert len(two_runs) == len(two)
    assert cap_violations(two_runs, PolicyConfig().caps) == []


def test_two_processes_with_a_person_on_two_partitions_never_fail_on_a_conflict(kafka_broker, topics, redis_url,
                                                                                 tmp_path):
    """Anonymous events keyed by the anonymous id, the rest by the contact (as many producers
    do): stitched contacts are written from two partitions, so commits race (CONFLICT) and
    are redone; the run ends normally and no cap is exceeded."""
    from touchline.connectors.loadgen import produce_events

    settings = load_settings(None, {"kafka.bootstrap": kafka_broker.bootstrap, "kafka.partitions": 3,
                                    "kafka.events_topic": topics["kafka.events_topic"]})
    lines = _events(600, 14)
    assert produce_events(lines, settings.kafka).produced == len(lines)
    decisions = _decide(kafka_broker, topics, redis_url, tmp_path, "mixed", 2, 3)
    assert len(decisions) > 100
    assert cap_violations(decisions, PolicyConfig().caps) == []
