"""Model features from a profile, as of a moment in event time.

Counts and durations are log-scaled (``log1p``) because linear models on raw
clickstream counts are dominated by a few heavy users; the scaler in the model
pipeline then centres them. The feature names are stable: models and
checkpoints refer to them.

>>> from touchline.decisions.profile import Profile, apply_event
>>> p = Profile("c1", known=True)
>>> _ = apply_event(p, "e1", "add_to_cart", 0, {"value": 20.0}, {})
>>> f = features(p, 3_600_000)
>>> round(f["cart_value"], 3), f["has_open_cart"], f["n_add_to_cart_1h"]
(3.045, 1.0, 0.0)
"""

from __future__ import annotations

from math import log1p
from typing import TYPE_CHECKING

from touchline.decisions.feature_names import FEATURE_NAMES as FEATURE_NAMES  # re-exported: the features and their names
from touchline.decisions.feature_names import FEATURE_TYPES as FEATURE_TYPES
from touchline.decisions.feature_names import FEATURE_WINDOWS as FEATURE_WINDOWS
from touchline.decisions.feature_names import WINDOW_FEATURES
from touchline.decisions.profile import DAY_MS, HOUR_MS, Profile, advance, purchase_days, purchase_span_ms

if TYPE_CHECKING:
    from touchline.decisions.custom_attributes import CustomAttributes

_NEVER = log1p(365 * 24.0)  # "hours since" for something that never happened



def features(profile: Profile, now_ms: int, custom: CustomAttributes | None = None) -> dict[str, float]:
    """The feature vector of ``profile`` as of ``now_ms`` (advances its windows), with the
    configured custom attributes' features (see :meth:`CustomAttributes.features`)."""
    advance(profile, now_ms)
    out: dict[str, float] = {}
    _window_counts(profile, out)
    _recency(profile, profile.last_ts, out)
    _value(profile, out)
    _engagement(profile, profile.last_ts, out)
    _customer_base(profile, now_ms, out)
    if custom:
        out.update(custom.features(profile, now_ms))
    return out


def _window_counts(profile: Profile, out: dict[str, float]) -> None:
    """Events per feature type and in all, per window (``n_<type>_<window>``, ``n_all_<window>``)."""
    windows = profile.windows
    for w, names, all_name in WINDOW_FEATURES:
        queue, counts = windows[w]
        get = counts.get
        for t, name in names:
            n = get(t, 0)
            out[name] = log1p(n) if n else 0.0
        out[all_name] = log1p(len(queue))


def _recency(profile: Profile, now: int, out: dict[str, float]) -> None:
    """Hours since the last activity and the last purchase, days since the first event."""
    last = profile.last_activity_ts
    out["hours_since_activity"] = log1p(max(0, now - last) / HOUR_MS) if last is not None else _NEVER
    bought = profile.last_purchase_ts
    out["hours_since_purchase"] = log1p(max(0, now - bought) / HOUR_MS) if bought is not None else _NEVER
    first = profile.first_ts
    out["days_known"] = log1p(max(0, now - first) / DAY_MS) if first is not None else 0.0


def _value(profile: Profile, out: dict[str, float]) -> None:
    """What the contact bought and has in the cart, its devices and whether it is known."""
    out["purchases_total"] = log1p(profile.purchases_total)
    out["monetary_total"] = log1p(max(0.0, profile.monetary_total))
    out["cart_value"] = log1p(profile.cart_value)
    out["has_open_cart"] = 1.0 if profile.cart_value > 0 else 0.0
    out["devices"] = float(len(profile.devices))
    out["known"] = 1.0 if profile.known else 0.0


def _engagement(profile: Profile, now: int, out: dict[str, float]) -> None:
    """Messages sent in the last week and the responses to them over 30 days."""
    week_ago = now - 7 * DAY_MS
    out["sends_7d"] = log1p(sum(1 for s in profile.sends if s.ts_ms > week_ago))
    counts30 = profile.windows["30d"][1]
    out["email_open_rate_30d"] = counts30.get("email_open", 0) / (counts30.get("email_delivered", 0) + 1)
    out["n_sms_reply_30d"] = log1p(counts30.get("sms_reply", 0))
    out["n_push_open_30d"] = log1p(counts30.get("push_open", 0))


def _customer_base(profile: Profile, now: int, out: dict[str, float]) -> None:
    """The customer-base summary of repeat purchasing, in days, unscaled (what BG/NBD-style
    models read): repeat purchases, first to last purchase, age since the first purchase; then
    the contact's own mean gap between purchases, how far past it the contact now is
    (negative: not yet due) and how many of its own gaps it has been silent (log-scaled: the
    recency a repeat buyer's rhythm makes telling). All 0 for a contact that never bought.

    >>> from touchline.decisions.profile import Profile, apply_event
    >>> p = Profile("c1", known=True)
    >>> for i, day in enumerate((0, 10, 30)):
    ...     _ = apply_event(p, f"e{i}", "purchase", day * DAY_MS, {"value": 5.0}, {})
    >>> out: dict[str, float] = {}
    >>> _customer_base(p, 50 * DAY_MS, out)
    >>> {k: round(v, 3) for k, v in out.items()}
    {'rfm_frequency': 2.0, 'rfm_recency_days': 30.0, 'rfm_age_days': 50.0, 'purchase_gap_days': 15.0, 'days_overdue': 5.0, 'gaps_since_purchase': 0.847}
    """
    bought = purchase_span_ms(profile)
    last = profile.last_purchase_ts
    if bought is None or last is None:
        out.update(dict.fromkeys(_CUSTOMER_BASE, 0.0))
        return
    span_ms, gap_ms = bought
    repeats = float(purchase_days(profile) - 1)
    gap = gap_ms / DAY_MS
    out["rfm_frequency"] = repeats
    out["rfm_recency_days"] = span_ms / DAY_MS
    out["rfm_age_days"] = max(0, now - (last - span_ms)) / DAY_MS
    out["purchase_gap_days"] = gap
    out["days_overdue"] = max(0, now - last) / DAY_MS - gap if repeats else 0.0
    out["gaps_since_purchase"] = log1p(max(0, now - last) / DAY_MS / gap) if repeats and gap > 0 else 0.0


_CUSTOMER_BASE = FEATURE_NAMES[-6:]
