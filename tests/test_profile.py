"""Profile state: windowed counts on event time, idempotency, RFM, cart, devices, consent,
merging an anonymous history into a contact, and model features."""

from __future__ import annotations

from dataclasses import fields
from math import isclose, log1p

import orjson
import pytest

from touchline.decisions.feature_names import FEATURE_SET_TAG, VECTOR_ORDER
from touchline.decisions.feature_states import Exposures, JourneyStates, Observations, ObservedAt, Touches
from touchline.decisions.features import FEATURE_NAMES, FEATURE_TYPES, FEATURE_WINDOWS, features
from touchline.decisions.profile import (
    DAY_MS,
    FEATURE_STATES,
    HOUR_MS,
    LONGEST_WINDOW_MS,
    WINDOWS,
    Observation,
    Profile,
    Send,
    advance,
    apply_event,
    is_too_late,
    merge_into,
    snapshot,
)
from touchline.state.codec import _CORE_FIELDS, from_parts, log_entries, send_entries, to_blob

T0 = 1767614400000  # 2026-01-05T12:00:00Z
MIN = 60_000


def ap(p: Profile, eid: str, type_: str, ts: int, props=None, ctx=None, channel=None) -> bool:
    return apply_event(p, eid, type_, ts, props or {}, ctx or {}, channel)


# ------------------------------------------------------------------- windows

@pytest.mark.parametrize("window", list(WINDOWS))
def test_event_counts_until_exactly_window_later(window):
    """An event counts in a window while as_of - w < ts, and drops exactly w after it."""
    length = WINDOWS[window]
    p = Profile("c1")
    ap(p, "e1", "page_view", T0)
    advance(p, T0 + length - 1)
    assert p.window_count(window, "page_view") == 1
    assert p.window_total(window) == 1
    advance(p, T0 + length)
    assert p.window_count(window, "page_view") == 0
    assert p.window_total(window) == 0
    for other, other_len in WINDOWS.items():  # longer windows still hold it
        if other_len > length:
            assert p.window_count(other, "page_view") == 1


def test_new_event_moves_the_windows():
    """A newer event advances as_of, expiring old entries as it goes."""
    p = Profile("c1")
    ap(p, "e1", "page_view", T0)
    ap(p, "e2", "page_view", T0 + 30 * MIN)
    assert p.window_count("1h", "page_view") == 2
    ap(p, "e3", "product_view", T0 + HOUR_MS)  # e1 drops exactly now
    assert p.window_count("1h", "page_view") == 1
    assert p.window_count("1h", "product_view") == 1
    assert p.window_count("24h", "page_view") == 2
    assert p.last_ts == T0 + HOUR_MS


def test_late_events_are_inserted_in_order():
    """Out-of-order events land in every window they still belong to, and expire in time order."""
    p = Profile("c1")
    ap(p, "e1", "page_view", T0 + 10 * HOUR_MS)
    ap(p, "late1", "page_view", T0 + 9 * HOUR_MS + 30 * MIN)  # in 1h (as_of 10h)
    ap(p, "late2", "page_view", T0 + 5 * HOUR_MS)  # only in 24h and longer
    assert p.last_ts == T0 + 10 * HOUR_MS  # late events don't move as_of back
    assert p.window_count("1h", "page_view") == 2
    assert p.window_count("24h", "page_view") == 3
    assert p.window_count("30d", "page_view") == 3
    advance(p, T0 + 10 * HOUR_MS + 30 * MIN)  # late1 drops first, e1 stays
    assert p.window_count("1h", "page_view") == 1
    advance(p, T0 + 11 * HOUR_MS)
    assert p.window_count("1h", "page_view") == 0
    advance(p, T0 + 29 * HOUR_MS)  # late2 (5h) drops from 24h, e1 and late1 stay
    assert p.window_count("24h", "page_view") == 2
    queue = p.windows["30d"][0]
    assert [e[0] for e in queue] == sorted(e[0] for e in queue)


