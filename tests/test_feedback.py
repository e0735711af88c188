"""The feedback loop: channel events that name a decision id update the contact's
engagement and suppress bounced or unsubscribed channels for later decisions."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from test_engine_step import MIN, T0, actions, line, make_engine, run


def _welcome(e) -> str:
    [d] = run(e, [line("s1", "signup", T0, "c1")])
    assert (d["action"], d["channel"]) == ("welcome", "email")
    return d["decision_id"]


def _cart_after(e, ts: int) -> list[dict]:
    run(e, [line(f"cart-{ts}", "add_to_cart", ts, "c1", properties={"value": 20})])
    return run(e, [], advance_to=ts + 31 * MIN)


def test_hard_bounce_on_a_decision_suppresses_the_channel():
    reg = CollectorRegistry()
    e = make_engine(registry=reg)
    did = _welcome(e)
    run(e, [line("b1", "email_bounce", T0 + MIN, "c1", properties={"decision_id": did, "bounce_type": "hard"})])
    assert _cart_after(e, T0 + 2 * 86_400_000) == []  # email bounced; sms/push have no consent
    assert e.totals.suppressions["bounced"] >= 1
    assert e.store.load(["c1"])["c1"].engagement["email"] == {"bounce": 1}
    assert reg.get_sample_value("touchline_feedback_events_total",
                                {"channel": "email", "outcome": "bounce", "linked": "true"}) == 1


def test_soft_bounces_suppress_only_in_a_row():
    e = make_engine()
    did = _welcome(e)
    soft = {"decision_id": did, "bounce_type": "soft"}
    run(e, [line("b1", "email_bounce", T0 + 1, "c1", properties=soft),
            line("b2", "email_bounce", T0 + 2, "c1", properties=soft),
            line("d1", "email_delivered", T0 + 3, "c1", properties={"decision_id": did}),
            line("b3", "email_bounce", T0 + 4, "c1", properties=soft)])
    assert actions(_cart_after(e, T0 + 86_400_000)) == [("c1", "cart_reminder", "email")]  # streak was reset
    run(e, [line(f"b{i}", "email_bounce", T0 + 2 * 86_400_000 + i, "c1", properties=soft) for i in (5, 6)])
    assert _cart_after(e, T0 + 5 * 86_400_000) == []  # three soft bounces in a row
    assert e.store.load(["c1"])["c1"].bounced == ["email"]


def test_unsubscribe_from_a_message_revokes_that_channel():
    e = make_engine()
    did = _welcome(e)
    run(e, [line("u1", "unsubscribe", T0 + MIN, "c1", channel="email", properties={"decision_id": did})])
    assert _cart_after(e, T0 + 86_400_000) == []
    assert e.totals.suppressions["no_consent"] >= 1
    profile = e.store.load(["c1"])["c1"]
    assert profile.consent["email"] is False and profile.engagement["email"] == {"unsubscribe": 1}


def test_opens_and_clicks_count_as_engagement_and_are_idempotent():
    reg = CollectorRegistry()
    e = make_engine(registry=reg)
    did = _welcome(e)
    batch = [line("o1", "email_open", T0 + MIN, "c1", properties={"decision_id": did}),
             line("k1", "email_click", T0 + 2 * MIN, "c1", properties={"decision_id": did}),
             line("o2", "email_open", T0 + 3 * MIN, "c1")]  # an open with no decision id: counted, unlinked
    run(e, batch)
    run(e, batch)  # replayed: no double count
    profile = e.store.load(["c1"])["c1"]
    assert profile.engagement["email"] == {"open": 2, "click": 1}
    assert profile.last_engaged_ts == T0 + 3 * MIN
    assert reg.get_sample_value("touchline_feedback_events_total",
                                {"channel": "email", "outcome": "open", "linked": "true"}) == 1
    assert reg.get_sample_value("touchline_feedback_events_total",
                                {"channel": "email", "outcome": "open", "linked": "false"}) == 1
    assert e.totals.feedback[("email", "click", "true")] == 1
