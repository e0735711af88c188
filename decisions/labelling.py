"""Training examples of one batch: when a moment is observed (features and prediction kept
until its label), and what the models learn when a label resolves (see
:mod:`touchline.decisions.labels` for the rules)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from touchline.decisions import labels as label_rules
from touchline.decisions.champion import ModelSlot
from touchline.decisions.outcome import BatchOutcome
from touchline.decisions.profile import DAY_MS, Observation, Profile
from touchline.decisions.quality_timeline import QualityTimeline

if TYPE_CHECKING:
    from touchline.decisions.moment import Moment

LABEL_TIMER = {label_rules.LEAD: "label_lead", label_rules.CHURN: "label_churn"}
#: When a known contact's next churn observation is taken (``labels.churn_observations = "random_times"``).
OBSERVE_CHURN_TIMER = "observe_churn"
TIMER_LABEL = {v: k for k, v in LABEL_TIMER.items()}
#: Called with (score, observation, label, event time) for each resolved label.
LabelSink = Callable[[str, Observation, bool, int], None]


class LabelSettings:
    """Horizons and goals for the delayed labels (see :mod:`touchline.decisions.labels`)."""

    def __init__(self, lead_horizon_days: float, churn_horizon_days: float, goal_types: frozenset[str],
                 sample_gap_hours: float = 24.0, sample_rate: float = 0.3,
                 churn_returns: frozenset[str] | None = None, churn_at_random_times: bool = False,
                 learn_at_horizon: frozenset[str] = frozenset()):
        self.lead_horizon_ms = int(lead_horizon_days * DAY_MS)
        self.churn_horizon_ms = int(churn_horizon_days * DAY_MS)
        self.goal_types = goal_types
        self.sample_gap_ms = int(sample_gap_hours * 3_600_000)
        self.sample_rate = sample_rate
        #: event types that end a churn observation as "came back" (None: any activity)
        self.churn_returns = churn_returns
        #: churn observations of known contacts at random times (see :meth:`Labeller.schedule_churn`)
        #: instead of at their activity
        self.churn_at_random_times = churn_at_random_times
        #: scores whose labels are learned at their observation's horizon, not as they resolve
        #: (see :mod:`touchline.decisions.delayed_labels`)
        self.learn_at_horizon = learn_at_horizon


class Labeller:
    """Observes moments and teaches the models when their labels resolve."""

    def __init__(self, settings: LabelSettings, models: dict[str, ModelSlot], learn: bool,
                 outcome: BatchOutcome, quality: QualityTimeline | None = None,
                 sink: LabelSink | None = None) -> None:
        self.settings = settings
        self.models = models
        #: each model's figures per day (for the summary and the report), when kept
        self.quality = quality
        #: False: labels are counted but no model learns (frozen models decide alike on every run)
        self.learn_on = learn
        self.outcome = outcome
        #: sees every resolved label (``touchline models train`` and ``evaluate`` capture them)
        self.sink = sink

    def on_event(self, profile: Profile, event_type: str, ts_ms: int, active: bool) -> None:
        """Labels the event resolves (a goal for lead, activity for churn) are learnt now."""
        s = self.settings
        for model, obs, label in label_rules.on_event(profile, event_type, ts_ms, s.goal_types, active, s.churn_returns,
                                                      hold_returns=s.churn_at_random_times):
            self.learn(model, obs, label, ts_ms)

    def on_deadline(self, profile: Profile, kind: str, now_ms: int) -> bool:
        """A label timer came due (False: ``kind`` is not one): the horizon passed without the outcome."""
        model = TIMER_LABEL.get(kind)
        if model is None:
            return False
        resolved = label_rules.on_deadline(profile, model, now_ms)
        if resolved is not None:
            self.learn(model, *resolved, now_ms)
        return True

    def release(self, now_ms: int) -> None:
        """The held labels whose horizon has passed by ``now_ms`` are learned, before anything
        at ``now_ms`` is scored (see :mod:`touchline.decisions.delayed_labels`)."""
        if not self.learn_on:
            return
        for name in self.settings.learn_at_horizon:
            slot = self.models.get(name)
            if slot is not None:
                slot.release(now_ms)

    def may_observe(self, profile: Profile, model: str, now_ms: int) -> bool:
        """One pending observation per model, and at most one per ``sample_gap`` per contact,
        so a very active contact does not turn every click into a training example."""
        if model in profile.pending:
            return False
        last = profile.observed.get(model)
        return last is None or now_ms - last >= self.settings.sample_gap_ms

    def schedule_churn(self, at: Moment, after_ms: int) -> None:
        """Set a known contact's next churn observation at a random time within a horizon after
        ``after_ms``: observations then fall at times unrelated to what the contact does (a
        silent spell included), the moments a churn score is asked about at an arbitrary
        cut-off. Observations taken only at activity never see a silent customer."""
        if not self.settings.churn_at_random_times or not at.profile.known or OBSERVE_CHURN_TIMER in at.profile.timers:
            return
        span = self.settings.churn_horizon_ms
        at.set_timer(OBSERVE_CHURN_TIMER, after_ms + label_rules.offset_ms(at.profile.key, after_ms, span))

    def observes_churn_at_activity(self) -> bool:
        return not self.settings.churn_at_random_times

    def observe(self, at: Moment, model: str, feats: dict[str, float], p: float, now_ms: int) -> None:
        """Capture features and prediction now; the label comes when the horizon resolves."""
        profile = at.profile
        if model in profile.pending:
            return
        profile.observed[model] = now_ms
        s = self.settings
        deadline = now_ms + (s.lead_horizon_ms if model == label_rules.LEAD else s.churn_horizon_ms)
        slot = self.models[model]
        profile.pending[model] = Observation(now_ms, deadline, feats, p, slot.champion.version, slot.shadow(feats))
        if self.learn_on:
            slot.observe(feats)
        at.set_timer(LABEL_TIMER[model], deadline)

    def learn(self, model: str, obs: Observation, label: bool, at_ms: int) -> None:
        """Every model of the score learns from the features captured at scoring time."""
        delay_ms = max(0, at_ms - obs.scored_at_ms)
        self.outcome.labelled[(model, "positive" if label else "negative")] += 1
        if self.sink is not None:
            self.sink(model, obs, label, at_ms)
        if not self.learn_on:
            return
        if self.quality is not None:
            self.quality.before_label(model, self.models[model].models, at_ms)
        learn_at = obs.deadline_ms if model in self.settings.learn_at_horizon else None
        self.outcome.drifts += self.models[model].learn(obs.features, label, obs.model_version, obs.probability,
                                                        obs.shadow, delay_ms, at_ms, learn_at)
        self.outcome.label_delays.setdefault(model, []).append(delay_ms / 1000)
