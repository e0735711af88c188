"""Policy: each eligibility rule on its own, arbitration, holdout, caps, decision ids and records,
triggers, and configuration errors."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from touchline.decisions.policy import (
    Candidate,
    PolicyConfig,
    QuietHours,
    Suppression,
    arbitrate,
    cap_violation,
    eligibility,
    in_holdout,
    in_quiet_hours,
    local_hour,
)
from touchline.decisions.profile import DAY_MS, HOUR_MS, Profile, Send
from touchline.decisions.record import DECISION_SCHEMA_VERSION, build_record, decision_id, iso_ms
from touchline.decisions.triggers import (
    INTENT_TYPES,
    cart_candidates,
    inactivity_candidates,
    on_event_candidates,
)


def utc(h: int, m: int = 0, day: int = 5) -> int:
    return int(datetime(2026, 1, day, h, m, tzinfo=timezone.utc).timestamp() * 1000)


NOON = utc(12)
CFG = PolicyConfig()


def contact(**kw) -> Profile:
    kw.setdefault("known", True)
    return Profile("c1", **kw)


def cand(action="cart_reminder", channel="email", priority=80, value=1.0) -> Candidate:
    return Candidate(action, channel, priority, value, "why", "tmpl")


def elig(c: Candidate, p: Profile, now=NOON, cfg=CFG, holdout=False):
    return eligibility(c, p, now, cfg, holdout)


# ---------------------------------------------------------------- eligibility

def test_eligible_baseline():
    """A known contact at noon with no history may get an email."""
    assert elig(cand(), contact()) is None


def test_holdout_rule():
    """A contact in the holdout is held back first, whatever else applies."""
    p = contact(known=False, bounced=["email"])
    assert elig(cand(), p, holdout=True) == "holdout"


def test_unreachable_anonymous():
    """Anonymous visitors cannot be messaged."""
    assert elig(cand(), Profile("anon:a1", known=False)) == "unreachable"


def test_bounced_channel():
    """A bounced channel is not used; other channels still are."""
    p = contact(bounced=["email"])
    assert elig(cand(channel="email"), p) == "bounced"
    p.consent["push"] = True
    assert elig(cand(channel="push"), p) is None


def test_consent_defaults():
    """Without any consent_update, consent_default decides: email/sales_task yes, sms/push no."""
    p = contact()
    assert elig(cand(channel="email"), p) is None
    assert elig(cand(channel="sms"), p) == "no_consent"
    assert elig(cand(channel="push"), p) == "no_consent"
    assert elig(cand("sales_handoff", "sales_task", 90), p) is None


def test_explicit_consent_overrides_default():
    """An explicit grant enables sms; an explicit revoke disables email."""
    p = contact(consent={"sms": True, "email": False})
    assert elig(cand(channel="sms"), p) is None
    assert elig(cand(channel="email"), p) == "no_consent"


def test_consent_default_configurable():
    """consent_default from config is used; channels missing from it default to no consent."""
    cfg = PolicyConfig(consent_default={"push": True})
    p = contact()
    assert elig(cand(channel="push"), p, cfg=cfg) is None
    assert elig(cand(channel="email"), p, cfg=cfg) == "no_consent"


def test_quiet_hours_in_contact_zone():
    """Quiet hours (21-8) apply in the contact's zone: 03:00 UTC is 22:00 in New York."""
    p = contact(consent={"sms": True, "push": True}, timezone="America/New_York")
    assert elig(cand(channel="sms"), p, now=utc(3)) == "quiet_hours"
    assert elig(cand(channel="push"), p, now=utc(3)) == "quiet_hours"
    assert elig(cand(channel="email"), p, now=utc(3)) is None  # email is not a quiet channel
    assert elig(cand(channel="sms"), p, now=utc(14)) is None  # 09:00 in New York
    utc_contact = contact(consent={"sms": True})
    assert elig(cand(channel="sms"), utc_contact, now=utc(3)) == "quiet_hours"  # default zone UTC
    assert elig(cand(channel="sms"), utc_contact, now=utc(14)) is None


def test_quiet_hours_boundaries_wrapping_midnight():
    """A 21->8 window is quiet from 21:00 through 07:59 and open 08:00-20:59."""
    quiet = QuietHours()
    assert sorted(h for h in range(24) if in_quiet_hours(h, quiet)) == [0, 1, 2, 3, 4, 5, 6, 7, 21, 22, 23]
    p = contact(consent={"sms": True})
    assert elig(cand(channel="sms"), p, now=utc(20, 59)) is None
    assert elig(cand(channel="sms"), p, now=utc(21, 0)) == "quiet_hours"
    assert elig(cand(channel="sms"), p, now=utc(7, 59)) == "quiet_hours"
    assert elig(cand(channel="sms"), p, now=utc(8, 0)) is None


