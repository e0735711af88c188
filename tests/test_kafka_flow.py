"""The engine on a real Kafka-protocol broker (Tansu on loopback): events topic in,
decisions, dead-letter and channel topics out, and the failures a user meets."""

from __future__ import annotations

import threading
import time

import orjson
import pytest

from touchline.cli import main
from waiting import wait_for
from touchline.connectors.simulator import Simulator
from touchline.runner import run, simulator_spec
from touchline.settings import load_settings


def _events(settings) -> list[bytes]:
    return list(Simulator(simulator_spec(settings)).lines())


def _kafka_settings(small_settings, broker, topics, **extra):
    return small_settings(**{"kafka.bootstrap": broker.bootstrap, "source.kind": "kafka", "kafka.tail": False,
                             "kafka.connect_timeout_seconds": 5, **topics, **extra})


def test_kafka_run_gives_the_same_decisions_as_a_file_replay(kafka_broker, topics, small_settings, tmp_path):
    ref_settings = small_settings("ref", **{"simulator.days": 7})
    lines = _events(ref_settings)
    events_file = tmp_path / "events.jsonl"
    events_file.write_bytes(b"\n".join(lines) + b"\n")
    reference = run(small_settings("ref", **{"source.kind": "jsonl", "source.path": events_file}), progress=None)
    expected = (tmp_path / "ref" / "decisions.jsonl").read_bytes().splitlines()

    kafka_broker.create_topics(topics["kafka.events_topic"], partitions=1)  # one partition: file order
    kafka_broker.produce(topics["kafka.events_topic"], lines)
    result = run(_kafka_settings(small_settings, kafka_broker, topics, **{"simulator.days": 7}), progress=None)

    got = kafka_broker.consume_all(topics["kafka.decisions_topic"])
    # byte-identical; the decisions topic has several partitions keyed by contact, so
    # order holds per contact (partition), not across contacts
    assert sorted(m.value() for m in got) == sorted(expected)
    for part in {m.partition() for m in got}:
        in_part = [m.value() for m in got if m.partition() == part]
        assert in_part == [v for v in expected if v in set(in_part)]
    assert all(m.key().decode() == orjson.loads(m.value())["contact_id"] for m in got)
    assert result.summary["events_processed"] == reference.summary["events_processed"]
    dead = kafka_broker.consume_all(topics["kafka.dead_letter_topic"])
    assert len(dead) == reference.summary["dead_letters_total"] > 0
    for msg in dead:
        headers = dict(msg.headers())
        assert headers["touchline.kind"] == b"invalid_event" and headers["touchline.reason"]
        source = headers["touchline.source"].decode()
        assert source.startswith(topics["kafka.events_topic"] + "[0]:")
        offset = int(source.rsplit(":", 1)[1])
        assert lines[offset] == msg.value()  # the original payload, at its own offset
    # channel topics: every decision of a delivered channel, once, with its id in a header
    email = kafka_broker.consume_all(topics["kafka.channel_topic_prefix"] + "email")
    expected_email = [orjson.loads(v) for v in expected if orjson.loads(v)["channel"] == "email"]
    assert sorted(m.value() for m in email) == sorted(orjson.dumps(d, option=orjson.OPT_SORT_KEYS)
                                                       for d in expected_email)
    assert all(dict(m.headers())["decision_id"] == orjson.loads(m.value())["decision_id"].encode() for m in email)
    assert result.summary["deliveries"]["email"] == {"delivered": len(expected_email), "failed": 0}


def test_several_partitions_keyed_by_contact_process_everything_once(kafka_broker, topics, small_settings):
    from prometheus_client import CollectorRegistry

    from touchline.connectors.loadgen import produce_events

    settings = _kafka_settings(small_settings, kafka_broker, topics, **{"simulator.days": 5})
    lines = _events(settings)
    stats = produce_events(lines, settings.kafka)  # creates the topic with kafka.partitions (3)
    assert stats.produced == len(lines) and stats.failed == 0
    result = run(settings, progress=None, registry=CollectorRegistry())
    s = result.summary
    assert s["events_processed"] + s["dead_letters_total"] == len(lines)
    ids = [orjson.loads(m.value())["decision_id"] for m in kafka_broker.consume_all(topics["kafka.decisions_topic"])]
    assert len(ids) == len(set(ids)) == s["decisions_total"] > 0
    sources = {dict(m.headers())["touchline.source"].decode().split("]")[0]
               for m in kafka_broker.consume_all(topics["kafka.dead_letter_topic"])}
    assert sources <= {f"{topics['kafka.events_topic']}[{p}" for p in range(3)}


