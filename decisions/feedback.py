"""Channel feedback: what deliveries, opens, clicks, replies, bounces and unsubscribes
coming back from the connectors' downstream senders do to a contact.

Feedback events are ordinary events (``email_open`` ...) that carry the decision they
answer in ``properties.decision_id``. They update the contact's engagement per
channel, and they suppress: a hard bounce (or ``SOFT_BOUNCE_LIMIT`` soft bounces in a
row, with no delivery between) stops that channel; an unsubscribe revokes consent
(handled with consent updates in :mod:`touchline.decisions.profile`).

>>> from touchline.decisions.profile import Profile
>>> p = Profile("c1")
>>> apply_feedback(p, "email_open", 5, {"decision_id": "d1"}, None)
('email', 'open')
>>> for ts in (6, 7, 8):
...     _ = apply_feedback(p, "email_bounce", ts, {"bounce_type": "soft"}, None)
>>> p.engagement["email"], p.bounced
({'open': 1, 'bounce': 3}, ['email'])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from touchline.decisions.profile import Profile

#: Feedback event type -> (channel, outcome). ``unsubscribe`` takes its channel from the event.
FEEDBACK_TYPES: dict[str, tuple[str | None, str]] = {
    "email_delivered": ("email", "delivered"),
    "email_open": ("email", "open"),
    "email_click": ("email", "click"),
    "email_bounce": ("email", "bounce"),
    "sms_delivered": ("sms", "delivered"),
    "sms_reply": ("sms", "reply"),
    "push_delivered": ("push", "delivered"),
    "push_open": ("push", "open"),
    "unsubscribe": (None, "unsubscribe"),
}
#: Outcomes that show the person engaging (as opposed to a delivery or a bounce).
ENGAGED = frozenset({"open", "click", "reply"})
#: Consecutive soft bounces (full mailbox, greylisting) after which a channel is suppressed.
SOFT_BOUNCE_LIMIT = 3
#: Channels engagement is counted for (bounded: a stranger's channel name is not a key).
FEEDBACK_CHANNELS = ("email", "sms", "push")


def apply_feedback(
    profile: "Profile", event_type: str, ts_ms: int, properties: dict[str, Any], channel: str | None
) -> tuple[str, str] | None:
    """Apply a feedback event; returns (channel, outcome), or None if it is not feedback."""
    key = feedback_key(event_type, properties, channel)
    if key is None:
        return None
    fb_channel, outcome = key
    counts = profile.engagement.setdefault(fb_channel, {})
    counts[outcome] = counts.get(outcome, 0) + 1
    if outcome in ENGAGED:
        profile.last_engaged_ts = max(ts_ms, profile.last_engaged_ts or ts_ms)
    if outcome == "delivered":
        profile.soft_bounces.pop(fb_channel, None)
    elif outcome == "bounce":
        soft = str(properties.get("bounce_type", "hard")).lower() == "soft"
        streak = profile.soft_bounces.get(fb_channel, 0) + 1 if soft else SOFT_BOUNCE_LIMIT
        profile.soft_bounces[fb_channel] = streak
        if streak >= SOFT_BOUNCE_LIMIT and fb_channel not in profile.bounced:
            profile.bounced.append(fb_channel)
    return fb_channel, outcome


def feedback_key(event_type: str, properties: dict[str, Any], channel: str | None) -> tuple[str, str] | None:
    """(channel, outcome) of a feedback event, None for other events; the channel is bounded.

    >>> feedback_key("unsubscribe", {}, "sms"), feedback_key("unsubscribe", {}, None), feedback_key("page_view", {}, None)
    (('sms', 'unsubscribe'), ('all', 'unsubscribe'), None)
    """
    known = FEEDBACK_TYPES.get(event_type)
    if known is None:
        return None
    fb_channel, outcome = known
    if fb_channel is None:
        target = properties.get("channel") or channel
        fb_channel = target if target in FEEDBACK_CHANNELS else "all"
    return fb_channel, outcome


def is_linked(properties: dict[str, Any]) -> bool:
    """Whether a feedback event names the decision it answers."""
    return isinstance(properties.get("decision_id"), str) and bool(properties["decision_id"])