def test_late_event_older_than_a_window_is_not_counted_there():
    """A late event older than the 1h window counts in 24h but never in 1h."""
    p = Profile("c1")
    ap(p, "e1", "page_view", T0 + 2 * HOUR_MS)
    ap(p, "late", "purchase", T0 + HOUR_MS)  # exactly 1h before as_of: outside (as_of - w < ts)
    assert p.window_count("1h", "purchase") == 0
    assert p.window_count("24h", "purchase") == 1


def test_counts_by_type_and_other():
    """Counts are per type; unknown types count under 'other'."""
    p = Profile("c1")
    for i, t in enumerate(["page_view", "page_view", "add_to_cart", "wishlist_add", "poke"]):
        ap(p, f"e{i}", t, T0 + i)
    assert p.window_count("1h", "page_view") == 2
    assert p.window_count("1h", "add_to_cart") == 1
    assert p.window_count("1h", "other") == 2
    assert p.window_count("1h", "wishlist_add") == 0
    assert p.window_total("1h") == 5
    assert snapshot(p)["windows"]["1h"] == {"add_to_cart": 1, "other": 2, "page_view": 2}


# --------------------------------------------------------------- idempotency

def test_same_event_twice_changes_nothing():
    """A replayed event_id returns False and leaves the profile exactly as it was."""
    p = Profile("c1")
    assert ap(p, "e1", "purchase", T0, {"value": 10})
    before = snapshot(p)
    assert not ap(p, "e1", "purchase", T0, {"value": 10})
    assert snapshot(p) == before
    assert p.events_total == 1 and p.purchases_total == 1 and p.monetary_total == 10


def test_replay_after_other_events_changes_nothing():
    """A replay arriving after later events (even with other type/ts) is still ignored."""
    p = Profile("c1")
    ap(p, "e1", "add_to_cart", T0, {"value": 5})
    ap(p, "e2", "page_view", T0 + MIN)
    ap(p, "e3", "purchase", T0 + 2 * MIN, {"value": 7})
    before = snapshot(p)
    assert not ap(p, "e1", "add_to_cart", T0, {"value": 5})
    assert not ap(p, "e2", "purchase", T0 + 3 * MIN, {"value": 99})
    assert snapshot(p) == before


def test_idempotency_memory_ends_with_the_30d_window():
    """Once an id leaves the 30d window it is forgotten, and is_too_late guards its replay."""
    p = Profile("c1")
    assert not is_too_late(p, T0 - 365 * DAY_MS)  # empty profile: nothing is too late
    ap(p, "e1", "page_view", T0)
    assert "e1" in p.seen
    ap(p, "e2", "page_view", T0 + LONGEST_WINDOW_MS - 1)
    assert "e1" in p.seen and not is_too_late(p, T0)
    ap(p, "e3", "page_view", T0 + LONGEST_WINDOW_MS)
    assert "e1" not in p.seen
    assert is_too_late(p, T0)
    assert not is_too_late(p, T0 + 1)


# -------------------------------------------------------------------- RFM etc.

def test_recency_ignores_passive_events():
    """last_activity_ts follows the person's own actions, not deliveries/bounces/consent."""
    p = Profile("c1")
    ap(p, "e1", "page_view", T0)
    for i, t in enumerate(["email_delivered", "email_bounce", "sms_delivered", "push_delivered", "consent_update"]):
        ap(p, f"p{i}", t, T0 + (i + 1) * HOUR_MS)
    assert p.last_activity_ts == T0
    assert p.last_ts == T0 + 5 * HOUR_MS
    ap(p, "e2", "email_open", T0 + 6 * HOUR_MS)
    assert p.last_activity_ts == T0 + 6 * HOUR_MS
    ap(p, "e3", "page_view", T0 + HOUR_MS)  # late activity doesn't move recency back
    assert p.last_activity_ts == T0 + 6 * HOUR_MS
    assert p.first_ts == T0 and p.events_total == 8


