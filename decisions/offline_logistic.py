"""Offline logistic regression on captured training examples: the ceiling an online model is
measured against, and the warm start it can begin from.

The fit is the default pipeline's model, solved instead of stepped: columns standardised
as River's ``StandardScaler`` does (population deviation, a constant column left at 0), then
an L2-penalised log loss minimised by L-BFGS. So a fit loads into a fresh
``StandardScaler | LogisticRegression`` exactly (:func:`load_into`), and the engine goes on
learning from there.

>>> X = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0]] * 5)
>>> y = np.array([False, False, True, True] * 5)
>>> fit = fit_logistic(X, y, ("signal", "constant"))
>>> bool(fit.predict(X)[3] > 0.5 > fit.predict(X)[0]), float(fit.weights[1])
(True, 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt
from scipy import optimize

from touchline.decisions.evaluation import Evaluation
from touchline.decisions.scaled_logistic import ScaledLogistic

Array = npt.NDArray[np.float64]
Labels = npt.NDArray[np.bool_]

#: Ridge strength of the offline fit, in labels' worth of log loss per unit of squared weight
#: (on standardised features: a light touch that keeps a near-constant column from running off).
L2 = 1.0


@dataclass(frozen=True)
class LogisticFit:
    """Weights of standardised features, the standardisation and the intercept."""

    names: tuple[str, ...]
    means: Array
    stds: Array  # 0 for a constant column (its scaled value is 0, as River scales it)
    weights: Array
    intercept: float
    n: int

    def predict(self, X: Array) -> Array:
        """P(True) for each row of ``X`` (columns in :attr:`names` order)."""
        return _sigmoid(self.scaled(X) @ self.weights + self.intercept)

    def scaled(self, X: Array) -> Array:
        out: Array = np.where(self.stds > 0, (X - self.means) / np.where(self.stds > 0, self.stds, 1.0), 0.0)
        return out


def _sigmoid(z: Array) -> Array:
    out: Array = 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))
    return out


def matrix(rows: Sequence[dict[str, float]], names: Sequence[str]) -> Array:
    """Rows of features as a matrix, columns in ``names`` order (a missing feature is 0)."""
    return np.array([[row.get(name, 0.0) for name in names] for row in rows], dtype=np.float64).reshape(
        len(rows), len(names))


def fit_logistic(X: Array, y: Labels, names: Sequence[str], l2: float = L2) -> LogisticFit:
    """The L2-penalised logistic regression of ``y`` on the standardised columns of ``X``."""
    means, stds = X.mean(axis=0), X.std(axis=0)
    partial = LogisticFit(tuple(names), means, stds, np.zeros(X.shape[1]), 0.0, len(y))
    Z = np.column_stack([np.ones(len(y)), partial.scaled(X)])
    target = y.astype(np.float64)

    def loss(w: Array) -> tuple[float, Array]:
        z = Z @ w
        value = float(np.sum(np.logaddexp(0.0, z) - target * z)) + 0.5 * l2 * float(w[1:] @ w[1:])
        grad: Array = Z.T @ (_sigmoid(z) - target)
        grad[1:] += l2 * w[1:]
        return value, grad

    w = optimize.minimize(loss, np.zeros(Z.shape[1]), jac=True, method="L-BFGS-B").x
    return LogisticFit(tuple(names), means, stds, np.asarray(w[1:], dtype=np.float64), float(w[0]), len(y))


def cross_validated(X: Array, y: Labels, folds: int = 5, seed: int = 7, l2: float = L2) -> Array:
    """Out-of-fold predictions: each row predicted by the fit on the other folds (seeded shuffle).

    >>> X = np.arange(40.0).reshape(20, 2)
    >>> p = cross_validated(X, np.arange(20) >= 10, folds=4)
    >>> bool(p[:5].mean() < 0.5 < p[-5:].mean())
    True
    """
    order = np.random.default_rng(seed).permutation(len(y))
    p = np.full(len(y), float(y.mean()) if len(y) else 0.5)
    names = [str(i) for i in range(X.shape[1])]
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        if len(test) and 0 < int(y[train].sum()) < len(train):
            p[test] = fit_logistic(X[train], y[train], names, l2).predict(X[test])
    return p


def ceiling(X: Array, y: Labels, folds: int = 5, seed: int = 7) -> Evaluation:
    """The offline ceiling: out-of-fold predictions graded as the engine grades its models
    (the same ROC AUC, log loss and calibration error), so the figures compare like for like."""
    evaluation = Evaluation()
    for label, p in zip(y.tolist(), cross_validated(X, y, folds, seed).tolist()):
        evaluation.update(bool(label), float(p))
    return evaluation


def load_into(pipeline: Any, fit: LogisticFit) -> bool:
    """Set a ``StandardScaler | LogisticRegression`` pipeline to ``fit`` (False, nothing done,
    for another kind of estimator): the scaler's counts, means and variances as if it had seen
    the ``fit.n`` training rows, the weights and intercept in the features' order, the
    optimizer's step count at ``fit.n`` (a learning-rate schedule goes on from there)."""
    reader = ScaledLogistic.of(pipeline)
    if reader is None:
        return False
    scaler, logistic = reader.scaler, reader.logistic
    for i, name in enumerate(fit.names):
        scaler.counts[name] = fit.n
        scaler.means[name] = float(fit.means[i])
        scaler.vars[name] = float(fit.stds[i]) ** 2
        logistic._weights[name] = float(fit.weights[i])
    logistic.intercept = fit.intercept
    logistic.optimizer.n_iterations = fit.n
    reader.stale()
    return True
