"""The names of the built-in model features, in their fixed order (computed in
:mod:`touchline.decisions.features`); apart, so the stored form of a profile can name the set
without importing the features' code.

>>> len(FEATURE_NAMES), FEATURE_NAMES[0], sorted(VECTOR_ORDER) == sorted(FEATURE_NAMES)
(55, 'n_page_view_1h', True)
"""

from __future__ import annotations

import hashlib

#: Event types whose windowed counts are model features.
FEATURE_TYPES = (
    "page_view",
    "product_view",
    "add_to_cart",
    "checkout_start",
    "purchase",
    "form_submit",
    "email_open",
    "email_click",
)
FEATURE_WINDOWS = ("1h", "24h", "7d", "30d")

#: Every feature name, in a fixed order.
FEATURE_NAMES: tuple[str, ...] = (
    *(f"n_{t}_{w}" for t in FEATURE_TYPES for w in FEATURE_WINDOWS),
    *(f"n_all_{w}" for w in FEATURE_WINDOWS),
    "hours_since_activity",
    "hours_since_purchase",
    "days_known",
    "purchases_total",
    "monetary_total",
    "cart_value",
    "has_open_cart",
    "devices",
    "known",
    "sends_7d",
    "email_open_rate_30d",
    "n_sms_reply_30d",
    "n_push_open_30d",
    *("rfm_frequency", "rfm_recency_days", "rfm_age_days", "purchase_gap_days", "days_overdue", "gaps_since_purchase"),
)

#: Per window: the window, (feature type, its count's feature name) per feature type, and the
#: name of the window's count of all events.
WINDOW_FEATURES: tuple[tuple[str, tuple[tuple[str, str], ...], str], ...] = tuple(
    (w, tuple((t, f"n_{t}_{w}") for t in FEATURE_TYPES), f"n_all_{w}") for w in FEATURE_WINDOWS
)
#: The order :func:`~touchline.decisions.features.features` computes them in: window by window
#: (:data:`WINDOW_FEATURES`), then the rest as in :data:`FEATURE_NAMES`. A model's weights follow it.
VECTOR_ORDER: tuple[str, ...] = (
    *(name for _, counts, all_name in WINDOW_FEATURES for name in (*(n for _, n in counts), all_name)),
    *FEATURE_NAMES[(len(FEATURE_TYPES) + 1) * len(FEATURE_WINDOWS):],
)
#: Names this exact vector in stored pending observations (their values are kept as a list
#: after it: see :meth:`~touchline.decisions.feature_states.Observations.to_json`). A digest of
#: the names in order, so values written for another vector are never read as this one.
FEATURE_SET_TAG = "fs:" + hashlib.blake2b("\x1f".join(VECTOR_ORDER).encode(), digest_size=6).hexdigest()