def test_tailing_run_processes_events_as_they_arrive_and_stops_on_request(kafka_broker, topics, small_settings):
    settings = _kafka_settings(small_settings, kafka_broker, topics, **{"kafka.tail": True, "simulator.days": 3})
    lines = _events(settings)
    stop = threading.Event()
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(result=run(settings, progress=None, stop=stop)))
    thread.start()
    try:
        deadline = time.monotonic() + 30
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
        while topics["kafka.events_topic"] not in admin.list_topics(timeout=5).topics:  # the engine creates it
            assert time.monotonic() < deadline
            time.sleep(0.1)
        kafka_broker.produce(topics["kafka.events_topic"], lines, key_of=lambda v: b"k")
        decisions: list = []
        while time.monotonic() < deadline and not decisions:
            decisions = kafka_broker.consume_all(topics["kafka.decisions_topic"], timeout=2)
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    assert decisions
    assert box["result"].summary["events_processed"] > 0


def test_broker_down_is_a_clear_error_not_a_hang(tmp_path, capsys):
    from redis_servers import free_port

    started = time.monotonic()
    code = main(["run", "--kafka", f"127.0.0.1:{free_port()}", "--quiet", "--no-metrics", "--out",
                 str(tmp_path / "o")] + [])
    err = capsys.readouterr().err
    assert code == 1
    assert "unreachable" in err and "kafka.bootstrap" in err and "Traceback" not in err
    assert time.monotonic() - started < 60


def test_missing_topics_without_create_is_a_clear_error(kafka_broker, topics, small_settings):
    settings = _kafka_settings(small_settings, kafka_broker, topics, **{"kafka.create_topics": False})
    with pytest.raises(RuntimeError, match=r"do not exist.*kafka.create_topics"):
        run(settings, progress=None)


def test_bad_librdkafka_property_names_the_key(kafka_broker, topics, small_settings):
    settings = _kafka_settings(small_settings, kafka_broker, topics, **{"kafka.config": {"no.such.property": "1"}})
    with pytest.raises(ValueError, match=r"kafka.config: .*no.such.property"):
        run(settings, progress=None)


def test_secrets_are_not_allowed_inline_and_are_masked():
    with pytest.raises(ValueError, match="sasl.password.*kafka.sasl_password"):
        load_settings(None, {"kafka.config": {"sasl.password": "x"}})
    s = load_settings(None, {"kafka.bootstrap": "h:1", "kafka.sasl_password": "hunter2",
                             "kafka.config": {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}})
    assert s.kafka.client_config()["sasl.password"] == "hunter2"
    assert "hunter2" not in s.model_dump_json()


def test_simulate_kafka_produces_at_the_chosen_rate(kafka_broker, topics, capsys):
    code = main(["simulate", "--kafka", kafka_broker.bootstrap, "--topic", topics["kafka.events_topic"],
                 "--contacts", "20", "--days", "1", "--rate", "1000"])
    err = capsys.readouterr().err
    assert code == 0, err
    produced = int(err.split("produced ")[1].split(" ")[0].replace(",", ""))
    seconds = float(err.split(" in ")[1].split(" s")[0])
    assert produced == len(kafka_broker.consume_all(topics["kafka.events_topic"])) > 0
    assert seconds >= (produced - 1) / 1000 * 0.95  # paced: not faster than asked (a lower bound)


def test_rate_without_kafka_is_a_usage_error(capsys, tmp_path):
    assert main(["simulate", "--out", str(tmp_path / "e.jsonl"), "--rate", "10"]) == 2
    assert "--rate applies to --kafka" in capsys.readouterr().err


