"""Next-best-action policy: candidates -> eligibility -> arbitration, as pure functions.

Every candidate that is not chosen is kept with the reason, so the decision record
explains both what was sent and what was held back.

>>> cfg = PolicyConfig()
>>> c = Candidate("cart_reminder", "email", 80, 45.0, "cart open")
>>> p = Profile("c1", known=True, timezone="Europe/Berlin")
>>> eligibility(c, p, now_ms=1767610800000, config=cfg, in_holdout=False)  # 12:00 Berlin
>>> eligibility(c, p, now_ms=1767610800000, config=cfg, in_holdout=True)
'holdout'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone, tzinfo
from functools import lru_cache
from typing import Any, Iterable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from touchline.decisions.errors import did_you_mean
from touchline.decisions.profile import WINDOWS, Profile, Send

MESSAGE_CHANNELS = ("email", "sms", "push")
ALL_CHANNELS = (*MESSAGE_CHANNELS, "sales_task")
#: Channels a site pulls an action onto when it asks (``POST /v1/decide``): the stream never
#: sends on them, a visitor on the page is reachable even when anonymous, and they count
#: against their own caps only (not the global cap on messages).
PULL_CHANNELS = ("web", "in_app")
#: Every channel a decision may name.
ANY_CHANNELS = (*ALL_CHANNELS, *PULL_CHANNELS)


def _check_channels(value: list[str], known: tuple[str, ...] = ALL_CHANNELS) -> list[str]:
    bad = [c for c in value if c not in known]
    if bad:
        hints = [h for c in bad if (h := did_you_mean(c, known))]
        pull = "; web and in_app go in pull_channels" if known == ALL_CHANNELS and set(bad) & set(PULL_CHANNELS) else ""
        raise ValueError(f"unknown channel(s) {bad}{f' ({hints[0]})' if hints else ''}; known: {', '.join(known)}{pull}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActionConfig(_Strict):
    """One action the engine can take: where it may go and how pushy it may be."""

    enabled: bool = True
    priority: int = Field(ge=0, le=1000)
    channels: list[str] = Field(min_length=1, description="preferred channels, in order")
    pull_channels: list[str] = Field(
        default_factory=lambda: list(PULL_CHANNELS),
        description="channels a site may pull this action onto with POST /v1/decide (never sent by the stream)")
    cooldown_hours: float = Field(default=24.0, ge=0, description="no repeat of this action within")
    template: str

    @field_validator("channels")
    @classmethod
    def _known_channels(cls, value: list[str]) -> list[str]:
        return _check_channels(value)

    @field_validator("pull_channels")
    @classmethod
    def _known_pull_channels(cls, value: list[str]) -> list[str]:
        return _check_channels(value, PULL_CHANNELS)


class QuietHours(_Strict):
    """No messages on these channels between start and end, in the contact's time zone."""

    start_hour: int = Field(default=21, ge=0, le=23)
    end_hour: int = Field(default=8, ge=0, le=23)
    channels: list[str] = Field(default_factory=lambda: ["sms", "push"])
    default_timezone: str = "UTC"

    @field_validator("channels")
    @classmethod
    def _known_channels(cls, value: list[str]) -> list[str]:
        return _check_channels(value, ANY_CHANNELS)

    @field_validator("default_timezone")
    @classmethod
    def _zone_exists(cls, value: str) -> str:
        if _zone(value) is None:
            raise ValueError(f"unknown time zone {value!r}")
        return value


def _default_caps() -> dict[str, dict[str, int]]:
    return {
        "email": {"24h": 1, "7d": 3},
        "sms": {"24h": 1, "7d": 2},
        "push": {"24h": 2, "7d": 5},
        "sales_task": {"30d": 1},
    }


def _default_actions() -> dict[str, ActionConfig]:
    return {
        "sales_handoff": ActionConfig(priority=90, channels=["sales_task"], cooldown_hours=30 * 24, template="sales/mql"),
        "cart_reminder": ActionConfig(priority=80, channels=["email", "push", "sms"], cooldown_hours=24, template="cart/reminder"),
        "winback_offer": ActionConfig(priority=60, channels=["email", "push"], cooldown_hours=14 * 24, template="winback/10-percent"),
        "welcome": ActionConfig(priority=50, channels=["email"], cooldown_hours=365 * 24, template="welcome/1"),
    }


