"""The default pipeline's prediction and learning step in one pass over River's own state.

``StandardScaler | LogisticRegression`` predicts by building a scaled copy of the
features (a dict), a dot product with the weights, and a ``{False, True}`` dict; it learns
by updating the scaler, scaling again, and taking an SGD step through VectorDict
operations. This reader does the same arithmetic over plain lists, one per quantity, keeps the
counts, means, variances, deviations and weights it computed for the predictions and the
learning that follow (the model learns about once per five predictions), and writes every
learned value back into the pipeline in bulk (one C-level ``dict.update`` per table, not a
Python store per feature), which stays the model of record (checkpoints pickle it).

The results are the same floats, bit for bit: each step is River's expression in River's
order -- Welford's update, ``(x - mean) / var ** 0.5`` (``0.0`` for a zero variance), a
dot product that adds ``w * x`` to an accumulator starting at 0 in the weights' order (the
order River's ``VectorDict.dot`` walks when the weights and the features have the same
keys), the loss gradient, the intercept and ``w - (x * g) * rate``. Where that cannot be
vouched for -- weights keyed differently from the features (before the first label, or
another key order), an unusual scaler, loss or optimizer, an L1 penalty -- the reader
declines (returns None or False) and River does the work.

>>> from river import compose, linear_model, preprocessing
>>> model = compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())
>>> reader = ScaledLogistic.of(model)
>>> reader.predict({"a": 1.0}) == model.predict_proba_one({"a": 1.0})[True]  # before any label
True
>>> for i in range(20):
...     model.learn_one({"a": float(i % 7), "b": 1.0, "c": float(i % 3)}, i % 2 == 0)
>>> reader.stale()
>>> x = {"a": 3.0, "b": 1.0, "c": 2.0}
>>> reader.predict(x) == model.predict_proba_one(x)[True]
True
>>> reader.predict({"c": 2.0, "b": 1.0, "a": 3.0}) is None  # another key order: River's turn
True
"""

from __future__ import annotations

from typing import Any

from river import compose, linear_model, optim, preprocessing
from river.utils.math import clamp, sigmoid


