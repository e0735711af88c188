"""Read a file of events once, before it is replayed, and apply the churn set-up its data calls
for (see :mod:`touchline.decisions.purchase_setup`): ``touchline scores --input FILE``.

The scan streams the file (one line at a time; invalid lines and events outside the replay --
after TIME, before ``engine.min_event_time`` -- are skipped as the replay skips them), so a huge
file costs time, not memory. Only a file can be read ahead: a Kafka stream keeps the configured
set-up, and the run summary's notes say what would fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from touchline.decisions.purchase_setup import PurchaseScan, announcement, derive
from touchline.settings import Settings, load_settings
from touchline.time_order import TimeOrdered

#: The sections whose keys the purchase set-up reads or writes.
SECTIONS = ("labels", "state", "policy", "models")


def scan_file(path: Path, until_ms: int, min_ms: int, replay: TimeOrdered | None = None) -> PurchaseScan:
    """Count the file's valid events with ``min_ms <= ts <= until_ms``, in event-time order (a
    file sorted by customer gives the same gaps as one sorted by time); ``replay``: the file's
    lines in that order, when already read.

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     f = Path(d, "e.jsonl")
    ...     _ = f.write_text('{"event_id":"b","type":"purchase","ts":864000000,"contact_id":"c"}\\nnot json\\n'
    ...                      '{"event_id":"a","type":"purchase","ts":0,"contact_id":"c"}\\n')
    ...     s = scan_file(f, 10**13, 0)
    >>> s.purchases, dict(s.gaps)
    (2, {10: 1})
    """
    from touchline.decisions.events import Event, parse_event

    scan = PurchaseScan()
    for line in (replay or TimeOrdered.scan(path, until_ms)).lines():
        ev = parse_event(line)
        if isinstance(ev, Event) and min_ms <= ev.ts_ms <= until_ms:
            scan.add(ev.type, ev.contact_id, ev.ts_ms)
    return scan


def explicit_keys(settings: Settings) -> frozenset[str]:
    """The dotted keys of :data:`SECTIONS` the user set (file, environment or flag), whatever
    their value: a key set to its default is set all the same.

    >>> sorted(explicit_keys(load_settings(None, {"labels.churn_horizon_days": 7, "models.churn.calibration": "platt"})))
    ['labels.churn_horizon_days', 'models.churn.calibration']
    """
    keys: set[str] = set()
    for name in SECTIONS:
        if name not in settings.model_fields_set:
            continue
        section = getattr(settings, name)
        for key in section.model_fields_set:
            sub = getattr(section, key)
            if name == "models" and key in ("lead", "churn"):
                keys.update(f"models.{key}.{k}" for k in sub.model_fields_set - {"name"})
            else:
                keys.add(f"{name}.{key}")
    return frozenset(keys)


def derived_settings(settings: Settings, path: Path, until_ms: int, config: Path | None,
                     overrides: dict[str, Any], replay: TimeOrdered | None = None) -> tuple[Settings, list[str]]:
    """The settings with the set-up the file's data calls for (the same file, environment and
    flags, plus the derived keys: none of them set by the user), and the lines announcing it;
    ``replay``: the file's lines in event-time order, when already read."""
    if not path.is_file():
        return settings, []
    scan = scan_file(path, until_ms, int(settings.engine.min_event_time.timestamp() * 1000), replay)
    if scan.events == 0:
        from touchline.scores import iso

        return settings, [f"churn set-up: no valid event in {path} up to {iso(until_ms)}: nothing to derive from, "
                          "the configured churn set-up is kept"]
    derived = derive(scan, explicit_keys(settings), settings.policy.inactivity_days, settings.state.retention_days)
    lines = announcement(scan, derived, str(path))
    if not derived.applied:
        return settings, lines
    given = {k: v for k, v in overrides.items() if v is not None}
    return load_settings(config, {**given, **derived.applied}), lines
