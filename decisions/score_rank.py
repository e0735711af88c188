"""Where a score stands among the recent scores of the same kind: win-back for the top share
of the contacts at risk, not for everyone over a threshold.

A churn model that gives nearly everyone p ~ 1 (badly calibrated, or on data it does not
fit) sends a win-back to the whole base through a fixed threshold. Ranking each score
among the last ``window`` scores given at the same moment (the inactivity check) keeps
the reach to about ``share`` of the contacts checked, whatever the calibration.

>>> rank = ScoreRank(window=4, min_scores=2)
>>> [rank.in_top(p, 0.5) for p in (0.9, 0.1, 0.95, 0.2, 0.3)]
[True, False, True, False, True]
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque


class ScoreRank:
    """The last ``window`` scores, kept sorted; ``in_top`` adds a score and says whether it is in
    the top ``share`` of them (every score is, until ``min_scores`` have been seen). Ties at the
    cut are left out: a model that gives everyone the same score ranks no one, and reaches no one.

    >>> rank = ScoreRank(window=100, min_scores=10)
    >>> sum(rank.in_top(1.0, 0.2) for _ in range(50))  # saturated: only those before ten were seen
    9
    """

    def __init__(self, window: int = 2000, min_scores: int = 200) -> None:
        self.window, self.min_scores = window, min_scores
        self._arrived: deque[float] = deque()
        self._sorted: list[float] = []

    def in_top(self, score: float, share: float) -> bool:
        self._add(score)
        return self._ranks(score, share, 0)

    def ranks_in_top(self, score: float, share: float) -> bool:
        """Whether ``score`` would stand in the top ``share``, without adding it (a question
        asked on request, not an inactivity check).

        >>> rank = ScoreRank(window=10, min_scores=2)
        >>> _ = [rank.in_top(p, 0.5) for p in (0.1, 0.2, 0.3, 0.4)]
        >>> rank.ranks_in_top(0.35, 0.4), rank.ranks_in_top(0.15, 0.4), len(rank._sorted)
        (True, False, 4)
        """
        return self._ranks(score, share, 1)

    def _ranks(self, score: float, share: float, pending: int) -> bool:
        """The rank test among the kept scores plus ``pending`` (1: ``score`` itself, not added)."""
        n = len(self._sorted) + pending
        if n < self.min_scores:
            return True
        above = n - bisect_left(self._sorted, score)  # scores at or above this one, itself included
        return above <= max(1, round(share * n))

    def _add(self, score: float) -> None:
        self._arrived.append(score)
        insort(self._sorted, score)
        if len(self._arrived) > self.window:
            old = self._arrived.popleft()
            del self._sorted[bisect_left(self._sorted, old)]
