"""Sample ratio mismatch: do an experiment's arms hold the shares of contacts they were given?

Arms are assigned by a hash of the contact (the holdout by ``policy.holdout_share``, a split
by its variants' weights), so the contacts counted in each arm should follow those shares up
to chance. When they do not, something other than the assignment decided who is counted
where (an arm that loses contacts before they are exposed, a variant on a channel fewer
contacts can receive, exposures that depend on the treatment), and the lift compares unlike
groups whatever its interval says. A chi-square goodness-of-fit test says how surprising the
counts are; below ``alpha`` (0.001, a common threshold for this check, which runs on every
experiment) it is a mismatch.

>>> r = sample_ratio("send_time", {"fixed": 309, "best_time": 263}, {"fixed": 0.5, "best_time": 0.5})
>>> round(r.p_value, 3), r.mismatch
(0.054, False)
>>> sample_ratio("x", {"a": 600, "b": 400}, {"a": 0.5, "b": 0.5}).mismatch
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

#: Below this p-value the arms' counts are called a mismatch.
ALPHA = 0.001
#: The test needs this many expected contacts in every arm to be read.
MIN_EXPECTED = 5.0
#: What a mismatch means, wherever it is shown (the run summary, the report).
MISMATCH_MEANS = ("the arms do not hold the shares they were assigned, so something besides the assignment "
                  "decided who was counted where; do not trust this lift")


@dataclass(frozen=True, slots=True)
class SampleRatio:
    """Contacts counted per arm against the shares assigned, and the chi-square test's p-value."""

    experiment: str
    observed: dict[str, int]
    expected_share: dict[str, float]
    p_value: float
    mismatch: bool

    def to_dict(self) -> dict[str, Any]:
        return {"observed": self.observed, "expected_share": self.expected_share,
                "p_value": round(self.p_value, 6), "mismatch": self.mismatch}


def sample_ratio(experiment: str, observed: Mapping[str, int], shares: Mapping[str, float],
                 alpha: float = ALPHA) -> SampleRatio | None:
    """The test for ``observed`` contacts per arm against ``shares`` (relative weights), or None
    when it cannot be read: fewer than two arms, or too few contacts expected in one."""
    total_weight = sum(shares.values())
    n = sum(observed.get(arm, 0) for arm in shares)
    if len(shares) < 2 or total_weight <= 0:
        return None
    expected = {arm: n * w / total_weight for arm, w in shares.items()}
    if min(expected.values()) < MIN_EXPECTED:
        return None
    statistic = sum((observed.get(arm, 0) - e) ** 2 / e for arm, e in expected.items())
    p = chi2_sf(statistic, len(shares) - 1)
    return SampleRatio(experiment, {arm: observed.get(arm, 0) for arm in shares},
                       {arm: round(w / total_weight, 6) for arm, w in shares.items()}, p, p < alpha)


def describe(observed: Mapping[str, int], shares: Mapping[str, float], p_value: float, unit: str = "") -> str:
    """The counts per arm (of ``unit``) against the shares assigned, and the p-value.

    >>> describe({"a": 309, "b": 263}, {"a": 0.5, "b": 0.5}, 0.0541, "windows closed")
    '309 : 263 windows closed (a : b) against 50% : 50% assigned, p = 0.0541'
    """
    counts = " : ".join(f"{n:,}" for n in observed.values()) + (f" {unit}" if unit else "")
    assigned = " : ".join(f"{share:.0%}" for share in shares.values())
    return f"{counts} ({' : '.join(observed)}) against {assigned} assigned, p = {p_value:.3g}"


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for a chi-square variable with ``dof`` (a positive integer) degrees of freedom,
    in closed form (the regularized upper incomplete gamma function at half-integers).

    >>> round(chi2_sf(3.841459, 1), 4), round(chi2_sf(5.991465, 2), 4), round(chi2_sf(7.814728, 3), 4)
    (0.05, 0.05, 0.05)
    """
    if x <= 0:
        return 1.0
    y = x / 2
    if dof % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, dof // 2):
            term *= y / i
            total += term
        return min(1.0, math.exp(-y) * total)
    total, term = math.erfc(math.sqrt(y)), math.sqrt(y) / math.gamma(1.5)
    for i in range(1, (dof - 1) // 2 + 1):
        total += math.exp(-y) * term
        term *= y / (i + 0.5)
    return min(1.0, total)
