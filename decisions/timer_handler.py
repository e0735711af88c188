"""One due timer through the decision loop: participants' timers (journeys, experiments),
label deadlines, abandoned carts, inactivity (churn win-back) and retention expiry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from touchline.decisions import labels as label_rules
from touchline.decisions.arbitration import Trigger
from touchline.decisions.event_handler import EXPIRE_TIMER
from touchline.decisions.features import features
from touchline.decisions.labelling import OBSERVE_CHURN_TIMER
from touchline.decisions.moment import Moment
from touchline.decisions.policy import Candidate
from touchline.decisions.triggers import CART_TIMER, INACTIVITY_TIMER, cart_candidates, inactivity_candidates

if TYPE_CHECKING:
    from touchline.decisions.batch_run import BatchRun


class TimerHandler:
    """Handles the due timers of one batch (see the module docstring)."""

    def __init__(self, run: BatchRun) -> None:
        self.run = run
        self.core = run.core

    def __call__(self, key: str, kind: str, due_ms: int) -> None:
        run = self.run
        profile = run.profiles.get(key)
        if profile is None or key in run.deleted or profile.timers.get(kind) != due_ms:
            return  # stale: replaced, merged away or expired since it was set
        del profile.timers[kind]
        run.touched.add(key)
        at = run.moment(profile, self.core.clock.now() if self.core.live else due_ms)
        run.labeller.release(at.now_ms)
        run.outcome.timers_fired[kind] += 1
        trigger = Trigger({"kind": "timer", "timer": kind}, f"timer:{kind}:{due_ms}", due_ms)
        owner = next((p for p in run.participants if p.owns_timer(kind)), None)
        if owner is not None:
            self._decide_on(at, owner.on_timer(at, kind), trigger)
        elif not run.labeller.on_deadline(profile, kind, at.now_ms):
            self._builtin(at, kind, trigger)

    def _builtin(self, at: Moment, kind: str, trigger: Trigger) -> None:
        if kind == CART_TIMER:
            self._cart(at, trigger)
        elif kind == INACTIVITY_TIMER:
            self._inactivity(at, trigger)
        elif kind == EXPIRE_TIMER:
            self._expire(at)
        elif kind == OBSERVE_CHURN_TIMER:
            self._observe_churn(at)

    def _decide_on(self, at: Moment, proposed: list[Candidate], trigger: Trigger) -> None:
        """A participant's proposals, decided with the lead score they are recorded with."""
        if proposed:
            scores = {"lead": self.run.scorer.score("lead", features(at.profile, at.now_ms, self.core.attributes))}
            self.run.arbiter.decide(at, proposed, scores, trigger)

    def _cart(self, at: Moment, trigger: Trigger) -> None:
        """Cart abandoned, unless it changed since (then wait for the new idle deadline)."""
        profile, now = at.profile, at.now_ms
        if profile.cart_value <= 0 or profile.cart_updated_ts is None:
            return
        ready = profile.cart_updated_ts + self.core.idle_ms
        if ready > now:
            at.set_timer(CART_TIMER, ready)
            return
        scores = {"lead": self.run.scorer.score("lead", features(profile, now, self.core.attributes))}
        self.run.arbiter.decide(at, cart_candidates(profile, now, scores, self.core.policy), scores, trigger)

    def _inactivity(self, at: Moment, trigger: Trigger) -> None:
        """Inactive long enough: score churn (an observation too), win-back and score-crossing entries."""
        profile, now, run = at.profile, at.now_ms, self.run
        last = profile.last_activity_ts
        if last is None:
            return
        inactive_ms = self.core.inactive_ms_of(profile)
        if last + inactive_ms > now:
            at.set_timer(INACTIVITY_TIMER, last + inactive_ms)
            return
        feats = features(profile, now, self.core.attributes)
        churn = run.scorer.score("churn", feats)
        if run.labeller.observes_churn_at_activity():
            run.labeller.observe(at, label_rules.CHURN, feats, churn, now)
        scores = {"churn": churn}
        candidates = inactivity_candidates(profile, now, scores, self.core.policy) if self._targeted(churn) else []
        for participant in run.participants:
            candidates += participant.propose(at, None, scores)
        run.arbiter.decide(at, candidates, scores, trigger)

    def _observe_churn(self, at: Moment) -> None:
        """A known contact's churn observation at a random time (``labels.churn_observations =
        "random_times"``), then the next one, drawn after this one's horizon."""
        profile, now, run = at.profile, at.now_ms, self.run
        if label_rules.CHURN not in profile.pending:
            feats = features(profile, now, self.core.attributes)
            run.labeller.observe(at, label_rules.CHURN, feats, run.scorer.score("churn", feats), now)
        run.labeller.schedule_churn(at, now + self.core.labels.churn_horizon_ms)

    def _targeted(self, churn: float) -> bool:
        """Within the top share of recent churn scores, when the policy targets one (every
        score is ranked, so the share is of the contacts checked, not of those over the threshold)."""
        share = self.core.policy.winback_top_share
        return share is None or self.core.churn_rank.in_top(churn, share)

    def _expire(self, at: Moment) -> None:
        """Inactive past retention: the profile is forgotten with its aliases."""
        profile, run = at.profile, self.run
        last = profile.last_activity_ts or profile.last_ts
        retention_ms = self.core.retention_ms_of(profile)
        if last + retention_ms > at.now_ms:
            at.set_timer(EXPIRE_TIMER, last + retention_ms)
            return
        run.deleted.add(profile.key)
        run.expired.add(profile.key)
