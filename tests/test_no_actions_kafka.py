"""No-action records on a real Kafka-protocol broker (Tansu on loopback): the production
engine writes every recorded point to the no-action topic, keyed by contact, and with
``audit.no_action_share = 0`` neither creates nor writes the topic."""

from __future__ import annotations

import orjson
from prometheus_client import CollectorRegistry

from touchline.connectors.loadgen import produce_events
from touchline.connectors.simulator import Simulator
from touchline.runner import run, simulator_spec


def _settings(small_settings, broker, topics, **extra):
    stem = topics["kafka.events_topic"].removesuffix(".events")
    return small_settings(**{"kafka.bootstrap": broker.bootstrap, "source.kind": "kafka", "kafka.tail": False,
                             "kafka.connect_timeout_seconds": 5, "kafka.experiments_topic": f"{stem}.experiments",
                             "kafka.no_actions_topic": f"{stem}.no-actions", "simulator.contacts": 300,
                             "policy.holdout_share": 0.1, **topics, **extra})


def _produce(settings) -> None:
    lines = list(Simulator(simulator_spec(settings)).lines())
    stats = produce_events(lines, settings.kafka)
    assert stats.produced == len(lines) and stats.failed == 0


def test_every_recorded_point_is_on_the_no_action_topic_keyed_by_contact(kafka_broker, topics, small_settings):
    settings = _settings(small_settings, kafka_broker, topics)
    _produce(settings)
    registry = CollectorRegistry()
    summary = run(settings, progress=None, registry=registry).summary
    topic = settings.kafka.no_actions_topic
    assert summary["outputs"]["no-action records"] == f"kafka topic {topic}"
    assert not (settings.output.dir / "no_actions.jsonl").exists()  # the topic instead of the file
    messages = kafka_broker.consume_all(topic, expect=summary["no_actions"]["recorded"])
    records = [orjson.loads(m.value()) for m in messages]
    assert summary["no_actions"]["points"] == summary["no_actions"]["recorded"] == len(records) > 50
    assert registry.get_sample_value("touchline_no_action_points_total", {"recorded": "true"}) == len(records)
    assert len({r["no_action_id"] for r in records}) == len(records)
    assert all(m.key().decode() == orjson.loads(m.value())["contact_id"] for m in messages)
    assert all(r["kind"] == "no_action" and r["candidates"] and all(c["reason"] for c in r["candidates"])
               for r in records)
    assert {c["reason"] for r in records for c in r["candidates"]} >= {"unreachable", "holdout"}
    # nothing of them on the decisions topic: channel connectors read that one
    decisions = [orjson.loads(m.value()) for m in kafka_broker.consume_all(settings.kafka.decisions_topic)]
    assert len(decisions) == summary["decisions_total"] and all("no_action_id" not in d for d in decisions)


def test_a_share_of_0_neither_creates_nor_writes_the_topic(kafka_broker, topics, small_settings):
    settings = _settings(small_settings, kafka_broker, topics, **{"audit.no_action_share": 0.0})
    _produce(settings)
    summary = run(settings, progress=None, registry=CollectorRegistry()).summary
    assert summary["no_actions"]["points"] > 0 and summary["no_actions"]["recorded"] == 0
    assert "no-action records" not in summary["outputs"]
    assert not kafka_broker.topic_exists(settings.kafka.no_actions_topic)