class ScaledLogistic:
    """Predicts and learns for one ``StandardScaler | LogisticRegression`` pipeline; call
    :meth:`stale` after the pipeline learns by itself."""

    def __init__(self, pipeline: compose.Pipeline) -> None:
        self.pipeline = pipeline
        self.scaler, self.logistic = pipeline.steps.values()
        self.names: tuple[Any, ...] | None = None
        #: per feature, in the weights' order (:attr:`names`): the scaler's counts, means and
        #: variances, the standard deviations (0.0 for a zero variance) and the weights
        self.counts: list[int] = []
        self.means: list[float] = []
        self.variances: list[float] = []
        self.stds: list[float] = []
        self.weights: list[float] = []
        #: (mean, standard deviation, weight) per feature: what a prediction reads, in one list
        self.rows: list[tuple[float, float, float]] = []
        self.intercept = 0.0

    @classmethod
    def of(cls, estimator: Any) -> "ScaledLogistic | None":
        """A reader for ``estimator`` when it is exactly the default pipeline's shape, else None."""
        if type(estimator) is not compose.Pipeline or len(estimator.steps) != 2:
            return None
        scaler, logistic = estimator.steps.values()
        if (type(scaler) is preprocessing.StandardScaler and scaler.with_std and scaler.window_size is None
                and type(logistic) is linear_model.LogisticRegression and type(logistic.loss) is optim.losses.Log):
            return cls(estimator)
        return None

    def stale(self) -> None:
        """The pipeline learned: read its state again before the next prediction."""
        self.names = None

    def predict(self, x: dict[str, float]) -> float | None:
        """P(True) as River's ``predict_proba_one(x)[True]`` gives it, or None to let River predict."""
        if compose.Pipeline._LEARN_UNSUPERVISED_DURING_PREDICT:  # River would update the scaler first
            return None
        if self.names is None or tuple(x) != self.names:
            if not self._read(tuple(x)):
                return self._unlearned()
        total: float = 0  # River's dot product starts from the integer 0
        for xi, (mean, std, weight) in zip(x.values(), self.rows):
            total = total + weight * ((xi - mean) / std if std else 0.0)
        return float(sigmoid(total + self.intercept))

    def _unlearned(self) -> float | None:
        """Before the first label there are no weights, and River's dot product is 0.0 whatever
        the features: P(True) is the intercept's alone. None (River's turn) once there are weights
        this reader cannot follow."""
        if self.logistic._weights:  # checked only here: asking a VectorDict its size costs ~1 µs
            return None
        return float(sigmoid(0.0 + self.logistic.intercept))

    def learn(self, x: dict[str, float], y: bool) -> bool:
        """``pipeline.learn_one(x, y)`` in one pass, to the same bits; False (nothing done) when
        River must learn: before the weights and the scaler know every feature of ``x``, or
        with an optimizer other than plain SGD, or an L1 penalty."""
        logistic, optimizer = self.logistic, self.logistic.optimizer
        if (compose.Pipeline._LEARN_UNSUPERVISED_DURING_PREDICT or type(optimizer) is not optim.SGD
                or logistic.l1 != 0):
            return False
        names = tuple(x)
        if names != self.names and not self._read(names):
            return False
        scaled, total = self._learn_scaler(x, names)
        gradient = logistic.loss.gradient(y_true=y, y_pred=total + logistic.intercept)
        gradient *= 1.0  # the sample weight
        gradient = float(clamp(gradient, -logistic.clip_gradient, logistic.clip_gradient))
        logistic.intercept -= logistic.intercept_lr.get(optimizer.n_iterations) * gradient
        self._step(names, scaled, gradient, optimizer.learning_rate, logistic.l2)
        optimizer.n_iterations += 1
        self.intercept = logistic.intercept
        return True

    def _learn_scaler(self, x: dict[str, float], names: tuple[Any, ...]) -> tuple[list[float], float]:
        """StandardScaler.learn_one then transform_one (Welford's update), fused: the scaled
        features and their dot product with the weights (River's learning-mode order, the
        weights'), the new state kept and written into the scaler. One comprehension per
        quantity, each River's expression: cheaper than one loop appending to five lists."""
        values = list(x.values())
        old_means = self.means
        counts = [n + 1 for n in self.counts]
        means = [m + (xi - m) / n for xi, m, n in zip(values, old_means, counts)]
        variances = [v + ((xi - old) * (xi - m) - v) / n
                     for xi, old, m, v, n in zip(values, old_means, means, self.variances, counts)]
        stds = [v**0.5 if v else 0.0 for v in variances]
        scaled = [(xi - m) / std if std else 0.0 for xi, m, std in zip(values, means, stds)]
        total: float = 0
        for weight, xs in zip(self.weights, scaled):
            total = total + weight * xs
        self.counts, self.means, self.variances, self.stds = counts, means, variances, stds
        scaler = self.scaler
        dict.update(scaler.counts, zip(names, counts))  # unbound: Counter.update would add
        dict.update(scaler.means, zip(names, means))
        dict.update(scaler.vars, zip(names, variances))
        return scaled, total

    def _step(self, names: tuple[Any, ...], scaled: list[float], gradient: float, rate: float, l2: float) -> None:
        """One SGD step on the weights (``w - (x * gradient + w * l2) * rate``, as River's
        VectorDict operations compute it), written back into the pipeline."""
        if l2:
            weights = [w - (xs * gradient + w * l2) * rate for w, xs in zip(self.weights, scaled)]
        else:
            weights = [w - (xs * gradient) * rate for w, xs in zip(self.weights, scaled)]
        self.weights = weights
        self.rows = list(zip(self.means, self.stds, weights))
        self.logistic._weights.update(dict(zip(names, weights)))

    def _read(self, names: tuple[Any, ...]) -> bool:
        """Take counts, means, variances, deviations and weights for features keyed ``names``,
        in that order; False when River's arithmetic could not be followed exactly for them."""
        if not self._followable(names):
            return False
        counts, means, variances = self.scaler.counts, self.scaler.means, self.scaler.vars
        self.counts = [counts[n] for n in names]
        self.means = [means[n] for n in names]
        self.variances = [variances[n] for n in names]
        self.stds = [v**0.5 if v else 0.0 for v in self.variances]
        self.weights = list(self.logistic._weights.values())
        self.rows = list(zip(self.means, self.stds, self.weights))
        self.intercept = self.logistic.intercept
        self.names = names
        return True

    def _followable(self, names: tuple[Any, ...]) -> bool:
        """The weights are keyed ``names`` in that order and the scaler knows each of them."""
        means, variances = self.scaler.means, self.scaler.vars
        if not names or tuple(self.logistic._weights.keys()) != names:
            return False
        return all(n in means and n in variances and variances[n] >= 0 for n in names)
