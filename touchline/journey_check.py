"""``touchline journeys check FILES --redis URL``: what an edit means for the contacts inside.

Checking files needs nothing else. Given the engine's state store, the check also reads
every stored profile and says, for each journey, how many contacts wait at each step of
each version and what becomes of them. A contact finishes the version it entered
(:mod:`touchline.decisions.journey_versions`), so an edit moves no one: contacts in an
older version go on with its steps at its times, contacts entering after the engine
restarts with the file follow the file. Contacts of a version whose definition is kept
nowhere, or of a journey gone from the engine's files, leave it at their next step
(exit reasons ``unknown_version`` and ``removed``).

``--forget-unused`` then drops the kept definitions of versions no contact is in (the
files' own versions stay).
"""

from __future__ import annotations

import difflib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping

import orjson

from touchline.decisions.journey_versions import VERSION, StoredVersions, VersionKey, from_definition, version_of
from touchline.decisions.journeys import Journey, JourneyError
from touchline.settings import ConfigError, Settings

#: journey -> version ("" when unknown: entered before versions were kept, none kept yet) -> step index -> contacts
Census = dict[str, dict[str, Counter[int]]]


def census(profiles: Iterable[tuple[str, Mapping[str, dict[str, Any]]]], baselines: dict[str, str]
           ) -> tuple[Census, int]:
    """Contacts inside each journey by version and step, from each profile's (key, journey
    states); a state without a version counts in its journey's baseline, as the engine takes
    it. Also how many profiles were read."""
    inside: Census = defaultdict(lambda: defaultdict(Counter))
    read = 0
    for _, journeys in profiles:
        read += 1
        for name, state in journeys.items():
            if isinstance(state, dict) and state.get("active"):
                version = str(state.get(VERSION) or baselines.get(name, ""))
                step = state.get("step")
                inside[name][version][step if isinstance(step, int) else -1] += 1
    return inside, read


def step_label(journey: Journey | None, index: int) -> str:
    """A step as the report names it: its id and what it does.

    >>> from touchline.decisions.journeys import parse_journey
    >>> j = parse_journey("journey: w\\nentry: {event: signup}\\nsteps:\\n  - wait: 2d\\n  - send: {channel: sms, template: t}\\n")
    >>> step_label(j, 0), step_label(j, 1), step_label(j, 2), step_label(None, 3), step_label(j, -1)
    ('step-1 (wait 2d)', 'step-2 (send sms t)', 'after the last step', 'step #4', 'an unreadable step')
    """
    if index < 0:
        return "an unreadable step"
    if journey is None:
        return f"step #{index + 1}"
    if index >= len(journey.steps):
        return "after the last step"
    step = journey.steps[index]
    return f"{step.id} ({_what(step)})"


def _what(step: Any) -> str:
    if hasattr(step, "send"):
        return f"send {step.send.channel} {step.send.template}"
    if hasattr(step, "wait"):
        return f"wait {step.wait}"
    if hasattr(step, "wait_until"):
        return f"wait until {step.wait_until.time}"
    if hasattr(step, "wait_for"):
        return f"wait for {step.wait_for.event}, at most {step.wait_for.timeout}"
    return next(k for k in ("branch", "hand_to_sales", "suppress", "exit") if hasattr(step, k)).replace("_", " ")


