"""The HTTP API against a real ``touchline serve`` process, over HTTP: each endpoint, the OpenAPI
document, auth, bad and hostile input, unknown contacts, events visible in the profile, a
decision recorded in the audit trail, rate limits, a Redis that goes away, a clean stop."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import orjson
import pytest
from jsonschema import Draft202012Validator

from api_server import KEY, Served, event, until
from settings_file import write_toml


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("api")
    config = write_toml(work / "settings.toml", {
        "policy": {"holdout_share": 0.0, "cart_abandon_minutes": 0.001},
        "models": {"store": "off"},
        "api": {"max_events": 50, "max_body_bytes": 200_000}})
    with Served(work, "--config", str(config)) as server:
        yield server


def _schema(doc, name):
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


def _post_events(served, *events, **kwargs):
    return served.client.post("/v1/events", content=orjson.dumps(list(events)), **kwargs)


def test_openapi_document_is_valid_and_the_answers_follow_it(served):
    from openapi_spec_validator import validate

    doc = httpx.get(served.url + "/openapi.json").json()  # no key needed
    validate(doc)
    assert set(doc["paths"]) == {"/v1/contacts/{id}", "/v1/decide", "/v1/events"}
    posted = _post_events(served, event("oa-1", "add_to_cart", "c-oa", value=12.5), {"event_id": "oa-2"})
    _schema(doc, "EventsAnswer").validate(posted.json())
    _schema(doc, "Profile").validate(served.client.get("/v1/contacts/c-oa").json())
    time.sleep(0.1)
    decided = served.client.post("/v1/decide", json={"contact_id": "c-oa", "context": {"placement": "p"}})
    _schema(doc, "DecideAnswer").validate(decided.json())
    refused = served.client.post("/v1/decide", json={"contact_id": "c-oa"})
    _schema(doc, "Error").validate(refused.json())
    _schema(doc, "DecideRequest").validate({"contact_id": "c", "context": {"placement": "p", "channel": "in_app"}})


def test_an_idle_connection_stays_open_past_uvicorns_five_seconds(served):
    """api.keep_alive_seconds (75): a client (or a load balancer, whose idle timeout is 60 s on
    most) may reuse a connection idle for longer than uvicorn's own 5 s without it closing
    under the request."""
    from http.client import HTTPConnection
    from urllib.parse import urlsplit

    where = urlsplit(served.url)
    conn = HTTPConnection(where.hostname, where.port, timeout=30)
    ports = []
    try:
        for pause in (0, 6.5):
            time.sleep(pause)
            conn.request("GET", "/healthz")  # on a connection the server closed: RemoteDisconnected
            answer = conn.getresponse()
            assert (answer.status, answer.read()) == (200, b'{"status":"alive"}')
            ports.append(conn.sock.getsockname()[1])
        assert ports[0] == ports[1]  # the same connection, not a new one
    finally:
        conn.close()


def test_every_v1_endpoint_needs_a_known_key(served):
    bare = httpx.Client(base_url=served.url)
    for method, path in (("GET", "/v1/contacts/c1"), ("POST", "/v1/decide"), ("POST", "/v1/events")):
        missing = bare.request(method, path)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer KEY" in missing.json()["message"]
        wrong = bare.request(method, path, headers={"Authorization": "Bearer not-the-key-at-all"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
    _post_events(served, event("k-1", "page_view", "c-key"))
    assert bare.get("/v1/contacts/c-key", headers={"X-API-Key": KEY}).status_code == 200
    assert bare.get("/healthz").json() == {"status": "alive"}
    assert bare.get("/readyz").json()["status"] == "ready"
    assert b"touchline_api_requests_total" in bare.get("/metrics").content


def test_events_posted_are_in_the_profile_and_each_says_what_became_of_it(served):
    cart = [event("ev-1", "page_view", "c-ev"), event("ev-2", "add_to_cart", "c-ev", value=40.0),
            {"event_id": "ev-3", "type": "page_view", "contact_id": "c-ev"}]
    answer = _post_events(served, *cart).json()
    assert [e["status"] for e in answer["events"]] == ["accepted", "accepted", "dead_letter"]
    assert answer["events"][2]["reason"] == "missing_field" and "ts" in answer["events"][2]["detail"]
    assert (answer["accepted"], answer["dead_letters"]) == (2, 1)
    profile = served.client.get("/v1/contacts/c-ev").json()
    assert profile["windows"]["1h"] == {"add_to_cart": 1, "page_view": 1}
    assert profile["summary"]["cart_value"] == 40.0 and profile["summary"]["events_total"] == 2
    assert set(profile["scores"]) == {"lead", "churn"} and profile["scores"]["lead"]["version"]
    again = _post_events(served, *cart[:2]).json()
    assert [e["status"] for e in again["events"]] == ["duplicate", "duplicate"]
    dead = [d for d in served.out("dead_letters.jsonl") if '"ev-3"' in d["raw"]]
    assert len(dead) == 1 and dead[0]["source"].startswith("api:") and dead[0]["source"].endswith("#2")


def test_the_profile_shows_the_best_local_hour_learned_from_opens(served):
    """Opens in the contact's zone, a few days back: the profile names their local hour (issue 21 item 3)."""
    from api_server import now_ms

    day, hour = 86_400_000, 3_600_000
    today = now_ms() // day * day
    opens = [{**event(f"bt-{d}", "email_open", "c-bt", ts=today - d * day + 11 * hour), "channel": "email",
              "context": {"timezone": "Asia/Tokyo"}} for d in (3, 2, 1)]  # 11:00 UTC = 20:00 in Tokyo
    assert _post_events(served, *opens).json()["accepted"] == 3
    send_time = served.client.get("/v1/contacts/c-bt").json()["send_time"]
    assert send_time["best_local_hour"] == 20 and send_time["timezone"] == "Asia/Tokyo"
    assert send_time["engagements"] == 3 and send_time["engagement_by_local_hour"][20] == 3
    assert _post_events(served, event("bt-pv", "page_view", "c-bt2")).json()["accepted"] == 1
    fresh = served.client.get("/v1/contacts/c-bt2").json()["send_time"]
    assert fresh["engagements"] == 0 and fresh["engagement_by_local_hour"] == []


