"""The production engine killed, stopped and restarted as an operator would, against a real
broker (Tansu) and a real redis-server: nothing lost, nothing delivered twice, no restart
from the start of the topic."""

from __future__ import annotations

import random
import re
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
    """~27k events of 1,000 contacts over 20 days on one partition (one partition: the order of
    events is the topic's, so two runs of it can be compared decision by decision)."""
    lines = _events(1000, 20)
    kafka_broker.create_topics(topics["kafka.events_topic"], partitions=1)
    kafka_broker.produce(topics["kafka.events_topic"], lines)
    return lines


def test_sigkill_at_ten_random_moments_loses_nothing_and_delivers_once(kafka_broker, topics, redis_url, stream,
                                                                        tmp_path):
    ref_topics, crash_topics = _suffixed(topics, "ref"), _suffixed(topics, "crash")
    with WebhookServer() as ref_hook, WebhookServer() as hook:
        ref = EngineProcess(tmp_path / "ref", write_config(tmp_path / "ref.toml", ref_topics, ref_hook.url),
                            kafka_broker.bootstrap, _db(redis_url, 1))
        assert ref.start().wait() == 0, ref.stderr()
        engine = EngineProcess(tmp_path / "crash", write_config(tmp_path / "crash.toml", crash_topics, hook.url),
                               kafka_broker.bootstrap, _db(redis_url, 2))
        moments = crash_repeatedly(engine, kills=10, rng=random.Random(17), low=1.2, high=3.0)
        assert len(moments) == 10
    expected = ids_of(kafka_broker.consume_all(ref_topics["kafka.decisions_topic"]))
    got = ids_of(kafka_broker.consume_all(crash_topics["kafka.decisions_topic"]))
    assert ref.summary()["decisions_total"] == sum(expected.values()) == len(expected) > 100
    missing = set(expected) - set(got)
    if missing:
        ref_records, crash_records = _records(kafka_broker, ref_topics), _records(kafka_broker, crash_topics)
        extra = set(got) - set(expected)
        show = [(r["contact_id"], r["action"], r["trigger"], r["decision_time"]) for r in
                sorted((ref_records[i] for i in missing), key=lambda r: r["contact_id"])]
        show2 = [(r["contact_id"], r["action"], r["trigger"], r["decision_time"]) for r in
                 sorted((crash_records[i] for i in extra), key=lambda r: r["contact_id"])]
        print("MISSING", *show, sep="\n  ")
        from confluent_kafka import Consumer, TopicPartition
        cons = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": "dbg"})
        t = crash_topics["kafka.decisions_topic"]
        print("WATERMARKS", [cons.get_watermark_offsets(TopicPartition(t, p), timeout=5) for p in range(3)],
              "consumed", sum(got.values()))
        print("AT ENDPOINT", [i in hook.delivered for i in missing])
        r2 = redis.Redis.from_url(_db(redis_url, 2), decode_responses=True)
        for i in list(missing)[:5]:
            c = ref_records[i]["contact_id"]
            print(c, i, r2.hgetall(f"tl:{{{c}}}:outbox"), r2.zrange(f"tl:{{{c}}}:sends", 0, -1, withscores=True))
        print("EXTRA", *show2, sep="\n  ")
    assert not missing, f"{len(missing)} of {len(expected)} decisions never reached the decisions topic"
    assert set(got) == set(expected)  # and no decision the uninterrupted run did not make
    # the endpoint: every email decision delivered, none twice
    emails = {i for i, d in _records(kafka_broker, ref_topics).items() if d["channel"] == "email"}
    assert set(hook.delivered) == emails == set(ref_hook.delivered)
    assert hook.replays == 0 and max(hook.attempts.values()) == 1, "a decision reached the endpoint twice"
    # every restart resumed from a snapshot, none from the start of the topic
    offsets = [_resumed_offsets(engine.stderr(n)) for n in range(2, engine.starts + 1)]
    assert all(len(o) == 1 for o in offsets), offsets
    assert [o[0] for o in offsets] == sorted(o[0] for o in offsets) and offsets[-1][0] > 0
    assert sum(1 for o in offsets if o[0] == 0) <= 1  # only a kill before the first snapshot starts at 0
    # stored state equal, for a sample of contacts
    a, b = RedisStore(_db(redis_url, 1)), RedisStore(_db(redis_url, 2))
    contacts = sorted({orjson.loads(line)["contact_id"] for line in stream[:3000]
                       if line.startswith(b"{") and b'"contact_id"' in line})[:40]
    for contact in contacts:
        assert a.export(contact) == b.export(contact), contact


def _records(broker, topics) -> dict[str, dict]:
    return {orjson.loads(m.value())["decision_id"]: orjson.loads(m.value())
            for m in broker.consume_all(topics["kafka.decisions_topic"])}


def test_sigterm_then_restart_finishes_with_nothing_lost_or_repeated(kafka_broker, topics, redis_url, stream,
                                                                     tmp_path):
    ref_topics, run_topics = _suffixed(topics, "ref"), _suffixed(topics, "term")
    with WebhookServer() as ref_hook, WebhookServer() as hook:
        ref = EngineProcess(tmp_path / "ref", write_config(tmp_path / "ref.toml", ref_topics, ref_hook.url),
                            kafka_broker.bootstrap, _db(redis_url, 1))
        assert ref.start().wait() == 0, ref.stderr()
        engine = EngineProcess(tmp_path / "term", write_config(tmp_path / "term.toml", run_topics, hook.url),
                               kafka_broker.bootstrap, _db(redis_url, 2))
        engine.start()
        time.sleep(3.0)
        assert engine.running()
        engine.kill(signal.SIGTERM)
        assert engine.wait(60) == 130  # documented: interrupted, with a summary of what was processed
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
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not client.dbsize():
            time.sleep(0.05)
        time.sleep(1.0)
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
