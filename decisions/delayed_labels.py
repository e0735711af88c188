"""Learning delayed labels at the horizon, so the early class does not skew the model.

A lead observation resolves positive as soon as its goal happens, but negative only when its
horizon passes. Learned as they resolve, a model sees the positives of recent observations
beside the negatives of older ones: after a start (or a deployment) it is shown positives
alone for a whole horizon, and its intercept climbs until it predicts 0.96 where 0.52 is
observed. Holding each resolved label until its observation's horizon (``labels.learn_at_horizon``)
gives every label to the model in the order the observations were taken, both classes in the
proportion they occur. The grade (progressive validation) still happens when the label resolves.

>>> held = HeldLabels()
>>> held.add(300, {"x": 1.0}, True)
>>> held.add(100, {"x": 2.0}, False)
>>> held.any_due(99), held.any_due(100)
(False, True)
>>> [(x["x"], y) for x, y in held.due(200)], len(held)
([(2.0, False)], 1)
>>> [(x["x"], y) for x, y in held.due(300)], len(held)
([(1.0, True)], 0)
"""

from __future__ import annotations

import heapq
from typing import Iterator

#: (release time ms, arrival number, features, label): the arrival number keeps equal times in order
Held = tuple[int, int, dict[str, float], bool]


class HeldLabels:
    """Resolved labels waiting for their observation's horizon, soonest first."""

    def __init__(self) -> None:
        self.heap: list[Held] = []
        self.arrivals = 0

    def __len__(self) -> int:
        return len(self.heap)

    def add(self, release_ms: int, features: dict[str, float], label: bool) -> None:
        """Keep ``features`` and ``label`` until ``release_ms`` (event time)."""
        heapq.heappush(self.heap, (release_ms, self.arrivals, features, label))
        self.arrivals += 1

    def any_due(self, now_ms: int) -> bool:
        """Whether a label is due by ``now_ms``: one comparison, asked before every event is
        handled, where :meth:`due` would start a generator that mostly yields nothing."""
        return bool(self.heap) and self.heap[0][0] <= now_ms

    def due(self, now_ms: int) -> Iterator[tuple[dict[str, float], bool]]:
        """The labels whose release time is not after ``now_ms``, in release order (each once)."""
        heap = self.heap
        while heap and heap[0][0] <= now_ms:
            _, _, features, label = heapq.heappop(heap)
            yield features, label
