"""Attribution: how much credit each decision before a conversion gets.

A conversion is credited to the touches (sent decisions) of the same contact in the
window before it, under four models at once so they can be compared:

- ``last_touch``: all credit to the most recent touch;
- ``first_touch``: all credit to the earliest touch in the window;
- ``linear``: equal shares;
- ``time_decay``: shares proportional to ``2 ** (-age / half_life)``, so a touch one
  half-life older than another gets half its credit.

Every model hands out exactly one conversion's worth of credit (or none when there is
no touch in the window), so totals per channel are comparable across models.

>>> touches = [Touch(0, "d1", "email", "welcome"), Touch(43_200_000, "d2", "push", "cart_reminder")]
>>> credits = attribute(touches, 86_400_000, window_ms=7 * 86_400_000, half_life_ms=43_200_000)
>>> {m: [(t.decision_id, round(w, 3)) for t, w in c] for m, c in credits.items()}
... # doctest: +NORMALIZE_WHITESPACE
{'last_touch': [('d2', 1.0)], 'first_touch': [('d1', 1.0)], 'linear': [('d1', 0.5), ('d2', 0.5)],
 'time_decay': [('d1', 0.333), ('d2', 0.667)]}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple

MODELS = ("last_touch", "first_touch", "linear", "time_decay")
#: Touches kept per contact for attribution (newest win); bounds the profile.
MAX_TOUCHES = 20


class Touch(NamedTuple):
    """A sent decision, as attribution sees it."""

    ts_ms: int
    decision_id: str
    channel: str
    action: str


@dataclass(frozen=True, slots=True)
class Credit:
    """One touch's share of one conversion under one model."""

    model: str
    touch: Touch
    weight: float


def in_window(touches: Iterable[Touch], conversion_ms: int, window_ms: int) -> list[Touch]:
    """Touches strictly before the conversion and less than a window older, oldest first."""
    return sorted(t for t in touches if conversion_ms - window_ms < t.ts_ms < conversion_ms)


def attribute(touches: Iterable[Touch], conversion_ms: int, window_ms: int,
              half_life_ms: int) -> dict[str, list[tuple[Touch, float]]]:
    """Credit per model for a conversion at ``conversion_ms``; empty lists if no touch qualifies."""
    eligible = in_window(touches, conversion_ms, window_ms)
    if not eligible:
        return {m: [] for m in MODELS}
    n = len(eligible)
    decay = [2.0 ** (-(conversion_ms - t.ts_ms) / half_life_ms) for t in eligible]
    total = sum(decay)
    return {
        "last_touch": [(eligible[-1], 1.0)],
        "first_touch": [(eligible[0], 1.0)],
        "linear": [(t, 1.0 / n) for t in eligible],
        "time_decay": [(t, d / total) for t, d in zip(eligible, decay)],
    }
