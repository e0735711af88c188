"""The per-contact decision loop of one micro-batch, without I/O.

:class:`DecisionCore` is what persists across batches on one worker (configuration, models,
the clock, the participants). :class:`BatchRun` is one batch: it puts the events and due
timers in one time-ordered queue (:mod:`~touchline.decisions.dispatch`) and hands each to
its handler, one module per concern:

* :mod:`~touchline.decisions.event_apply`: apply the event to the profile (merge, idempotency);
* :mod:`~touchline.decisions.labelling`: observations and the labels that resolve them;
* :mod:`~touchline.decisions.scoring`: predictions and what records say of them;
* :mod:`~touchline.decisions.event_handler` and :mod:`~touchline.decisions.timer_handler`:
  the steps of an event and of a due timer, with the built-in triggers;
* :mod:`~touchline.decisions.participant`: journeys and experiments, plugged in through one protocol;
* :mod:`~touchline.decisions.arbitration`: the decision point and its record;
* :mod:`~touchline.decisions.outcome`: what the batch did, for the metrics.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from touchline.decisions.arbitration import Arbiter, Reserve
from touchline.decisions.champion import ModelSlot, Restore
from touchline.decisions.clock import Clock, EventTimeClock
from touchline.decisions.custom_attributes import CustomAttributes
from touchline.decisions.dispatch import TimeQueue, TimerBook, dispatch, item_id
from touchline.decisions.event_apply import EventApplier
from touchline.decisions.event_handler import EventHandler
from touchline.decisions.events import Event
from touchline.decisions.experiment_runtime import ExperimentRuntime
from touchline.decisions.experiments import ExperimentSettings
from touchline.decisions.journey_runtime import JourneyRunner
from touchline.decisions.labelling import Labeller, LabelSettings, LabelSink
from touchline.decisions.moment import Moment
from touchline.decisions.estimators import ModelConfig, ScoreSettings
from touchline.decisions.outcome import BatchOutcome
from touchline.decisions.participant import Participant
from touchline.decisions.policy import PolicyConfig
from touchline.decisions.profile import DAY_MS, Profile, purchase_span_ms
from touchline.decisions.quality_timeline import QualityTimeline
from touchline.decisions.requests import Ask, RequestHandler
from touchline.decisions.score_rank import ScoreRank
from touchline.decisions.scoring import Scorer
from touchline.decisions.send_time import SendTime
from touchline.decisions.timer_handler import TimerHandler

__all__ = ["BatchRun", "DecisionCore", "LabelSettings", "Reserve"]

log = logging.getLogger(__name__)


class DecisionCore:
    """What persists across batches on one worker: configuration, models, the clock and the participants."""

    def __init__(
        self,
        policy: PolicyConfig,
        models: dict[str, ModelConfig],
        labels: LabelSettings,
        clock: Clock | None = None,
        retention_days: float = 730.0,
        journeys: JourneyRunner | None = None,
        restore: Restore | None = None,
        experiments: ExperimentSettings | None = None,
        anonymous_retention_days: float | None = None,
        no_action_share: float = 1.0,
        attributes: CustomAttributes | None = None,
        send_time: SendTime | None = None,
    ) -> None:
        self.policy = policy
        #: the configured custom attributes and traits (settings [attributes.NAME], [traits])
        self.attributes = attributes or CustomAttributes({}, {})
        #: share of the decision points where nothing is sent that get a no-action record
        self.no_action_share = no_action_share
        self.journeys = journeys
        self.experiments = ExperimentRuntime(experiments or ExperimentSettings(), policy.holdout_name, policy=policy)
        #: each contact's engagement by local hour, and when their best-time sends go
        self.send_time = send_time or SendTime(policy.quiet_hours.default_timezone, policy.quiet_hours)
        #: Called at each decision point in this order: the send-time learner, experiments, then journeys.
        self.participants: list[Participant] = [self.send_time, self.experiments, *self._wired(journeys)]
        self.labels = labels
        self.clock = clock or EventTimeClock()
        self.live = not isinstance(self.clock, EventTimeClock)
        self.retention_ms = int(retention_days * DAY_MS)
        #: anonymous visitors are forgotten sooner (None: as known contacts)
        self.anonymous_retention_ms = int((anonymous_retention_days or retention_days) * DAY_MS)
        #: score name -> champion (decides) and challengers (shadow)
        self.models = {name: ModelSlot(name, _as_score(name, cfg), restore) for name, cfg in models.items()}
        #: False: labels are counted but no model learns (frozen models decide alike on every run)
        self.learn = True
        #: sees every resolved label with the features captured for it (see Labeller.sink)
        self.label_sink: LabelSink | None = None
        #: each model's figures per event-time day, on the labels resolved that day (the summary's)
        self.quality = QualityTimeline()
        self.idle_ms = int(policy.cart_abandon_minutes * 60_000)
        self.inactive_ms = int(policy.inactivity_days * DAY_MS)
        #: churn scores at inactivity checks, to target the top share (policy.winback_top_share)
        self.churn_rank = ScoreRank()

    def _wired(self, journeys: JourneyRunner | None) -> list[JourneyRunner]:
        """The journeys, told when best-time sends go and the experiments' timing variants."""
        if journeys is None:
            return []
        journeys.send_time = self.send_time
        if self.experiments.settings.splits:
            journeys.wait_override = self.experiments.wait_override
            journeys.send_at_override = self.experiments.send_at_override
            journeys.timing_reached = self.experiments.timing_reached
        return [journeys]

    def retention_ms_of(self, profile: Profile) -> int:
        """How long ``profile`` is kept after its last activity: known contacts for years of
        repeat purchasing, anonymous visitors briefly."""
        return self.retention_ms if profile.known else self.anonymous_retention_ms

    def inactive_ms_of(self, profile: Profile) -> int:
        """How long ``profile`` must be silent to count as inactive (the win-back check):
        ``policy.inactivity_days``, or for a repeat buyer ``policy.inactivity_gaps`` of its own
        mean gap between purchases when that is longer, so a customer who buys every few
        weeks is not "inactive" between two of its usual purchases."""
        gaps, bought = self.policy.inactivity_gaps, purchase_span_ms(profile)
        if gaps is None or bought is None:
            return self.inactive_ms
        return max(self.inactive_ms, int(gaps * bought[1]))

    def advance(self, events: list[Event], advance_to_ms: int | None) -> int:
        """Let the clock see a batch's events (and an explicit advance); returns its horizon."""
        for ev in events:
            self.clock.observe(ev.ts_ms)
        if advance_to_ms is not None:
            self.clock.observe(advance_to_ms)
        return self.clock.now()


