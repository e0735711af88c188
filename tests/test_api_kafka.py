"""``touchline serve --kafka``: the API's decisions reach the decisions topic the engine writes
(the audit trail), with the same record format; the decisions its events' timers make reach
the channel topics too, a decision made on request does not (its answer delivers it)."""

from __future__ import annotations

import time

import orjson

from api_server import Served, event, until
from settings_file import write_toml


def test_decisions_from_the_api_are_on_the_decisions_topic(tmp_path, kafka_broker, topics):
    stem = topics["kafka.events_topic"].removesuffix(".events")
    kafka = {"decisions_topic": topics["kafka.decisions_topic"], "dead_letter_topic": topics["kafka.dead_letter_topic"],
             "channel_topic_prefix": topics["kafka.channel_topic_prefix"], "experiments_topic": f"{stem}.experiments",
             "no_actions_topic": f"{stem}.no-actions", "connect_timeout_seconds": 10}
    config = write_toml(tmp_path / "settings.toml", {"kafka": kafka, "models": {"store": "off"},
                                                     "policy": {"holdout_share": 0.0, "cart_abandon_minutes": 0.001}})
    with Served(tmp_path / "w", "--kafka", kafka_broker.bootstrap, "--config", str(config)) as api:
        api.client.post("/v1/events", content=orjson.dumps([event("k-1", "add_to_cart", "c-k", value=20.0)]))
        time.sleep(1.5)  # the cart timer fires (by email: consent by default) at the next tick
        until(lambda: api.client.get("/v1/contacts/c-k").json()["last_decisions"])
        asked = api.client.post("/v1/decide", json={"contact_id": "c-k", "context": {"placement": "p"}}).json()
        assert asked["action"] is None  # the email reminder was sent: cooldown
        api.client.post("/v1/events", json={"event_id": "k-2", "type": "signup", "ts": 1, "contact_id": "c-k"})
        posted = api.client.post("/v1/events", content=orjson.dumps([event("k-3", "login", "c-web")])).json()
        assert posted["accepted"] == 1
        time.sleep(0.2)
        api.client.post("/v1/events", content=orjson.dumps([event("k-4", "add_to_cart", "c-web", value=5.0),
                                                            event("k-5", "consent_update", "c-web", channel="email",
                                                                  granted=False)]))
        time.sleep(1.5)
        web = api.client.post("/v1/decide", json={"contact_id": "c-web", "context": {"placement": "p"}}).json()
        assert web["action"] == "cart_reminder"
    records = [orjson.loads(m.value()) for m in kafka_broker.consume_all(topics["kafka.decisions_topic"], expect=2)]
    by_trigger = {r["trigger"]["kind"]: r for r in records}
    assert by_trigger["timer"]["contact_id"] == "c-k" and by_trigger["timer"]["channel"] == "email"
    assert by_trigger["request"]["decision_id"] == web["decision_id"] and by_trigger["request"] == web["decision"]
    emails = kafka_broker.consume_all(topics["kafka.channel_topic_prefix"] + "email", expect=1)
    assert [dict(m.headers())["decision_id"].decode() for m in emails] == [by_trigger["timer"]["decision_id"]]
    dead = [dict(m.headers()) for m in kafka_broker.consume_all(topics["kafka.dead_letter_topic"], expect=1)]
    assert dead[0]["touchline.reason"] == b"before_floor"
    assert "Traceback" not in api.stderr()