def test_quiet_hours_non_wrapping_and_empty_window():
    """A same-day window (9->17) is quiet only inside it; start == end means never quiet."""
    day = QuietHours(start_hour=9, end_hour=17)
    assert sorted(h for h in range(24) if in_quiet_hours(h, day)) == list(range(9, 17))
    assert not any(in_quiet_hours(h, QuietHours(start_hour=5, end_hour=5)) for h in range(24))


def test_unknown_zone_falls_back_to_default_timezone():
    """An unknown or missing contact zone uses quiet_hours.default_timezone (Tokyo: 13:00 UTC is 22:00)."""
    cfg = PolicyConfig(quiet_hours={"default_timezone": "Asia/Tokyo"})
    for tz in ("Mars/Base", None, ""):
        p = contact(consent={"sms": True}, timezone=tz)
        assert elig(cand(channel="sms"), p, now=utc(13), cfg=cfg) == "quiet_hours", tz
        assert elig(cand(channel="sms"), p, now=utc(2), cfg=cfg) is None, tz  # 11:00 in Tokyo
    assert local_hour(utc(13), "Mars/Base", "Asia/Tokyo") == 22
    assert local_hour(utc(13), "Europe/Berlin", "Asia/Tokyo") == 14


def test_cooldown_per_action():
    """The same action within its cooldown is held back; another action or an older send is not."""
    p = contact(consent={"push": True})
    p.sends = [Send(NOON - 23 * HOUR_MS, "push", "cart_reminder")]
    assert elig(cand("cart_reminder", "email"), p) == "cooldown"  # cooldown is per action, any channel
    assert elig(cand("winback_offer", "email", 60), p) is None
    p.sends = [Send(NOON - 24 * HOUR_MS, "push", "cart_reminder")]  # exactly the cooldown ago
    assert elig(cand("cart_reminder", "email"), p) is None


def test_channel_cap_per_window():
    """Per-channel caps apply per window: push 2/24h and 5/7d by default."""
    p = contact(consent={"push": True})
    p.sends = [Send(NOON - HOUR_MS, "push", "a"), Send(NOON - 2 * HOUR_MS, "push", "b")]
    assert elig(cand("x", "push"), p) == "channel_cap"
    p.sends = [Send(NOON - HOUR_MS, "push", "a")]
    assert elig(cand("x", "push"), p) is None
    cfg = PolicyConfig(global_caps={})  # isolate the 7d channel cap from the global one
    p.sends = [Send(NOON - (d * DAY_MS + HOUR_MS), "push", "a") for d in range(1, 6)]
    assert elig(cand("x", "push"), p, cfg=cfg) == "channel_cap"
    p.sends = p.sends[:4]
    assert elig(cand("x", "push"), p, cfg=cfg) is None


def test_email_cap_is_per_channel():
    """One email in 24h blocks another email but not a push."""
    p = contact(consent={"push": True})
    p.sends = [Send(NOON - HOUR_MS, "email", "a")]
    assert elig(cand("x", "email"), p) == "channel_cap"
    assert elig(cand("x", "push"), p) is None


def test_global_cap_across_channels_not_sales_task():
    """The global cap counts messages across email/sms/push; sales tasks neither count nor are capped by it."""
    p = contact(consent={"push": True, "sms": True})
    p.sends = [Send(NOON - HOUR_MS, "email", "a"), Send(NOON - 2 * HOUR_MS, "sms", "b")]
    assert elig(cand("x", "push"), p) == "global_cap"
    assert elig(cand("sales_handoff", "sales_task", 90), p) is None
    p.sends = [Send(NOON - HOUR_MS, "sales_task", "a"), Send(NOON - 2 * HOUR_MS, "sales_task", "b")]
    assert elig(cand("x", "push"), p) is None