def _as_score(name: str, cfg: ModelConfig) -> ScoreSettings:
    if isinstance(cfg, ScoreSettings):
        return cfg if cfg.name else cfg.model_copy(update={"name": name})
    return ScoreSettings(**{**cfg.spec(), "name": cfg.name or name})


class BatchRun:
    """One micro-batch of events and due timers, processed in time order over loaded profiles.

    Pure: the caller loads the profiles and the due timers before, and after :meth:`run`
    saves ``touched`` profiles, drops ``merged_away`` and ``expired`` ones, schedules
    ``timers.to_schedule`` and reads :attr:`outcome`. The only call out is ``reserve``, the
    atomic frequency-cap check that must happen at decision time.
    """

    def __init__(self, core: DecisionCore, profiles: dict[str, Profile], reserve: Reserve):
        self.core = core
        self.profiles = profiles
        self.participants = core.participants
        self.outcome = BatchOutcome()
        self.queue = TimeQueue()
        self.timers = TimerBook(self.queue)
        self.scorer = Scorer(core.models, self.outcome)
        self.labeller = Labeller(core.labels, core.models, core.learn, self.outcome, core.quality, core.label_sink)
        self.arbiter = Arbiter(core.policy, self.participants, reserve, self.scorer.entry, core.no_action_share)
        self.applier = EventApplier(self)
        self.deleted: set[str] = set()  # merged away or expired: not to be saved
        #: merged-away profile -> the profile it went into (its drop waits for that one's write)
        self.merged_into: dict[str, str] = {}
        self.expired: set[str] = set()  # inactive past retention: forget with their aliases
        #: profiles changed in this batch: only these are saved (a stale timer for a
        #: forgotten key must not bring back an empty profile)
        self.touched: set[str] = set()
        #: profile key -> the event or timer that raised while handling it (not to be saved)
        self.failed: dict[str, Any] = {}
        #: events and timers to leave out (those that raised in an earlier run of the batch)
        self.skip: set[Any] = set()

    def moment(self, profile: Profile, now_ms: int) -> Moment:
        """A decision point of ``profile`` at ``now_ms`` in this batch."""
        return Moment(profile, now_ms, self.timers, self.outcome)

    @property
    def merged_away(self) -> set[str]:
        """Profiles folded into another one in this batch."""
        return self.deleted - self.expired

    def run(
        self,
        events: list[Event],
        resolved: list[tuple[str, str | None]],
        due: list[tuple[int, str, str]],
        horizon_ms: int,
        at: list[tuple[int, bool]] | None = None,
        asks: list[tuple[Ask, str]] | None = None,
    ) -> None:
        """Process ``events`` (with their resolved keys), ``due`` timers and ``asks`` (requests
        with their profile keys, answered at the clock's now, after the rest) in time order.

        Timers set while running that come due by ``horizon_ms`` (the batch's clock) fire
        in this run, between the events they fall between. ``at``: each event's place in
        that order and whether it came later than the allowed lateness (then it goes after
        the timers due by its place); default: its own time. An exception while handling
        one event or timer does not stop the rest: see :attr:`failed`.
        """
        self.timers.horizon_ms = horizon_ms
        for i, (ev, (key, merged)) in enumerate(zip(events, resolved)):
            place, late = at[i] if at is not None else (ev.ts_ms, False)
            self.queue.push_event(place, (ev, key, merged), late)
        for due_ms, key, kind in due:
            self.queue.push_timer(due_ms, (key, kind, due_ms))
        now = self.core.clock.now()
        for ask, key in asks or ():
            self.queue.push_request(now, (ask, key))
        handlers: dict[str, Callable[..., None]] = {"event": EventHandler(self), "timer": TimerHandler(self),
                                                    "request": RequestHandler(self)}
        dispatch(self.queue, handlers, self.skip, self.failed, self._fail)

    def _fail(self, key: str, kind: str, item: Any, exc: Exception) -> None:
        """Record an exception raised while handling one event or timer: its profile is not
        saved from this run (the caller redoes it without the item) and it is dead-lettered."""
        self.failed[key] = item_id(kind, item)
        log.warning("internal error on %s of profile %r: %s: %s", kind, key, type(exc).__name__, exc,
                    exc_info=log.isEnabledFor(logging.DEBUG))
        detail = f"{type(exc).__name__}: {exc}"[:1000]
        if kind == "event":
            ev = item[0]
            self.outcome.errors.append(
                ev.to_dead_letter("internal_error", f"processing event {ev.event_id!r} raised {detail}"))
        elif kind == "request":
            item[0].answer = {"error": f"internal error: {detail}"}  # answered, never dead-lettered
        else:
            _, timer, due_ms = item
            self.outcome.errors.append({"kind": "timer", "reason": "internal_error", "source": "timer",
                                        "detail": f"timer {timer!r} due at {due_ms} ms raised {detail}",
                                        "profile": key, "timer": timer, "due_ms": due_ms})