def test_first_ts_moves_back_for_late_events():
    """first_ts is the earliest event time seen, late arrivals included."""
    p = Profile("c1")
    ap(p, "e1", "page_view", T0)
    ap(p, "e0", "page_view", T0 - HOUR_MS)
    assert p.first_ts == T0 - HOUR_MS


def test_frequency_and_monetary():
    """Purchases count, their values add up, and bad values (bool, str, NaN, inf, huge) add nothing."""
    p = Profile("c1")
    ap(p, "b1", "purchase", T0, {"value": 20})
    ap(p, "b2", "purchase", T0 + HOUR_MS, {"value": 5.5})
    for i, bad in enumerate([True, "12", float("nan"), float("inf"), 1e13, None]):
        ap(p, f"x{i}", "purchase", T0 + 2 * HOUR_MS + i, {"value": bad})
    ap(p, "late", "purchase", T0 - HOUR_MS, {"value": 1})
    assert p.purchases_total == 9
    assert p.monetary_total == pytest.approx(26.5)
    assert p.last_purchase_ts == T0 + 2 * HOUR_MS + 5  # a late purchase doesn't move it back


def test_cart_add_remove_purchase():
    """Cart value adds on add_to_cart, subtracts (not below 0) on remove, and a purchase clears it."""
    p = Profile("c1")
    ap(p, "a1", "add_to_cart", T0, {"value": 20})
    ap(p, "a2", "add_to_cart", T0 + 1, {"value": 30.5})
    assert p.cart_value == pytest.approx(50.5) and p.cart_updated_ts == T0 + 1
    ap(p, "r1", "remove_from_cart", T0 + 2, {"value": 10.5})
    assert p.cart_value == pytest.approx(40.0) and p.cart_updated_ts == T0 + 2
    ap(p, "c1", "checkout_start", T0 + 3)
    assert p.cart_value == pytest.approx(40.0) and p.cart_updated_ts == T0 + 3
    ap(p, "r2", "remove_from_cart", T0 + 4, {"value": 100})
    assert p.cart_value == 0.0
    ap(p, "a3", "add_to_cart", T0 + 5, {"value": 15})
    ap(p, "pv", "page_view", T0 + 6)
    assert p.cart_updated_ts == T0 + 5  # browsing doesn't touch the cart
    ap(p, "b", "purchase", T0 + 7, {"value": 15})
    assert p.cart_value == 0.0 and p.cart_updated_ts == T0 + 7


def test_devices_distinct_and_context_latest():
    """Devices are recorded once each in first-seen order; timezone/locale follow the latest event."""
    p = Profile("c1")
    ap(p, "e1", "page_view", T0, ctx={"device": "d1", "timezone": "Europe/Berlin", "locale": "de"})
    ap(p, "e2", "page_view", T0 + 1, ctx={"device": "d2"})
    ap(p, "e3", "page_view", T0 + 2, ctx={"device": "d1", "timezone": "Asia/Tokyo", "locale": 5})
    assert p.devices == ["d1", "d2"]
    assert p.timezone == "Asia/Tokyo" and p.locale == "de"


def test_consent_update_grants_and_revokes():
    """consent_update sets one channel from properties.channel (or the event channel) and a bool."""
    p = Profile("c1")
    ap(p, "e1", "consent_update", T0, {"channel": "sms", "granted": True})
    ap(p, "e2", "consent_update", T0 + 1, {"granted": False}, channel="email")
    ap(p, "e3", "consent_update", T0 + 2, {"channel": "push", "granted": "yes"})  # not a bool: ignored
    assert p.consent == {"sms": True, "email": False}
    ap(p, "e4", "consent_update", T0 + 3, {"channel": "sms", "granted": False})
    assert p.consent["sms"] is False


@pytest.mark.parametrize(
    "props,channel,expected",
    [
        ({"channel": "email"}, None, {"email": False}),
        ({}, "sms", {"sms": False}),
        ({}, None, {"email": False, "sms": False, "push": False}),
        ({"channel": "all"}, "email", {"email": False, "sms": False, "push": False}),
    ],
)
def test_unsubscribe_channel_or_all(props, channel, expected):
    """unsubscribe revokes one channel, or all message channels when none or 'all' is given."""
    p = Profile("c1")
    ap(p, "e1", "unsubscribe", T0, props, channel=channel)
    assert p.consent == expected


