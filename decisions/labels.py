"""Delayed labels on event time: when does a scored moment become a training example?

- lead: positive when a goal event (purchase, form_submit, signup by default) follows
  the scoring moment within the horizon; negative when the horizon passes without one.
- churn: positive when the contact does not come back within the horizon; negative as soon
  as it does (for observations at random times: at the deadline too, see :func:`_churn_return`).
  Coming back is any activity by default, or only the event types given (for purchase data:
  ``{"purchase"}``, "will this customer buy again within H").

One observation per contact and model is pending at a time, so labels sample the
stream instead of copying every event, and a pending observation is just a deadline
timer plus the features captured when it was scored (never features at label time:
by then the outcome has leaked into them).

>>> from touchline.decisions.profile import Profile, Observation
>>> p = Profile("c1")
>>> p.pending["lead"] = Observation(0, 1_000, {}, 0.2, "v1")
>>> [(k, y) for k, _, y in on_event(p, "purchase", 500, {"purchase"}, active=True)]
[('lead', True)]
"""

from __future__ import annotations

import hashlib
from typing import Iterator

from touchline.decisions.profile import Observation, Profile

LEAD, CHURN = "lead", "churn"


def on_event(
    profile: Profile, event_type: str, ts_ms: int, goal_types: set[str] | frozenset[str], active: bool,
    returns: frozenset[str] | None = None, hold_returns: bool = False,
) -> Iterator[tuple[str, Observation, bool]]:
    """Labels an event resolves: (model, observation, label). Pops what it resolves. A churn
    observation ends on any activity, or, given ``returns``, only on those event types; with
    ``hold_returns`` a return is only noted, and the label (negative) waits for the deadline.

    >>> p = Profile("c1")
    >>> p.pending["churn"] = Observation(0, 1_000, {}, 0.2, "v1")
    >>> list(on_event(p, "page_view", 500, {"purchase"}, active=True, returns=frozenset({"purchase"})))
    []
    >>> [(k, y) for k, _, y in on_event(p, "purchase", 600, {"purchase"}, active=True, returns=frozenset({"purchase"}))]
    [('churn', False)]
    """
    lead = profile.pending.get(LEAD)
    if lead is not None and event_type in goal_types and lead.scored_at_ms <= ts_ms <= lead.deadline_ms:
        del profile.pending[LEAD]
        yield LEAD, lead, True
    came_back = active if returns is None else event_type in returns
    if came_back:
        yield from _churn_return(profile, ts_ms, hold_returns)


def _churn_return(profile: Profile, ts_ms: int, hold: bool) -> Iterator[tuple[str, Observation, bool]]:
    """A return within a pending churn observation's horizon: its negative label now, or, held,
    noted on the observation for its deadline.

    Held labels are what observations at random times need: every label then arrives a horizon
    after its moment, returns and silences alike. Resolved at once, the newest labels are mostly
    returns (a silence takes the whole horizon to show), so a model learning in time order is
    taught, at any moment, that fewer customers leave than do.

    >>> p = Profile("c1")
    >>> p.pending["churn"] = Observation(0, 1_000, {}, 0.2, "v1")
    >>> list(_churn_return(p, 400, hold=True)), p.pending["churn"].returned_ms
    ([], 400)
    >>> on_deadline(p, CHURN, 1_000)[1]  # came back: negative, at the deadline
    False
    """
    churn = profile.pending.get(CHURN)
    if churn is None or not churn.scored_at_ms < ts_ms <= churn.deadline_ms:
        return
    if not hold:
        del profile.pending[CHURN]
        yield CHURN, churn, False
    elif churn.returned_ms is None:
        churn.returned_ms = ts_ms


def on_deadline(profile: Profile, model: str, now_ms: int) -> tuple[Observation, bool] | None:
    """The label a passed horizon gives, if the observation is still pending."""
    obs = profile.pending.get(model)
    if obs is None or obs.deadline_ms > now_ms:
        return None
    del profile.pending[model]
    return obs, model == CHURN and obs.returned_ms is None


def offset_ms(key: str, after_ms: int, span_ms: int) -> int:
    """A deterministic draw in ``[0, span_ms)`` keyed by the profile and the time it is drawn
    at (the same on every replay): when the next churn observation of a contact is taken.

    >>> offset_ms("c1", 0, 1000) == offset_ms("c1", 0, 1000), 0 <= offset_ms("c1", 5, 1000) < 1000
    (True, True)
    """
    digest = hashlib.blake2b(f"{key}|{after_ms}".encode(), digest_size=8, person=b"tl-obs").digest()
    return int.from_bytes(digest, "big") % max(1, span_ms)


def sampled(event_id: str, rate: float) -> bool:
    """Deterministic Bernoulli(rate) draw keyed by the event id (same on every replay).

    Taking observations at a random intent event, not always the first of a session,
    lets the model see every depth of a session it will later be asked about.

    >>> sampled("e-1", 1.0), sampled("e-1", 0.0)
    (True, False)
    """
    digest = hashlib.blake2b(event_id.encode(), digest_size=8, person=b"tl-label").digest()
    return int.from_bytes(digest, "big") < rate * 2**64