def changes(old: Journey, new: Journey) -> list[str]:
    """What ``new`` changes against ``old``: steps inserted, removed or changed, in order (by
    what each step does, so steps renumbered by an insertion are not counted as changed), then
    the other keys that differ.

    >>> from touchline.decisions.journeys import parse_journey
    >>> head = "journey: w\\nentry: {event: signup}\\nsteps:\\n"
    >>> a = parse_journey(head + "  - wait: 1d\\n  - send: {channel: sms, template: t}\\n")
    >>> b = parse_journey("priority: 9\\n" + head + "  - id: hi\\n    send: {channel: sms, template: h}\\n"
    ...                   "  - wait: 1d\\n  - send: {channel: sms, template: u}\\n")
    >>> changes(a, b)
    ['inserted hi (send sms h) before step-1 (wait 1d)', 'changed step-2 (send sms t) to step-3 (send sms u)', 'priority']
    """
    def what(journey: Journey) -> list[bytes]:
        return [orjson.dumps(s.model_dump(mode="json", by_alias=True, exclude={"id"})) for s in journey.steps]

    out = []
    matcher = difflib.SequenceMatcher(a=what(old), b=what(new), autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        olds = ", ".join(step_label(old, i) for i in range(i1, i2))
        news = ", ".join(step_label(new, j) for j in range(j1, j2))
        if op == "insert":
            out.append(f"inserted {news} " + (f"before {step_label(old, i1)}" if i1 < len(old.steps) else "at the end"))
        elif op == "delete":
            out.append(f"removed {olds}")
        elif op == "replace":
            out.append(f"changed {olds} to {news}")
    before, after = _canonical_rest(old), _canonical_rest(new)
    return out + sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def _canonical_rest(journey: Journey) -> dict[str, Any]:
    return journey.model_dump(mode="json", by_alias=True, exclude={"steps", "description"})


def report(files: list[tuple[Path, Journey]], inside: Census, stored: StoredVersions) -> dict[str, Any]:
    """The check's findings, JSON-ready: per journey of the files, its versions with contacts
    (and what becomes of them), the journeys contacts are in that the files lack, and the
    kept versions no contact is in."""
    names = {j.journey for _, j in files}
    return {
        "journeys": [_journey_report(path, journey, inside.get(journey.journey, {}), stored) for path, journey in files],
        "not_in_files": [{"journey": name, "inside": sum(sum(s.values()) for s in by_version.values())}
                         for name, by_version in sorted(inside.items()) if name not in names],
        "unused": [list(key) for key in unused(files, inside, stored)],
    }


def unused(files: list[tuple[Path, Journey]], inside: Census, stored: StoredVersions) -> list[VersionKey]:
    """Kept versions of the files' journeys that no contact is in, but the files' own (another
    journey's versions stay: an engine may run it, with contacts entering it from now on)."""
    own = {(j.journey, version_of(j)) for _, j in files}
    names = {name for name, _ in own}
    return sorted(key for key in stored.definitions if key[0] in names and key not in own
                  and not sum(inside.get(key[0], {}).get(key[1], Counter()).values()))


def _journey_report(path: Path, journey: Journey, by_version: dict[str, Counter[int]],
                    stored: StoredVersions) -> dict[str, Any]:
    name, mine = journey.journey, version_of(journey)
    versions = [_version_report(journey, mine, v, steps, stored) for v, steps in
                sorted(by_version.items(), key=lambda item: (item[0] != mine, item[0]))]
    return {"journey": name, "file": str(path), "version": mine, "kept": (name, mine) in stored.definitions,
            "inside": sum(v["contacts"] for v in versions), "versions": versions}


def _version_report(journey: Journey, mine: str, version: str, steps: Counter[int],
                    stored: StoredVersions) -> dict[str, Any]:
    old = journey if version == mine else _stored(journey.journey, version, stored)
    entry: dict[str, Any] = {
        "version": version or None, "this_file": version == mine, "contacts": sum(steps.values()),
        "steps": [{"index": i, "step": step_label(old, i), "contacts": n} for i, n in sorted(steps.items())],
        "fate": _fate(version, mine, old),
    }
    if old is not None and version != mine:
        entry["changes"] = changes(old, journey) or ["nothing that runs"]
    return entry


def _stored(name: str, version: str, stored: StoredVersions) -> Journey | None:
    text = stored.definitions.get((name, version))
    if text is None:
        return None
    try:
        return from_definition(name, version, text)
    except JourneyError:
        return None


def _fate(version: str, mine: str, old: Journey | None) -> str:
    if version == mine:
        return "on this file's steps"
    if not version:
        return ("entered before versions were kept: the first engine that keeps versions takes them to be in the "
                "version of its files")
    if old is None:
        return "leave the journey at their next step (exit reason unknown_version): no definition of it is kept"
    return "finish this version as they entered it (nothing skipped or repeated); new entrants follow this file"


# ------------------------------------------------------------------ text
def format_report(found: dict[str, Any]) -> str:
    """The report as the terminal shows it."""
    lines = [f"deployment {found['deployment']}: {found['profiles']:,} profiles read"]
    for j in found["journeys"]:
        lines += _journey_lines(j)
    if found["not_in_files"]:
        listed = ", ".join(f"{o['journey']} {o['inside']:,}" for o in found["not_in_files"])
        lines.append(f"  contacts inside journeys not in these files: {listed} (a journey gone from the engine's "
                     "files: its contacts leave it at their next step, exit reason removed)")
    if found["forgotten"]:
        lines.append("  forgot the kept versions no contact is in: " + ", ".join(f"{n} {v}" for n, v in found["forgotten"]))
    elif found["unused"]:
        listed = ", ".join(f"{n} {v}" for n, v in found["unused"])
        lines.append(f"  kept versions no contact is in: {listed} (--forget-unused drops them)")
    return "\n".join(lines)


def _journey_lines(j: dict[str, Any]) -> list[str]:
    kept = "" if j["kept"] else " (new: the engine keeps it when it starts with this file)"
    lines = [f"  {j['journey']}: {_contacts(j['inside']) if j['inside'] else 'no contact'} inside; "
             f"this file is version {j['version']}{kept}"]
    for v in j["versions"]:
        label = "this file" if v["this_file"] else "not this file"
        lines.append(f"    version {v['version'] or '(none)'} ({label}): {_contacts(v['contacts'])}: {v['fate']}")
        lines.append("      at: " + ", ".join(f"{s['step']} {s['contacts']:,}" for s in v["steps"]))
        if "changes" in v:
            lines.append("      this file against it: " + "; ".join(v["changes"]))
    return lines


def _contacts(n: int) -> str:
    return f"{n:,} contact{'s' if n != 1 else ''}"


def check_deployment(settings: Settings, files: list[tuple[Path, Journey]], forget_unused: bool) -> dict[str, Any]:
    """The report against the store the settings name (which, and how many profiles it read,
    under ``deployment`` and ``profiles``); with ``forget_unused`` the unused versions'
    definitions are dropped (listed under ``forgotten``)."""
    from touchline.redact import redact_url
    from touchline.state import open_store

    url = settings.state.url
    if url.startswith("memory://"):
        raise ConfigError(f"state.url is {redact_url(url)}, which keeps nothing after a run: pass --redis URL "
                          "(the engine's state) to see the contacts inside the journeys")
    store = open_store(url, settings.state.options())
    try:
        stored = store.journey_versions()
        inside, read = census(store.journey_states(), stored.baselines)
        found = {"deployment": redact_url(url), "profiles": read, **report(files, inside, stored)}
        found["forgotten"] = found["unused"] if forget_unused else []
        if found["forgotten"]:
            store.forget_journey_versions([(n, v) for n, v in found["forgotten"]])
    finally:
        store.close()
    return found
