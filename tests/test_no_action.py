"""No-action records, without I/O: the record of a decision point where every candidate was
held back (each candidate with its reason), when one is made, the sampled share, and what
a redone profile's records become."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone

import pytest

from touchline.decisions.arbitration import Arbiter, Trigger
from touchline.decisions.dispatch import TimeQueue, TimerBook
from touchline.decisions.moment import Moment
from touchline.decisions.no_action import (
    NO_ACTION_SCHEMA_VERSION,
    HeldBack,
    build_no_action,
    no_action_id,
    sampled,
)
from touchline.decisions.outcome import BatchOutcome
from touchline.decisions.policy import Candidate, PolicyConfig, Suppression, in_holdout
from touchline.decisions.profile import Profile, Send, anonymous_key, contact_key
from touchline.decisions.record import decision_id

NOON = int(datetime(2026, 1, 5, 12, tzinfo=timezone.utc).timestamp() * 1000)
NIGHT = int(datetime(2026, 1, 5, 23, tzinfo=timezone.utc).timestamp() * 1000)
CART = [Candidate("cart_reminder", "email", 80, 40.0, "cart 40.00 open for 30 min", "cart/reminder"),
        Candidate("cart_reminder", "sms", 80, 36.0, "cart 40.00 open for 30 min", "cart/reminder")]
TIMER = Trigger({"kind": "timer", "timer": "cart"}, f"timer:cart:{NOON}", NOON)


def arbiter(share: float = 1.0, holdout: float = 0.0, reserve=None) -> Arbiter:
    return Arbiter(PolicyConfig(holdout_share=holdout), [], reserve or (lambda *_: True),
                   lambda name, p: {"p": round(p, 6), "model": name}, share)


def moment(profile: Profile, now: int = NOON) -> Moment:
    return Moment(profile, now, TimerBook(TimeQueue()), BatchOutcome())


def decide(arb: Arbiter, profile: Profile, candidates=CART, now: int = NOON, trigger: Trigger = TIMER) -> BatchOutcome:
    at = moment(profile, now)
    arb.decide(at, list(candidates), {"lead": 0.4123456789}, trigger)
    return at.outcome


def test_every_candidate_held_back_gives_one_record_naming_each_reason():
    """Email capped by a send an hour ago, SMS without consent (the default): nothing is sent,
    and the record lists both candidates with what proposed them and why each was held back."""
    profile = Profile("c1", known=True, sends=[Send(NOON - 3_600_000, "email", "welcome")])
    out = decide(arbiter(), profile)
    assert out.decisions == [] and out.no_action_points == {"true": 1}
    [record] = out.no_actions
    assert out.no_action_keys == ["c1"]
    assert record["kind"] == "no_action" and record["schema_version"] == NO_ACTION_SCHEMA_VERSION
    assert record["no_action_id"] == no_action_id("c1", TIMER.trigger_id)
    assert record["contact_id"] == "c1" and "anonymous_id" not in record
    assert record["trigger"] == {"kind": "timer", "timer": "cart"}
    assert record["event_time_ms"] == record["decision_time_ms"] == NOON
    assert record["event_time"] == "2026-01-05T12:00:00.000Z"
    assert [(c["action"], c["channel"], c["reason"]) for c in record["candidates"]] == [
        ("cart_reminder", "email", "channel_cap"), ("cart_reminder", "sms", "no_consent")]
    assert record["candidates"][0] == {
        "action": "cart_reminder", "channel": "email", "reason": "channel_cap", "journey": None, "step": None,
        "template": "cart/reminder", "priority": 80, "expected_value": 40.0, "why": "cart 40.00 open for 30 min"}
    assert record["scores"] == {"lead": {"p": 0.412346, "model": "lead"}}
    assert record["holdout"] is False and record["experiments"] == {"global_holdout": "treatment"}
    assert "would_send" not in record
    assert out.suppressed == {"channel_cap": 1, "no_consent": 1}  # the counts the metrics already had


def test_the_id_differs_from_any_decision_id_and_is_stable():
    assert no_action_id("c1", "e-1") == no_action_id("c1", "e-1") != no_action_id("c1", "e-2")
    assert no_action_id("c1", "e-1") != no_action_id("c2", "e-1")
    assert no_action_id("c1", "e-1") not in {decision_id("c1", a, ch, "e-1") for a in ("welcome", "cart_reminder")
                                              for ch in ("email", "sms")}


def test_a_sent_decision_makes_no_no_action_record():
    profile = Profile("c1", known=True)  # email allowed, nothing sent yet
    out = decide(arbiter(), profile)
    assert len(out.decisions) == 1 and out.decisions[0]["channel"] == "email"
    assert out.no_actions == [] and out.no_action_points == {}


def test_quiet_hours_cooldown_and_anonymous_visitors():
    """Reasons come from the policy as they are counted: quiet hours at night, cooldown after a
    send of the action, unreachable for an anonymous visitor, whose record carries its id."""
    night = decide(arbiter(), Profile("c1", known=True, consent={"sms": True}, timezone="UTC"),
                   candidates=[CART[1]], now=NIGHT).no_actions[0]
    assert [c["reason"] for c in night["candidates"]] == ["quiet_hours"]
    cooled = decide(arbiter(), Profile("c1", known=True, sends=[Send(NOON - 7_200_000, "push", "cart_reminder")]),
                    candidates=[CART[0]]).no_actions[0]
    assert [c["reason"] for c in cooled["candidates"]] == ["cooldown"]
    out = decide(arbiter(), Profile(anonymous_key("v-9")))
    [anon] = out.no_actions
    assert anon["contact_id"] == "anon:v-9" and anon["anonymous_id"] == "v-9"
    assert {c["reason"] for c in anon["candidates"]} == {"unreachable"}
    assert out.no_action_keys == ["anon:v-9"]


def test_a_holdout_contact_says_what_it_would_have_been_sent():
    profile = Profile("c1", known=True, exposures={})
    out = decide(arbiter(holdout=1.0), profile)
    [record] = out.no_actions
    assert record["holdout"] is True and record["experiments"]["global_holdout"] == "holdout"
    assert {c["reason"] for c in record["candidates"]} == {"holdout"}
    assert record["would_send"] == {"action": "cart_reminder", "channel": "email"}


def test_a_reservation_refused_elsewhere_is_a_no_action_with_that_reason():
    out = decide(arbiter(reserve=lambda *_: False), Profile("c1", known=True, consent={"sms": True}))
    assert out.decisions == []
    reasons = {(c["channel"], c["reason"]) for c in out.no_actions[0]["candidates"]}
    assert reasons == {("email", "cap_reserved_elsewhere"), ("sms", "arbitration")}


def test_a_journey_step_note_is_kept_with_its_candidate():
    step = Candidate("welcome_2", "email", 50, 1.0, "journey welcome step 2", "welcome/2", journey="welcome", step="2")
    record = build_no_action(
        HeldBack("r1", "c1", None, {"kind": "timer", "timer": "journey:welcome"}, 1, 1, False,
                 {"global_holdout": "treatment"}, {}, {}),
        [step], [Suppression("welcome_2", "email", "no_consent")], {("welcome_2", "email"): "skipped"})
    assert record["candidates"] == [{
        "action": "welcome_2", "channel": "email", "reason": "no_consent", "journey": "welcome", "step": "2",
        "template": "welcome/2", "priority": 50, "expected_value": 1.0, "why": "journey welcome step 2",
        "journey_step": "skipped"}]


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 1.0])
def test_the_sampled_share_is_close_and_decided_by_the_id(share):
    ids = [no_action_id(f"c{i}", f"e-{i % 97}") for i in range(20_000)]
    chosen = [i for i in ids if sampled(i, share)]
    assert abs(len(chosen) / len(ids) - share) < 0.015
    assert all(sampled(i, min(1.0, share + 0.1)) for i in chosen)  # a larger share keeps every smaller share's points


def test_a_point_outside_the_share_is_counted_not_recorded():
    profile = Profile("c1", known=True, sends=[Send(NOON - 3_600_000, "email", "welcome")])
    place = int(no_action_id("c1", TIMER.trigger_id)[:16], 16) / 2**64  # where this point falls in [0, 1)
    out = decide(arbiter(share=place), profile)
    assert out.no_actions == [] and out.no_action_points == {"false": 1}
    out = decide(arbiter(share=min(1.0, place + 1e-9)), profile)
    assert len(out.no_actions) == 1 and out.no_action_points == {"true": 1}
    assert decide(arbiter(share=0.0), profile).no_action_points == {"false": 1}


def test_sampling_agrees_across_processes():
    """Python's own hash() is salted per process; the sample must not be: two interpreters with
    different PYTHONHASHSEED pick the same points."""
    code = ("from touchline.decisions.no_action import no_action_id, sampled;"
            "print(sum(1 << i for i in range(200) if sampled(no_action_id(f'c{i}', 'timer:cart:1'), 0.5)))")
    picks = {subprocess.run([sys.executable, "-c", code], env={"PYTHONHASHSEED": seed}, capture_output=True,
                            text=True, check=True).stdout for seed in ("1", "2")}
    assert len(picks) == 1 and int(picks.pop()) > 0


def test_a_redone_profile_loses_its_records_and_keeps_the_others():
    out = BatchOutcome()
    for key, contact in (("c1", "c1"), (anonymous_key("v"), "anon:v"), (contact_key("anon:x"), "anon:x")):
        out.no_actions.append({"contact_id": contact})
        out.no_action_keys.append(key)
    out.drop_profiles({anonymous_key("v")}, contact_key)
    assert out.no_actions == [{"contact_id": "c1"}, {"contact_id": "anon:x"}]
    assert out.no_action_keys == ["c1", "~anon:x"]
    redo = BatchOutcome(no_actions=[{"contact_id": "anon:v"}], no_action_keys=[anonymous_key("v")])
    redo.no_action_points["true"] += 1
    out.absorb(redo)
    assert len(out.no_actions) == len(out.no_action_keys) == 3 and out.no_action_points == {"true": 1}


def test_the_holdout_rule_is_the_one_the_records_report():
    """The record's holdout flag is the policy's own assignment (not a second hash)."""
    profile = Profile("c-holdout-check", known=True)
    arb = arbiter(holdout=0.5)
    record = decide(arb, profile, candidates=[CART[1]]).no_actions[0]
    assert record["holdout"] is in_holdout("c-holdout-check", "global_holdout", 0.5)
