"""A churn set-up derived from the data: what ``touchline scores --input FILE`` applies to a file
of purchases when the user configured none.

The defaults fit clickstream data (any activity is a return, churn observed at activity, a
week's horizon); on orders alone they rank customers below the plain recency rule. A file can
be read once before it is replayed, so its events tell which data it is: :class:`PurchaseScan`
counts them (bounded memory) and :func:`derive` gives the purchase set-up -- the keys of
``examples/purchases.toml``, with the horizon set to :data:`SUGGESTED_GAPS` median gaps
between a contact's purchase days -- minus every key the user set (a key set wins).

>>> scan = PurchaseScan()
>>> for day in (0, 10, 30, 40):
...     scan.add("purchase", "c1", day * DAY_MS)
>>> scan.add("purchase", "c2", 0)
>>> d = derive(scan, frozenset({"state.retention_days"}), inactivity_days=7, retention_days=730)
>>> d.applied["labels.churn_horizon_days"], d.applied["models.churn.estimator"]
(30, 'bgnbd_logreg')
>>> derive(scan, frozenset({"labels.churn_horizon_days"}), 7, 730).applied.get("labels.churn_horizon_days") is None
True
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

DAY_MS = 86_400_000
#: Purchases at least this share of the known contacts' events: purchase data (the summary's rule).
PURCHASE_DATA_SHARE = 0.5
#: A churn horizon of this many median gaps between purchases: most who buy again do within it.
SUGGESTED_GAPS = 3
#: The horizon when no contact bought on two days (no gap to take one from): the preset's.
FALLBACK_HORIZON_DAYS = 90
#: Contacts whose last purchase day the scan remembers (beyond them: counted, no gaps taken).
MAX_TRACKED_CONTACTS = 500_000
#: Gaps longer than this many days are tallied here (an absurd timestamp stays one gap).
MAX_GAP_DAYS = 3650

#: The purchase set-up apart from the horizon (examples/purchases.toml), key by key.
PURCHASE_KEYS: dict[str, Any] = {
    "labels.churn_returns": ["purchase"],
    "labels.churn_observations": "random_times",
    "models.churn.estimator": "bgnbd_logreg",
    "models.churn.params": {"dropout_at_first_purchase": True},
}
#: Why each key, in the announcement.
WHY: dict[str, str] = {
    "labels.churn_returns": "only a purchase counts as coming back",
    "labels.churn_observations": "every known customer observed, silent spells included",
    "models.churn.estimator": "the BG/NBD customer-base model, corrected by the labels",
    "models.churn.params": "MBG/NBD: a one-time buyer may have lapsed too",
    "state.retention_days": "customers remembered longer than the horizon and the inactivity check",
}


@dataclass(slots=True)
class PurchaseScan:
    """Counts over a stream of events: the known contacts' events, their purchases, and the
    gaps in days between a contact's consecutive purchase days (in stream order; a purchase
    earlier than the contact's last one gives no gap). Memory is bounded by
    :data:`MAX_TRACKED_CONTACTS` and the distinct gap lengths."""

    events: int = 0
    known_events: int = 0
    purchases: int = 0
    untracked: int = 0
    gaps: Counter[int] = field(default_factory=Counter)
    _last_day: dict[int, int] = field(default_factory=dict)

    def add(self, event_type: str, contact_id: str | None, ts_ms: int) -> None:
        """Count one valid event (anonymous visitors' events count only in ``events``)."""
        self.events += 1
        if not contact_id:
            return
        self.known_events += 1
        if event_type != "purchase":
            return
        self.purchases += 1
        day, key = ts_ms // DAY_MS, hash(contact_id)  # a number per contact, however long its id
        last = self._last_day.get(key)
        if last is None:
            if len(self._last_day) >= MAX_TRACKED_CONTACTS:
                self.untracked += 1
                return
        elif day > last:
            self.gaps[min(MAX_GAP_DAYS, day - last)] += 1
        self._last_day[key] = day if last is None else max(day, last)

    @property
    def purchase_share(self) -> float:
        """Purchases among the known contacts' events (0 without any).

        >>> s = PurchaseScan(); s.add("purchase", "c", 0); s.add("page_view", "c", 0); s.purchase_share
        0.5
        """
        return self.purchases / self.known_events if self.known_events else 0.0

    @property
    def median_gap_days(self) -> float | None:
        """The median gap between a contact's purchase days; None without any."""
        if not self.gaps:
            return None
        return float(statistics.median_low(self.gaps.elements()))

    def is_purchase_data(self) -> bool:
        """Purchases make at least :data:`PURCHASE_DATA_SHARE` of the known contacts' events.

        >>> s = PurchaseScan(); s.add("page_view", "c", 0); s.add("purchase", "c", 0); s.add("page_view", None, 0)
        >>> s.is_purchase_data(), PurchaseScan().is_purchase_data()
        (True, False)
        """
        return self.known_events > 0 and self.purchase_share >= PURCHASE_DATA_SHARE


@dataclass(frozen=True, slots=True)
class Derived:
    """The keys applied (dotted key -> value, in the order announced) and what the data showed."""

    purchase_data: bool
    applied: dict[str, Any]
    #: the key set by the user that the set-up left alone, and why the horizon is what it is
    kept: tuple[str, ...]
    horizon_why: str


def derive(scan: PurchaseScan, explicit: frozenset[str], inactivity_days: float, retention_days: float) -> Derived:
    """The purchase set-up for what ``scan`` saw, without the keys in ``explicit`` (set by the
    user: file, environment or flag). Nothing on data that is not purchase data. A derived
    horizon fits the retention: ``state.retention_days`` is raised when the user left it,
    else the horizon is capped below it.

    >>> clicks = PurchaseScan(); clicks.add("page_view", "c", 0)
    >>> derive(clicks, frozenset(), 7, 730).applied
    {}
    >>> once = PurchaseScan(); once.add("purchase", "c", 0)
    >>> d = derive(once, frozenset(), 7, 730); d.applied["labels.churn_horizon_days"], d.horizon_why
    (90, 'no contact bought on two days: no gap to take a horizon from, the default 90 days')
    """
    if not scan.is_purchase_data():
        return Derived(False, {}, (), "")
    keys = ["labels.churn_horizon_days", *PURCHASE_KEYS]
    kept = tuple(k for k in keys if _is_set(k, explicit))
    applied = {k: v for k, v in PURCHASE_KEYS.items() if k not in kept}
    horizon, why = _horizon(scan)
    if "labels.churn_horizon_days" not in kept:
        horizon, why, retention = _fit_retention(horizon, why, inactivity_days, retention_days,
                                                 "state.retention_days" in explicit)
        applied = {"labels.churn_horizon_days": horizon, **applied}
        if retention is not None:
            applied["state.retention_days"] = retention
    return Derived(True, applied, kept, why)


def _is_set(key: str, explicit: frozenset[str]) -> bool:
    """A key counts as set when it, or (for the churn model) any key of ``models.churn``, is.

    >>> _is_set("models.churn.estimator", frozenset({"models.churn.calibration"}))
    True
    """
    if key.startswith("models.churn."):
        return any(k.startswith("models.churn.") for k in explicit)
    return key in explicit


def _horizon(scan: PurchaseScan) -> tuple[int, str]:
    """:data:`SUGGESTED_GAPS` median gaps (whole days, at least 1), or the fallback without gaps.

    >>> s = PurchaseScan(); s.add("purchase", "c", 0); s.add("purchase", "c", 27 * DAY_MS); _horizon(s)
    (81, '3 median gaps of 27 days between purchase days (1 gaps)')
    """
    median = scan.median_gap_days
    if median is None:
        return FALLBACK_HORIZON_DAYS, (f"no contact bought on two days: no gap to take a horizon from, "
                                       f"the default {FALLBACK_HORIZON_DAYS} days")
    gaps = sum(scan.gaps.values())
    return max(1, SUGGESTED_GAPS * int(median)), (f"{SUGGESTED_GAPS} median gaps of {median:g} days between "
                                                  f"purchase days ({gaps:,} gaps)")


def _fit_retention(horizon: int, why: str, inactivity_days: float, retention_days: float,
                   retention_set: bool) -> tuple[int, str, int | None]:
    """(horizon, why, retention to apply or None): horizon + inactivity must stay shorter than
    the retention (the settings refuse it otherwise).

    >>> _fit_retention(400, "x", 7, 365, retention_set=False)[2]
    814
    >>> _fit_retention(400, "x", 7, 365, retention_set=True)[:2]
    (357, 'x, capped below state.retention_days (365) - policy.inactivity_days (7)')
    """
    if horizon + inactivity_days < retention_days:
        return horizon, why, None
    if not retention_set:
        return horizon, why, int(math.ceil(2 * (horizon + inactivity_days)))
    capped = max(1, int(math.ceil(retention_days - inactivity_days)) - 1)
    return capped, (f"{why}, capped below state.retention_days ({retention_days:g}) - "
                    f"policy.inactivity_days ({inactivity_days:g})"), None


def announcement(scan: PurchaseScan, derived: Derived, where: str) -> list[str]:
    """What the user is told, one line each: the data, each key applied with its value and why,
    the keys the user's settings kept, and how to keep the defaults.

    >>> s = PurchaseScan(); s.add("page_view", "c", 0)
    >>> print(*announcement(s, derive(s, frozenset(), 7, 730), "f.jsonl"))
    churn set-up: f.jsonl is not purchase data (purchases are 0% of the known contacts' events, under 50%): the configured churn set-up is kept
    """
    if not derived.purchase_data:
        return [f"churn set-up: {where} is not purchase data (purchases are {scan.purchase_share:.0%} of the known "
                f"contacts' events, under {PURCHASE_DATA_SHARE:.0%}): the configured churn set-up is kept"]
    head = (f"churn set-up: {where} is purchase data ({scan.purchase_share:.0%} of the known contacts' "
            f"{scan.known_events:,} events are purchases)")
    if not derived.applied:
        return [f"{head}; every key of the purchase set-up is set in your settings: nothing derived"]
    lines = [f"{head}; derived from it (your settings set none of these):"]
    for key, value in derived.applied.items():
        why = derived.horizon_why if key == "labels.churn_horizon_days" else WHY[key]
        lines.append(f"  {key} = {_toml(value)}   ({why})")
    if derived.kept:
        lines.append(f"  kept as you set them: {', '.join(derived.kept)}")
    if scan.untracked:
        lines.append(f"  gaps taken from the first {MAX_TRACKED_CONTACTS:,} buyers ({scan.untracked:,} later "
                     "purchases of others not counted)")
    lines.append("  to keep the defaults pass --no-derive; to choose a value set the key (a --config file or "
                 "TOUCHLINE_ variable); see README, Churn on purchase data")
    return lines


def _toml(value: Any) -> str:
    """A value as a settings file writes it.

    >>> _toml(["purchase"]), _toml("x"), _toml({"a": True}), _toml(81)
    ('["purchase"]', '"x"', '{ a = true }', '81')
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return str(value)
