"""Questions put to the engine on request (the HTTP API): a contact's profile, and the next best
action for a placement now.

A request is an item of a batch like an event or a due timer (:mod:`.dispatch`), so it is
answered on the contact's current state, after the batch's earlier events, by the same policy,
under the same atomic commit: a decision's send is reserved against the caps the stream reserves
against, and of two writers deciding for one contact at once the second is redone on the
first's sends (:mod:`touchline.batch_service`).

At a request the candidates are the built-in actions whose trigger holds now, read as a
condition on the contact's state (the stream proposes them at a moment: the cart timer, the
inactivity check, the lead score crossing), each on the requested channel:

- ``cart_reminder``: a cart open and untouched for ``policy.cart_abandon_minutes``;
- ``winback_offer``: silent as long as the inactivity check waits, the churn score over
  ``policy.winback_churn_threshold`` (and in ``policy.winback_top_share`` when set);
- ``sales_handoff``: a known contact whose lead score is over ``policy.sales_lead_threshold``;
- ``welcome``: a signup in the last 30 days.

An action is offered on a channel it is sent on (``channels``) or pulled onto
(``pull_channels``: web, in_app). Eligibility (holdout, consent, quiet hours, cooldown, caps)
and arbitration are the stream's (:mod:`.arbitration`); the decision is recorded like any other.

>>> from touchline.decisions.batch_run import DecisionCore, LabelSettings
>>> from touchline.decisions.profile import Profile, apply_event
>>> core = DecisionCore(PolicyConfig(), {}, LabelSettings(3.0, 7.0, frozenset({"purchase"})))
>>> p = Profile("c1", known=True)
>>> _ = apply_event(p, "e1", "add_to_cart", 0, {"value": 40.0}, {})
>>> found, held = candidates_at(p, 3_600_000, "web", {"lead": 0.5, "churn": 0.1}, core)
>>> [(c.action, c.channel, c.expected_value) for c in found]
[('cart_reminder', 'web', 20.0)]
>>> [(h["action"], h["reason"]) for h in held]
[('sales_handoff', 'not_triggered'), ('winback_offer', 'not_triggered'), ('welcome', 'not_triggered')]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

from touchline.decisions.arbitration import DecisionPoint, Trigger
from touchline.decisions.events import Event
from touchline.decisions.features import features
from touchline.decisions.policy import Candidate, PolicyConfig
from touchline.decisions.profile import DAY_MS, Profile, contact_key
from touchline.decisions.custom_attributes import attribute_values
from touchline.decisions.profile_view import profile_view
from touchline.decisions.triggers import cart_candidates, inactivity_candidates, per_channel

if TYPE_CHECKING:
    from touchline.decisions.batch_run import BatchRun, DecisionCore

#: The two kinds of request.
DECIDE, PROFILE = "decide", "profile"
#: Scores computed at a request (what the record and the profile show).
REQUEST_SCORES = ("lead", "churn")


@dataclass(slots=True, eq=False)
class Ask:
    """One request: who (a contact id, else an anonymous id resolved through identity links),
    what (``decide`` on a channel for a placement, or ``profile``), and, once the batch ran, the
    answer (``None`` with ``unknown`` when no event of this identity was ever stored)."""

    kind: str
    contact_id: str | None = None
    anonymous_id: str | None = None
    channel: str = "web"
    placement: str | None = None
    page: str | None = None
    #: names the request in its decision's trigger (the decision id hashes it)
    request_id: str = ""
    answer: dict[str, Any] | None = None
    unknown: bool = False

    def lookup(self) -> Event:
        """An identity-only event to resolve this request's profile key with (never applied, never
        stored): the contact id when given (no lookup needed), else the anonymous id.

        >>> Ask(DECIDE, anonymous_id="a1").lookup().anonymous_id, Ask(PROFILE, "c1", "a1").lookup().anonymous_id
        ('a1', None)
        """
        if self.contact_id is not None:
            return Event(f"request:{self.request_id}", "request", 0, contact_id=self.contact_id)
        return Event(f"request:{self.request_id}", "request", 0, anonymous_id=self.anonymous_id)

    def trigger(self, now_ms: int) -> Trigger:
        """What the decision record says caused it: this request."""
        what = {"kind": "request", "request_id": self.request_id, "channel": self.channel,
                "placement": self.placement, "page": self.page}
        return Trigger(what, f"request:{self.request_id}", now_ms)


class RequestHandler:
    """Answers the requests of one batch (see the module docstring)."""

    def __init__(self, run: BatchRun) -> None:
        self.run = run
        self.core = run.core

    def __call__(self, ask: Ask, key: str) -> None:
        run = self.run
        profile = run.profiles.get(key)
        if profile is None or key in run.deleted or profile.first_ts is None:
            ask.unknown, ask.answer = True, None
            return
        now = self.core.clock.now()
        scores = self._scores(profile, now)
        if ask.kind == PROFILE:
            entries = {name: run.scorer.entry(name, p) for name, p in scores.items()}
            ask.answer = profile_view(profile, now, entries, self.core.journeys, self.core.policy,
                                      self.core.send_time)
            ask.answer["attributes"].update(attribute_values(profile, now, self.core.attributes))
            return
        run.touched.add(key)  # its send, its windows and what experiments note of it are committed
        found, held = candidates_at(profile, now, ask.channel, scores, self.core)
        point = run.arbiter.decide(run.moment(profile, now), found, scores, ask.trigger(now))
        record = run.outcome.decisions[-1] if point is not None and point.winner is not None else None
        ask.unknown = False
        ask.answer = decide_answer(ask, profile, point, held, record)

    def _scores(self, profile: Profile, now_ms: int) -> dict[str, float]:
        """The lead and churn scores as of now (the windows move on to now first)."""
        feats = features(profile, now_ms)
        return {name: self.run.scorer.score(name, feats) for name in REQUEST_SCORES if name in self.core.models}


def answer_reads(core: DecisionCore, profiles: dict[str, Profile], asks: list[tuple[Ask, str]]) -> None:
    """Answer profile requests on loaded profiles, outside a batch: nothing of it is written (the
    windows move on to now on the loaded copies only). An answer that raised says so."""
    from touchline.decisions.batch_run import BatchRun

    handler = RequestHandler(BatchRun(core, profiles, _no_reserve))
    for ask, key in asks:
        try:
            handler(ask, key)
        except Exception as exc:  # noqa: BLE001 - a bug: this answer fails, the others stand
            ask.answer = {"error": f"internal error: {type(exc).__name__}: {exc}"[:1000]}


def _no_reserve(*_args: Any) -> bool:
    return False


def decide_answer(ask: Ask, profile: Profile, point: DecisionPoint | None, held: list[dict[str, str]],
                  record: dict[str, Any] | None) -> dict[str, Any]:
    """The answer to a decide request: the chosen action with its decision record, or no action
    and why each candidate was held back (not offered, not triggered, or the policy's reason)."""
    suppressed = [{"action": s.action, "channel": s.channel, "reason": s.reason}
                  for s in (point.suppressed if point is not None else [])]
    head = {"contact_id": profile.contact_id, "channel": ask.channel, "placement": ask.placement}
    if record is None:
        return {"action": None, **head, "reasons": [*suppressed, *held]}
    return {"action": record["action"], **head, "decision_id": record["decision_id"],
            "template": record["template"], "offer": record["offer"], "reasons": record["reasons"],
            "held_back": [*suppressed, *held], "decision": record}


def candidates_at(profile: Profile, now_ms: int, channel: str, scores: dict[str, float],
                  core: DecisionCore) -> tuple[list[Candidate], list[dict[str, str]]]:
    """The actions whose trigger holds now, on ``channel``; and why each other enabled action is
    not a candidate (``not_offered`` on this channel, ``not_triggered``), with a detail."""
    found: list[Candidate] = []
    held: list[dict[str, str]] = []
    for action, spec in core.policy.actions.items():
        if not spec.enabled:
            continue
        if channel not in spec.channels and channel not in spec.pull_channels:
            held.append(_held(action, channel, "not_offered",
                              f"not sent on {channel} (policy.actions.{action}.channels, pull_channels)"))
            continue
        got = TRIGGERS[action](profile, now_ms, scores, core) if action in TRIGGERS else "no trigger at a request"
        if isinstance(got, str):
            held.append(_held(action, channel, "not_triggered", got))
        else:
            found.append(_on_channel(got, channel))
    return found, held


def _held(action: str, channel: str, reason: str, detail: str) -> dict[str, str]:
    return {"action": action, "channel": channel, "reason": reason, "detail": detail}


def _on_channel(proposed: list[Candidate], channel: str) -> Candidate:
    """The trigger's candidate on ``channel``: its own when the action is sent there, else the
    first one's, pulled onto it."""
    return next((c for c in proposed if c.channel == channel), None) or replace(proposed[0], channel=channel)


#: What a trigger tells at a request: its candidates (one per channel), or why it does not hold.
Found = list[Candidate] | str


def _cart(profile: Profile, now_ms: int, scores: dict[str, float], core: DecisionCore) -> Found:
    found = cart_candidates(profile, now_ms, scores, core.policy)
    if found:
        return found
    if profile.cart_value <= 0 or profile.cart_updated_ts is None:
        return "no open cart"
    minutes = (now_ms - profile.cart_updated_ts) / 60_000
    return f"cart changed {minutes:.0f} min ago; a reminder after {core.policy.cart_abandon_minutes:g} min"


def _winback(profile: Profile, now_ms: int, scores: dict[str, float], core: DecisionCore) -> Found:
    policy, churn, last = core.policy, scores.get("churn"), profile.last_activity_ts
    if churn is None or last is None:
        return "no activity yet"
    wait = core.inactive_ms_of(profile)
    if now_ms - last < wait:
        return f"active {(now_ms - last) / DAY_MS:.1f} days ago; a win-back after {wait / DAY_MS:.1f} days"
    share = policy.winback_top_share
    if share is not None and not core.churn_rank.ranks_in_top(churn, share):
        return f"churn score {churn:.2f} is not in the top {share:.0%} (policy.winback_top_share)"
    found = inactivity_candidates(profile, now_ms, scores, policy)
    return found or f"churn score {churn:.2f} < {policy.winback_churn_threshold:.2f}"


def _handoff(profile: Profile, _now_ms: int, scores: dict[str, float], core: DecisionCore) -> Found:
    policy, lead = core.policy, scores.get("lead")
    if not profile.known:
        return "an anonymous visitor (a hand-off needs a known contact)"
    if lead is None or lead < policy.sales_lead_threshold:
        return f"lead score {lead or 0.0:.2f} < {policy.sales_lead_threshold:.2f}"
    return per_channel("sales_handoff", lead, f"lead score {lead:.2f} >= {policy.sales_lead_threshold:.2f}", policy)


def _welcome(profile: Profile, _now_ms: int, _scores: dict[str, float], core: DecisionCore) -> Found:
    if not profile.window_count("30d", "signup"):
        return "no signup in the last 30 days"
    return per_channel("welcome", 1.0, "signed up in the last 30 days", core.policy)


TRIGGERS: dict[str, Callable[[Profile, int, dict[str, float], DecisionCore], Found]] = {
    "cart_reminder": _cart, "winback_offer": _winback, "sales_handoff": _handoff, "welcome": _welcome}


def request_key(ask: Ask, resolved: str) -> str:
    """The profile a request is about: its contact's, else where its anonymous id resolved."""
    return contact_key(ask.contact_id) if ask.contact_id is not None else resolved


__all__ = ["Ask", "DECIDE", "PROFILE", "PolicyConfig", "RequestHandler", "answer_reads", "candidates_at",
           "decide_answer", "request_key"]