class PolicyConfig(_Strict):
    """Triggers, eligibility and arbitration settings."""

    actions: dict[str, ActionConfig] = Field(default_factory=_default_actions)
    caps: dict[str, dict[str, int]] = Field(
        default_factory=_default_caps, description="channel -> window -> max sends"
    )
    global_caps: dict[str, int] = Field(
        default_factory=lambda: {"24h": 2, "7d": 5}, description="window -> max messages, all channels"
    )
    consent_default: dict[str, bool] = Field(
        default_factory=lambda: {"email": True, "sms": False, "push": False, "sales_task": True},
        description="consent assumed for a known contact before any consent_update",
    )
    quiet_hours: QuietHours = Field(default_factory=QuietHours)
    holdout_share: float = Field(default=0.05, ge=0.0, le=1.0)
    holdout_name: str = "global_holdout"
    cart_abandon_minutes: float = Field(default=30.0, gt=0)
    inactivity_days: float = Field(default=7.0, gt=0)
    sales_lead_threshold: float = Field(default=0.7, ge=0.0, le=1.0)
    winback_churn_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    inactivity_gaps: float | None = Field(
        default=2.0, gt=0.0, description="a repeat buyer is inactive only after this many of its own mean gaps "
        "between purchases, when that is longer than inactivity_days (unset: inactivity_days for everyone)")
    winback_top_share: float | None = Field(
        default=None, gt=0.0, le=1.0, description="win-back only for churn scores in this top share of the last "
        "2,000 scores given at inactivity checks (besides the threshold); unset: the threshold alone")

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        """Settings for one action or channel amend the defaults instead of replacing all.

        So ``[policy.caps.email]`` alone does not leave SMS uncapped, and
        ``[policy.actions.welcome] priority = 10`` keeps the other actions. Switch an
        action off with ``enabled = false``.
        """
        if not isinstance(data, dict):
            return data
        data = dict(data)
        actions = data.get("actions")
        if isinstance(actions, dict):
            merged: dict[str, Any] = {k: v.model_dump() for k, v in _default_actions().items()}
            unknown = sorted(set(actions) - set(merged))
            if unknown:
                raise ValueError(f"unknown action(s) {unknown} in actions; known: {', '.join(sorted(merged))}")
            for name, spec in actions.items():
                base = merged.get(name, {})
                if isinstance(spec, ActionConfig):
                    spec = spec.model_dump(exclude_unset=True)
                merged[name] = {**base, **spec} if isinstance(spec, dict) else spec
            data["actions"] = merged
        caps = data.get("caps")
        if isinstance(caps, dict):
            data["caps"] = {**_default_caps(), **caps}
        return data

    @field_validator("caps")
    @classmethod
    def _caps_shape(cls, value: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        for channel, windows in value.items():
            if channel not in ANY_CHANNELS:
                raise ValueError(f"unknown channel {channel!r}; known: {', '.join(ANY_CHANNELS)}")
            _check_windows(windows)
        return value

    @field_validator("global_caps")
    @classmethod
    def _global_shape(cls, value: dict[str, int]) -> dict[str, int]:
        return _check_windows(value)


def _check_windows(windows: dict[str, int]) -> dict[str, int]:
    for window, limit in windows.items():
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; known: {', '.join(WINDOWS)}")
        if limit < 0:
            raise ValueError(f"cap for {window} must be >= 0")
    return windows


@dataclass(frozen=True, slots=True)
class Candidate:
    """An action proposed by a trigger, on one channel."""

    action: str
    channel: str
    priority: int
    expected_value: float
    why: str
    template: str = ""
    journey: str | None = None
    step: str | None = None
    offer: str | None = None
    assignee: str | None = None  # a sales hand-off's rep


@dataclass(frozen=True, slots=True)
class Suppression:
    """A candidate that was held back, and why (a bounded reason code plus detail)."""

    action: str
    channel: str
    reason: str


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def local_hour(now_ms: int, zone_name: str | None, default_zone: str) -> int:
    """Hour of day at ``now_ms`` in the contact's zone (default zone if unknown/invalid).

    >>> local_hour(1767610800000, "Asia/Tokyo", "UTC"), local_hour(1767610800000, "Mars/Base", "UTC")
    (20, 11)
    """
    return datetime.fromtimestamp(now_ms / 1000, tz=contact_zone(zone_name, default_zone)).hour


def contact_zone(zone_name: str | None, default_zone: str) -> tzinfo:
    """The contact's zone, else the configured default, else UTC (unknown names fall through)."""
    return (_zone(zone_name) if zone_name else None) or _zone(default_zone) or dt_timezone.utc


def in_quiet_hours(hour: int, quiet: QuietHours) -> bool:
    """Whether ``hour`` falls in the quiet window (which may wrap past midnight)."""
    if quiet.start_hour == quiet.end_hour:
        return False
    if quiet.start_hour < quiet.end_hour:
        return quiet.start_hour <= hour < quiet.end_hour
    return hour >= quiet.start_hour or hour < quiet.end_hour


def cap_violation(
    sends: Iterable[Send],
    channel: str,
    now_ms: int,
    caps: Mapping[str, Mapping[str, int]],
    global_caps: Mapping[str, int],
) -> str | None:
    """``channel_cap`` or ``global_cap`` if one more send now would break a cap, else None.

    Shared by the policy (to explain) and by stores (to reserve atomically).
    """
    sends = list(sends)
    if _cap_reached(sends, (channel,), caps.get(channel, {}), now_ms):
        return "channel_cap"
    if channel in MESSAGE_CHANNELS and _cap_reached(sends, MESSAGE_CHANNELS, global_caps, now_ms):
        return "global_cap"
    return None


def _cap_reached(sends: list[Send], channels: tuple[str, ...], limits: Mapping[str, int], now_ms: int) -> bool:
    """Whether the sends on ``channels`` already fill one of ``limits`` (window -> most sends).

    >>> _cap_reached([Send(0, "email", "a")], ("email",), {"24h": 1}, 3_600_000)
    True
    """
    for window, limit in limits.items():
        since = now_ms - WINDOWS[window]
        if sum(1 for s in sends if s.channel in channels and s.ts_ms > since) >= limit:
            return True
    return False


def bucket(contact: str, experiment: str) -> float:
    """A uniform number in [0, 1) from a stable hash of experiment and contact: the one
    assignment rule of holdouts, splits and journey branches (no state, the same on every
    worker and replay, independent across experiment names).

    >>> bucket("c-1", "a") == bucket("c-1", "a") != bucket("c-1", "b")
    True
    """
    digest = hashlib.blake2b(f"{experiment}:{contact}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def in_holdout(contact_key: str, experiment: str, share: float) -> bool:
    """Stable hash assignment: the same contact is in or out on every worker and run.

    >>> in_holdout("c-1", "global_holdout", 0.0), in_holdout("c-1", "global_holdout", 1.0)
    (False, True)
    """
    return bucket(contact_key, experiment) < share


def eligibility(
    candidate: Candidate, profile: Profile, now_ms: int, config: PolicyConfig, in_holdout: bool
) -> str | None:
    """The first rule that forbids ``candidate`` now, as a reason code; None if eligible."""
    if in_holdout:
        return "holdout"
    return (_unreachable(candidate.channel, profile, config)
            or _untimely(candidate, profile, now_ms, config)
            or cap_violation(profile.sends, candidate.channel, now_ms, config.caps, config.global_caps))


def _unreachable(channel: str, profile: Profile, config: PolicyConfig) -> str | None:
    """Why the contact cannot be reached on ``channel`` at all (unknown, bounced, no consent).
    A pull channel reaches whoever is on the page, anonymous or not, unless consent to it was
    refused (a ``consent_update`` for it, or ``consent_default`` saying so).

    >>> _unreachable("web", Profile("anon:a"), PolicyConfig()), _unreachable("email", Profile("anon:a"), PolicyConfig())
    (None, 'unreachable')
    """
    if channel in PULL_CHANNELS:
        return None if profile.consent.get(channel, config.consent_default.get(channel, True)) else "no_consent"
    if not profile.known:
        return "unreachable"
    if channel in profile.bounced:
        return "bounced"
    if not profile.consent.get(channel, config.consent_default.get(channel, False)):
        return "no_consent"
    return None


def _untimely(candidate: Candidate, profile: Profile, now_ms: int, config: PolicyConfig) -> str | None:
    """Why not now: the contact's quiet hours on this channel, or the action's cooldown."""
    quiet = config.quiet_hours
    if candidate.channel in quiet.channels and in_quiet_hours(
        local_hour(now_ms, profile.timezone, quiet.default_timezone), quiet
    ):
        return "quiet_hours"
    action = config.actions.get(candidate.action)
    if action is not None and action.cooldown_hours > 0:
        since = now_ms - int(action.cooldown_hours * 3_600_000)
        if any(s.action == candidate.action and s.ts_ms > since for s in profile.sends):
            return "cooldown"
    return None


def arbitrate(
    candidates: list[Candidate], profile: Profile, now_ms: int, config: PolicyConfig, holdout: bool
) -> tuple[Candidate | None, list[Suppression]]:
    """Pick at most one candidate: highest priority, then expected value, then name.

    Returns the winner and every other candidate with the reason it lost.
    """
    suppressed: list[Suppression] = []
    eligible: list[Candidate] = []
    for cand in candidates:
        reason = eligibility(cand, profile, now_ms, config, holdout)
        if reason is None:
            eligible.append(cand)
        else:
            suppressed.append(Suppression(cand.action, cand.channel, reason))
    eligible.sort(key=lambda c: (-c.priority, -c.expected_value, c.action, c.channel))
    winner = eligible[0] if eligible else None
    for cand in eligible[1:]:
        suppressed.append(Suppression(cand.action, cand.channel, "arbitration"))
    return winner, suppressed
