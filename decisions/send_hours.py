"""A contact's engagement by local hour (the state a best-time send is planned from) and the
empirical-Bayes estimate of when they read: see :mod:`touchline.decisions.send_time`.

>>> own = [0] * 24; own[20] = 3
>>> scores = hour_scores(own, population_share([0] * 24), prior_weight=10)
>>> best_hour(scores), round(scores[20], 3), round(scores[9], 3)
(20, 0.263, 0.032)
"""

from __future__ import annotations

from typing import Any, Sequence

HOURS = 24
#: A contact's counters are halved when their sum passes this: they stay small, and newer
#: habits outweigh old ones.
MAX_CONTACT_TOTAL = 200


class SendHours(list[int]):
    """A contact's engagements by local hour: empty before the first one, else 24 counters.

    >>> h = SendHours(); add_engagement(h, 9); add_engagement(h, 9)
    >>> h.merge(SendHours.from_json([1] * 24)); h[9], h[10], len(h)
    (3, 1, 24)
    >>> SendHours.from_json("junk"), SendHours.from_json([1, 2])  # a damaged blob: no history, not an error
    ([], [])
    """

    __slots__ = ()

    def merge(self, other: Sequence[int]) -> None:
        """An anonymous visitor's engagement adds to the contact's."""
        if not other:
            return
        if not self:
            self.extend([0] * HOURS)
        for hour, n in enumerate(other):
            self[hour] += n
        bound_counts(self)

    def to_json(self) -> list[int]:
        return self

    @classmethod
    def from_json(cls, raw: Any) -> SendHours:
        ok = isinstance(raw, list) and len(raw) == HOURS and all(isinstance(n, int) and n >= 0 for n in raw)
        return cls(raw if ok else [])

    def view(self) -> dict[str, Any]:
        """The counters and the contact's own best hour (the engine shrinks it toward the
        population when it schedules; see :class:`SendTime`)."""
        if not self:
            return {}
        return {"send_time": {"engagement_by_local_hour": list(self), "engagements": sum(self),
                              "best_local_hour": best_hour(list(map(float, self)))}}


def add_engagement(hours: SendHours, hour: int) -> None:
    """Count one engagement in local ``hour`` (bounded: see :data:`MAX_CONTACT_TOTAL`)."""
    if not hours:
        hours.extend([0] * HOURS)
    hours[hour % HOURS] += 1
    bound_counts(hours)


def bound_counts(counts: list[int], limit: int = MAX_CONTACT_TOTAL) -> None:
    """Halve every counter (rounding down) once their sum passes ``limit``.

    >>> c = [150, 60] + [0] * 22; bound_counts(c); c[:2]
    [75, 30]
    """
    if sum(counts) > limit:
        counts[:] = [n // 2 for n in counts]


def population_share(counts: Sequence[int]) -> list[float]:
    """The population's share of engagement per hour, with one pseudo-count per hour (an
    empty population is uniform).

    >>> population_share([0] * 24)[0] == 1 / 24
    True
    """
    total = sum(counts) + HOURS
    return [(n + 1) / total for n in counts]


def hour_scores(own: Sequence[int], population: Sequence[float], prior_weight: float) -> list[float]:
    """The contact's expected share of engagement per local hour: their counts shrunk toward
    ``population`` (shares summing to 1) with weight ``prior_weight``.

    >>> [round(s, 2) for s in hour_scores([], [0.5, 0.5] + [0.0] * 22, 4)[:3]]
    [0.5, 0.5, 0.0]
    """
    n = sum(own)
    counts = own if own else [0] * HOURS
    return [(counts[h] + prior_weight * population[h]) / (n + prior_weight) for h in range(HOURS)]


def best_hour(scores: Sequence[float]) -> int | None:
    """The hour with the highest score (the earliest of a tie); None when all are equal.

    >>> best_hour([1.0] * 24), best_hour([0.0] * 23 + [2.0])
    (None, 23)
    """
    top = max(scores)
    return None if min(scores) == top else list(scores).index(top)