def test_one_bad_event_alone_is_a_400_and_still_dead_lettered(served):
    answer = served.client.post("/v1/events", json={"event_id": "one-1", "type": "page_view", "ts": "yesterday",
                                                    "contact_id": "c-one"})
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"] == "invalid_event" and body["message"].startswith("bad_timestamp")
    assert any('"one-1"' in d["raw"] for d in served.out("dead_letters.jsonl"))


def test_decide_answers_from_the_stream_policy_and_writes_the_audit_trail(served):
    # No email: the engine's own cart timer (60 ms, policy.cart_abandon_minutes) then sends nothing
    # (sms and push need consent too), so the reminder is there for the site to show.
    _post_events(served, event("d-0", "consent_update", "c-dec", channel="email", granted=False),
                 event("d-1", "add_to_cart", "c-dec", value=30.0))
    time.sleep(0.2)
    ask = {"contact_id": "c-dec", "context": {"placement": "cart_banner", "page": "/cart", "channel": "web"}}
    first = served.client.post("/v1/decide", json=ask).json()
    assert first["action"] == "cart_reminder" and first["channel"] == "web"
    assert first["decision"]["trigger"] == {"kind": "request", "request_id": first["decision"]["trigger"]["request_id"],
                                            "channel": "web", "placement": "cart_banner", "page": "/cart"}
    held = {h["action"]: h["reason"] for h in first["held_back"]}
    assert held == {"sales_handoff": "not_triggered", "winback_offer": "not_triggered", "welcome": "not_triggered"}
    written = until(lambda: [d for d in served.out("decisions.jsonl") if d["decision_id"] == first["decision_id"]])
    assert written[0] == first["decision"]
    second = served.client.post("/v1/decide", json=ask).json()
    assert second["action"] is None
    assert {"action": "cart_reminder", "channel": "web", "reason": "cooldown"} in second["reasons"]
    profile = served.client.get("/v1/contacts/c-dec").json()
    assert profile["last_decisions"][0]["action"] == "cart_reminder"
    assert profile["last_decisions"][0]["channel"] == "web"


def test_an_action_not_offered_on_a_channel_says_so(served):
    _post_events(served, event("no-1", "page_view", "c-off"))
    answer = served.client.post("/v1/decide", json={"contact_id": "c-off", "context": {"placement": "p",
                                                                                     "channel": "sales_task"}}).json()
    reasons = {r["action"]: r for r in answer["reasons"]}
    assert answer["action"] is None
    assert reasons["cart_reminder"]["reason"] == "not_offered"
    assert reasons["sales_handoff"]["reason"] == "not_triggered"  # offered on sales_task, lead under 0.7


def test_an_anonymous_id_resolves_through_its_identity_link(served):
    _post_events(served, event("an-1", "page_view", anonymous="a-77"))
    visitor = served.client.get("/v1/contacts/a-77", params={"id_type": "anonymous"}).json()
    assert visitor["contact_id"] is None and visitor["anonymous_id"] == "a-77" and not visitor["known"]
    assert served.client.get("/v1/contacts/a-77").status_code == 404  # a contact id by default
    _post_events(served, event("an-2", "identify", "c-77", "a-77"))
    linked = served.client.get("/v1/contacts/a-77", params={"id_type": "anonymous"}).json()
    assert linked["contact_id"] == "c-77" and linked["summary"]["anonymous_ids"] == ["a-77"]
    assert linked["summary"]["events_total"] == 2
    decided = served.client.post("/v1/decide", json={"anonymous_id": "a-77", "context": {"placement": "p"}}).json()
    assert decided["contact_id"] == "c-77"


