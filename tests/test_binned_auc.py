"""The binned ROC AUC counted in whole numbers equals the bin-by-bin float sum it replaced."""

from __future__ import annotations

import random

from touchline.decisions.evaluation import BinnedROCAUC


def float_sum_auc(auc: BinnedROCAUC) -> float:
    """The former reading: wins summed bin by bin in floats, ties counted half."""
    n_pos, n_neg = sum(auc.pos), sum(auc.neg)
    if not n_pos or not n_neg:
        return 0.5
    below, wins = 0, 0.0
    for p, n in zip(auc.pos, auc.neg):
        wins += p * (below + 0.5 * n)
        below += n
    return wins / (n_pos * n_neg)


def test_same_figure_as_the_float_sum() -> None:
    rng = random.Random(7)
    for _ in range(200):
        auc = BinnedROCAUC(bins=rng.choice([10, 1000]))
        share = rng.random()
        for _ in range(rng.choice([0, 1, 3, 40, 700, 20_000])):
            auc.update(rng.random() < share, rng.random() ** rng.choice([1, 4]))
        assert auc.get().hex() == float_sum_auc(auc).hex()
