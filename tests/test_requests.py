"""Requests in the decision loop (decisions/requests.py), without I/O: the candidates a request
sees, the policy on pull channels, and a decide inside a batch reserving against the same sends
the stream's decisions reserve against."""

from __future__ import annotations

from touchline.decisions.batch_run import BatchRun, DecisionCore, LabelSettings
from touchline.decisions.clock import EventTimeClock
from touchline.decisions.estimators import ScoreSettings
from touchline.decisions.events import Event
from touchline.decisions.policy import PolicyConfig, cap_violation
from touchline.decisions.profile import DAY_MS, Profile, Send, apply_event
from touchline.decisions.requests import DECIDE, PROFILE, Ask, answer_reads, candidates_at

T0 = 1_767_600_000_000


def core(**policy) -> DecisionCore:
    models = {"lead": ScoreSettings(name="lead"), "churn": ScoreSettings(name="churn")}
    return DecisionCore(PolicyConfig(holdout_share=0.0, **policy), models,
                        LabelSettings(3.0, 7.0, frozenset({"purchase"})), clock=EventTimeClock(T0))


def reserve(profile, send, caps, global_caps):
    if send in profile.sends:
        return True
    if cap_violation(profile.sends, send.channel, send.ts_ms, caps, global_caps):
        return False
    profile.sends.append(send)
    return True


def test_what_holds_now_and_why_the_rest_does_not():
    c = core(cart_abandon_minutes=30, inactivity_days=7, winback_churn_threshold=0.0)
    p = Profile("c1", known=True)
    apply_event(p, "e1", "add_to_cart", T0 - 40 * DAY_MS, {"value": 10.0}, {})
    found, held = candidates_at(p, T0, "web", {"lead": 0.2, "churn": 0.9}, c)
    assert {x.action for x in found} == {"cart_reminder", "winback_offer"}
    assert all(x.channel == "web" for x in found)
    assert {h["action"]: h["detail"] for h in held} == {"sales_handoff": "lead score 0.20 < 0.70",
                                                        "welcome": "no signup in the last 30 days"}
    fresh = Profile("c2", known=True)
    apply_event(fresh, "e2", "add_to_cart", T0 - 60_000, {"value": 10.0}, {})
    _, held = candidates_at(fresh, T0, "web", {"lead": 0.2, "churn": 0.9}, c)
    cart = next(h for h in held if h["action"] == "cart_reminder")
    assert cart["reason"] == "not_triggered" and "reminder after 30 min" in cart["detail"]


def test_a_channel_an_action_is_neither_sent_nor_pulled_on_is_not_offered():
    c = core(actions={"cart_reminder": {"pull_channels": ["in_app"]}})
    p = Profile("c1", known=True)
    apply_event(p, "e1", "add_to_cart", T0 - DAY_MS, {"value": 10.0}, {})
    found, held = candidates_at(p, T0, "web", {"lead": 0.2, "churn": 0.1}, c)
    assert found == []
    assert {"action": "cart_reminder", "channel": "web", "reason": "not_offered",
            "detail": "not sent on web (policy.actions.cart_reminder.channels, pull_channels)"} in held
    assert [x.action for x in candidates_at(p, T0, "email", {"lead": 0.2, "churn": 0.1}, c)[0]] == ["cart_reminder"]


def _decide(c: DecisionCore, profile: Profile, channel: str = "web") -> Ask:
    ask = Ask(DECIDE, profile.contact_id, channel=channel, placement="p", request_id="r1")
    run = BatchRun(c, {profile.key: profile}, reserve)
    run.run([], [], [], T0, asks=[(ask, profile.key)])
    return ask


def test_a_pull_channel_reaches_an_anonymous_visitor_unless_consent_to_it_was_refused():
    c = core()
    visitor = Profile("anon:a1")
    apply_event(visitor, "e1", "add_to_cart", T0 - DAY_MS, {"value": 10.0}, {})
    assert _decide(c, visitor).answer["action"] == "cart_reminder"
    refused = Profile("anon:a2")
    apply_event(refused, "e1", "add_to_cart", T0 - DAY_MS, {"value": 10.0}, {})
    apply_event(refused, "e2", "consent_update", T0 - DAY_MS, {"channel": "web", "granted": False}, {})
    answer = _decide(c, refused).answer
    assert answer["action"] is None
    assert {"action": "cart_reminder", "channel": "web", "reason": "no_consent"} in answer["reasons"]
    assert _decide(c, visitor, "email").answer["reasons"][0]["reason"] == "unreachable"


def test_a_decide_reserves_against_the_sends_the_stream_made():
    c = core(caps={"email": {"24h": 1}})
    p = Profile("c1", known=True)
    apply_event(p, "e1", "add_to_cart", T0 - DAY_MS, {"value": 10.0}, {})
    p.sends.append(Send(T0 - 3_600_000, "email", "welcome"))  # the stream's, an hour ago
    answer = _decide(c, p, "email").answer
    assert answer["action"] is None
    assert {"action": "cart_reminder", "channel": "email", "reason": "channel_cap"} in answer["reasons"]
    web = _decide(c, p, "web").answer
    assert web["action"] == "cart_reminder" and Send(T0, "web", "cart_reminder") in p.sends
    assert web["decision"]["trigger"]["kind"] == "request"


def test_an_unknown_identity_has_no_answer_and_a_profile_read_writes_nothing():
    c = core()
    nobody = Ask(PROFILE, "nobody")
    answer_reads(c, {"nobody": Profile("nobody", known=True)}, [(nobody, "nobody")])
    assert nobody.unknown and nobody.answer is None
    p = Profile("c1", known=True)
    apply_event(p, "e1", "page_view", T0 - 60_000, {}, {})
    read = Ask(PROFILE, "c1")
    answer_reads(c, {"c1": p}, [(read, "c1")])
    assert read.answer["windows"]["1h"] == {"page_view": 1} and p.sends == []
    assert read.answer["scores"]["lead"]["model"] == "lead"


def test_a_request_resolves_like_an_event_of_its_identity():
    assert Ask(DECIDE, anonymous_id="a1").lookup() == Event("request:", "request", 0, anonymous_id="a1")