def test_cap_violation_direct():
    """cap_violation reports channel_cap, global_cap or None, counting sends strictly inside the window."""
    caps = {"email": {"24h": 1}, "sales_task": {"30d": 1}}
    sends = [Send(NOON - DAY_MS, "email", "a")]  # exactly 24h ago: outside
    assert cap_violation(sends, "email", NOON, caps, {"24h": 1}) is None
    sends = [Send(NOON - DAY_MS + 1, "email", "a")]
    assert cap_violation(sends, "email", NOON, caps, {}) == "channel_cap"
    assert cap_violation(sends, "push", NOON, caps, {"24h": 1}) == "global_cap"
    assert cap_violation(sends, "push", NOON, caps, {"24h": 2}) is None
    assert cap_violation(sends, "sales_task", NOON, caps, {"24h": 1}) is None
    assert cap_violation(iter(sends), "email", NOON, {"email": {"24h": 0}}, {}) == "channel_cap"
    assert cap_violation([], "email", NOON, {"email": {"24h": 0}}, {}) == "channel_cap"


# ---------------------------------------------------------------- arbitration

def test_arbitration_by_priority():
    """The highest-priority eligible candidate wins; the others lose with 'arbitration'."""
    cs = [cand("welcome", "email", 50, 9.0), cand("sales_handoff", "sales_task", 90, 0.1)]
    winner, lost = arbitrate(cs, contact(), NOON, CFG, False)
    assert winner.action == "sales_handoff"
    assert lost == [Suppression("welcome", "email", "arbitration")]


def test_arbitration_then_expected_value_then_name():
    """Ties on priority go to expected value, then to action name, then channel."""
    p = contact(consent={"push": True})
    winner, _ = arbitrate([cand("b", "email", 10, 1.0), cand("a", "push", 10, 2.0)], p, NOON, CFG, False)
    assert (winner.action, winner.channel) == ("a", "push")
    winner, _ = arbitrate([cand("b", "email", 10, 2.0), cand("a", "push", 10, 2.0)], p, NOON, CFG, False)
    assert winner.action == "a"
    winner, _ = arbitrate([cand("a", "push", 10, 2.0), cand("a", "email", 10, 2.0)], p, NOON, CFG, False)
    assert winner.channel == "email"


def test_arbitration_reports_ineligible_and_losers():
    """Ineligible candidates carry their rule's reason; eligible losers carry 'arbitration'; order is kept."""
    p = contact()
    cs = [cand("cart_reminder", "email", 80, 5.0), cand("cart_reminder", "push", 80, 4.5),
          cand("cart_reminder", "sms", 80, 4.0), cand("welcome", "email", 50, 1.0)]
    winner, lost = arbitrate(cs, p, NOON, CFG, False)
    assert (winner.action, winner.channel) == ("cart_reminder", "email")
    assert lost == [Suppression("cart_reminder", "push", "no_consent"),
                    Suppression("cart_reminder", "sms", "no_consent"),
                    Suppression("welcome", "email", "arbitration")]


def test_arbitration_nothing_eligible():
    """No eligible candidate: no winner, everything suppressed (holdout here)."""
    cs = [cand(), cand("welcome", "email", 50)]
    winner, lost = arbitrate(cs, contact(), NOON, CFG, True)
    assert winner is None and [s.reason for s in lost] == ["holdout", "holdout"]
    assert arbitrate([], contact(), NOON, CFG, False) == (None, [])


# ---------------------------------------------------------------- holdout

def test_holdout_stable_and_share():
    """Assignment is a stable hash: same answer every call, ~share of 10k ids, nested as share grows."""
    ids = [f"c-{i}" for i in range(10_000)]
    first = [in_holdout(c, "global_holdout", 0.05) for c in ids]
    assert first == [in_holdout(c, "global_holdout", 0.05) for c in ids]
    assert 400 <= sum(first) <= 600
    assert 4_700 <= sum(in_holdout(c, "global_holdout", 0.5) for c in ids) <= 5_300
    wider = [in_holdout(c, "global_holdout", 0.1) for c in ids]
    assert all(w for f, w in zip(first, wider) if f)
    other = [in_holdout(c, "another_test", 0.05) for c in ids]
    assert other != first  # the experiment name salts the hash
    assert not any(in_holdout(c, "x", 0.0) for c in ids[:500])
    assert all(in_holdout(c, "x", 1.0) for c in ids[:500])


# ---------------------------------------------------------------- records

def test_decision_id_deterministic_and_sensitive():
    """Same inputs give the same 32-hex id; changing any one input (or shifting a boundary) changes it."""
    base = decision_id("c1", "welcome", "email", "e-17")
    assert base == decision_id("c1", "welcome", "email", "e-17")
    assert len(base) == 32 and int(base, 16) >= 0
    variants = [decision_id("c2", "welcome", "email", "e-17"), decision_id("c1", "winback", "email", "e-17"),
                decision_id("c1", "welcome", "push", "e-17"), decision_id("c1", "welcome", "email", "e-18")]
    assert len({base, *variants}) == 5
    assert decision_id("ab", "c", "email", "t") != decision_id("a", "bc", "email", "t")