def test_email_bounce_marks_email_once():
    """email_bounce marks email as bounced, once."""
    p = Profile("c1")
    ap(p, "e1", "email_bounce", T0)
    ap(p, "e2", "email_bounce", T0 + 1)
    assert p.bounced == ["email"]


# ---------------------------------------------------------------------- merge

ANON_EVENTS = [
    ("a1", "page_view", T0, {}, {"device": "phone"}),
    ("a2", "add_to_cart", T0 + 10 * MIN, {"value": 30}, {"timezone": "Europe/Paris"}),
    ("a3", "purchase", T0 + 20 * MIN, {"value": 12}, {}),
    ("a4", "product_view", T0 + 3 * HOUR_MS, {}, {}),
]
CONTACT_EVENTS = [
    ("c0", "page_view", T0 - 2 * DAY_MS, {}, {"device": "laptop"}),
    ("c1", "email_open", T0 + HOUR_MS, {}, {}),
    ("c2", "purchase", T0 + 2 * HOUR_MS + 30 * MIN, {"value": 100}, {"device": "phone"}),
    ("c3", "email_delivered", T0 + 4 * HOUR_MS, {}, {}),
]

_COMPARED = ("events_total", "purchases_total", "monetary_total", "first_ts", "last_ts",
             "last_activity_ts", "last_purchase_ts", "cart_value", "windows")


def _build(events, key="x", known=False) -> Profile:
    p = Profile(key, known=known)
    for eid, t, ts, props, ctx in events:
        ap(p, eid, t, ts, props, ctx)
    return p


def test_merge_equals_applying_all_events_to_one_profile():
    """Folding the anonymous profile in gives the same counts, windows, RFM and cart as one profile
    that saw every event."""
    contact = _build(CONTACT_EVENTS, "c1", known=True)
    anon = _build(ANON_EVENTS, "anon:a")
    merge_into(contact, anon)
    single = _build(sorted(CONTACT_EVENTS + ANON_EVENTS, key=lambda e: e[2]))
    got, want = snapshot(contact), snapshot(single)
    for name in _COMPARED:
        assert got[name] == want[name], name
    assert set(contact.devices) == {"laptop", "phone"} and len(contact.devices) == 2
    for w in WINDOWS:
        queue = contact.windows[w][0]
        assert [e[0] for e in queue] == sorted(e[0] for e in queue)
        assert contact.window_total(w) == single.window_total(w)
    assert contact.timezone == "Europe/Paris"  # taken from the anonymous side when unknown
    assert contact.known and contact.key == "c1"


def test_merge_carries_seen_ids():
    """After a merge a replayed anonymous event is still a duplicate."""
    contact = _build(CONTACT_EVENTS, "c1", known=True)
    anon = _build(ANON_EVENTS, "anon:a")
    merge_into(contact, anon)
    before = snapshot(contact)
    for eid, t, ts, props, ctx in ANON_EVENTS:
        assert not ap(contact, eid, t, ts, props, ctx)
    assert snapshot(contact) == before


def test_merge_cart_takes_the_most_recent_side():
    """The cart of whichever side changed it last wins."""
    contact = _build([("c", "add_to_cart", T0, {"value": 5}, {})], "c1", known=True)
    anon = _build([("a", "add_to_cart", T0 + MIN, {"value": 40}, {})], "anon:a")
    merge_into(contact, anon)
    assert contact.cart_value == 40 and contact.cart_updated_ts == T0 + MIN


