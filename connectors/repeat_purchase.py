"""A repeat-purchase population: non-contractual retail, purchases only (like CDNOW).

The Pareto/NBD story (Schmittlein, Morrison & Colombo 1987), with staggered acquisition:

- each customer makes a first purchase at a uniform time within the acquisition period;
- while alive, they buy at a Poisson rate drawn from a Gamma(``rate_shape``, mean
  ``mean_gap_days``⁻¹) across customers, so purchase rhythms differ widely;
- they drop out silently after an exponential lifetime whose rate is drawn from a
  Gamma(``dropout_shape``, mean ``mean_lifetime_days``⁻¹): nothing marks the moment, the
  purchases just stop, which is what a churn score has to infer;
- each purchase's value is Gamma around the customer's own mean spend (itself log-normal
  across customers), independent of the purchase rhythm (the gamma-gamma assumption).

Events follow the engine's contract (``type`` purchase, ``ts`` epoch ms, ``contact_id``,
``properties.value``/``currency``/``order_id``), in time order, the same bytes per seed. The
hidden truth (rates, lifetimes) is kept apart, for tests and benchmarks.

>>> spec = RepeatPurchaseSpec(seed=1, customers=20, days=365)
>>> lines = list(RepeatPurchase(spec).lines())
>>> lines == list(RepeatPurchase(spec).lines())
True
>>> b'"type":"purchase"' in lines[0], len(RepeatPurchase(spec).truth())
(True, 20)
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from dataclasses import dataclass
from typing import Iterator

import orjson

DAY_MS = 86_400_000
#: One purchase line: (event time ms, customer index, purchase number, the JSON line).
_Line = tuple[int, int, int, bytes]


@dataclass(frozen=True)
class RepeatPurchaseSpec:
    """What to simulate; times in days from ``start_ms``."""

    seed: int = 7
    customers: int = 5000
    days: float = 540.0
    #: first purchases spread uniformly over this initial period
    acquisition_days: float = 90.0
    #: shape of the Gamma of purchase rates (smaller: more heterogeneous; CDNOW's r is 0.24)
    rate_shape: float = 0.9
    #: the population's mean time between purchases of a customer still alive
    mean_gap_days: float = 35.0
    #: shape of the Gamma of dropout rates (Pareto/NBD's s; CDNOW's is 0.61)
    dropout_shape: float = 0.8
    #: the population's mean lifetime (1 / mean dropout rate)
    mean_lifetime_days: float = 240.0
    #: median of the customers' mean spend per purchase, and its log-normal spread
    spend_median: float = 35.0
    spend_sigma: float = 0.6
    start_ms: int = 1735689600000  # 2025-01-01T00:00:00Z

    def __post_init__(self) -> None:
        for name in ("days", "acquisition_days", "rate_shape", "mean_gap_days", "dropout_shape",
                     "mean_lifetime_days", "spend_median"):
            if not getattr(self, name) > 0:
                raise ValueError(f"repeat-purchase {name} must be > 0, got {getattr(self, name)!r}")
        if self.customers < 0 or self.spend_sigma < 0:
            raise ValueError("repeat-purchase customers and spend_sigma must be >= 0")

    @property
    def end_ms(self) -> int:
        return self.start_ms + int(self.days * DAY_MS)


@dataclass(frozen=True)
class Customer:
    """Hidden truth about one customer (never in the events)."""

    contact_id: str
    #: purchases per day while alive
    rate: float
    #: dropouts per day (1 / mean lifetime)
    dropout_rate: float
    first_ms: int
    #: when they silently stop buying (may be after the end of the data)
    death_ms: int
    mean_spend: float


def _stable_seed(*parts: object) -> int:
    """A seed that agrees across processes (Python's hash() is salted)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


def _customer(spec: RepeatPurchaseSpec, index: int, rng: random.Random) -> Customer:
    """Draw one customer's hidden traits (in a fixed order: the same seed, the same customer)."""
    rate = rng.gammavariate(spec.rate_shape, 1.0 / (spec.rate_shape * spec.mean_gap_days))
    dropout = rng.gammavariate(spec.dropout_shape, 1.0 / (spec.dropout_shape * spec.mean_lifetime_days))
    first = spec.start_ms + int(rng.random() * spec.acquisition_days * DAY_MS)
    lifetime_days = rng.expovariate(dropout) if dropout > 0 else math.inf
    death = first + int(min(lifetime_days, 100 * spec.days) * DAY_MS)
    spend = spec.spend_median * math.exp(rng.gauss(0.0, spec.spend_sigma))
    return Customer(f"c-{index}", rate, dropout, first, death, round(spend, 2))


def _purchase_times(c: Customer, end_ms: int, rng: random.Random) -> Iterator[int]:
    """The first purchase, then Poisson purchases until the customer dies or the data ends."""
    ts = c.first_ms
    stop = min(c.death_ms, end_ms)
    while ts < stop:
        yield ts
        if c.rate <= 0:
            return
        ts += max(1, int(rng.expovariate(c.rate) * DAY_MS))


class RepeatPurchase:
    """The population and its purchase stream."""

    def __init__(self, spec: RepeatPurchaseSpec) -> None:
        self.spec = spec

    @property
    def end_ms(self) -> int:
        return self.spec.end_ms

    def truth(self) -> list[Customer]:
        """Every customer's hidden traits, in index order."""
        return [self._draw(i)[0] for i in range(self.spec.customers)]

    def _draw(self, index: int) -> tuple[Customer, random.Random]:
        rng = random.Random(_stable_seed("repeat-purchase", self.spec.seed, index))
        return _customer(self.spec, index, rng), rng

    def _events(self, index: int) -> Iterator[_Line]:
        """One customer's purchases, in time order."""
        c, rng = self._draw(index)
        for n, ts in enumerate(_purchase_times(c, self.spec.end_ms, rng)):
            value = round(rng.gammavariate(4.0, c.mean_spend / 4.0), 2)
            doc = {"event_id": f"rp-{self.spec.seed}-{index}-{n}", "type": "purchase", "ts": ts,
                   "contact_id": c.contact_id,
                   "properties": {"value": value, "currency": "EUR", "order_id": f"o-{index}-{n}"}}
            yield ts, index, n, orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    def lines(self) -> Iterator[bytes]:
        """The JSON lines of every purchase, in nondecreasing event time."""
        for _ts, _index, _n, line in heapq.merge(*(self._events(i) for i in range(self.spec.customers))):
            yield line