def test_feedback_comes_back_through_the_events_topic(kafka_broker, topics, small_settings):
    """A decision goes out on the email topic; its bounce comes back in on the events topic,
    naming the decision id, and the next decision for that contact avoids email."""
    from prometheus_client import CollectorRegistry

    settings = _kafka_settings(small_settings, kafka_broker, topics, **{"kafka.tail": True,
                                                                         "policy.holdout_share": 0.0})
    events, email_topic = topics["kafka.events_topic"], topics["kafka.channel_topic_prefix"] + "email"
    kafka_broker.create_topics(events, partitions=1)
    registry, stop, box = CollectorRegistry(), threading.Event(), {}
    thread = threading.Thread(target=lambda: box.update(
        result=run(settings, progress=None, stop=stop, registry=registry)))
    thread.start()

    t0 = 1767614400000  # 2026-01-05T12:00Z
    ev = lambda eid, type_, ts, **kw: orjson.dumps({"event_id": eid, "type": type_, "ts": ts, "contact_id": "c1", **kw})
    try:
        kafka_broker.produce(events, [ev("s1", "signup", t0)])
        sent = wait_for(lambda: kafka_broker.consume_all(email_topic, timeout=1) if kafka_broker.topic_exists(
            email_topic) else None, "the welcome email")
        decision = orjson.loads(sent[0].value())
        kafka_broker.produce(events, [
            ev("b1", "email_bounce", t0 + 60_000, channel="email",
               properties={"decision_id": decision["decision_id"], "bounce_type": "hard"}),
            ev("c1", "add_to_cart", t0 + 86_400_000, properties={"value": 20}),
            ev("p1", "page_view", t0 + 86_400_000 + 40 * 60_000),  # moves event time past the cart timer
        ])
        wait_for(lambda: (registry.get_sample_value("touchline_feedback_events_total",
                                                    {"channel": "email", "outcome": "bounce", "linked": "true"})
                          and registry.get_sample_value("touchline_timers_fired_total", {"kind": "cart"})),
                 "the bounce and the cart timer")
        # Bytewax's per-partition consumer lag, re-exported on the run's registry
        lag = wait_for(lambda: [s for m in registry.collect() if m.name == "bytewax_kafka_consumer_lag"
                                for s in m.samples if s.labels["topic"] == events], "the lag gauge")
        assert [s.labels["partition"] for s in lag] == ["0"] and lag[0].value >= 0
    finally:
        stop.set()
        thread.join(60)
    result = box["result"]
    assert len(kafka_broker.consume_all(email_topic)) == 1  # no cart reminder by email after the bounce
    assert result.summary["suppressed"].get("bounced", 0) >= 1
    profile = result.engine.store.load(["c1"])["c1"]
    assert profile.bounced == ["email"] and profile.engagement["email"]["bounce"] == 1
    assert result.summary["feedback"] == {"email/bounce": 1}


def test_broker_lost_mid_run_stops_with_a_clear_error(tmp_path, small_settings, topics):
    """A broker that goes away under a tailing run: retried for kafka.retry_seconds, then the
    run ends with an error naming the broker (no hang, no backtrace)."""
    from kafka_broker import TansuBroker

    broker = TansuBroker(tmp_path / "tansu").start()
    try:
        settings = _kafka_settings(small_settings, broker, topics, **{"kafka.tail": True, "kafka.retry_seconds": 3,
                                                                      "simulator.days": 1})
        broker.create_topics(topics["kafka.events_topic"])
        broker.produce(topics["kafka.events_topic"], _events(settings))
        box: dict = {}

        def target() -> None:
            try:
                run(settings, progress=None)
            except RuntimeError as exc:
                box["error"] = exc

        thread = threading.Thread(target=target)
        thread.start()
        time.sleep(4)
        broker.stop()
        thread.join(90)
        assert not thread.is_alive()
        assert "unreachable" in str(box["error"]) and broker.bootstrap in str(box["error"])
    finally:
        broker.stop()


def test_hostile_messages_become_dead_letters_with_reasons(kafka_broker, topics, small_settings):
    settings = _kafka_settings(small_settings, kafka_broker, topics)
    kafka_broker.create_topics(topics["kafka.events_topic"], partitions=1)
    hostile = [b"\xff\xfe\x00garbage", None, b"null", b'{"event_id": "x"}', b"[" * 100_000,
               b'{"event_id":"ok-1","type":"page_view","ts":1767614400000,"contact_id":"c1"}']
    kafka_broker.produce(topics["kafka.events_topic"], hostile)
    result = run(settings, progress=None)
    assert result.summary["events_processed"] == 1
    dead = kafka_broker.consume_all(topics["kafka.dead_letter_topic"])
    reasons = sorted(dict(m.headers())["touchline.reason"].decode() for m in dead)
    assert len(reasons) == 5 and "oversized" in reasons
    offsets = sorted(int(dict(m.headers())["touchline.source"].decode().rsplit(":", 1)[1]) for m in dead)
    assert offsets == [0, 1, 2, 3, 4]


def test_security_settings_reach_librdkafka(kafka_broker, topics, small_settings):
    """SASL/SSL properties pass through to the clients: asking the plaintext test broker
    for TLS fails the handshake, which surfaces as the clear start-up error."""
    settings = _kafka_settings(small_settings, kafka_broker, topics, **{
        "kafka.connect_timeout_seconds": 3,
        "kafka.config": {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "u"},
        "kafka.sasl_password": "p"})
    with pytest.raises(RuntimeError, match=r"unreachable within 3 s"):
        run(settings, progress=None)