def test_merge_adopts_timers_pending_and_sends():
    """Timers the contact lacks are adopted and returned; pending observations and sends come along."""
    contact = _build(CONTACT_EVENTS, "c1", known=True)
    anon = _build(ANON_EVENTS, "anon:a")
    contact.timers = {"inactivity": T0 + 9 * DAY_MS}
    anon.timers = {"inactivity": T0 + 7 * DAY_MS, "cart": T0 + 40 * MIN}
    lead_obs = Observation(T0, T0 + 7 * DAY_MS, {"known": 0.0}, 0.3, "v1")
    anon.pending["lead"] = lead_obs
    anon.observed["lead"] = T0
    contact.observed.update({"lead": T0 - DAY_MS, "churn": T0 - DAY_MS})
    anon.sends = [Send(T0 + 5, "push", "cart_reminder")]
    contact.sends = [Send(T0 - DAY_MS, "email", "welcome"), Send(T0 + 10, "email", "x")]
    adopted = merge_into(contact, anon)
    assert adopted == {"cart": T0 + 40 * MIN}
    assert contact.timers == {"inactivity": T0 + 9 * DAY_MS, "cart": T0 + 40 * MIN}
    assert contact.pending == {"lead": lead_obs}
    assert contact.observed == {"lead": T0, "churn": T0 - DAY_MS}
    assert [s.ts_ms for s in contact.sends] == [T0 - DAY_MS, T0 + 5, T0 + 10]


def test_merge_into_empty_contact():
    """Merging into a brand-new contact profile gives it the anonymous history."""
    anon = _build(ANON_EVENTS, "anon:a")
    contact = Profile("c1", known=True)
    merge_into(contact, anon)
    assert contact.events_total == 4 and contact.purchases_total == 1
    assert contact.first_ts == T0 and contact.last_ts == T0 + 3 * HOUR_MS
    assert contact.window_count("24h", "add_to_cart") == 1


def test_merge_keeps_consent_given_or_revoked_while_anonymous():
    """A consent decision made while anonymous is part of the history folded into the contact
    (it used to be dropped, so an anonymous opt-out fell back to consent_default)."""
    contact = _build([("c", "page_view", T0, {}, {})], "c1", known=True)
    anon = Profile("anon:a")
    ap(anon, "u", "unsubscribe", T0 + 1, {"channel": "email"})
    ap(anon, "g", "consent_update", T0 + 2, {"channel": "push", "granted": True})
    merge_into(contact, anon)
    single = _build([("c", "page_view", T0, {}, {})], "c1")
    ap(single, "u", "unsubscribe", T0 + 1, {"channel": "email"})
    ap(single, "g", "consent_update", T0 + 2, {"channel": "push", "granted": True})
    assert contact.consent == single.consent == {"email": False, "push": True}


# ------------------------------------------------------------------- features

def test_feature_names_complete_and_unique():
    """FEATURE_NAMES has every windowed count, totals and scalar once, and features() fills exactly those."""
    expected_counts = {f"n_{t}_{w}" for t in FEATURE_TYPES for w in FEATURE_WINDOWS}
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == len(expected_counts) + len(FEATURE_WINDOWS) + 13 + 6  # + the customer-base summary
    assert expected_counts <= set(FEATURE_NAMES)
    assert {f"n_all_{w}" for w in FEATURE_WINDOWS} <= set(FEATURE_NAMES)
    assert set(features(Profile("x"), T0)) == set(FEATURE_NAMES)


def test_features_of_an_empty_profile():
    """An empty profile: zero counts, 'never' recencies, unknown."""
    f = features(Profile("anon:x"), T0)
    assert all(f[n] == 0.0 for n in FEATURE_NAMES if n.startswith("n_"))
    assert f["hours_since_activity"] == f["hours_since_purchase"] == pytest.approx(log1p(365 * 24))
    assert f["known"] == 0.0 and f["has_open_cart"] == 0.0 and f["days_known"] == 0.0


