"""The per-contact decision loop of one micro-batch, without I/O.

Events and due timers run as one time-ordered queue over profiles the caller has
loaded, so a timer that comes due between two events of a batch fires between them
and batch boundaries do not change the decisions. For each event: apply it to the
profile (idempotently), resolve delayed labels, score where a decision or a training
example can follow, set timers, collect trigger candidates and decide. For each due
timer: label deadlines, abandoned carts, inactivity (churn win-back), retention expiry.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter
from time import perf_counter_ns
from typing import Any, Callable, Mapping

from touchline.decisions import labels as label_rules
from touchline.decisions.clock import Clock, EventTimeClock
from touchline.decisions.events import KNOWN_TYPES, Event, missing_attributes
from touchline.decisions.features import features
from touchline.decisions.champion import Drift, ModelSlot, Restore
from touchline.decisions.experiment_runtime import Assignment, ExperimentRuntime, ExperimentTallies
from touchline.decisions.experiments import ExperimentSettings
from touchline.decisions.estimators import ModelConfig, ScoreSettings
from touchline.decisions.feedback import FEEDBACK_TYPES, feedback_key, is_linked
from touchline.decisions.policy import Candidate, PolicyConfig, Suppression, arbitrate, in_holdout
from touchline.decisions.profile import (
    DAY_MS,
    MAX_ALIASES,
    PASSIVE_TYPES,
    Observation,
    Profile,
    Send,
    money,
    apply_event,
    is_too_late,
    merge_into,
)
from touchline.decisions.journey_runtime import TIMER_PREFIX as JOURNEY_TIMER_PREFIX
from touchline.decisions.journey_runtime import JourneyCandidate, JourneyRunner
from touchline.decisions.record import build_record
from touchline.decisions.triggers import (
    CART_TIMER,
    INACTIVITY_TIMER,
    INTENT_TYPES,
    cart_candidates,
    inactivity_candidates,
    on_event_candidates,
)

#: Atomically check caps and record a send (a state store's ``reserve``).
Reserve = Callable[[Profile, Send, Mapping[str, Mapping[str, int]], Mapping[str, int]], bool]

EXPIRE_TIMER = "expire"
#: Events that change a cart and so (re)start its abandonment clock.
CART_EVENTS = frozenset({"add_to_cart", "remove_from_cart", "checkout_start"})
#: Moments a lead observation is taken at: the intent events a sales hand-off is decided
#: on, so the model is trained on the situations it is asked about.
LEAD_MOMENTS = INTENT_TYPES - {"page_view"}
log = logging.getLogger(__name__)
LABEL_TIMER = {label_rules.LEAD: "label_lead", label_rules.CHURN: "label_churn"}
_TIMER_LABEL = {v: k for k, v in LABEL_TIMER.items()}



class LabelSettings:
    """Horizons and goals for the delayed labels (see :mod:`touchline.decisions.labels`)."""

    def __init__(self, lead_horizon_days: float, churn_horizon_days: float, goal_types: frozenset[str],
                 sample_gap_hours: float = 24.0, sample_rate: float = 0.3):
        self.lead_horizon_ms = int(lead_horizon_days * DAY_MS)
        self.churn_horizon_ms = int(churn_horizon_days * DAY_MS)
        self.goal_types = goal_types
        self.sample_gap_ms = int(sample_gap_hours * 3_600_000)
        self.sample_rate = sample_rate



class DecisionCore:
    """What persists across batches on one worker: configuration, models and the clock."""

    def __init__(
        self,
        policy: PolicyConfig,
        models: dict[str, ModelConfig],
        labels: LabelSettings,
        clock: Clock | None = None,
        retention_days: float = 90.0,
        journeys: JourneyRunner | None = None,
        restore: Restore | None = None,
        experiments: ExperimentSettings | None = None,
    ) -> None:
        self.policy = policy
        self.journeys = journeys
        self.experiments = ExperimentRuntime(experiments or ExperimentSettings(), policy.holdout_name)
        if journeys is not None and self.experiments.settings.splits:
            journeys.wait_override = self.experiments.wait_override
        self.labels = labels
        self.clock = clock or EventTimeClock()
        self.live = not isinstance(self.clock, EventTimeClock)
        self.retention_ms = int(retention_days * DAY_MS)
        #: score name -> champion (decides) and challengers (shadow)
        self.models = {name: ModelSlot(name, _as_score(name, cfg), restore) for name, cfg in models.items()}
        #: False: labels are counted but no model learns (frozen models decide alike on every run)
        self.learn = True
        self.idle_ms = int(policy.cart_abandon_minutes * 60_000)
        self.inactive_ms = int(policy.inactivity_days * DAY_MS)

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

    Pure: the caller loads the profiles and the due timers before, and after ``run``
    saves ``touched`` profiles, drops ``merged_away`` and ``expired`` ones and schedules
    ``to_schedule``. The only call out is ``reserve``, the atomic frequency-cap check
    that must happen at decision time.
    """

    def __init__(self, core: "DecisionCore", profiles: dict[str, Profile], reserve: Reserve):
        self.core = core
        self.profiles = profiles
        self.reserve = reserve
        self.dead: list[dict[str, Any]] = []
        #: the profile each dead letter came from (a redone profile's are made again)
        self.dead_keys: list[str] = []
        self.decisions: list[dict[str, Any]] = []
        self.by_type: Counter[str] = Counter()
        #: (channel, outcome, linked to a decision id) -> feedback events applied
        self.feedback: Counter[tuple[str, str, str]] = Counter()
        self.suppressed: Counter[str] = Counter()
        self.decided: Counter[tuple[str, str]] = Counter()
        self.timers_fired: Counter[str] = Counter()
        self.labelled: Counter[tuple[str, str]] = Counter()
        #: exposures, outcomes, conversions and their records (the experiments output)
        self.exp = ExperimentTallies()
        #: model -> label delays (seconds, event time) of the labels resolved in this batch
        self.label_delays: dict[str, list[float]] = {}
        self.drifts: list[Drift] = []
        #: features each model last scored, for the challengers' shadow scores in a record
        self._scored_features: dict[str, dict[str, float]] = {}
        self.scores: dict[str, list[float]] = {name: [] for name in core.models}
        self.duplicates = 0
        #: identity of each applied event: known, anonymous_resolved or anonymous_unresolved
        self.identities: Counter[str] = Counter()
        #: anonymous ids linked to a known contact in this batch
        self.merges = 0
        #: profiles that saw their first event, by identity (known, anonymous)
        self.new_ids: Counter[str] = Counter()
        #: (event type, attribute) -> events without an attribute the decisions rely on
        self.missing: Counter[tuple[str, str]] = Counter()
        #: time spent in model predictions (the "score" stage; the rest of ``run`` is "policy")
        self.score_ns = 0
        #: time ``run`` took in all (set by the caller, which also times the reservations in it)
        self.run_ns = 0
        self.deleted: set[str] = set()  # merged away or expired: not to be saved
        #: merged-away profile -> the profile it went into (its drop waits for that one's write)
        self.merged_into: dict[str, str] = {}
        self.expired: set[str] = set()  # inactive past retention: forget with their aliases
        #: profiles changed in this batch: only these are saved (a stale timer for a
        #: forgotten key must not bring back an empty profile)
        self.touched: set[str] = set()
        self.to_schedule: dict[tuple[str, str], int] = {}
        self.horizon_ms = 0
        #: profile key -> the event or timer that raised while handling it (not to be saved)
        self.failed: dict[str, Any] = {}
        #: events and timers to leave out (those that raised in an earlier run of the batch)
        self.skip: set[Any] = set()
        #: internal_error dead letters
        self.errors: list[dict[str, Any]] = []
        self._queue: list[tuple[int, int, int, str, Any]] = []
        self._seq = 0

    def _push(self, ts_ms: int, kind: str, item: Any, rank: int = 1) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (ts_ms, rank, self._seq, kind, item))

    def run(
        self,
        events: list[Event],
        resolved: list[tuple[str, str | None]],
        due: list[tuple[int, str, str]],
        horizon_ms: int,
        at: list[tuple[int, bool]] | None = None,
    ) -> None:
        """Process ``events`` (with their resolved keys) and ``due`` timers in time order.

        Timers set while running that come due by ``horizon_ms`` (the batch's clock) fire
        in this run, between the events they fall between. ``at``: each event's place in
        that order and whether it came later than the allowed lateness (then it goes after
        the timers due by its place); default: its own time. An exception while handling
        one event or timer does not stop the rest: see :attr:`failed`.
        """
        self.horizon_ms = horizon_ms
        for i, (ev, (key, merged)) in enumerate(zip(events, resolved)):
            place, late = at[i] if at is not None else (ev.ts_ms, False)
            self._push(place, "event", (ev, key, merged), 2 if late else 0)
        for due_ms, key, kind in due:
            self._push(due_ms, "timer", (key, kind, due_ms))
        skip, failed = self.skip, self.failed
        while self._queue:
            *_, kind, item = heapq.heappop(self._queue)
            key = item[1] if kind == "event" else item[0]
            if key in failed or _item_id(kind, item) in skip:
                continue
            try:
                if kind == "event":
                    self._on_event(*item)
                else:
                    self._on_timer(*item)
            except Exception as exc:  # a bug met by one input: that profile is redone without it
                self._fail(key, kind, item, exc)

    def _fail(self, key: str, kind: str, item: Any, exc: Exception) -> None:
        """Record an exception raised while handling one event or timer: its profile is not
        saved from this run (the caller redoes it without the item) and it is dead-lettered."""
        self.failed[key] = _item_id(kind, item)
        log.warning("internal error on %s of profile %r: %s: %s", kind, key, type(exc).__name__, exc,
                    exc_info=log.isEnabledFor(logging.DEBUG))
        detail = f"{type(exc).__name__}: {exc}"[:1000]
        if kind == "event":
            ev = item[0]
            self.errors.append(ev.to_dead_letter("internal_error", f"processing event {ev.event_id!r} raised {detail}"))
        else:
            _, timer, due_ms = item
            self.errors.append({"kind": "timer", "reason": "internal_error", "source": "timer",
                                "detail": f"timer {timer!r} due at {due_ms} ms raised {detail}",
                                "profile": key, "timer": timer, "due_ms": due_ms})

    @property
    def merged_away(self) -> set[str]:
        """Profiles folded into another one in this batch."""
        return self.deleted - self.expired

    # --------------------------------------------------------------- timers
    def _set_timer(self, profile: Profile, kind: str, due_ms: int) -> None:
        """One pending timer per contact and kind; fires in this batch if due within it."""
        profile.timers[kind] = due_ms
        if due_ms <= self.horizon_ms:
            self._push(due_ms, "timer", (profile.key, kind, due_ms))
            self.to_schedule.pop((profile.key, kind), None)
        else:
            self.to_schedule[(profile.key, kind)] = due_ms

    def _on_timer(self, key: str, kind: str, due_ms: int) -> None:
        profile = self.profiles.get(key)
        if profile is None or key in self.deleted or profile.timers.get(kind) != due_ms:
            return  # stale: replaced, merged away or expired since it was set
        del profile.timers[kind]
        self.touched.add(key)
        core = self.core
        now = core.clock.now() if core.live else due_ms
        self.timers_fired[kind] += 1
        if core.experiments.on_timer(profile, kind, now, self.exp, self._timer_setter(profile)):
            return
        if kind in _TIMER_LABEL:
            model = _TIMER_LABEL[kind]
            resolved = label_rules.on_deadline(profile, model, now)
            if resolved is not None:
                obs, label = resolved
                self._learn(model, obs, label, now)
            return
        if kind == CART_TIMER:
            if profile.cart_value <= 0 or profile.cart_updated_ts is None:
                return
            ready = profile.cart_updated_ts + core.idle_ms
            if ready > now:  # the cart changed since: wait for the new idle deadline
                self._set_timer(profile, CART_TIMER, ready)
                return
            feats = features(profile, now)
            scores = {"lead": self._score("lead", feats)}
            self._decide(profile, cart_candidates(profile, now, scores, core.policy), scores,
                         {"kind": "timer", "timer": kind}, f"timer:{kind}:{due_ms}", due_ms, now)
        elif kind == INACTIVITY_TIMER:
            last = profile.last_activity_ts
            if last is None:
                return
            if last + core.inactive_ms > now:
                self._set_timer(profile, INACTIVITY_TIMER, last + core.inactive_ms)
                return
            feats = features(profile, now)
            churn = self._score("churn", feats)
            self._observe(profile, label_rules.CHURN, feats, churn, now)
            scores = {"churn": churn}
            candidates = inactivity_candidates(profile, now, scores, core.policy)
            proposed = []
            if core.journeys is not None:
                set_timer = self._timer_setter(profile)
                proposed = core.journeys.on_scores(profile, scores, now, set_timer)
                candidates += [jc.candidate for jc in proposed]
            sent, suppressed = self._decide(profile, candidates, scores, {"kind": "timer", "timer": kind},
                                            f"timer:{kind}:{due_ms}", due_ms, now)
            if proposed:
                assert core.journeys is not None
                self._settle(profile, proposed, sent, suppressed, now, set_timer)
        elif kind.startswith(JOURNEY_TIMER_PREFIX) and core.journeys is not None:
            set_timer = self._timer_setter(profile)
            proposed = core.journeys.on_timer(profile, kind[len(JOURNEY_TIMER_PREFIX):], now, {}, set_timer)
            if proposed:
                scores = {"lead": self._score("lead", features(profile, now))}
                sent, suppressed = self._decide(profile, [jc.candidate for jc in proposed], scores,
                                                {"kind": "timer", "timer": kind}, f"timer:{kind}:{due_ms}", due_ms, now)
                self._settle(profile, proposed, sent, suppressed, now, set_timer)
        elif kind == EXPIRE_TIMER:
            last = profile.last_activity_ts or profile.last_ts
            if last + core.retention_ms > now:
                self._set_timer(profile, EXPIRE_TIMER, last + core.retention_ms)
                return
            self.deleted.add(key)
            self.expired.add(key)

    # --------------------------------------------------------------- events
    def _on_event(self, ev: Event, key: str, merged: str | None) -> None:
        core = self.core
        profile = self.profiles[key]
        if key in self.deleted:  # expired earlier in this batch and active again
            self.deleted.discard(key)
            self.expired.discard(key)
            profile = self.profiles[key] = Profile(key, known=profile.known)
        self.touched.add(key)
        fresh = profile.events_total == 0
        if merged is not None:
            self.merges += 1
            self._merge(profile, merged)
        if is_too_late(profile, ev.ts_ms):
            self.dead.append(ev.to_dead_letter(
                "late_event", f"event {ev.event_id!r} is older than the idempotency window of its contact"))
            self.dead_keys.append(key)
            return
        if not apply_event(profile, ev.event_id, ev.type, ev.ts_ms, ev.properties, ev.context, ev.channel):
            self.duplicates += 1
            return
        self.by_type[ev.type if ev.type in KNOWN_TYPES else "other"] += 1  # bounded: no label per stranger type
        known = profile.known
        self.identities["known" if ev.contact_id is not None else
                        "anonymous_resolved" if known else "anonymous_unresolved"] += 1
        if fresh:
            self.new_ids["known" if known else "anonymous"] += 1
        for attribute in missing_attributes(ev.type, ev.properties, ev.context, ev.channel):
            self.missing[(ev.type, attribute)] += 1
        if ev.type in FEEDBACK_TYPES:
            fb = feedback_key(ev.type, ev.properties, ev.channel)
            if fb is not None:
                self.feedback[(*fb, "true" if is_linked(ev.properties) else "false")] += 1
        now = core.clock.now() if core.live else profile.last_ts
        active = ev.type not in PASSIVE_TYPES
        for model, obs, label in label_rules.on_event(profile, ev.type, ev.ts_ms, core.labels.goal_types, active):
            self._learn(model, obs, label, ev.ts_ms)
        if ev.type in core.experiments.conversion_types:
            core.experiments.on_event(profile, ev.type, ev.event_id, ev.ts_ms, money(ev.properties.get("value")),
                                      self.exp, self._timer_setter(profile))
        # Score only where a decision or a training example can follow.
        observe_lead = (
            ev.type in LEAD_MOMENTS
            and self._may_observe(profile, label_rules.LEAD, ev.ts_ms)
            and label_rules.sampled(ev.event_id, core.labels.sample_rate)
        )
        observe_churn = active and self._may_observe(profile, label_rules.CHURN, ev.ts_ms)
        scores: dict[str, float] = {}
        churn: float | None = None
        if observe_lead or observe_churn or (profile.known and ev.type in INTENT_TYPES):
            feats = features(profile, profile.last_ts)
            lead = scores["lead"] = self._score("lead", feats)
            if observe_lead:
                self._observe(profile, label_rules.LEAD, feats, lead, ev.ts_ms)
            if observe_churn:
                churn = self._score("churn", feats)
                self._observe(profile, label_rules.CHURN, feats, churn, ev.ts_ms)
        if active:
            if INACTIVITY_TIMER not in profile.timers:
                self._set_timer(profile, INACTIVITY_TIMER, ev.ts_ms + core.inactive_ms)
        if ev.type in CART_EVENTS and profile.cart_value > 0 and CART_TIMER not in profile.timers:
            self._set_timer(profile, CART_TIMER, ev.ts_ms + core.idle_ms)
        if EXPIRE_TIMER not in profile.timers:  # every profile is discarded once inactive long enough
            self._set_timer(profile, EXPIRE_TIMER, (profile.last_activity_ts or ev.ts_ms) + core.retention_ms)
        previous_lead = profile.last_lead
        if "lead" in scores and profile.known and ev.type in INTENT_TYPES:  # where a hand-off is judged
            profile.last_lead = scores["lead"]
        candidates = on_event_candidates(ev.type, profile, scores, core.policy, previous_lead)
        proposed = []
        if core.journeys is not None:
            set_timer = self._timer_setter(profile)
            seen = scores if churn is None else {**scores, "churn": churn}  # journeys may enter on churn
            proposed = core.journeys.on_event(profile, ev.type, ev.properties, now, seen, set_timer)
            candidates += [jc.candidate for jc in proposed]
        if candidates and "lead" not in scores:  # every decision records the scores it was made with
            scores["lead"] = self._score("lead", features(profile, profile.last_ts))
        sent, suppressed = self._decide(profile, candidates, scores,
                                        {"kind": "event", "event_id": ev.event_id, "type": ev.type},
                                        ev.event_id, ev.ts_ms, now)
        if proposed:
            assert core.journeys is not None
            self._settle(profile, proposed, sent, suppressed, now, set_timer)

    def _settle(self, profile: Profile, proposed: list[JourneyCandidate], sent: Candidate | None,
                suppressed: list[Suppression], now_ms: int, set_timer: Callable[[str, int], None]) -> None:
        """Journeys move on after the decision; a record made at this point says what became of
        the journey steps it beat (deferred to when, or skipped)."""
        assert self.core.journeys is not None
        handled = self.core.journeys.settle(profile, proposed, _sent(proposed, sent), _reasons(suppressed),
                                            now_ms, set_timer)
        if sent is not None and handled and self.decisions:
            for entry in self.decisions[-1]["suppressed"]:
                then = handled.get((entry["action"], entry["channel"]))
                if then is not None:
                    entry["journey_step"] = then

    def _timer_setter(self, profile: Profile) -> Callable[[str, int], None]:
        return lambda kind, due_ms: self._set_timer(profile, kind, due_ms)

    def _merge(self, contact: Profile, anon_key: str) -> None:
        anon = self.profiles.get(anon_key)
        if anon is None:
            return
        alias = anon_key.partition(":")[2]
        merged_before = alias in contact.aliases  # the contact was written merged, the drop of anon was not (a crash)
        if not merged_before and len(contact.aliases) < MAX_ALIASES:
            contact.aliases.append(alias)
        if anon.events_total and not merged_before:
            adopted = merge_into(contact, anon)
            for kind, due in adopted.items():
                self._set_timer(contact, kind, due)
        for kind in anon.timers:
            self.to_schedule.pop((anon_key, kind), None)
        self.deleted.add(anon_key)  # dropped with its pending timers when the batch is saved
        self.merged_into[anon_key] = contact.key

    # --------------------------------------------------------------- models
    def _score(self, model: str, feats: dict[str, float]) -> float:
        started = perf_counter_ns()
        p = self.core.models[model].predict(feats)
        self.score_ns += perf_counter_ns() - started
        self.scores[model].append(p)
        self._scored_features[model] = feats
        return p

    def _may_observe(self, profile: Profile, model: str, now_ms: int) -> bool:
        """One pending observation per model, and at most one per ``sample_gap`` per contact,
        so a very active contact does not turn every click into a training example."""
        if model in profile.pending:
            return False
        last = profile.observed.get(model)
        return last is None or now_ms - last >= self.core.labels.sample_gap_ms

    def _observe(self, profile: Profile, model: str, feats: dict[str, float], p: float, now_ms: int) -> None:
        """Capture features and prediction now; the label comes when the horizon resolves."""
        if model in profile.pending:
            return
        profile.observed[model] = now_ms
        horizon = self.core.labels.lead_horizon_ms if model == label_rules.LEAD else self.core.labels.churn_horizon_ms
        deadline = now_ms + horizon
        slot = self.core.models[model]
        profile.pending[model] = Observation(now_ms, deadline, feats, p, slot.champion.version, slot.shadow(feats))
        self._set_timer(profile, LABEL_TIMER[model], deadline)

    def _learn(self, model: str, obs: Observation, label: bool, at_ms: int) -> None:
        """Every model of the score learns from the features captured at scoring time."""
        delay_ms = max(0, at_ms - obs.scored_at_ms)
        self.labelled[(model, "positive" if label else "negative")] += 1
        if not self.core.learn:
            return
        self.drifts += self.core.models[model].learn(obs.features, label, obs.model_version, obs.probability,
                                                     obs.shadow, delay_ms)
        self.label_delays.setdefault(model, []).append(delay_ms / 1000)

    # --------------------------------------------------------------- policy
    def _decide(
        self,
        profile: Profile,
        candidates: list[Candidate],
        scores: dict[str, float],
        trigger: dict[str, Any],
        trigger_id: str,
        event_ms: int,
        now_ms: int,
    ) -> tuple[Candidate | None, list[Suppression]]:
        """Arbitrate, reserve and record; returns what was sent (if anything) and what was held back."""
        if not candidates:
            return None, []
        core = self.core
        policy = core.policy
        holdout = in_holdout(profile.contact_id, policy.holdout_name, policy.holdout_share)
        lead = scores.get("lead")
        marks: dict[int, list[Assignment]] = {}
        if not holdout:  # a holdout contact gets no message, so no variant either
            candidates, marks = core.experiments.vary(profile, candidates, lead, now_ms, policy, self.exp)
        winner, suppressed = arbitrate(candidates, profile, now_ms, policy, holdout)
        would_send = None
        if holdout and profile.known and policy.holdout_name not in profile.exposures:
            would_send = arbitrate(candidates, profile, now_ms, policy, False)[0]  # what it would have got
        if winner is not None and not self.reserve(
            profile, Send(now_ms, winner.channel, winner.action), policy.caps, policy.global_caps
        ):
            suppressed.append(Suppression(winner.action, winner.channel, "cap_reserved_elsewhere"))
            winner = None
        for s in suppressed:
            self.suppressed[s.reason] += 1
        winner_marks = next((marks.get(i, []) for i, c in enumerate(candidates) if c is winner), [])
        arms = core.experiments.on_decision(profile, sent=winner, would_send=would_send, marks=winner_marks,
                                            trigger_id=trigger_id, lead=lead, now_ms=now_ms, tallies=self.exp,
                                            set_timer=self._timer_setter(profile))
        if winner is None:
            return None, suppressed
        self.decided[(winner.action, winner.channel)] += 1
        record = build_record(
            contact=profile.contact_id,
            chosen=winner,
            suppressed=suppressed,
            scores={name: self._score_entry(name, p) for name, p in sorted(scores.items())},
            trigger=trigger,
            trigger_id=trigger_id,
            event_time_ms=event_ms,
            decision_time_ms=now_ms,
            experiment={"name": policy.holdout_name, "arm": "treatment"},
            experiments=arms["experiments"],
            segment=arms["segment"],
        )
        self.decisions.append(record)
        return winner, suppressed

    def _score_entry(self, name: str, p: float) -> dict[str, Any]:
        """What a record says about a score: the value, which model version gave it after how
        many labels, and what each challenger would have said (shadow scoring)."""
        slot = self.core.models[name]
        entry: dict[str, Any] = {"p": round(p, 6), "model": name, "estimator": slot.champion.estimator_name,
                                 "version": slot.champion.version, "labels": slot.champion.labels}
        feats = self._scored_features.get(name)
        if slot.challengers and feats is not None:
            entry["challengers"] = slot.shadow(feats)
        return entry


def _item_id(kind: str, item: Any) -> Any:
    """What names an event or a timer of the queue across runs of one batch."""
    return id(item[0]) if kind == "event" else item


def _sent(proposed: list[JourneyCandidate], winner: Candidate | None) -> JourneyCandidate | None:
    """The journey step among ``proposed`` that won the decision point, if one did."""
    return next((jc for jc in proposed if jc.candidate is winner), None)


def _reasons(suppressed: list[Suppression]) -> dict[tuple[str, str], str]:
    return {(s.action, s.channel): s.reason for s in suppressed}
