"""Lift per segment: conversion rate of treated vs control, with a confidence interval
and a guard that refuses to conclude on too little data.

An experiment's outcomes (one per exposed contact, when its window closes) are tallied
per arm and segment; :func:`estimate` compares an arm with the baseline arm (the
holdout, or a split's first variant). The interval for the difference of two
proportions is Newcombe's hybrid score interval (method 10 in Newcombe, *Statistics in
Medicine* 1998): built from two Wilson intervals, it keeps its coverage with few
conversions and never leaves [-1, 1], where the textbook Wald interval collapses to
zero width at 0 conversions.

>>> t = LiftTable()
>>> for arm, n, k in (("treatment", 400, 60), ("holdout", 400, 32)):
...     for i in range(n):
...         t.add("global_holdout", arm, "holdout", {"lifecycle": "prospect"}, i < k)
>>> e = t.estimates("global_holdout", min_per_arm=100)[0]
>>> e.segment, round(e.lift, 3), round(e.low, 3), round(e.high, 3), e.verdict
(('all', 'all'), 0.07, 0.026, 0.115, 'lift')
>>> t.estimates("global_holdout", min_per_arm=1000)[0].verdict
'too few to conclude (400 treated, 400 control; need 1000 each)'
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Iterable, Mapping

#: The pseudo-segment of everyone.
ALL = ("all", "all")


def z_for(confidence: float) -> float:
    """Two-sided normal quantile: 1.96 for 0.95."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(k: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (0..1 when n is 0).

    >>> [round(x, 4) for x in wilson(0, 20, 1.96)]
    [0.0, 0.1611]
    """
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(k1: int, n1: int, k0: int, n0: int, z: float) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 - p0."""
    p1, p0 = k1 / n1, k0 / n0
    l1, u1 = wilson(k1, n1, z)
    l0, u0 = wilson(k0, n0, z)
    d = p1 - p0
    low = d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return max(-1.0, low), min(1.0, high)


@dataclass(frozen=True, slots=True)
class LiftEstimate:
    """One arm against the baseline in one segment."""

    experiment: str
    arm: str
    baseline: str
    segment: tuple[str, str]  # (dimension, value), or ("all", "all")
    treated: int
    treated_conversions: int
    control: int
    control_conversions: int
    rate: float
    control_rate: float
    lift: float  # absolute difference of conversion rates
    low: float
    high: float
    confidence: float
    enough: bool
    verdict: str

    @property
    def relative(self) -> float | None:
        """Lift relative to the control rate (None when the control never converted)."""
        return self.lift / self.control_rate if self.control_rate > 0 else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["segment"] = {"dimension": self.segment[0], "value": self.segment[1]}
        d["relative"] = self.relative
        return d


def estimate(experiment: str, arm: str, baseline: str, segment: tuple[str, str], treated: tuple[int, int],
             control: tuple[int, int], confidence: float = 0.95, min_per_arm: int = 100) -> LiftEstimate:
    """Compare ``treated`` (contacts, conversions) with ``control`` in one segment.

    The verdict is ``too few to conclude`` below ``min_per_arm`` contacts in either arm;
    otherwise ``lift`` or ``harm`` when the interval excludes zero, else
    ``no detectable difference``.
    """
    (n1, k1), (n0, k0) = treated, control
    enough = n1 >= min_per_arm and n0 >= min_per_arm
    rate = k1 / n1 if n1 else 0.0
    control_rate = k0 / n0 if n0 else 0.0
    if n1 and n0:
        low, high = difference_interval(k1, n1, k0, n0, z_for(confidence))
    else:
        low, high = -1.0, 1.0
    if not enough:
        verdict = f"too few to conclude ({n1} treated, {n0} control; need {min_per_arm} each)"
    elif low > 0:
        verdict = "lift"
    elif high < 0:
        verdict = "harm"
    else:
        verdict = "no detectable difference"
    return LiftEstimate(experiment, arm, baseline, segment, n1, k1, n0, k0, rate, control_rate,
                        rate - control_rate, low, high, confidence, enough, verdict)


class LiftTable:
    """Outcome tallies per experiment, arm and segment; bounded by the segment values."""

    def __init__(self) -> None:
        #: (experiment, arm, dimension, value) -> [contacts, conversions]
        self.counts: Counter[tuple[str, str, str, str, bool]] = Counter()
        self.baselines: dict[str, str] = {}
        self.arms: dict[str, list[str]] = {}

    def add(self, experiment: str, arm: str, baseline: str, segment: Mapping[str, str], converted: bool) -> None:
        """Count one closed exposure."""
        self.baselines[experiment] = baseline
        arms = self.arms.setdefault(experiment, [])
        if arm not in arms:
            arms.append(arm)
        for dim, value in (ALL, *segment.items()):
            self.counts[(experiment, arm, dim, value, converted)] += 1

    def add_outcomes(self, outcomes: Iterable[Mapping[str, Any]]) -> None:
        """Count outcome records (see the experiments output in the README)."""
        for o in outcomes:
            if o.get("kind") == "outcome":
                self.add(o["experiment"], o["arm"], o["baseline"], o.get("segment") or {}, bool(o["converted"]))

    def tally(self, experiment: str, arm: str, dim: str, value: str) -> tuple[int, int]:
        """(contacts, conversions) of one arm in one segment."""
        yes = self.counts[(experiment, arm, dim, value, True)]
        return yes + self.counts[(experiment, arm, dim, value, False)], yes

    def segments(self, experiment: str) -> list[tuple[str, str]]:
        """Every segment seen in ``experiment``, ``all`` first, then by dimension and value."""
        seen = {(dim, value) for (exp, _a, dim, value, _c) in self.counts if exp == experiment}
        return [ALL, *sorted(seen - {ALL})] if seen else []

    def estimates(self, experiment: str, confidence: float = 0.95, min_per_arm: int = 100) -> list[LiftEstimate]:
        """Each non-baseline arm against the baseline, in every segment."""
        baseline = self.baselines.get(experiment)
        if baseline is None:
            return []
        out = []
        for arm in self.arms[experiment]:
            if arm == baseline:
                continue
            for seg in self.segments(experiment):
                out.append(estimate(experiment, arm, baseline, seg, self.tally(experiment, arm, *seg),
                                    self.tally(experiment, baseline, *seg), confidence, min_per_arm))
        return out

    def experiments(self) -> list[str]:
        return sorted(self.baselines)