def test_feature_values():
    """Each feature has the documented value (log1p of counts and durations)."""
    p = Profile("c1", known=True)
    ap(p, "e0", "page_view", T0 - 2 * DAY_MS, ctx={"device": "d1"})
    ap(p, "e1", "page_view", T0 - 30 * MIN, ctx={"device": "d2"})
    ap(p, "e2", "page_view", T0 - 10 * MIN)
    ap(p, "e3", "purchase", T0 - 3 * HOUR_MS, {"value": 50})
    ap(p, "e4", "add_to_cart", T0 - 5 * MIN, {"value": 19})
    for i in range(3):
        ap(p, f"d{i}", "email_delivered", T0 - DAY_MS + i)
    ap(p, "o1", "email_open", T0 - DAY_MS + 10)
    p.sends = [Send(T0 - 8 * DAY_MS, "email", "a"), Send(T0 - DAY_MS, "email", "b"), Send(T0 - 1, "sms", "c")]
    f = features(p, T0 + HOUR_MS - 20 * MIN)  # as_of = T0 + 40 min
    assert f["n_page_view_1h"] == pytest.approx(log1p(1))  # e1 (T0-30m) is out of (T0-20m, T0+40m]
    assert f["n_page_view_24h"] == pytest.approx(log1p(2))
    assert f["n_page_view_7d"] == pytest.approx(log1p(3))
    assert f["n_purchase_1h"] == 0.0 and f["n_purchase_24h"] == pytest.approx(log1p(1))
    assert f["n_add_to_cart_1h"] == pytest.approx(log1p(1))
    assert f["n_email_open_24h"] == 0.0 and f["n_email_open_7d"] == pytest.approx(log1p(1))
    assert f["n_all_1h"] == pytest.approx(log1p(2))
    assert f["n_all_30d"] == pytest.approx(log1p(9))
    assert f["hours_since_activity"] == pytest.approx(log1p(45 / 60))
    assert f["hours_since_purchase"] == pytest.approx(log1p(3 + 40 / 60))
    assert f["days_known"] == pytest.approx(log1p(2 + 40 / (60 * 24)))
    assert f["purchases_total"] == pytest.approx(log1p(1))
    assert f["monetary_total"] == pytest.approx(log1p(50))
    assert f["cart_value"] == pytest.approx(log1p(19))
    assert f["has_open_cart"] == 1.0
    assert f["devices"] == 2.0
    assert f["known"] == 1.0
    assert f["sends_7d"] == pytest.approx(log1p(2))
    assert isclose(f["email_open_rate_30d"], 1 / 4)
    assert p.last_ts == T0 + 40 * MIN  # features() advances the profile


def test_features_expire_windows_as_time_passes():
    """Asking for features later drops counts that left their window."""
    p = Profile("c1")
    ap(p, "e1", "product_view", T0)
    assert features(p, T0)["n_product_view_1h"] == pytest.approx(log1p(1))
    f = features(p, T0 + HOUR_MS)
    assert f["n_product_view_1h"] == 0.0 and f["n_product_view_24h"] == pytest.approx(log1p(1))


def test_merge_refusal_on_either_side_wins_and_bounces_carry():
    """Merging: a refusal on either side wins over a grant; bounces from the anonymous side are kept."""
    contact = _build([("c", "consent_update", T0, {"channel": "sms", "granted": False}, {})], "c1", known=True)
    ap(contact, "c2", "consent_update", T0 + 1, {"channel": "push", "granted": True})
    anon = Profile("anon:a")
    ap(anon, "a1", "consent_update", T0, {"channel": "sms", "granted": True})
    ap(anon, "a2", "consent_update", T0, {"channel": "push", "granted": False})
    ap(anon, "a3", "email_bounce", T0 + 2)
    merge_into(contact, anon)
    assert contact.consent == {"sms": False, "push": False}
    assert contact.bounced == ["email"]


