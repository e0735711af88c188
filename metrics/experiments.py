"""Prometheus series of experiments, attribution and bandits.

Labels are bounded: experiment and arm names come from the configuration, channels and
attribution models from fixed lists, never a contact. Fed once per micro-batch.

>>> from prometheus_client import CollectorRegistry
>>> from touchline.decisions.outcome import ExperimentTallies
>>> reg = CollectorRegistry()
>>> t = ExperimentTallies()
>>> t.exposures[("global_holdout", "holdout")] += 2
>>> t.credit[("linear", "email")] += 0.5
>>> ExperimentMetrics(reg).count(t)
>>> reg.get_sample_value("touchline_experiment_exposures_total", {"experiment": "global_holdout", "arm": "holdout"})
2.0
>>> reg.get_sample_value("touchline_attributed_conversions_total", {"model": "linear", "channel": "email"})
0.5
"""

from __future__ import annotations

from typing import Mapping, TypeVar

from prometheus_client import CollectorRegistry, Counter

from touchline.decisions.outcome import ExperimentTallies

#: A tally's key: one label value, or a tuple of them.
LabelValues = TypeVar("LabelValues", bound=str | tuple[str, ...])


class ExperimentMetrics:
    """Exposures, outcomes, conversions, attribution credit and bandit choices."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.exposures = Counter(
            "touchline_experiment_exposures", "Contacts exposed to an experiment (first chance of a message), "
            "by arm.", ["experiment", "arm"], registry=registry)
        self.outcomes = Counter(
            "touchline_experiment_outcomes", "Exposures whose conversion window closed, by arm and whether the "
            "contact converted in it (conversion rate = converted / all).", ["experiment", "arm", "converted"],
            registry=registry)
        self.conversions = Counter(
            "touchline_conversions", "Conversion events of known contacts, by whether a sent decision was in the "
            "attribution window before them.", ["attributed"], registry=registry)
        self.credit = Counter(
            "touchline_attributed_conversions", "Conversions credited to decisions, by attribution model and "
            "channel (fractional under linear and time decay).", ["model", "channel"], registry=registry)
        self.credit_value = Counter(
            "touchline_attributed_value", "Conversion value credited to decisions, by attribution model and "
            "channel (the events' properties.value).", ["model", "channel"], registry=registry)
        self.choices = Counter(
            "touchline_bandit_choices", "Variants chosen by a bandit split, by whether the choice explored.",
            ["experiment", "arm", "explored"], registry=registry)

    def count(self, t: ExperimentTallies) -> None:
        """Add one batch's tallies, and clear none of them (the batch owns them)."""
        _add(self.exposures, t.exposures)
        _add(self.outcomes, t.outcomes)
        _add(self.conversions, t.conversions)
        _add(self.credit, t.credit)
        _add(self.credit_value, t.credit_value)
        _add(self.choices, t.choices)


def _add(counter: Counter, tallies: Mapping[LabelValues, float]) -> None:
    for labels, n in tallies.items():
        if n:
            counter.labels(*((labels,) if isinstance(labels, str) else labels)).inc(n)