def test_iso_ms():
    """iso_ms renders UTC with milliseconds and a Z."""
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(NOON + 7) == "2026-01-05T12:00:00.007Z"


def test_build_record_fields():
    """The record carries id, contact, action, channel, template, scores, reasons, suppressions,
    experiment, trigger and both times."""
    chosen = Candidate("cart_reminder", "email", 80, 12.345678, "cart 50.00 open for 30 min", "cart/reminder")
    rec = build_record(
        contact="c1",
        chosen=chosen,
        suppressed=[Suppression("cart_reminder", "sms", "no_consent")],
        scores={"lead": {"p": 0.3}},
        trigger={"kind": "timer", "timer": "cart"},
        trigger_id="timer:cart:123",
        event_time_ms=NOON,
        decision_time_ms=NOON + 1500,
        experiment={"name": "global_holdout", "arm": "treatment"},
        experiments={"global_holdout": "treatment", "cart_copy": "b"},
        segment={"lead_band": "mid", "lifecycle": "prospect", "channel_preference": "email"},
    )
    assert rec == {
        "schema_version": DECISION_SCHEMA_VERSION,
        "decision_id": decision_id("c1", "cart_reminder", "email", "timer:cart:123"),
        "contact_id": "c1",
        "action": "cart_reminder",
        "channel": "email",
        "template": "cart/reminder",
        "offer": None,
        "journey": None,
        "step": None,
        "priority": 80,
        "expected_value": 12.345678,
        "scores": {"lead": {"p": 0.3}},
        "reasons": ["cart 50.00 open for 30 min", "priority 80, expected value 12.35"],
        "suppressed": [{"action": "cart_reminder", "channel": "sms", "reason": "no_consent"}],
        "experiment": {"name": "global_holdout", "arm": "treatment"},
        "experiments": {"global_holdout": "treatment", "cart_copy": "b"},
        "segment": {"lead_band": "mid", "lifecycle": "prospect", "channel_preference": "email"},
        "trigger": {"kind": "timer", "timer": "cart"},
        "event_time": "2026-01-05T12:00:00.000Z",
        "decision_time": "2026-01-05T12:00:01.500Z",
        "event_time_ms": NOON,
        "decision_time_ms": NOON + 1500,
    }


# ---------------------------------------------------------------- triggers

def test_welcome_on_signup_only():
    """signup proposes welcome by email; other events propose nothing (with a low lead score)."""
    got = on_event_candidates("signup", contact(), {"lead": 0.1}, CFG)
    assert [(c.action, c.channel, c.priority, c.template) for c in got] == [("welcome", "email", 50, "welcome/1")]
    assert on_event_candidates("page_view", contact(), {"lead": 0.1}, CFG) == []
    assert on_event_candidates("login", contact(), {}, CFG) == []


def test_sales_handoff_conditions():
    """Sales handoff needs a known contact, a lead score at/over threshold, and an intent event."""
    high = {"lead": 0.7}
    got = on_event_candidates("page_view", contact(), high, CFG)
    assert [(c.action, c.channel) for c in got] == [("sales_handoff", "sales_task")]
    assert got[0].expected_value == pytest.approx(0.7)
    assert on_event_candidates("page_view", contact(), {"lead": 0.69}, CFG) == []
    assert on_event_candidates("page_view", Profile("anon:a", known=False), high, CFG) == []
    assert "email_open" not in INTENT_TYPES
    assert on_event_candidates("email_open", contact(), high, CFG) == []
    assert on_event_candidates("page_view", contact(), {}, CFG) == []
    both = on_event_candidates("signup", contact(), high, CFG)
    assert {c.action for c in both} == {"welcome"}  # signup is not an intent event
    for t in INTENT_TYPES:
        assert [c.action for c in on_event_candidates(t, contact(), {"lead": 0.95}, CFG)] == ["sales_handoff"]


def test_disabled_action_proposes_nothing():
    """An action switched off in config produces no candidates."""
    cfg = PolicyConfig(actions={"welcome": {"enabled": False}})
    assert on_event_candidates("signup", contact(), {}, cfg) == []


