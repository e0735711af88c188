"""The default pipeline's prediction and learning step in one pass over River's own state.

``StandardScaler | LogisticRegression`` predicts by building a scaled copy of the
features (a dict), a dot product with the weights, and a ``{False, True}`` dict; it learns
by updating the scaler, scaling again, and taking an SGD step through VectorDict
operations. This reader does the same arithmetic in two loops over plain lists, keeps the
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

#: (mean, standard deviation or 0.0, weight) per feature, in the weights' order.
Row = tuple[float, float, float]


class ScaledLogistic:
    """Predicts and learns for one ``StandardScaler | LogisticRegression`` pipeline; call
    :meth:`stale` after the pipeline learns by itself."""

    def __init__(self, pipeline: compose.Pipeline) -> None:
        self.pipeline = pipeline
        self.scaler, self.logistic = pipeline.steps.values()
        self.names: tuple[Any, ...] | None = None
        self.rows: list[Row] = []
        #: the scaler's counts and variances per feature, in the weights' order (the means are in rows)
        self.counts: list[int] = []
        self.variances: list[float] = []
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
                return None
        total: float = 0  # River's dot product starts from the integer 0
        for xi, (mean, std, weight) in zip(x.values(), self.rows):
            total = total + weight * ((xi - mean) / std if std else 0.0)
        return float(sigmoid(total + self.intercept))

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
        weights'), with :attr:`rows`, :attr:`counts` and :attr:`variances` holding the new
        state, which is then written into the scaler."""
        scaled, rows, counts, variances = [], [], [], []
        total: float = 0
        for xi, n, (old_mean, _, weight), v in zip(x.values(), self.counts, self.rows, self.variances):
            n += 1
            mean = old_mean + (xi - old_mean) / n
            v = v + ((xi - old_mean) * (xi - mean) - v) / n
            std = v**0.5 if v else 0.0
            xs = (xi - mean) / std if std else 0.0
            total = total + weight * xs
            scaled.append(xs)
            rows.append((mean, std, weight))
            counts.append(n)
            variances.append(v)
        self.rows, self.counts, self.variances = rows, counts, variances
        self._write_scaler(names)
        return scaled, total

    def _write_scaler(self, names: tuple[Any, ...]) -> None:
        """The scaler's tables set to the kept state. ``dict.update`` is called unbound: the
        counts are a Counter, whose own ``update`` would add the counts instead of setting them."""
        scaler = self.scaler
        dict.update(scaler.counts, zip(names, self.counts))
        dict.update(scaler.means, zip(names, [row[0] for row in self.rows]))
        dict.update(scaler.vars, zip(names, self.variances))

    def _step(self, names: tuple[Any, ...], scaled: list[float], gradient: float, rate: float, l2: float) -> None:
        """One SGD step on the weights (``w - (x * gradient + w * l2) * rate``, as River's
        VectorDict operations compute it), written back into the pipeline. Comprehensions,
        not a loop of appends: this runs for every feature of every label."""
        if l2:
            weights = [w - (xs * gradient + w * l2) * rate for (_, _, w), xs in zip(self.rows, scaled)]
        else:
            weights = [w - (xs * gradient) * rate for (_, _, w), xs in zip(self.rows, scaled)]
        self.rows = [(mean, std, w) for (mean, std, _), w in zip(self.rows, weights)]
        self.logistic._weights.update(dict(zip(names, weights)))

    def _read(self, names: tuple[Any, ...]) -> bool:
        """Take counts, means, variances, deviations and weights for features keyed ``names``,
        in that order; False when River's arithmetic could not be followed exactly for them."""
        if not self._followable(names):
            return False
        weights = self.logistic._weights
        counts, means, variances = self.scaler.counts, self.scaler.means, self.scaler.vars
        self.rows = [(means[n], variances[n] ** 0.5 if variances[n] else 0.0, w)
                     for n, w in zip(names, weights.values())]
        self.counts = [counts[n] for n in names]
        self.variances = [variances[n] for n in names]
        self.intercept = self.logistic.intercept
        self.names = names
        return True

    def _followable(self, names: tuple[Any, ...]) -> bool:
        """The weights are keyed ``names`` in that order and the scaler knows each of them."""
        means, variances = self.scaler.means, self.scaler.vars
        if not names or tuple(self.logistic._weights.keys()) != names:
            return False
        return all(n in means and n in variances and variances[n] >= 0 for n in names)
