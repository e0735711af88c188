"""Triggers: which actions a moment proposes, before any eligibility rule.

Event triggers react to what just happened; time triggers run when a timer comes
due on the engine clock (event time in replay, the wall clock live). Each action
becomes one candidate per allowed channel, earlier channels worth a little more.

>>> from touchline.decisions.policy import PolicyConfig
>>> from touchline.decisions.profile import Profile
>>> p = Profile("c1", known=True)
>>> [c.action for c in on_event_candidates("signup", p, {"lead": 0.1}, PolicyConfig())]
['welcome']
"""

from __future__ import annotations

from touchline.decisions.policy import Candidate, PolicyConfig
from touchline.decisions.profile import Profile

#: Timer kinds the engine schedules per contact (at most one pending of each).
CART_TIMER, INACTIVITY_TIMER = "cart", "inactivity"
#: Event types that show buying intent: a lead score is acted on only after one.
INTENT_TYPES = frozenset(
    {"product_view", "add_to_cart", "checkout_start", "form_submit", "page_view", "email_click", "chat_message"}
)


def per_channel(action: str, base_value: float, why: str, config: PolicyConfig) -> list[Candidate]:
    """One candidate of ``action`` per channel it is sent on, earlier channels worth a little more."""
    spec = config.actions.get(action)
    if spec is None or not spec.enabled:  # action switched off in configuration
        return []
    return [
        Candidate(action, channel, spec.priority, round(base_value * (1.0 - 0.1 * rank), 6), why, spec.template)
        for rank, channel in enumerate(spec.channels)
    ]


def on_event_candidates(
    event_type: str,
    profile: Profile,
    scores: dict[str, float],
    config: PolicyConfig,
    previous_lead: float | None = None,
) -> list[Candidate]:
    """Candidates proposed right after an event was applied.

    The sales hand-off is proposed when the lead score *crosses* the threshold (MQL),
    not on every intent event while it stays above: ``previous_lead`` is the score
    this contact had before (None if never scored).
    """
    out: list[Candidate] = []
    if event_type == "signup":
        out += per_channel("welcome", 1.0, "signed up", config)
    lead = scores.get("lead")
    threshold = config.sales_lead_threshold
    if (
        lead is not None
        and lead >= threshold
        and (previous_lead is None or previous_lead < threshold)
        and profile.known
        and event_type in INTENT_TYPES
    ):
        out += per_channel(
            "sales_handoff", lead, f"lead score {lead:.2f} >= {config.sales_lead_threshold:.2f} after {event_type}", config
        )
    return out


def cart_candidates(profile: Profile, now_ms: int, scores: dict[str, float], config: PolicyConfig) -> list[Candidate]:
    """Cart abandoned: still open and untouched for ``cart_abandon_minutes``."""
    idle_ms = int(config.cart_abandon_minutes * 60_000)
    if profile.cart_value <= 0 or profile.cart_updated_ts is None or now_ms - profile.cart_updated_ts < idle_ms:
        return []
    minutes = (now_ms - profile.cart_updated_ts) / 60_000
    value = profile.cart_value * max(scores.get("lead", 0.0), 0.05)
    why = f"cart {profile.cart_value:.2f} open for {minutes:.0f} min"
    return per_channel("cart_reminder", value, why, config)


def inactivity_candidates(
    profile: Profile, now_ms: int, scores: dict[str, float], config: PolicyConfig
) -> list[Candidate]:
    """Churn risk: inactive for ``inactivity_days`` and the churn score is over threshold."""
    churn = scores.get("churn")
    if churn is None or churn < config.winback_churn_threshold or profile.last_activity_ts is None:
        return []
    days = (now_ms - profile.last_activity_ts) / 86_400_000
    why = f"churn score {churn:.2f} >= {config.winback_churn_threshold:.2f}, inactive {days:.1f} days"
    return per_channel("winback_offer", churn * (1.0 + profile.monetary_total / 100.0), why, config)
