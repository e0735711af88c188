"""Experiments: the global holdout, A/B splits and bandits, as configuration and pure logic.

Assignment is a stable hash of experiment name and contact, so it needs no state, gives
the same arm on every worker and every replay, and is independent across experiments
(a contact's arm in one split says nothing about its arm in another).

A *split* applies to the decisions of one action (``action = "cart_reminder"``) or of
one journey (optionally one of its steps). Each variant may change the template, the
channel or the offer of the message, or (journeys) the length of wait steps: timing.
With ``assignment = "thompson"`` or ``"ucb"`` the variant is chosen by a River bandit per
segment instead, learning from conversions, with exploration capped at ``max_explore``.

>>> split = Split(action="cart_reminder", variants=[Variant(name="a"), Variant(name="b", template="cart/b")])
>>> assign("c-1", "cart_copy", split).name == assign("c-1", "cart_copy", split).name
True
>>> share_b = sum(assign(f"c-{i}", "cart_copy", split).name == "b" for i in range(10_000)) / 10_000
>>> abs(share_b - 0.5) < 0.02  # equal weights: half and half, up to sampling noise
True
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from touchline.decisions.events import check_known_types
from touchline.decisions.journeys import Duration, SendAt, SendStep, WaitStep, check_send_window, parse_duration
from touchline.decisions.policy import ALL_CHANNELS, PULL_CHANNELS, Candidate, bucket
from touchline.decisions.profile import DAY_MS, Profile

GLOBAL = "global_holdout"
SEGMENT_DIMENSIONS = ("lead_band", "lifecycle", "channel_preference")
_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Variant(_Strict):
    """One arm of a split: what it changes about the message (nothing, for a control)."""

    name: str = Field(pattern=_NAME)
    weight: float = Field(default=1.0, gt=0, description="share of contacts, relative to the other variants")
    template: str | None = None
    channel: str | None = None
    offer: str | None = None
    waits: dict[str, Duration] = Field(default_factory=dict,
                                       description="journey wait step id -> duration (e.g. 4h): timing variants")
    send_at: SendAt | None = Field(default=None, description="now or best_time: the journey's send steps go "
                                   "at once or at the contact's best local hour (send-time variants)")
    within: Annotated[Duration, AfterValidator(check_send_window)] | None = Field(
        default=None, description="with send_at = best_time: the window (default: the send step's own)")

    @model_validator(mode="after")
    def _within_needs_best_time(self) -> "Variant":
        if self.within is not None and self.send_at != "best_time":
            raise ValueError("within needs send_at = 'best_time'")
        return self

    def send_timing(self) -> tuple[str, int | None] | None:
        """(send_at, window ms or None for the step's own) this variant imposes on a send step, or
        None (a variant without send_at leaves the file's).

        >>> Variant(name="b", send_at="best_time", within="12h").send_timing(), Variant(name="a").send_timing()
        (('best_time', 43200000), None)
        """
        if self.send_at is None:
            return None
        return self.send_at, parse_duration(self.within) if self.within is not None else None

    @field_validator("channel")
    @classmethod
    def _known_channel(cls, value: str | None) -> str | None:
        if value is not None and value not in ALL_CHANNELS:
            raise ValueError(f"unknown channel {value!r}; known: {', '.join(ALL_CHANNELS)}")
        return value

    def apply(self, candidate: Candidate) -> Candidate:
        """The candidate as this variant sends it. A candidate a site asked for on a pull channel
        (web, in_app) stays there: the answer goes where it was asked for, in the variant's copy.

        >>> v = Variant(name="sms", channel="sms", template="t/sms")
        >>> [(c.channel, c.template) for c in (v.apply(Candidate("a", ch, 1, 1.0, "")) for ch in ("email", "web"))]
        [('sms', 't/sms'), ('web', 't/sms')]
        """
        if self.template is None and self.channel is None and self.offer is None:  # a control
            return candidate
        moves = self.channel is not None and candidate.channel not in PULL_CHANNELS
        return replace(candidate, template=self.template if self.template is not None else candidate.template,
                       channel=self.channel if moves and self.channel is not None else candidate.channel,
                       offer=self.offer if self.offer is not None else candidate.offer)


class Split(_Strict):
    """An A/B (or A/B/n) split of one action's or one journey's messages."""

    action: str | None = Field(default=None, description="a policy action, e.g. cart_reminder")
    journey: str | None = Field(default=None, description="a journey name (its send steps)")
    step: str | None = Field(default=None, description="with journey: only this step")
    assignment: Literal["hash", "thompson", "ucb"] = "hash"
    max_explore: float = Field(default=0.2, ge=0.0, le=1.0,
                               description="bandits: at most this share of choices away from the best arm so far")
    segment_by: Literal["lead_band", "lifecycle", "channel_preference", "none"] = Field(
        default="lead_band", description="bandits: one bandit per value of this segment dimension")
    variants: list[Variant] = Field(min_length=2, description="the first one is the control (the baseline)")

    @model_validator(mode="after")
    def _target(self) -> "Split":
        if (self.action is None) == (self.journey is None):
            raise ValueError("a split needs exactly one of action or journey")
        if self.step is not None and self.journey is None:
            raise ValueError("step applies to a journey split")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique (got {names})")
        self._check_timing("waits (timing)", any(v.waits for v in self.variants))
        self._check_timing("send_at (send time)", any(v.send_at or v.within for v in self.variants))
        return self

    def _check_timing(self, what: str, used: bool) -> None:
        """Timing variants (waits, send_at) change a journey's steps, before any send: a journey
        split assigned by hash."""
        if used and self.journey is None:
            raise ValueError(f"{what} apply to journey splits")
        if used and self.assignment != "hash":
            raise ValueError(f"{what} need assignment = 'hash': a bandit chooses at send time")

    def matches(self, candidate: Candidate) -> bool:
        if self.action is not None:
            return candidate.action == self.action
        return candidate.journey == self.journey and (self.step is None or candidate.step == self.step)

    @property
    def baseline(self) -> str:
        return self.variants[0].name


class ExperimentSettings(_Strict):
    """Splits, and how conversions, attribution and lift are measured."""

    conversion_types: Annotated[list[str], AfterValidator(check_known_types)] = Field(
                                        default_factory=lambda: ["purchase"], min_length=1,
                                        description="event types that count as a conversion")
    window_days: float = Field(default=7.0, gt=0, le=90,
                               description="conversion window after an exposure, and the attribution lookback")
    half_life_days: float = Field(default=2.0, gt=0, description="time-decay attribution: credit halves per")
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    min_per_arm: int = Field(default=100, ge=1, description="contacts per arm below which lift is not concluded")
    lead_bands: list[float] = Field(default_factory=lambda: [0.2, 0.5], min_length=1,
                                    description="lead score cut points: low < first <= mid < second <= high")
    splits: dict[str, Split] = Field(default_factory=dict)


    @field_validator("lead_bands")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if any(not 0 < b < 1 for b in value) or value != sorted(set(value)):
            raise ValueError(f"lead_bands must be increasing cut points between 0 and 1 (got {value})")
        return value

    @field_validator("splits")
    @classmethod
    def _names(cls, value: dict[str, Split]) -> dict[str, Split]:
        import re

        for name in value:
            if not re.match(_NAME, name) or name == GLOBAL:
                raise ValueError(f"split name {name!r}: use letters, digits, _ . - (and not {GLOBAL!r})")
        return value

    @property
    def window_ms(self) -> int:
        return int(self.window_days * DAY_MS)

    @property
    def half_life_ms(self) -> int:
        return int(self.half_life_days * DAY_MS)


def assign(contact: str, name: str, split: Split) -> Variant:
    """The variant of ``contact`` in split ``name``, by weight."""
    x = bucket(contact, name) * sum(v.weight for v in split.variants)
    for variant in split.variants:
        x -= variant.weight
        if x < 0:
            return variant
    return split.variants[-1]


def lead_band(lead: float | None, bands: list[float]) -> str:
    """``low``/``mid``/``high`` for two cut points (``band0``.. for other counts).

    >>> [lead_band(p, [0.2, 0.5]) for p in (0.1, 0.3, 0.9, None)]
    ['low', 'mid', 'high', 'unscored']
    """
    if lead is None:
        return "unscored"
    index = sum(lead >= b for b in bands)
    names = ("low", "mid", "high") if len(bands) == 2 else tuple(f"band{i}" for i in range(len(bands) + 1))
    return names[index]


def timing_delays(split: Split, journey: str, step: WaitStep | SendStep) -> dict[str, int] | None:
    """How long each arm of ``split`` holds a contact at ``step`` of ``journey`` (ms), or None
    when the split does not change that step's timing. A wait lasts the arm's own length or the
    file's; a send goes at once, or at best within the arm's window (or the step's).

    >>> from touchline.decisions.journeys import Journey
    >>> j = Journey.model_validate({"journey": "cart", "entry": {"event": "add_to_cart"}, "steps": [
    ...     {"id": "idle", "wait": "30m"}, {"id": "mail", "send": {"channel": "email", "template": "t"}}]})
    >>> waits = Split(journey="cart", variants=[Variant(name="30m"), Variant(name="2h", waits={"idle": "2h"})])
    >>> timing_delays(waits, "cart", j.steps[0]), timing_delays(waits, "cart", j.steps[1])
    ({'30m': 1800000, '2h': 7200000}, None)
    >>> send = Split(journey="cart", step="mail", variants=[
    ...     Variant(name="fixed", send_at="now"), Variant(name="best", send_at="best_time", within="12h")])
    >>> timing_delays(send, "cart", j.steps[1]), timing_delays(send, "other", j.steps[1])
    ({'fixed': 0, 'best': 43200000}, None)
    """
    if split.journey != journey:
        return None
    return _wait_delays(split, step) if isinstance(step, WaitStep) else _send_delays(split, step)


def _wait_delays(split: Split, step: WaitStep) -> dict[str, int] | None:
    """Each arm's wait at ``step``: its own length, else the file's (None: no arm changes it)."""
    if not any(step.id in v.waits for v in split.variants):
        return None
    return {v.name: parse_duration(v.waits[step.id]) if step.id in v.waits else step.wait_ms for v in split.variants}


def _send_delays(split: Split, step: SendStep) -> dict[str, int] | None:
    """Each arm's longest hold of the send at ``step`` (None: the split sets no send time there)."""
    if (split.step is not None and split.step != step.id) or not any(v.send_at for v in split.variants):
        return None
    own = (step.send.send_at, step.send.within_ms)
    return {v.name: _send_delay(v.send_timing() or own, step.send.within_ms) for v in split.variants}


def _send_delay(timing: tuple[str, int | None], step_within_ms: int) -> int:
    """The longest a send waits for its time: none for ``now``, the window for ``best_time``."""
    send_at, within_ms = timing
    return 0 if send_at != "best_time" else within_ms or step_within_ms


def segment_of(profile: Profile, lead: float | None, bands: list[float]) -> dict[str, str]:
    """The contact's segment now: lead band, lifecycle stage and preferred channel (where it
    engages most; before any engagement, an SMS or push opt-in; else email).

    Taken at exposure, before any treatment, so it is the same kind of fact in both arms.
    """
    return {"lead_band": lead_band(lead, bands), "lifecycle": lifecycle_stage(profile.purchases_total),
            "channel_preference": channel_preference(profile)}


def lifecycle_stage(purchases: int) -> str:
    """``prospect`` before a purchase, ``customer`` after one, ``repeat`` after more.

    >>> [lifecycle_stage(n) for n in (0, 1, 2)]
    ['prospect', 'customer', 'repeat']
    """
    return "prospect" if purchases == 0 else "customer" if purchases == 1 else "repeat"


def channel_preference(profile: Profile) -> str:
    """The messaging channel the contact engages on most (ties: the first by name); before any
    engagement, an explicit opt-in to SMS, then push; else email."""
    engaged = {ch: sum(n for outcome, n in counts.items() if outcome in ("open", "click", "reply"))
               for ch, counts in profile.engagement.items() if ch in ("email", "sms", "push")}
    best = max(sorted(engaged), key=lambda ch: engaged[ch], default=None)
    if best is not None and engaged[best] > 0:
        return best
    return next((ch for ch in ("sms", "push") if profile.consent.get(ch)), "email")


class Bandit:
    """Variant choice for one split: a River policy per segment, exploration capped.

    The cap: when the policy would choose an arm other than the best observed so far and
    the segment has already spent ``max_explore`` of its choices exploring, the best arm
    is used instead. Rewards arrive later (a conversion in the window, else 0).
    """

    def __init__(self, name: str, split: Split, seed: int = 0) -> None:
        self.name, self.split, self.seed = name, split, seed
        self.policies: dict[str, Any] = {}
        self.pulls: Counter[tuple[str, str]] = Counter()
        self.wins: Counter[tuple[str, str]] = Counter()
        self.choices: Counter[str] = Counter()
        self.explored: Counter[str] = Counter()

    def _policy(self, segment: str) -> Any:
        policy = self.policies.get(segment)
        if policy is None:
            seed = int.from_bytes(hashlib.blake2b(f"{self.seed}:{self.name}:{segment}".encode(),
                                                  digest_size=4).digest(), "big")
            from river import bandit, proba  # here: river.bandit imports scipy.stats (about 1 s at start-up)

            if self.split.assignment == "thompson":
                policy = bandit.ThompsonSampling(reward_obj=proba.Beta(), seed=seed)
            else:
                policy = bandit.UCB(delta=1.0, seed=seed)
            self.policies[segment] = policy
        return policy

    def best(self, segment: str, arms: list[str]) -> str:
        """The arm with the best observed conversion rate (unplayed arms count as 0)."""
        def rate(arm: str) -> float:
            n = self.pulls[(segment, arm)]
            return self.wins[(segment, arm)] / n if n else 0.0
        return max(arms, key=lambda a: (rate(a), -arms.index(a)))

    def choose(self, segment: str, arms: list[str]) -> tuple[str, bool]:
        """(arm, whether it was an exploratory choice)."""
        arm = self._policy(segment).pull(arms)
        greedy = self.best(segment, arms)
        explore = arm != greedy
        if explore and self.explored[segment] >= self.split.max_explore * (self.choices[segment] + 1):
            arm, explore = greedy, False
        self.choices[segment] += 1
        self.explored[segment] += explore
        return arm, explore

    def reward(self, segment: str, arm: str, converted: bool) -> None:
        self._policy(segment).update(arm, 1.0 if converted else 0.0)
        self.pulls[(segment, arm)] += 1
        self.wins[(segment, arm)] += converted

    def status(self) -> dict[str, dict[str, dict[str, float]]]:
        """segment -> arm -> rewards seen and conversion rate (for the summary)."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for (segment, arm), n in sorted(self.pulls.items()):
            out.setdefault(segment, {})[arm] = {"rewards": n, "rate": round(self.wins[(segment, arm)] / n, 4)}
        return out
