"""The parts of a profile that each belong to one feature: journeys, attribution touches,
experiment exposures and label observations.

Each is the container it always was (a dict or a list: ``profile.journeys[name]`` and
``profile.pending.get(model)`` read as before and cost nothing more on the hot path), with
the duties that used to be spread over the profile's merge and the store's codec:

* ``merge(other)``: fold in the state of an anonymous visitor who turned out to be this
  contact (see :func:`touchline.decisions.profile.merge_into`);
* ``to_json()`` / ``from_json(raw)``: the value the stored blob holds under the field's
  name, and back (see :mod:`touchline.state.codec`);
* ``view()``: what the profile's snapshot (export, audit) shows of it.

>>> journeys = JourneyStates({"welcome": {"step": "s2"}})
>>> journeys.merge({"welcome": {"step": "s1"}, "cart": {"step": "c1"}})  # the contact's own place stands
>>> journeys
{'welcome': {'step': 's2'}, 'cart': {'step': 'c1'}}
>>> pending = Observations({"lead": Observation(1, 9, {"x": 1.0}, 0.25, "v1")})
>>> Observations.from_json(pending.to_json()) == pending
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, TypeVar

from touchline.decisions.feature_names import FEATURE_SET_TAG, VECTOR_ORDER

S = TypeVar("S", bound="FeatureState")


class FeatureState(Protocol):
    """What every per-feature state of a profile can do (see the module docstring)."""

    def merge(self, other: Any) -> None:
        """Fold ``other`` (the same feature's state of an anonymous visitor) into this one."""

    def to_json(self) -> Any:
        """The JSON-ready value the stored blob holds for this state."""

    @classmethod
    def from_json(cls: type[S], raw: Any) -> S:
        """This state from what :meth:`to_json` gave (as read back from the blob)."""

    def view(self) -> dict[str, Any]:
        """The snapshot's entries for this state (export, audit), by snapshot key."""


class JourneyStates(dict[str, dict[str, Any]]):
    """Journey name -> the contact's place in it: the version it entered and a step of that
    version (plain data: see decisions/journey_runtime.py and decisions/journey_versions.py)."""

    __slots__ = ()

    def merge(self, other: Mapping[str, dict[str, Any]]) -> None:
        """An anonymous visitor's journeys carry over where the contact has no place of its own."""
        for name, state in other.items():
            self.setdefault(name, state)

    def to_json(self) -> dict[str, dict[str, Any]]:
        return self

    @classmethod
    def from_json(cls, raw: Mapping[str, dict[str, Any]]) -> JourneyStates:
        return cls(raw)

    def view(self) -> dict[str, Any]:
        return {"journeys": {name: dict(state) for name, state in self.items()}}


class Touches(list[list[Any]]):
    """Sent decisions that can still earn attribution credit, oldest first, each
    ``[ts_ms, decision_id, channel, action, bandit tag [[split, segment, arm], ...] or None, rewarded]``
    (see decisions/experiment_runtime.py).

    >>> t = Touches([[5, "d1", "email", "welcome", None, False]])
    >>> t.merge([[3, "d0", "sms", "x", None, False], [5, "d1", "email", "welcome", None, False]])
    >>> [touch[1] for touch in t]
    ['d0', 'd1']
    """

    __slots__ = ()

    def merge(self, other: Sequence[list[Any]]) -> None:
        """Another profile's touches join in time order, each decision once. (An anonymous
        visitor is never sent to, so today the other side is always empty.)"""
        if not other:
            return
        known = {touch[1] for touch in self}
        self.extend(touch for touch in other if touch[1] not in known)
        self.sort(key=lambda touch: touch[0])

    def to_json(self) -> list[list[Any]]:
        return self

    @classmethod
    def from_json(cls, raw: Sequence[list[Any]]) -> Touches:
        return cls(raw)

    def view(self) -> dict[str, Any]:
        return {"touches": [{"ts": t[0], "decision_id": t[1], "channel": t[2], "action": t[3]} for t in self]}


class Exposures(dict[str, dict[str, Any]]):
    """Experiment -> this contact's exposure (arm, when, segment, conversion); once closed it is
    kept as ``{"arm", "closed"}``, so a contact is exposed once per experiment (intent to treat)."""

    __slots__ = ()

    def merge(self, other: Mapping[str, dict[str, Any]]) -> None:
        """The contact's own exposure to an experiment stands; others come along. (Only known
        contacts are exposed, so today the other side is always empty.)"""
        for experiment, exposure in other.items():
            self.setdefault(experiment, exposure)

    def to_json(self) -> dict[str, dict[str, Any]]:
        return self

    @classmethod
    def from_json(cls, raw: Mapping[str, dict[str, Any]]) -> Exposures:
        return cls(raw)

    def view(self) -> dict[str, Any]:
        return {"experiments": {name: dict(exposure) for name, exposure in self.items()}}


@dataclass(slots=True)
class Observation:
    """Features and prediction captured at scoring time, waiting for their label."""

    scored_at_ms: int
    deadline_ms: int
    features: dict[str, float]
    probability: float
    model_version: str
    #: Challengers' probabilities at the same moment, by version (champion/challenger).
    shadow: dict[str, float] = field(default_factory=dict)
    #: When the contact came back, for a churn label held until its deadline (observations at
    #: random times: see decisions/labels.py); None otherwise.
    returned_ms: int | None = None


class Observations(dict[str, Observation]):
    """Model -> the observation waiting for its label (see decisions/labels.py).

    Stored as a list per model, the shadow scores only when there are any (a leaner blob).
    """

    __slots__ = ()

    def merge(self, other: Mapping[str, Observation]) -> None:
        """The contact's own pending observation of a model stands; the visitor's others come along."""
        for model, observation in other.items():
            self.setdefault(model, observation)

    def to_json(self) -> dict[str, list[Any]]:
        """The observations whose features are not the built-in vector, by name (those are
        :meth:`packed_json`'s)."""
        return {model: _entry(o, o.features) for model, o in self.items() if not _is_builtin(o.features)}

    def packed_json(self) -> dict[str, list[Any]]:
        """The observations of the built-in feature vector, its values after its tag: the
        names are most of an observation's size. Stored beside :meth:`to_json`'s, under a name
        earlier versions do not read (in a rolling upgrade they skip these, never misread them)."""
        return {model: _entry(o, [FEATURE_SET_TAG, *o.features.values()])
                for model, o in self.items() if _is_builtin(o.features)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Sequence[Any]], packed: Mapping[str, Sequence[Any]] | None = None
                  ) -> Observations:
        """The stored observations; a packed one written for another feature vector (by a
        version with other built-in features) cannot be learned from and is left out."""
        out = cls()
        for model, o in raw.items():
            out[model] = _observation(o, dict(o[2]))
        for model, o in (packed or {}).items():
            values = o[2]
            if len(values) == len(VECTOR_ORDER) + 1 and values[0] == FEATURE_SET_TAG:
                out[model] = _observation(o, dict(zip(VECTOR_ORDER, values[1:])))
        return out

    def view(self) -> dict[str, Any]:
        return {"pending_labels": sorted(self)}