@pytest.mark.parametrize("body, status, error, field", [
    (b"{", 400, "bad_json", None),
    (b"", 400, "bad_json", None),
    (b"[1, 2]", 400, "bad_request", None),
    (b'{"contact_id": "c1"}', 400, "bad_request", "context"),
    (b'{"context": {"placement": "p"}}', 400, "bad_request", None),
    (b'{"contact_id": "c1", "context": {"placement": "p"}, "x": 1}', 400, "bad_request", "x"),
    (b'{"contact_id": "c1", "context": {"placement": ""}}', 400, "bad_request", "context.placement"),
    (b'{"contact_id": "c1", "context": {"placement": "p", "channel": "fax"}}', 400, "bad_request", "context.channel"),
    (b'{"contact_id": "c\\u0001", "context": {"placement": "p"}}', 400, "bad_request", "contact_id"),
    (b'{"contact_id": 7, "context": {"placement": "p"}}', 400, "bad_request", "contact_id"),
    (b'{"contact_id": "nobody-at-all", "context": {"placement": "p"}}', 404, "not_found", None),
    (b'{"contact_id": "c1", "context": {"placement": NaN}}', 400, "bad_json", None),
    (b"\xff\xfe{}", 400, "bad_json", None),
    (b"[" * 5000 + b"]" * 5000, 400, "bad_json", None),
])
def test_a_bad_decide_request_is_a_json_error_naming_the_field(served, body, status, error, field):
    answer = served.client.post("/v1/decide", content=body)
    assert answer.status_code == status, answer.text
    found = answer.json()
    assert found["error"] == error and found["message"]
    if field is not None:
        assert found["field"] == field and found["message"].startswith(field)


def test_bad_profile_requests(served):
    assert served.client.get("/v1/contacts/nobody").json()["error"] == "not_found"
    assert served.client.get("/v1/contacts/c1", params={"id_type": "email"}).json()["field"] == "id_type"
    assert served.client.get("/v1/contacts/c%01x").json()["field"] == "id"
    assert served.client.get("/v1/contacts/" + "x" * 300).json()["field"] == "id"
    assert served.client.delete("/v1/contacts/c1").status_code == 405
    assert served.client.get("/v1/nowhere").json()["error"] == "not_found"


