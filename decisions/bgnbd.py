"""The BG/NBD customer-base model (Fader, Hardie & Lee 2005): the mathematics, no I/O.

A customer summary is ``(x, t_x, T)``: ``x`` repeat purchases, ``t_x`` the time of the
last one measured from the first purchase (0 when ``x`` is 0), ``T`` the time since the
first purchase. While alive, a customer buys at a Poisson rate drawn from a
Gamma(``r``, ``alpha``) across the population; after each purchase they drop out with a
probability drawn from a Beta(``a``, ``b``). The four population parameters are fitted by
maximum likelihood on many summaries; each customer's probability of being alive, of not
buying within a horizon, and expected purchases then follow in closed form.

BG/NBD lets a customer drop out only after a *repeat* purchase, so one who bought once is
alive for sure however long the silence since. With ``at_first=True`` the functions take the
MBG/NBD variant (Batislam, Denizel & Filiztekin 2007) instead: a customer may also drop out
right after the first purchase, so a one-time buyer's silence counts as well. Its formulas are
BG/NBD's with ``x + 1`` dropout opportunities in place of ``x``.

The time unit is whatever the summaries use (``alpha`` is in that unit; ``r``, ``a`` and
``b`` are unit-free). The published CDNOW estimates, in weeks:

>>> cdnow = Params(r=0.243, alpha=4.414, a=0.793, b=2.426)
>>> round(p_alive(cdnow, 2, 30.43, 38.86), 4)  # FHL's example customer
0.7266
>>> round(expected_purchases(cdnow, 2, 30.43, 38.86, 39.0), 3)  # FHL 2005: 1.226
1.226
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import optimize, special

Array = npt.NDArray[np.float64]
#: Search box for the log-parameters: e^-9 .. e^9 covers every plausible population
#: (and keeps a data set without repeat purchases from sending the search to infinity).
LOG_BOUND = 9.0


@dataclass(frozen=True)
class Params:
    """The population: purchase rates ~ Gamma(r, alpha), dropout ~ Beta(a, b); all > 0."""

    r: float
    alpha: float
    a: float
    b: float

    def __post_init__(self) -> None:
        for name in ("r", "alpha", "a", "b"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"BG/NBD parameter {name} must be a finite number > 0, got {value!r}")

    def in_unit(self, factor: float) -> "Params":
        """The same population with time measured in units ``factor`` times smaller
        (weeks -> days: ``factor=7``): only ``alpha`` changes.

        >>> Params(0.243, 4.414, 0.793, 2.426).in_unit(7).alpha
        30.898
        """
        return Params(self.r, round(self.alpha * factor, 12), self.a, self.b)


def log_likelihood(params: Params, x: Array, t_x: Array, T: Array, at_first: bool = False) -> Array:
    """Each customer's log-likelihood (FHL 2005, equation 6; with ``at_first``, MBG/NBD's), in
    log space throughout.

    >>> p = Params(1.0, 1.0, 1.0, 1.0)
    >>> [round(float(v), 4) for v in log_likelihood(p, np.array([0.0, 1.0]), np.array([0.0, 1.0]), np.array([0.0, 2.0]))]
    [0.0, -1.7117]
    >>> [round(float(v), 4) for v in log_likelihood(p, np.array([0.0]), np.array([0.0]), np.array([2.0]), at_first=True)]
    [-0.4055]
    """
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    n = _opportunities(x, at_first)
    rate = special.gammaln(r + x) - special.gammaln(r) + r * math.log(alpha)
    dropout = special.gammaln(a + b) + special.gammaln(b + n) - special.gammaln(b) - special.gammaln(a + b + n)
    still_alive = -(r + x) * np.log(alpha + T)
    gone = np.where(n > 0, math.log(a) - np.log(b + np.maximum(n, 1.0) - 1.0) - (r + x) * np.log(alpha + t_x),
                    -np.inf)
    out: Array = rate + dropout + np.logaddexp(still_alive, gone)
    return out


def _opportunities(x: Array, at_first: bool) -> Array:
    """The purchases after which a customer may have dropped out: the repeat ones (BG/NBD), or
    every one (MBG/NBD)."""
    out: Array = x + 1.0 if at_first else x
    return out


def mean_gradient(params: Params, x: Array, t_x: Array, T: Array, at_first: bool = False) -> Array:
    """The gradient of the mean log-likelihood with respect to the log-parameters
    (log r, log alpha, log a, log b): what the fit climbs, exact instead of by differences.

    >>> p, x, t_x, T = Params(0.5, 8.0, 0.7, 2.0), np.array([0.0, 3.0]), np.array([0.0, 20.0]), np.array([30.0, 35.0])
    >>> step = np.exp(np.array([0.0, 0.0, 1e-6, 0.0]))
    >>> moved = Params(p.r * step[0], p.alpha * step[1], p.a * step[2], p.b * step[3])
    >>> by_difference = (np.mean(log_likelihood(moved, x, t_x, T)) - np.mean(log_likelihood(p, x, t_x, T))) / 1e-6
    >>> bool(abs(mean_gradient(p, x, t_x, T)[2] - by_difference) < 1e-5)
    True
    """
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    n = _opportunities(x, at_first)
    gone_weight = _gone_weight(params, x, t_x, T, at_first)  # P(dropped out at the last purchase | history)
    alive_weight = 1.0 - gone_weight
    psi = special.digamma
    d_r = psi(r + x) - psi(r) + math.log(alpha) - alive_weight * np.log(alpha + T) - gone_weight * np.log(alpha + t_x)
    d_alpha = r / alpha - (r + x) * (alive_weight / (alpha + T) + gone_weight / (alpha + t_x))
    d_a = psi(a + b) - psi(a + b + n) + gone_weight / a
    d_b = psi(a + b) + psi(b + n) - psi(b) - psi(a + b + n) - gone_weight / (b + np.maximum(n, 1.0) - 1.0)
    out: Array = np.array([np.mean(d) for d in (d_r, d_alpha, d_a, d_b)]) * np.array([r, alpha, a, b])
    return out


def _gone_weight(params: Params, x: Array, t_x: Array, T: Array, at_first: bool = False) -> Array:
    """Each customer's posterior probability of having dropped out at the last purchase."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    n = _opportunities(x, at_first)
    log_odds = math.log(a) - np.log(b + np.maximum(n, 1.0) - 1.0) + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
    out: Array = np.where(n > 0, special.expit(log_odds), 0.0)
    return out


