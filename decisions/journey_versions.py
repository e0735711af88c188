"""Journey versions: a contact finishes the version of a journey it entered.

A contact's place in a journey is a step index. Were it read against whatever the file
says today, an edit that inserts, removes or reorders steps would move every contact
inside to another step, skipping or repeating messages without a word. So each
definition has a **version**: 12 hex digits of BLAKE2b over its canonical form (what
runs: every field but the description, as the file gives it). A contact's state records
the version it entered (``state["version"]``); the runner keeps every version a contact
may still be in and moves each contact along the steps of its own. Contacts entering
after an edit follow the file.

The definitions live in the state store beside the profiles
(:meth:`~touchline.state.base.StateStore.keep_journey_versions`), so an engine restarted
with an edited file, or another process, still has the version its contacts are in.

>>> from touchline.decisions.journeys import parse_journey
>>> text = "journey: w\\nentry: {event: signup}\\nsteps:\\n  - send: {channel: email, template: a}\\n"
>>> v1 = parse_journey(text, "w.yaml")
>>> version_of(v1), version_of(parse_journey("description: new words\\n" + text))  # the description is not what runs
('f7d054005b53', 'f7d054005b53')
>>> from_definition("w", version_of(v1), definition(v1)).steps == v1.steps
True
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import orjson
from pydantic import ValidationError

from touchline.decisions.journeys import Journey, JourneyError

log = logging.getLogger(__name__)

#: The key of a journey state that names the version the contact entered.
VERSION = "version"
#: (journey name, version): how a version is addressed in the store and in reports.
VersionKey = tuple[str, str]


def _canonical(journey: Journey) -> dict[str, Any]:
    return journey.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude={"description"})


def definition(journey: Journey) -> str:
    """The canonical JSON of what runs of ``journey`` (sorted keys, defaults left out: a field
    added to the format later does not make every journey a new version)."""
    return orjson.dumps(_canonical(journey), option=orjson.OPT_SORT_KEYS).decode()


def version_of(journey: Journey) -> str:
    """The content version of ``journey``: the same definition gives the same version in every
    process and every run (never Python's salted ``hash``)."""
    return hashlib.blake2b(definition(journey).encode(), digest_size=6).hexdigest()


def from_definition(name: str, version: str, text: str) -> Journey:
    """A stored definition back as a :class:`Journey`; one that no longer reads (written by
    another release of the format) is a :class:`JourneyError` naming the version."""
    try:
        return Journey.model_validate(orjson.loads(text), context={"stored": True})
    except (orjson.JSONDecodeError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        raise JourneyError(f"journey {name!r} version {version}: stored definition does not read: {first}") from None


@dataclass
class StoredVersions:
    """What a state store keeps of journey versions."""

    #: (journey, version) -> definition (canonical JSON)
    definitions: dict[VersionKey, str] = field(default_factory=dict)
    #: journey -> the version contacts are in whose state names none (they entered before
    #: versions were kept): the first version kept of that journey
    baselines: dict[str, str] = field(default_factory=dict)

    def keep(self, definitions: dict[VersionKey, str]) -> None:
        """Add definitions; the first version of a journey becomes its baseline.

        >>> s = StoredVersions()
        >>> s.keep({("w", "v1"): "{}"}); s.keep({("w", "v2"): "{}"})
        >>> sorted(s.definitions), s.baselines
        ([('w', 'v1'), ('w', 'v2')], {'w': 'v1'})
        """
        for (name, version), text in definitions.items():
            self.definitions.setdefault((name, version), text)
            self.baselines.setdefault(name, version)

    def forget(self, keys: Iterable[VersionKey]) -> None:
        """Drop these definitions (the baselines stay: they only name a version)."""
        for key in keys:
            self.definitions.pop(key, None)

    def select(self, keys: Iterable[VersionKey] | None) -> StoredVersions:
        """These versions (None: all) and every baseline."""
        if keys is None:
            return StoredVersions(dict(self.definitions), dict(self.baselines))
        found = {k: self.definitions[k] for k in keys if k in self.definitions}
        return StoredVersions(found, dict(self.baselines))


class JourneyVersions:
    """The versions of the configured journeys a contact may be in: the files' own (current)
    and older ones kept in the store, each addressed by (name, version).

    >>> from touchline.decisions.journeys import parse_journey
    >>> j = parse_journey("journey: w\\nentry: {event: signup}\\nsteps:\\n  - wait: 1d\\n")
    >>> versions = JourneyVersions([j])
    >>> state = {"active": True, "step": 0}  # written before versions were kept
    >>> versions.own("w", state) is j, state["version"] == versions.current["w"]
    (True, True)
    >>> versions.own("w", {"version": "0123456789ab"}) is None  # no such version anywhere
    True
    """

    def __init__(self, journeys: Iterable[Journey]) -> None:
        journeys = list(journeys)
        #: journey name -> the version its file gives (contacts entering now get it)
        self.current = {j.journey: version_of(j) for j in journeys}
        self._known: dict[VersionKey, Journey] = {(j.journey, self.current[j.journey]): j for j in journeys}
        self._definitions = {(j.journey, self.current[j.journey]): definition(j) for j in journeys}
        self.baselines: dict[str, str] = {}
        #: The stored definition of a version not loaded yet (one another process kept since
        #: this one started), or None; set by the engine to a store lookup.
        self.find: Callable[[str, str], str | None] | None = None
        self._missing: set[VersionKey] = set()

    def definitions(self) -> dict[VersionKey, str]:
        """The current versions' definitions, to keep in the store."""
        return dict(self._definitions)

    def adopt(self, stored: StoredVersions) -> None:
        """Take the stored versions of the configured journeys (the others' contacts leave
        them: their journey was removed) and their baselines."""
        for (name, version), text in stored.definitions.items():
            if name in self.current and (name, version) not in self._known:
                self._load(name, version, text)
        self.baselines.update({n: v for n, v in stored.baselines.items() if n in self.current})

    def own(self, name: str, state: dict[str, Any]) -> Journey | None:
        """The version of journey ``name`` the contact with ``state`` is in (None when no
        definition of it is known anywhere). A state that names no version is in the
        journey's baseline (else the current version) and is marked with it from now on."""
        version = state.get(VERSION)
        if version is None:
            version = self.baselines.get(name) or self.current.get(name)
            if version is None:
                return None
            state[VERSION] = version
        found = self._known.get((name, version))
        if found is None and (name, version) not in self._missing:
            found = self._fetch(name, version)
        return found

    def known(self, name: str) -> list[str]:
        """The versions of ``name`` loaded, current first."""
        current = self.current.get(name)
        return [v for n, v in self._known if n == name and v == current] + \
            sorted(v for n, v in self._known if n == name and v != current)

    def _fetch(self, name: str, version: str) -> Journey | None:
        text = self.find(name, version) if self.find is not None else None
        if text is None:
            self._missing.add((name, version))
            log.warning("journey %r version %s: no definition of it is kept; its contacts leave the journey "
                        "(exit reason unknown_version)", name, version)
            return None
        return self._load(name, version, text)

    def _load(self, name: str, version: str, text: str) -> Journey | None:
        try:
            journey = from_definition(name, version, text)
        except JourneyError as exc:
            self._missing.add((name, version))
            log.warning("%s; its contacts leave the journey (exit reason unknown_version)", exc)
            return None
        self._known[(name, version)] = journey
        return journey