def test_cart_candidates_after_idle_time():
    """Cart candidates appear once the cart has been untouched for cart_abandon_minutes, one per channel,
    earlier channels worth more."""
    p = contact(cart_value=50.0, cart_updated_ts=NOON)
    assert cart_candidates(p, NOON + 30 * 60_000 - 1, {"lead": 0.5}, CFG) == []
    got = cart_candidates(p, NOON + 30 * 60_000, {"lead": 0.5}, CFG)
    assert [c.channel for c in got] == ["email", "push", "sms"]
    assert [c.expected_value for c in got] == pytest.approx([25.0, 22.5, 20.0])
    assert all(c.action == "cart_reminder" and c.priority == 80 for c in got)
    assert "50.00" in got[0].why and "30 min" in got[0].why
    low = cart_candidates(p, NOON + HOUR_MS, {"lead": 0.0}, CFG)  # lead floored at 0.05
    assert low[0].expected_value == pytest.approx(2.5)
    assert cart_candidates(contact(cart_value=0.0, cart_updated_ts=NOON), NOON + DAY_MS, {}, CFG) == []
    assert cart_candidates(contact(cart_value=5.0), NOON + DAY_MS, {}, CFG) == []


def test_inactivity_candidates_over_churn_threshold():
    """Winback is proposed when churn is at/over the threshold, valued by churn and monetary history."""
    p = contact(last_activity_ts=NOON - 8 * DAY_MS, monetary_total=100.0)
    got = inactivity_candidates(p, NOON, {"churn": 0.5}, CFG)
    assert [(c.action, c.channel) for c in got] == [("winback_offer", "email"), ("winback_offer", "push")]
    assert got[0].expected_value == pytest.approx(1.0)
    assert "8.0 days" in got[0].why
    assert inactivity_candidates(p, NOON, {"churn": 0.49}, CFG) == []
    assert inactivity_candidates(p, NOON, {}, CFG) == []
    assert inactivity_candidates(contact(), NOON, {"churn": 0.9}, CFG) == []


# ---------------------------------------------------------------- config

@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"actions": {"welcome": {"channels": ["fax"]}}}, "fax"),
        ({"actions": {"upsell": {"priority": 1, "channels": ["email"], "template": "t"}}}, "upsell"),
        ({"caps": {"pager": {"24h": 1}}}, "pager"),
        ({"caps": {"email": {"2h": 1}}}, "2h"),
        ({"global_caps": {"1y": 3}}, "1y"),
        ({"caps": {"email": {"24h": -1}}}, "24h"),
        ({"quiet_hours": {"default_timezone": "Mars/Base"}}, "Mars/Base"),
        ({"quiet_hours": {"start_hour": 24}}, "start_hour"),
        ({"holdout_share": 1.5}, "holdout_share"),
        ({"actions": {"welcome": {"priority": 5000}}}, "priority"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_policy_config_errors_name_the_problem(kwargs, needle):
    """Invalid policy settings raise a ValidationError whose message names the bad value or field."""
    with pytest.raises(ValidationError) as err:
        PolicyConfig(**kwargs)
    assert needle in str(err.value)


def test_policy_config_amends_defaults():
    """Setting one action or one channel's caps keeps the other defaults."""
    cfg = PolicyConfig(actions={"welcome": {"priority": 10}}, caps={"email": {"24h": 2}})
    assert cfg.actions["welcome"].priority == 10
    assert cfg.actions["welcome"].template == "welcome/1"
    assert set(cfg.actions) == {"sales_handoff", "cart_reminder", "winback_offer", "welcome"}
    assert cfg.caps["email"] == {"24h": 2}
    assert cfg.caps["sms"] == {"24h": 1, "7d": 2}


def test_quiet_hours_unknown_channel_is_an_error():
    """An unknown channel in quiet_hours.channels is a configuration error, like in actions and caps
    (a typo used to be accepted and silently turned quiet hours off for that channel)."""
    with pytest.raises(ValidationError, match="SMS"):
        PolicyConfig(quiet_hours={"channels": ["SMS", "push"]})


def test_sales_handoff_fires_on_crossing_the_threshold_only():
    """MQL semantics: proposed when the lead score goes from below to above the threshold."""
    from touchline.decisions.triggers import on_event_candidates

    cfg = PolicyConfig()
    p = Profile("c1", known=True)
    crossing = on_event_candidates("product_view", p, {"lead": 0.8}, cfg, previous_lead=0.5)
    staying = on_event_candidates("product_view", p, {"lead": 0.8}, cfg, previous_lead=0.75)
    first = on_event_candidates("product_view", p, {"lead": 0.8}, cfg, previous_lead=None)
    assert [c.action for c in crossing] == ["sales_handoff"] == [c.action for c in first]
    assert staying == []