def test_merge_folds_every_feature_state():
    """Each feature's state merges by its own rule: journeys, exposures and pending observations
    of the contact stand, the visitor's others join; the later observation time counts; touches
    join in time order, each decision once."""
    contact, anon = Profile("c1", known=True), Profile("anon:a")
    contact.journeys["welcome"] = {"step": "mine"}
    anon.journeys.update({"welcome": {"step": "theirs"}, "cart": {"step": "c1"}})
    contact.exposures["x"] = {"arm": "a", "closed": 5}
    anon.exposures.update({"x": {"arm": "b", "closed": 6}, "y": {"arm": "b", "closed": 6}})
    contact.touches.append([T0 + 2, "d2", "email", "welcome", None, False])
    anon.touches.extend([[T0 + 1, "d1", "sms", "x", None, False], [T0 + 2, "d2", "email", "welcome", None, False]])
    mine, theirs = (Observation(T0, T0 + DAY_MS, {}, p, "v1") for p in (0.1, 0.9))
    contact.pending["lead"] = mine
    anon.pending.update({"lead": theirs, "churn": theirs})
    contact.observed.update({"lead": T0, "churn": T0 + 5})
    anon.observed.update({"lead": T0 + 9, "churn": T0 + 1})
    merge_into(contact, anon)
    assert contact.journeys == {"welcome": {"step": "mine"}, "cart": {"step": "c1"}}
    assert contact.exposures == {"x": {"arm": "a", "closed": 5}, "y": {"arm": "b", "closed": 6}}
    assert [t[1] for t in contact.touches] == ["d1", "d2"]
    assert contact.pending == {"lead": mine, "churn": theirs}
    assert contact.observed == {"lead": T0 + 9, "churn": T0 + 5}


# ---------------------------------------------------------------- the stored blob

#: A profile as the store wrote it before the feature states were split out of the profile
#: (state/codec.py at commit bb63bac): blob, event log and sends. Existing Redis data looks like this.
OLD_BLOB = (
    b'{"first_ts":1000,"last_ts":4000,"last_activity_ts":3000,"events_total":4,"purchases_total":0,'
    b'"monetary_total":0.0,"last_purchase_ts":null,"cart_value":30.0,"cart_updated_ts":2000,'
    b'"timezone":"Europe/Paris","locale":null,"devices":["phone"],"aliases":[],"consent":{"sms":false},'
    b'"bounced":[],"observed":{"lead":3000,"churn":2500},"last_lead":0.25,"timers":{"cart":5000},'
    b'"engagement":{"email":{"open":1},"sms":{"unsubscribe":1}},"last_engaged_ts":3000,"soft_bounces":{},'
    b'"journeys":{"welcome":{"active":true,"step":"s2","entries":1}},"score_memory":{"lead":0.25},'
    b'"attributes":{"birthday":"1990-01-01"},"touches":[[3000,"d1","email","welcome",[["x","all","a"]],false]],'
    b'"exposures":{"global_holdout":{"arm":"treatment","baseline":"holdout","at":3000,"segment":{},'
    b'"converted_at":null,"value":0.0},"old":{"arm":"a","closed":2000}},"sent_through":3500,'
    b'"pending":{"lead":[3000,9000,{"known":1.0},0.25,"v1"],"churn":[3000,9000,{"known":1.0},0.5,"v2",{"v3":0.4}]}}'
)
OLD_LOG = [(1000, "page_view\x1fe1"), (2000, "add_to_cart\x1fe2"), (3000, "email_open\x1fe3"),
           (4000, "unsubscribe\x1fe4")]
OLD_SENDS = [(3500, "email\x1fwelcome\x1f3500")]


def test_a_blob_written_before_the_split_loads_and_writes_back_the_same():
    """Existing Redis data loads into the typed feature states, and writing it back gives the same
    keys and values (only the keys' order in the JSON object differs)."""
    back = from_parts("c1", OLD_BLOB, OLD_LOG, OLD_SENDS)
    added_since = {"first_purchase_ts": None, "purchase_days": None,  # unknown for a blob written before it was kept
                   "tallies": {}, "send_hours": []}  # no custom attributes, no engagement hours yet
    assert orjson.loads(to_blob(back)) == {**orjson.loads(OLD_BLOB), **added_since}
    assert (type(back.journeys), type(back.touches), type(back.exposures), type(back.pending),
            type(back.observed)) == (JourneyStates, Touches, Exposures, Observations, ObservedAt)
    assert back.pending["churn"] == Observation(3000, 9000, {"known": 1.0}, 0.5, "v2", {"v3": 0.4})
    assert back.pending["lead"].shadow == {}
    assert back.journeys["welcome"]["step"] == "s2" and back.exposures["old"] == {"arm": "a", "closed": 2000}
    assert back.seen == {"e1", "e2", "e3", "e4"} and back.window_count("30d", "add_to_cart") == 1
    assert log_entries(back) == OLD_LOG and send_entries(back) == OLD_SENDS
    again = from_parts("c1", to_blob(back), log_entries(back), send_entries(back))
    assert snapshot(again) == snapshot(back)


