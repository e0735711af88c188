"""The API beside the stream engine on one Redis, both real processes: a decision from the API
respects the caps the stream used, the stream respects the caps the API used, and decisions
made by both at once for the same contacts never break a cap (each profile is written with a
version check, so the second writer is redone on the first's sends).

The action is the sales hand-off on the sales_task channel (cap: one in 30 days; its cooldown
set to 0 here, so the cap is what holds it back): the stream proposes it when the lead score
crosses the threshold (0 here) at an intent event, the API whenever it is asked and the lead
score is over the threshold. A ``login`` is no intent event: it makes a contact without a hand-off.
"""

from __future__ import annotations

import threading

import pytest

from api_server import FollowingEngine, Served, event, handoff_settings, until
from settings_file import write_toml
from engine_process import cap_violations


@pytest.fixture
def both(tmp_path, redis_url):
    config = handoff_settings(tmp_path / "settings.toml", source={"tick_seconds": 0.1})
    with FollowingEngine(tmp_path / "engine", redis_url, config) as engine, \
            Served(tmp_path / "api", "--redis", redis_url, "--config", str(config)) as api:
        yield engine, api


def _handoffs(records, contact):
    return [d for d in records if d["contact_id"] == contact and d["action"] == "sales_handoff"]


def _seen(api, contact, event_type):
    """The contact's profile once the stream has committed an event of ``event_type`` for it."""
    answer = api.client.get(f"/v1/contacts/{contact}")
    return answer.status_code == 200 and answer.json()["windows"]["1h"].get(event_type) and answer.json()


def _decide(api, contact):
    return api.client.post("/v1/decide", json={"contact_id": contact, "context": {
        "placement": "agent_script", "channel": "sales_task"}}).json()


def test_the_api_respects_caps_the_stream_used_and_the_stream_those_the_api_used(both):
    engine, api = both
    # The stream first: a hand-off at s1's intent event; then the API is held back by the cap.
    engine.feed(event("s1-1", "product_view", "s1"))
    until(lambda: _handoffs(engine.decisions(), "s1"))
    held = _decide(api, "s1")
    assert held["action"] is None
    assert {"action": "sales_handoff", "channel": "sales_task", "reason": "channel_cap"} in held["reasons"]
    # The API first: a hand-off for s2 on request; then the stream's, at s2's intent event, is held back.
    engine.feed(event("s2-1", "login", "s2"))
    until(lambda: _seen(api, "s2", "login"))
    sent = _decide(api, "s2")
    assert sent["action"] == "sales_handoff"
    engine.feed(event("s2-2", "product_view", "s2"))
    profile = until(lambda: _seen(api, "s2", "product_view"))
    assert [d["action"] for d in profile["last_decisions"]] == ["sales_handoff"]
    assert profile["last_decisions"][0]["decision_id"] == sent["decision_id"]
    engine.feed(event("s3-1", "product_view", "s3"))  # a later event: the s2 batch is long written out
    until(lambda: _handoffs(engine.decisions(), "s3"))
    assert _handoffs(engine.decisions(), "s2") == []
    assert [d["decision_id"] for d in _handoffs(api.out("decisions.jsonl"), "s2")] == [sent["decision_id"]]


def test_deciding_from_both_at_once_never_breaks_a_cap(both):
    engine, api = both
    contacts = [f"r{i}" for i in range(12)]
    engine.feed(*(event(f"{c}-0", "login", c) for c in contacts))
    for c in contacts:
        until(lambda c=c: _seen(api, c, "login"))
    answers: list[dict] = []

    def ask_repeatedly() -> None:
        for _ in range(3):
            for c in contacts:
                answers.append(_decide(api, c))

    askers = [threading.Thread(target=ask_repeatedly) for _ in range(3)]
    for t in askers:
        t.start()
    engine.feed(*(event(f"{c}-1", "product_view", c) for c in contacts))  # the stream's hand-offs, meanwhile
    for t in askers:
        t.join(120)
    for c in contacts:
        until(lambda c=c: _seen(api, c, "product_view"))
    engine.feed(event("late-1", "product_view", "late"))
    until(lambda: _handoffs(engine.decisions(), "late"))
    everyone = [d for d in engine.decisions() + api.out("decisions.jsonl") if d["contact_id"] in contacts]
    assert cap_violations(everyone, {"sales_task": {"30d": 1}}) == []
    assert sorted(d["contact_id"] for d in everyone) == sorted(contacts)  # each got exactly one hand-off
    assert sum(a["action"] == "sales_handoff" for a in answers) == sum(
        1 for d in everyone if d["trigger"]["kind"] == "request")


def test_the_engine_process_serves_the_api_itself(tmp_path, redis_url):
    import httpx

    from api_server import KEY

    config = write_toml(tmp_path / "settings.toml", {
        "policy": {"holdout_share": 0.0, "sales_lead_threshold": 0.0},
        "models": {"store": "off", "learn": False}, "source": {"tick_seconds": 0.1},
        "api": {"port": 0, "keys": [KEY]}})
    with FollowingEngine(tmp_path / "engine", redis_url, config, "--api") as engine:
        client = httpx.Client(base_url=engine.api_url(), headers={"X-API-Key": KEY}, timeout=30)
        engine.feed(event("e-1", "login", "p1"))
        until(lambda: client.get("/v1/contacts/p1").status_code == 200)
        sent = client.post("/v1/decide", json={"contact_id": "p1", "context": {"placement": "agent",
                                                                              "channel": "sales_task"}}).json()
        assert sent["action"] == "sales_handoff"
        posted = client.post("/v1/events", json=event("e-2", "page_view", "p1")).json()
        assert posted["accepted"] == 1
        api_out = tmp_path / "engine" / "out" / "api-decisions.jsonl"
        until(lambda: api_out.exists() and sent["decision_id"].encode() in api_out.read_bytes())
    assert "Traceback" not in engine.stderr()
