"""The default pipeline's prediction in one pass over River's own state.

``StandardScaler | LogisticRegression`` predicts by building a scaled copy of the
features (a dict), a dot product with the weights, and a ``{False, True}`` dict. This
reader computes the same probability without the two dicts, from the scaler's means and
standard deviations and the weights, read once after each ``learn_one`` (the model
learns about once per five predictions) and reused until the next.

The result is the same float, bit for bit: each scaled value is River's expression
(``(x - mean) / var ** 0.5``, ``0.0`` for a zero variance), and the sum runs in the order
River's dot product runs (its ``VectorDict.dot`` walks the smaller of the two dicts, the
weights when they have the same keys, and adds ``w * x`` to an accumulator starting at 0).
Where that order cannot be vouched for -- weights keyed differently from the features,
a feature the scaler has not seen, an unusual scaler or loss -- the reader declines
(returns None) and River predicts.

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
from river.utils.math import sigmoid

#: (mean, standard deviation or 0.0, weight) per feature, in the weights' order.
Row = tuple[float, float, float]


class ScaledLogistic:
    """Reads one ``StandardScaler | LogisticRegression`` pipeline; call :meth:`stale` after
    the pipeline learns."""

    def __init__(self, pipeline: compose.Pipeline) -> None:
        self.pipeline = pipeline
        self.scaler, self.logistic = pipeline.steps.values()
        self.names: tuple[Any, ...] | None = None
        self.rows: list[Row] = []
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

    def _read(self, names: tuple[Any, ...]) -> bool:
        """Take means, deviations and weights for features keyed ``names``, in that order; False
        when River's arithmetic could not be followed exactly for them."""
        weights = self.logistic._weights
        means, variances = self.scaler.means, self.scaler.vars
        if not names or tuple(weights.keys()) != names:
            return False
        if any(n not in means or n not in variances or not variances[n] >= 0 for n in names):
            return False
        self.rows = [(means[n], variances[n] ** 0.5 if variances[n] else 0.0, w)
                     for n, w in zip(names, weights.values())]
        self.intercept = self.logistic.intercept
        self.names = names
        return True
