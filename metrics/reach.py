"""How far each action reaches today, against the known contacts: the guard against a model
or a rule that starts messaging the whole base (a win-back to every customer).

``touchline_action_daily_reach{action}`` counts this process's decisions of each action on
the current day of the engine clock (UTC); ``touchline_known_contacts`` is the state store's
count of known contacts; ``touchline_reach_alert_share`` is the share
(``metrics.reach_alert_share``) over which the alert ``TouchlineActionReachTooWide`` fires.
Counted once per batch, never per contact.

>>> from prometheus_client import CollectorRegistry
>>> registry = CollectorRegistry()
>>> reach = DailyReach(registry, alert_share=0.2)
>>> day = 86_400_000
>>> reach.add([{"action": "winback_offer", "decision_time_ms": 3 * day + 5}] * 3, known=10, now_ms=3 * day + 9)
>>> registry.get_sample_value("touchline_action_daily_reach", {"action": "winback_offer"})
3.0
>>> reach.add([], known=10, now_ms=4 * day)  # a new day
>>> registry.get_sample_value("touchline_action_daily_reach", {"action": "winback_offer"})
0.0
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Mapping

from prometheus_client import CollectorRegistry, Gauge

DAY_MS = 86_400_000


class DailyReach:
    """Decisions per action on the current day of the engine clock, and the base they reach."""

    def __init__(self, registry: CollectorRegistry, alert_share: float) -> None:
        self.reach = Gauge("touchline_action_daily_reach", "Decisions of each action on the current day of the "
                           "engine clock (UTC), in this process.", ["action"], registry=registry)
        self.known = Gauge("touchline_known_contacts", "Known contacts the state store holds (its running count).",
                           registry=registry)
        self.alert_share = Gauge("touchline_reach_alert_share", "Share of the known contacts one action may reach "
                                 "in a day before TouchlineActionReachTooWide fires (metrics.reach_alert_share).",
                                 registry=registry)
        self.alert_share.set(alert_share)
        self._day: int | None = None
        self._counts: Counter[str] = Counter()

    def add(self, decisions: Iterable[Mapping[str, Any]], known: int | None, now_ms: int) -> None:
        """Count a batch's decisions of the engine clock's day (``now_ms``, after the batch; a
        new day starts every count from zero, and decisions of a day already over are not counted)."""
        day = now_ms // DAY_MS
        if self._day is None or day > self._day:
            self._new_day(day)
        for record in decisions:
            if record["decision_time_ms"] // DAY_MS == self._day:
                self._counts[record["action"]] += 1
        for action, n in self._counts.items():
            self.reach.labels(action).set(n)
        if known is not None:
            self.known.set(known)

    def _new_day(self, day: int) -> None:
        self._day = day
        for action in self._counts:
            self.reach.labels(action).set(0)
        self._counts = Counter()
