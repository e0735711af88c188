"""What the API shows of a contact (``GET /v1/contacts/{id}``): a summary, the windowed counts,
attributes, scores with their model versions, journeys with the step each is at, consent per
channel and the last decisions. Plain data in, JSON-ready data out.

``attributes`` is one object of name -> value: today the facts stored on the profile (dates
journeys use, such as a birthday); attributes defined in configuration join it under their
names, so a client reading it needs no change.

>>> from touchline.decisions.policy import PolicyConfig
>>> from touchline.decisions.profile import Profile, apply_event
>>> p = Profile("c1", known=True)
>>> _ = apply_event(p, "e1", "page_view", 0, {}, {"timezone": "Europe/Berlin"})
>>> view = profile_view(p, 60_000, {}, None, PolicyConfig())
>>> view["contact_id"], view["windows"]["1h"], view["consent"]["sms"], view["consent"]["web"]
('c1', {'page_view': 1}, {'granted': False, 'source': 'default'}, {'granted': True, 'source': 'default'})
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from touchline.decisions.policy import ANY_CHANNELS, PULL_CHANNELS, PolicyConfig
from touchline.decisions.profile import Profile, advance, anonymous_of, is_known_key
from touchline.decisions.record import iso_ms

if TYPE_CHECKING:
    from touchline.decisions.journey_runtime import JourneyRunner
    from touchline.decisions.send_time import SendTime

#: How many of the newest sends the view lists.
LAST_DECISIONS = 20


def profile_view(profile: Profile, now_ms: int, scores: dict[str, dict[str, Any]],
                 journeys: JourneyRunner | None, policy: PolicyConfig, send_time: SendTime | None = None
                 ) -> dict[str, Any]:
    """The profile as of ``now_ms`` (its windows move on to then); ``scores``: what a decision
    record says of each score (:meth:`touchline.decisions.scoring.Scorer.entry`); ``send_time``:
    the engine's learner (its population pattern), else the contact's own pattern alone."""
    advance(profile, now_ms)
    known = is_known_key(profile.key)
    return {
        "contact_id": profile.contact_id if known else None,
        "anonymous_id": None if known else anonymous_of(profile.key),
        "known": profile.known,
        "as_of": iso_ms(max(now_ms, profile.last_ts)),
        "summary": _summary(profile),
        "windows": {name: dict(sorted((k, v) for k, v in counts.items() if v))
                    for name, (_, counts) in profile.windows.items()},
        "attributes": dict(profile.attributes),
        "scores": scores,
        "journeys": _journeys(profile, journeys),
        "consent": _consent(profile, policy),
        "engagement": {channel: dict(counts) for channel, counts in profile.engagement.items()},
        "send_time": _send_time(profile, send_time, policy),
        "last_decisions": _last_decisions(profile),
    }


def _send_time(profile: Profile, learner: SendTime | None, policy: PolicyConfig) -> dict[str, Any]:
    """The contact's best local hour and the opens and clicks by local hour it comes from.

    >>> p = Profile("c1", timezone="Asia/Tokyo"); p.send_hours.extend([0] * 20 + [3, 0, 0, 0])
    >>> _send_time(p, None, PolicyConfig())["best_local_hour"], _send_time(Profile("c2"), None, PolicyConfig())
    (20, {'best_local_hour': None, 'timezone': 'UTC', 'engagements': 0, 'engagement_by_local_hour': []})
    """
    from touchline.decisions.policy import contact_zone
    from touchline.decisions.send_hours import best_hour

    if learner is not None:
        best = learner.best_hour(profile)
    else:
        best = best_hour(list(map(float, profile.send_hours))) if profile.send_hours else None
    zone = contact_zone(profile.timezone, policy.quiet_hours.default_timezone)
    return {"best_local_hour": best, "timezone": str(zone), "engagements": sum(profile.send_hours),
            "engagement_by_local_hour": list(profile.send_hours)}


def _iso(ts_ms: int | None) -> str | None:
    return None if ts_ms is None else iso_ms(ts_ms)


def _summary(profile: Profile) -> dict[str, Any]:
    """Recency, frequency, value, cart and where the contact was seen from."""
    return {
        "first_seen": _iso(profile.first_ts), "last_activity": _iso(profile.last_activity_ts), "events_total": profile.events_total,
        "purchases_total": profile.purchases_total, "monetary_total": round(profile.monetary_total, 2),
        "first_purchase": _iso(profile.first_purchase_ts), "last_purchase": _iso(profile.last_purchase_ts),
        "cart_value": round(profile.cart_value, 2), "cart_updated": _iso(profile.cart_updated_ts),
        "timezone": profile.timezone, "locale": profile.locale, "devices": len(profile.devices),
        "anonymous_ids": list(profile.aliases), "bounced": list(profile.bounced),
    }


def _journeys(profile: Profile, runner: JourneyRunner | None) -> list[dict[str, Any]]:
    """Each journey the contact is or was in: active or not, the step it is at (by id), when it
    entered and, once out, when and why it left."""
    out = []
    for name, state in sorted(profile.journeys.items()):
        journey = runner.by_name.get(name) if runner is not None else None
        index = state.get("step", 0)
        step = None
        if journey is not None and isinstance(index, int) and index < len(journey.steps):
            step = journey.steps[index].id
        wait = state.get("wait") or {}
        out.append({"journey": name, "active": bool(state.get("active")), "step": step,
                    "entered": _iso(state.get("entered")), "exited": _iso(state.get("exited")),
                    "exit_reason": state.get("exit_reason"), "entries": state.get("entries", 1),
                    "send_at": _iso(wait.get("until")) if wait.get("kind") == "send_at" else None})
    return out


def _consent(profile: Profile, policy: PolicyConfig) -> dict[str, dict[str, Any]]:
    """Each channel's consent: the contact's own answer where it gave one, else the default."""
    out = {}
    for channel in ANY_CHANNELS:
        own = profile.consent.get(channel)
        default = policy.consent_default.get(channel, channel in PULL_CHANNELS)
        out[channel] = ({"granted": own, "source": "contact"} if own is not None
                        else {"granted": default, "source": "default"})
    return out


def _last_decisions(profile: Profile) -> list[dict[str, Any]]:
    """The newest sends reserved for the contact (the last 30 days: what the caps count), newest
    first, with the decision id while the decision can still earn attribution credit."""
    ids = {(t[0], t[2], t[3]): t[1] for t in profile.touches}
    sends = sorted(profile.sends, key=lambda s: s.ts_ms, reverse=True)[:LAST_DECISIONS]
    return [{"time": iso_ms(s.ts_ms), "action": s.action, "channel": s.channel,
             "decision_id": ids.get((s.ts_ms, s.channel, s.action))} for s in sends]


__all__ = ["profile_view"]