def test_hostile_event_bodies(served):
    too_big = served.client.post("/v1/events", content=b"[" + b" " * 200_001 + b"]")
    assert too_big.status_code == 413 and too_big.json()["error"] == "too_large"
    too_many = _post_events(served, *[event(f"tm-{i}", "page_view", "c-tm") for i in range(51)])
    assert too_many.status_code == 413 and "api.max_events" in too_many.json()["message"]
    assert served.client.post("/v1/events", content=b"[]").json()["error"] == "bad_request"
    assert served.client.post("/v1/events", content=b'"text"').status_code == 400
    repeated = b'[{"event_id": "h-1", "type": "page_view", "ts": 1, "contact_id": "c-h", "contact_id": "c-other"}]'
    answer = served.client.post("/v1/events", content=repeated).json()
    assert answer["events"][0]["reason"] == "invalid" and "duplicate key" in answer["events"][0]["detail"]
    huge = event("h-2", "page_view", "c-h", blob="x" * 70_000)
    assert _post_events(served, huge).json()["events"][0]["reason"] == "oversized"
    nd = b'{"event_id": "h-3", "type": "page_view", "ts": %d, "contact_id": "c-h"}\nnot json\n' % (time.time_ns() // 10**6)
    answer = served.client.post("/v1/events", content=nd, headers={"Content-Type": "application/x-ndjson"}).json()
    assert [e["status"] for e in answer["events"]] == ["accepted", "dead_letter"]
    assert answer["events"][1]["reason"] == "bad_json"
    future = _post_events(served, event("h-4", "page_view", "c-h", ts=4_102_444_800_000)).json()
    assert future["events"][0]["reason"] == "future_event"
    assert served.client.get("/healthz").status_code == 200  # still serving


def test_rate_limit_per_key_and_a_clean_stop(tmp_path):
    config = write_toml(tmp_path / "settings.toml", {"api": {"rate_per_second": 0.5, "burst": 2},
                                                     "models": {"store": "off"}})
    with Served(tmp_path / "w", "--config", str(config)) as server:
        codes = [server.client.get("/v1/contacts/c1").status_code for _ in range(3)]
        assert codes == [404, 404, 429]
        limited = server.client.get("/v1/contacts/c1")
        assert limited.json()["error"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
        assert server.stop() == 0
    assert "stopped by SIGTERM" in server.stderr()


def test_without_configured_keys_one_is_made_and_printed(tmp_path):
    with Served(tmp_path, "--config", str(write_toml(tmp_path / "s.toml", {"models": {"store": "off"}})),
                key=None) as server:
        import re

        made = re.search(r"accepts the key (\S+)", server.stderr()).group(1)
        assert httpx.get(server.url + "/v1/contacts/x", headers={"X-API-Key": made}).status_code == 404
        assert httpx.get(server.url + "/v1/contacts/x").status_code == 401


def test_a_short_key_or_a_taken_port_is_one_clear_line(tmp_path):
    env = {"TOUCHLINE_API__KEYS": '["s3cr3t-xyz"]', "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "touchline", "serve", "--out", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "api.keys" in done.stderr and "16 characters" in done.stderr
    assert "s3cr3t-xyz" not in done.stderr  # never echo a secret
    with Served(tmp_path / "a") as first:
        port = first.url.rsplit(":", 1)[1]
        taken = subprocess.run([sys.executable, "-m", "touchline", "serve", "--port", port, "--out", str(tmp_path / "b")],
                               env={"TOUCHLINE_API__KEYS": f'["{KEY}"]', "PATH": "/usr/bin:/bin"},
                               capture_output=True, text=True, timeout=60)
    assert taken.returncode == 1 and f"cannot serve the API on 127.0.0.1:{port}" in taken.stderr
    assert "Traceback" not in taken.stderr


def test_redis_down_is_a_503_saying_so_and_it_recovers(tmp_path, redis_server, redis_url):
    config = write_toml(tmp_path / "settings.toml", {"api": {"timeout_seconds": 2}, "models": {"store": "off"}})
    with Served(tmp_path / "w", "--redis", redis_url, "--config", str(config)) as server:
        assert _post_events(server, event("r-1", "page_view", "c-r")).status_code == 200
        redis_server.proc.terminate()
        redis_server.proc.wait(10)
        down = server.client.get("/v1/contacts/c-r")
        assert down.status_code == 503, down.text
        assert down.json()["error"] == "unavailable" and "Redis at redis://127.0.0.1" in down.json()["message"]
        assert server.client.get("/readyz").status_code == 503
        redis_server.start()
        until(lambda: server.client.get("/v1/contacts/c-r").status_code == 200, timeout=20)
        assert "Traceback" not in server.stderr()


def test_the_profile_shows_each_journey_and_the_step_it_is_at(tmp_path):
    from pathlib import Path

    welcome = Path(__file__).resolve().parent.parent / "examples" / "journeys" / "welcome.yaml"
    config = write_toml(tmp_path / "s.toml", {"journeys": {"files": [str(welcome)]}, "models": {"store": "off"},
                                              "policy": {"holdout_share": 0.0}})
    with Served(tmp_path / "w", "--config", str(config)) as server:
        assert _post_events(server, event("j-1", "signup", "c-j")).json()["accepted"] == 1
        profile = server.client.get("/v1/contacts/c-j").json()
    (journey,) = profile["journeys"]
    assert journey["journey"] == "welcome" and journey["active"] and journey["entered"]
    assert journey["step"] == "welcome"  # held back by the built-in welcome email: the step is retried later
    assert profile["last_decisions"][0] == {**profile["last_decisions"][0], "action": "welcome", "channel": "email"}


def test_the_profile_shows_custom_attributes_and_traits(tmp_path):
    """Issue 21 item 2 in the API: configured aggregates and traits, as of the request."""
    config = tmp_path / "s.toml"
    config.write_text('[models]\nstore = "off"\n[policy]\nholdout_share = 0.0\n'
                      '[attributes.shoe_views_7d]\nevent = "product_view"\nwhere = { category = "shoes" }\nwindow = "7d"\n'
                      '[attributes.spend_90d]\nevent = "purchase"\naggregate = "sum"\nproperty = "value"\nwindow = "90d"\n'
                      '[traits]\ntier = "identify.tier"\n')
    with Served(tmp_path / "w", "--config", str(config)) as server:
        posted = _post_events(server, event("ca-1", "product_view", "c-ca", category="shoes"),
                              event("ca-2", "product_view", "c-ca", category="hats"),
                              event("ca-3", "product_view", "c-ca", category="shoes"),
                              event("ca-4", "purchase", "c-ca", value=30.5, currency="EUR", order_id="o1"),
                              event("ca-5", "identify", "c-ca", tier="gold"))
        assert posted.json()["accepted"] == 5, posted.json()
        attributes = server.client.get("/v1/contacts/c-ca").json()["attributes"]
    assert attributes["shoe_views_7d"] == 2 and attributes["spend_90d"] == 30.5 and attributes["tier"] == "gold"