@dataclass(frozen=True)
class Fit:
    """A maximum-likelihood fit: the parameters, the total log-likelihood, the customers."""

    params: Params
    log_likelihood: float
    customers: int


@dataclass(frozen=True)
class Prior:
    """A weak log-normal prior on each parameter: the fit becomes a maximum a posteriori one.

    Young or small data sets hold little sign of dropout: their likelihood is flat along a
    ridge (no dropout, or dropout alike for everyone) that runs to the edge of the search box.
    A prior of ``sd`` e-folds around ``centre`` weighs like a few customers: negligible on
    thousands of summaries that say something, decisive only where they say nothing."""

    centre: Params
    sd: float = 2.0

    def log_density(self, log_params: Array) -> float:
        """The prior's log-density at ``log_params`` (up to a constant).

        >>> Prior(Params(1.0, 1.0, 1.0, 1.0), sd=1.0).log_density(np.array([1.0, 0.0, 0.0, -1.0]))
        -1.0
        """
        return -float(np.sum((log_params - self._centre()) ** 2)) / (2.0 * self.sd**2)

    def gradient(self, log_params: Array) -> Array:
        out: Array = -(log_params - self._centre()) / self.sd**2
        return out

    def _centre(self) -> Array:
        return np.log([self.centre.r, self.centre.alpha, self.centre.a, self.centre.b])


#: Where a fit without a previous one starts its search.
NEUTRAL = Params(1.0, 1.0, 1.0, 1.0)


def fit(x: Array, t_x: Array, T: Array, start: Params | None = None, prior: Prior | None = None,
        at_first: bool = False) -> Fit:
    """Maximum-likelihood (with ``prior``: maximum a posteriori) population parameters for the
    summaries: L-BFGS-B on the log-parameters from ``start`` (a refit begins where the last
    one ended). A search that ends near the edge of the search box, or has no start, is
    (also) made from a neutral point (the prior's centre), and the better kept: a start on
    the edge cannot hold the fit there.

    >>> rng = np.random.default_rng(1)
    >>> x, t_x, T = simulate(Params(0.5, 10.0, 0.8, 2.5), np.full(2000, 40.0), rng)
    >>> result = fit(x, t_x, T)
    >>> result.customers, 0.3 < result.params.r < 0.8
    (2000, True)
    """
    x, t_x, T = (np.asarray(v, dtype=np.float64) for v in (x, t_x, T))
    objective = _objective(x, t_x, T, prior, at_first)
    found = [_search(objective, start)] if start is not None else []
    if not found or _near_edge(found[0].x):
        found.append(_search(objective, NEUTRAL if prior is None else prior.centre))
    best = min(found, key=lambda result: float(result.fun))
    params = Params(*(float(v) for v in np.exp(best.x)))
    return Fit(params, float(np.sum(log_likelihood(params, x, t_x, T, at_first))), len(x))


def _objective(x: Array, t_x: Array, T: Array, prior: Prior | None, at_first: bool = False) -> Any:
    """Minus the mean log-likelihood (plus the prior's share per customer) and its gradient,
    at log-parameters."""
    share = 1.0 / max(1, len(x))

    def negative_mean(log_params: Array) -> tuple[float, Array]:
        params = Params(*(float(v) for v in np.exp(log_params)))
        total = float(np.mean(log_likelihood(params, x, t_x, T, at_first)))
        gradient = mean_gradient(params, x, t_x, T, at_first)
        if prior is not None:
            total += prior.log_density(log_params) * share
            gradient = gradient + prior.gradient(log_params) * share
        if not (math.isfinite(total) and np.all(np.isfinite(gradient))):
            return 1e12, np.zeros(4)
        return -total, -gradient

    return negative_mean


