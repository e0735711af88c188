"""One event through the decision loop: apply it, resolve labels, score where a decision or
a training example can follow, set the contact's timers, gather candidates, decide."""

from __future__ import annotations

from typing import TYPE_CHECKING

from touchline.decisions import labels as label_rules
from touchline.decisions.arbitration import Trigger
from touchline.decisions.events import Event
from touchline.decisions.features import features
from touchline.decisions.moment import Moment
from touchline.decisions.policy import Candidate
from touchline.decisions.profile import PASSIVE_TYPES, Profile
from touchline.decisions.triggers import CART_TIMER, INACTIVITY_TIMER, INTENT_TYPES, on_event_candidates

if TYPE_CHECKING:
    from touchline.decisions.batch_run import BatchRun

EXPIRE_TIMER = "expire"
#: Events that change a cart and so (re)start its abandonment clock.
CART_EVENTS = frozenset({"add_to_cart", "remove_from_cart", "checkout_start"})
#: Moments a lead observation is taken at: the intent events a sales hand-off is decided
#: on, so the model is trained on the situations it is asked about.
LEAD_MOMENTS = INTENT_TYPES - {"page_view"}


class EventHandler:
    """Handles the events of one batch (see the module docstring)."""

    def __init__(self, run: BatchRun) -> None:
        self.run = run
        self.core = run.core

    def __call__(self, ev: Event, key: str, merged: str | None) -> None:
        run = self.run
        profile = run.applier.apply(ev, key, merged)
        if profile is None:
            return
        at = run.moment(profile, self.core.clock.now() if self.core.live else profile.last_ts)
        active = ev.type not in PASSIVE_TYPES
        run.labeller.release(ev.ts_ms)
        run.labeller.on_event(profile, ev.type, ev.ts_ms, active)
        for participant in run.participants:
            participant.on_applied(at, ev)
        scores, churn = self._score(at, ev, active)
        self._set_timers(at, ev, active)
        candidates = self._candidates(at, ev, scores, churn)
        if candidates and "lead" not in scores:  # every decision records the scores it was made with
            scores["lead"] = run.scorer.score("lead", features(profile, profile.last_ts, self.core.attributes))
        run.arbiter.decide(at, candidates, scores, Trigger({"kind": "event", "event_id": ev.event_id, "type": ev.type},
                                                           ev.event_id, ev.ts_ms))

    def _score(self, at: Moment, ev: Event, active: bool) -> tuple[dict[str, float], float | None]:
        """Score only where a decision or a training example can follow: (lead scores, churn)."""
        profile, labeller, scorer = at.profile, self.run.labeller, self.run.scorer
        observe_lead, observe_churn = self._observes(profile, ev, active)
        if not (observe_lead or observe_churn or (profile.known and ev.type in INTENT_TYPES)):
            return {}, None
        feats = features(profile, profile.last_ts, self.core.attributes)
        lead = scorer.score("lead", feats)
        if observe_lead:
            labeller.observe(at, label_rules.LEAD, feats, lead, ev.ts_ms)
        churn = None
        if observe_churn:
            churn = scorer.score("churn", feats)
            labeller.observe(at, label_rules.CHURN, feats, churn, ev.ts_ms)
        return {"lead": lead}, churn

    def _observes(self, profile: Profile, ev: Event, active: bool) -> tuple[bool, bool]:
        """Whether this event is a lead observation (a sampled intent moment) and a churn one
        (activity, when churn is observed at activity)."""
        labeller = self.run.labeller
        observe_lead = (
            ev.type in LEAD_MOMENTS
            and labeller.may_observe(profile, label_rules.LEAD, ev.ts_ms)
            and label_rules.sampled(ev.event_id, self.core.labels.sample_rate)
        )
        observe_churn = (active and labeller.observes_churn_at_activity()
                         and labeller.may_observe(profile, label_rules.CHURN, ev.ts_ms))
        return observe_lead, observe_churn

    def _set_timers(self, at: Moment, ev: Event, active: bool) -> None:
        """Inactivity (win-back), cart abandonment and retention expiry: one pending of each."""
        profile, core = at.profile, self.core
        if active and INACTIVITY_TIMER not in profile.timers:
            at.set_timer(INACTIVITY_TIMER, ev.ts_ms + core.inactive_ms_of(profile))
        if ev.type in CART_EVENTS and profile.cart_value > 0 and CART_TIMER not in profile.timers:
            at.set_timer(CART_TIMER, ev.ts_ms + core.idle_ms)
        self.run.labeller.schedule_churn(at, ev.ts_ms)
        if EXPIRE_TIMER not in profile.timers:  # every profile is discarded once inactive long enough
            at.set_timer(EXPIRE_TIMER, (profile.last_activity_ts or ev.ts_ms) + core.retention_ms_of(profile))

    def _candidates(self, at: Moment, ev: Event, scores: dict[str, float], churn: float | None) -> list[Candidate]:
        """The built-in triggers' candidates, then each participant's (journeys may enter on churn)."""
        profile: Profile = at.profile
        previous_lead = profile.last_lead
        if "lead" in scores and profile.known and ev.type in INTENT_TYPES:  # where a hand-off is judged
            profile.last_lead = scores["lead"]
        candidates = on_event_candidates(ev.type, profile, scores, self.core.policy, previous_lead)
        seen = scores if churn is None else {**scores, "churn": churn}
        for participant in self.run.participants:
            candidates += participant.propose(at, ev, seen)
        return candidates