def _is_builtin(features: Mapping[str, float]) -> bool:
    return len(features) == len(VECTOR_ORDER) and tuple(features) == VECTOR_ORDER


def _entry(o: Observation, features: Any) -> list[Any]:
    """One stored observation: the shadow scores only when there are any (a leaner blob)."""
    return [o.scored_at_ms, o.deadline_ms, features, o.probability, o.model_version,
            *((o.shadow,) if o.shadow or o.returned_ms is not None else ()),
            *((o.returned_ms,) if o.returned_ms is not None else ())]


def _observation(o: Sequence[Any], features: dict[str, float]) -> Observation:
    return Observation(int(o[0]), int(o[1]), features, float(o[3]), str(o[4]),
                       dict(o[5]) if len(o) > 5 else {}, int(o[6]) if len(o) > 6 else None)


class ObservedAt(dict[str, int]):
    """Model -> when the contact was last observed for it (how often it may be observed again).

    >>> seen = ObservedAt({"lead": 5, "churn": 9})
    >>> seen.merge({"lead": 7, "churn": 2})
    >>> seen
    {'lead': 7, 'churn': 9}
    """

    __slots__ = ()

    def merge(self, other: Mapping[str, int]) -> None:
        """The later observation of each model counts."""
        for model, at in other.items():
            self[model] = max(at, self.get(model, at))

    def to_json(self) -> dict[str, int]:
        return self

    @classmethod
    def from_json(cls, raw: Mapping[str, int]) -> ObservedAt:
        return cls(raw)

    def view(self) -> dict[str, Any]:
        return {}  # bookkeeping of the scorer, not part of what a snapshot shows