def test_every_profile_field_is_in_the_blob_or_rebuilt_from_the_sets():
    """A field added to the profile must be stored (a core field or a feature state), or it is
    lost at the first restart on Redis."""
    rebuilt = {"key", "known", "windows", "seen", "sends"}  # from the key, the event log and the sends set
    stored = set(_CORE_FIELDS) | set(FEATURE_STATES)
    assert not stored & rebuilt and len(_CORE_FIELDS) == len(set(_CORE_FIELDS))
    assert {f.name for f in fields(Profile)} == stored | rebuilt
    assert all(isinstance(getattr(Profile("c1"), name), state) for name, state in FEATURE_STATES.items())


def test_a_held_churn_return_survives_the_stored_blob():
    """A churn observation that noted a return (held until its deadline) keeps it through the
    blob, with or without challengers' shadow scores; one without a return stores as before."""
    held = Observations({"churn": Observation(1, 9, {"known": 1.0}, 0.5, "v1", returned_ms=4),
                         "lead": Observation(1, 9, {}, 0.5, "v1", {"v2": 0.3}, returned_ms=5)})
    assert Observations.from_json(orjson.loads(orjson.dumps(held.to_json()))) == held
    plain = Observations({"churn": Observation(1, 9, {}, 0.5, "v1")})
    assert plain.to_json() == {"churn": [1, 9, {}, 0.5, "v1"]}


def test_a_pending_observation_of_the_built_in_features_is_stored_without_their_names():
    """Names are most of a pending observation's stored size: the built-in set is stored as
    its tag and the values, read back to the same dict in the same order (the scaler reads
    features by position), and values written for another feature set are never misread."""
    p = Profile("c1", known=True)
    apply_event(p, "e1", "add_to_cart", 0, {"value": 20.0}, {})
    assert tuple(features(p, 60_000)) == VECTOR_ORDER  # before any purchase
    apply_event(p, "e2", "purchase", 120_000, {"value": 20.0}, {})
    x = features(p, 3_600_000)
    assert tuple(x) == VECTOR_ORDER  # with a purchase (the customer-base features computed)
    p.pending["lead"] = Observation(3_600_000, 9_000_000, x, 0.25, "v1")
    p.pending["churn"] = Observation(3_600_000, 9_000_000, {**x, "custom_views_7d": 2.0}, 0.5, "v1")
    blob = to_blob(p)
    stored = orjson.loads(blob)
    assert stored["pending_packed"]["lead"][2] == [FEATURE_SET_TAG, *x.values()]
    assert list(stored["pending"]) == ["churn"]  # not the built-in vector: by name, where every version reads it
    assert stored["pending"]["churn"][2] == {**x, "custom_views_7d": 2.0}
    back = from_parts("c1", blob, log_entries(p), send_entries(p))
    assert back.pending == p.pending and list(back.pending["lead"].features) == list(VECTOR_ORDER)
    by_name = len(orjson.dumps([*stored["pending_packed"]["lead"][:2], x]))
    assert len(orjson.dumps(stored["pending_packed"])) < by_name * 0.7
    earlier = Observations.from_json(stored["pending"])  # what a version before this one reads: no packed ones
    assert list(earlier) == ["churn"]
    stored["pending_packed"]["lead"][2][0] = "fs:000000000000"  # written by a version with other built-in features
    assert list(Observations.from_json(stored["pending"], stored["pending_packed"])) == ["churn"]
