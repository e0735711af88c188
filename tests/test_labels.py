"""Delayed labels on event time: which event or deadline resolves a pending observation, and how."""

from __future__ import annotations

from touchline.decisions.labels import CHURN, LEAD, on_deadline, on_event
from touchline.decisions.profile import DAY_MS, PASSIVE_TYPES, Observation, Profile

T0 = 1767614400000
H = 7 * DAY_MS
GOALS = frozenset({"purchase", "form_submit", "signup"})


def pending(*models: str) -> Profile:
    p = Profile("c1", known=True)
    for i, m in enumerate(models):
        p.pending[m] = Observation(T0, T0 + H, {"known": 1.0}, 0.1 * (i + 1), "v1")
    return p


def labels(p: Profile, type_: str, ts: int, active: bool = True) -> list[tuple[str, bool]]:
    return [(m, y) for m, _, y in on_event(p, type_, ts, GOALS, active)]


def test_lead_positive_on_goal_within_horizon():
    """A goal event inside [scored, deadline] makes the lead observation positive and pops it."""
    p = pending(LEAD)
    obs = p.pending[LEAD]
    got = list(on_event(p, "purchase", T0 + DAY_MS, GOALS, True))
    assert got == [(LEAD, obs, True)]
    assert LEAD not in p.pending


def test_lead_positive_on_goal_at_the_deadline_exactly():
    """The horizon is inclusive: a goal at the deadline still counts."""
    p = pending(LEAD)
    assert labels(p, "form_submit", T0 + H) == [(LEAD, True)]


def test_lead_not_resolved_by_goal_after_horizon_or_before_scoring():
    """A goal after the deadline or before the scoring moment resolves nothing."""
    p = pending(LEAD)
    assert labels(p, "purchase", T0 + H + 1) == []
    assert labels(p, "purchase", T0 - 1) == []
    assert LEAD in p.pending


def test_lead_not_resolved_by_non_goal_events():
    """Non-goal events leave the lead observation pending."""
    p = pending(LEAD)
    for t in ("page_view", "add_to_cart", "email_click"):
        assert labels(p, t, T0 + DAY_MS) == []
    assert LEAD in p.pending


def test_lead_negative_at_deadline():
    """on_deadline at (or after) the deadline gives a negative lead label; before it, nothing."""
    p = pending(LEAD)
    assert on_deadline(p, LEAD, T0 + H - 1) is None
    assert LEAD in p.pending
    obs = p.pending[LEAD]
    assert on_deadline(p, LEAD, T0 + H) == (obs, False)
    assert LEAD not in p.pending
    assert on_deadline(p, LEAD, T0 + H) is None  # resolved once


def test_churn_negative_on_activity_after_scoring():
    """Activity strictly after the scoring moment (up to the deadline) makes churn negative."""
    p = pending(CHURN)
    assert labels(p, "page_view", T0) == []  # same moment: not 'after'
    assert labels(p, "page_view", T0 + 1) == [(CHURN, False)]
    assert CHURN not in p.pending


def test_churn_not_resolved_after_deadline():
    """Activity after the deadline does not resolve churn on the event path."""
    p = pending(CHURN)
    assert labels(p, "page_view", T0 + H + 1) == []
    assert CHURN in p.pending


def test_churn_positive_at_deadline():
    """A passed churn horizon with no activity gives a positive churn label."""
    p = pending(CHURN)
    obs = p.pending[CHURN]
    assert on_deadline(p, CHURN, T0 + H + DAY_MS) == (obs, True)
    assert p.pending == {}


def test_passive_events_do_not_resolve_churn():
    """Passive events (deliveries, bounces, consent) leave churn pending."""
    p = pending(CHURN)
    for t in sorted(PASSIVE_TYPES):
        assert labels(p, t, T0 + DAY_MS, active=t not in PASSIVE_TYPES) == []
    assert CHURN in p.pending


def test_one_event_resolves_both_models():
    """A goal that is also activity resolves lead positive and churn negative together."""
    p = pending(LEAD, CHURN)
    assert labels(p, "purchase", T0 + DAY_MS) == [(LEAD, True), (CHURN, False)]
    assert p.pending == {}


def test_one_pending_observation_per_model():
    """Pending observations are keyed by model: one each; resolving one leaves the other."""
    p = pending(LEAD, CHURN)
    assert set(p.pending) == {LEAD, CHURN}
    assert labels(p, "page_view", T0 + 5) == [(CHURN, False)]
    assert set(p.pending) == {LEAD}
    assert on_deadline(p, CHURN, T0 + H) is None
    assert on_deadline(p, LEAD, T0 + H)[1] is False


def test_nothing_pending_nothing_resolved():
    """With no observation pending, events and deadlines resolve nothing."""
    p = Profile("c1")
    assert labels(p, "purchase", T0) == []
    assert on_deadline(p, LEAD, T0) is None and on_deadline(p, CHURN, T0) is None


def test_a_held_churn_return_is_noted_and_labelled_at_the_deadline():
    """Observations at random times hold a return (the first one is noted) and learn its
    negative label at the deadline, like a silence's positive one."""
    p = pending(CHURN)
    assert list(on_event(p, "purchase", T0 + DAY_MS, GOALS, True, hold_returns=True)) == []
    assert list(on_event(p, "purchase", T0 + 2 * DAY_MS, GOALS, True, hold_returns=True)) == []
    assert p.pending[CHURN].returned_ms == T0 + DAY_MS
    assert on_deadline(p, CHURN, T0 + H - 1) is None
    obs, label = on_deadline(p, CHURN, T0 + H)
    assert label is False and obs.returned_ms == T0 + DAY_MS and CHURN not in p.pending
    silent = pending(CHURN)
    assert on_deadline(silent, CHURN, T0 + H)[1] is True


def test_a_held_return_does_not_hold_the_lead_label():
    p = pending(LEAD, CHURN)
    assert [(m, y) for m, _, y in on_event(p, "purchase", T0 + DAY_MS, GOALS, True, hold_returns=True)] == [(LEAD, True)]
    assert CHURN in p.pending