@dataclass(slots=True)
class Tally:
    """One custom attribute's state (see :mod:`touchline.decisions.custom_attributes`): its
    aggregate, the fingerprint of the definition it was made under, and ``entries``, each
    ``[bucket, value]`` oldest first (count, sum: a number; distinct: the values seen) or
    one ``[ts_ms, value]`` (last, trait). Bounded by the attribute's window in buckets."""

    kind: str
    version: str
    entries: list[list[Any]] = field(default_factory=list)

    def merge(self, other: Tally) -> None:
        """Fold in the same attribute's state of another profile, made under the same definition."""
        if other.version == self.version and other.entries:
            self.entries = _merged(self.kind, self.entries, other.entries)


def _merged(kind: str, mine: list[list[Any]], theirs: list[list[Any]]) -> list[list[Any]]:
    """Two profiles' entries of one tally: the newer last value, or the buckets combined.

    >>> _merged("last", [[5, "a"]], [[7, "b"]]), _merged("count", [[1, 2]], [[0, 1], [1, 1]])
    ([[7, 'b']], [[0, 1], [1, 3]])
    """
    if kind in ("last", "trait"):
        return [list(theirs[0])] if not mine or theirs[0][0] > mine[0][0] else mine
    buckets = {int(b): v for b, v in mine}
    for bucket, value in theirs:
        buckets[int(bucket)] = _combine(kind, buckets.get(int(bucket)), value)
    merged = [[b, buckets[b]] for b in sorted(buckets)]
    return latest_only(merged) if kind == "distinct" else merged


#: Distinct values kept of a ``distinct`` attribute, each once, in the bucket it was last seen
#: in (its value saturates here).
MAX_DISTINCT = 100


def latest_only(entries: list[list[Any]]) -> list[list[Any]]:
    """Distinct buckets with each value only in the newest bucket that has it, at most
    :data:`MAX_DISTINCT` values in all (the newest kept), empty buckets dropped.

    >>> latest_only([[1, ["a", "b"]], [2, ["a"]]])
    [[1, ['b']], [2, ['a']]]
    """
    seen: set[Any] = set()
    kept: list[list[Any]] = []
    for bucket, values in reversed(entries):
        fresh = [v for v in values if v not in seen][:MAX_DISTINCT - len(seen)]
        seen.update(fresh)
        if fresh:
            kept.append([bucket, fresh])
    return kept[::-1]


def _combine(kind: str, mine: Any, theirs: Any) -> Any:
    """One bucket of two profiles: counts and sums add up, distinct values unite (bounded).

    >>> _combine("sum", 2.5, 1), _combine("distinct", ["a"], ["b", "a"]), _combine("count", None, 3)
    (3.5, ['a', 'b'], 3)
    """
    if mine is None:
        return theirs
    if kind == "distinct":
        return [*mine, *(v for v in theirs if v not in mine)]
    return mine + theirs


class Tallies(dict[str, Tally]):
    """Custom attribute name -> its :class:`Tally`. Stored as ``{name: [kind, version, entries]}``.

    >>> t = Tallies({"views_7d": Tally("count", "v1", [[20000, 2]])})
    >>> t.merge(Tallies({"views_7d": Tally("count", "v1", [[19999, 1], [20000, 1]])}))
    >>> t["views_7d"].entries
    [[19999, 1], [20000, 3]]
    >>> Tallies.from_json(t.to_json()) == t
    True
    """

    __slots__ = ()

    def merge(self, other: Mapping[str, Tally]) -> None:
        """An anonymous visitor's tallies add to the contact's (its last values and traits count
        where they are newer); a tally made under another definition of the attribute is dropped."""
        for name, tally in other.items():
            mine = self.get(name)
            if mine is None:
                self[name] = Tally(tally.kind, tally.version, [list(e) for e in tally.entries])
            else:
                mine.merge(tally)

    def to_json(self) -> dict[str, list[Any]]:
        return {name: [t.kind, t.version, t.entries] for name, t in self.items()}

    @classmethod
    def from_json(cls, raw: Mapping[str, Sequence[Any]]) -> Tallies:
        return cls({name: Tally(str(t[0]), str(t[1]), [list(e) for e in t[2]]) for name, t in raw.items()})

    def view(self) -> dict[str, Any]:
        """What is kept, raw (export shows it all: a trait such as a tier is personal data)."""
        if not self:
            return {}
        return {"custom_attributes": {name: {"aggregate": t.kind, "entries": [list(e) for e in t.entries]}
                                      for name, t in self.items()}}