def _near_edge(log_params: Array) -> bool:
    """Within one e-fold of the search box's edge.

    >>> _near_edge(np.array([0.0, 1.0, -8.5, 0.0])), _near_edge(np.zeros(4))
    (True, False)
    """
    return bool(np.any(np.abs(log_params) > LOG_BOUND - 1.0))


def _search(objective: Any, start: Params) -> Any:
    """One bounded quasi-Newton search from ``start``."""
    x0 = np.clip(np.log([start.r, start.alpha, start.a, start.b]), -LOG_BOUND, LOG_BOUND)
    return optimize.minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=[(-LOG_BOUND, LOG_BOUND)] * 4,
                             options={"maxiter": 500, "ftol": 1e-12, "gtol": 1e-7})


def _odds_gone(params: Params, x: float, t_x: float, T: float, at_first: bool = False) -> float:
    """log of P(dropped out at the last purchase) / P(alive), given the history."""
    n = x + 1.0 if at_first else x
    if n <= 0:
        return -math.inf
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    return math.log(a) - math.log(b + n - 1.0) + (r + x) * (math.log(alpha + T) - math.log(alpha + t_x))


def p_alive(params: Params, x: float, t_x: float, T: float, at_first: bool = False) -> float:
    """P(the customer is still alive at ``T``): 1 for no repeat purchase under BG/NBD (a
    customer drops out only right after a repeat purchase), less under MBG/NBD (``at_first``).

    >>> cdnow = Params(0.243, 4.414, 0.793, 2.426)
    >>> p_alive(cdnow, 0, 0.0, 38.86), round(p_alive(cdnow, 7, 29.43, 35.0), 4)
    (1.0, 0.779)
    >>> round(p_alive(cdnow, 0, 0.0, 38.86, at_first=True), 4), round(p_alive(cdnow, 0, 0.0, 0.0, at_first=True), 4)
    (0.6373, 0.7537)
    """
    log_odds = _odds_gone(params, x, t_x, T, at_first)
    if log_odds > 0:
        return math.exp(-log_odds) / (1.0 + math.exp(-log_odds))
    return 1.0 / (1.0 + math.exp(log_odds))


def p_no_purchase(params: Params, x: float, t_x: float, T: float, horizon: float, at_first: bool = False) -> float:
    """P(no purchase in the next ``horizon``): dropped out, or alive and silent (one alive
    at ``T`` who buys nothing stays alive, so the alive part is the NBD's zero term).

    >>> cdnow = Params(0.243, 4.414, 0.793, 2.426)
    >>> round(p_no_purchase(cdnow, 2, 30.43, 38.86, 39.0), 4), round(p_no_purchase(cdnow, 0, 0.0, 0.0, 39.0), 4)
    (0.4454, 0.5738)
    """
    alive = p_alive(params, x, t_x, T, at_first)
    silent = math.exp((params.r + x) * (math.log(params.alpha + T) - math.log(params.alpha + T + horizon)))
    return (1.0 - alive) + alive * silent


def expected_purchases(params: Params, x: float, t_x: float, T: float, horizon: float) -> float:
    """Expected purchases in the next ``horizon`` (FHL 2005, equation 10).

    >>> round(expected_purchases(Params(0.243, 4.414, 0.793, 2.426), 0, 0.0, 38.86, 39.0), 4)
    0.1951
    """
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    z = horizon / (alpha + T + horizon)
    hyp = float(special.hyp2f1(r + x, b + x, a + b + x - 1.0, z))
    ratio = math.exp((r + x) * (math.log(alpha + T) - math.log(alpha + T + horizon)))
    alive = p_alive(params, x, t_x, T)
    return (a + b + x - 1.0) / (a - 1.0) * (1.0 - ratio * hyp) * alive


def simulate(params: Params, T: Array, rng: np.random.Generator) -> tuple[Array, Array, Array]:
    """Summaries ``(x, t_x, T)`` of customers drawn from the model, each observed for its
    ``T``: for tests and benchmarks (a known population to recover).

    >>> x, t_x, T = simulate(Params(1.0, 1.0, 0.5, 2.0), np.full(3, 10.0), np.random.default_rng(0))
    >>> bool(np.all((0 <= t_x) & (t_x <= T)))
    True
    """
    n = len(T)
    rates = rng.gamma(params.r, 1.0 / params.alpha, n)
    dropouts = rng.beta(params.a, params.b, n)
    x, t_x = np.zeros(n), np.zeros(n)
    for i in range(n):
        x[i], t_x[i] = _one_customer(float(rates[i]), float(dropouts[i]), float(T[i]), rng)
    return x, t_x, np.asarray(T, dtype=np.float64)


def _one_customer(rate: float, dropout: float, T: float, rng: np.random.Generator) -> tuple[float, float]:
    """Repeat purchases and the time of the last one for one customer (alive at time 0)."""
    count, last, now = 0, 0.0, 0.0
    while True:
        now += float(rng.exponential(1.0 / rate)) if rate > 0 else math.inf
        if now > T:
            return float(count), last
        count, last = count + 1, now
        if rng.random() < dropout:
            return float(count), last
