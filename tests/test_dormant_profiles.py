"""Issue 20 (retention that fits): the in-process store keeps a dormant profile (nothing left in
its event windows) in its stored form, a tenth of the live object, and a replay decides and
scores exactly as it does with every profile kept live."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from touchline.connectors.repeat_purchase import RepeatPurchase, RepeatPurchaseSpec
from touchline.decisions.profile import DAY_MS, Profile, Send, advance, apply_event, snapshot
from touchline import runner
from touchline.scores import scores_from_file
from touchline.settings import load_settings
from touchline.state import memory
from touchline.state.memory import Dormant, MemoryStore

T0 = 1767614400000


def _customer() -> Profile:
    p = Profile("c1", known=True)
    apply_event(p, "e1", "purchase", T0, {"value": 12.5}, {})
    apply_event(p, "e2", "page_view", T0 + 1000, {}, {})
    p.sends.append(Send(T0 + 2000, "email", "winback"))
    p.timers["expire"] = T0 + 730 * DAY_MS
    return p


def test_a_profile_is_kept_live_while_its_windows_hold_events_and_compact_once_they_are_empty() -> None:
    store = MemoryStore()
    p = _customer()
    store.save({"c1": p})
    assert store.dormant() == 0 and store.load(["c1"])["c1"] is p  # live: no copy
    advance(p, T0 + 31 * DAY_MS)  # the 30-day window has emptied
    store.save({"c1": p})
    assert store.dormant() == 1
    back = store.load(["c1"])["c1"]
    assert back is not p and snapshot(back) == snapshot(p)
    assert back.sends == p.sends and back.timers == p.timers
    apply_event(back, "e3", "page_view", T0 + 32 * DAY_MS, {}, {})  # active again: live again
    store.save({"c1": back})
    assert store.dormant() == 0 and store.load(["c1"])["c1"] is back


def test_a_dormant_profile_is_exported_erased_and_counted_like_a_live_one() -> None:
    store = MemoryStore()
    p = _customer()
    advance(p, T0 + 31 * DAY_MS)
    store.save({"c1": p})
    store.schedule([("c1", "expire", p.timers["expire"])])
    assert store.known_contacts() == 1 and [q.key for q in store.profiles()] == ["c1"]
    exported = store.export("c1")
    assert exported is not None and exported["profile"] == snapshot(p)
    assert store.erase("c1", T0 + 40 * DAY_MS)
    assert store.stats() == {"profiles": 0, "aliases": 0, "timers": 0} and store.known_contacts() == 0


def test_the_stored_form_is_a_fraction_of_the_live_object() -> None:
    p = _customer()
    advance(p, T0 + 31 * DAY_MS)
    dormant = Dormant.of(p)
    assert dormant is not None
    live = _deep_size(p)
    assert _deep_size(dormant) * 4 < live, (_deep_size(dormant), live)


def test_a_replay_scores_the_same_with_dormant_profiles_compacted_or_kept_live(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Years of purchases replayed into the embedded store: the same scores either way, and
    most customers dormant at the end."""
    path = tmp_path / "purchases.jsonl"
    path.write_bytes(b"\n".join(RepeatPurchase(RepeatPurchaseSpec(seed=5, customers=300, days=400)).lines()))
    settings = load_settings(None)
    at = RepeatPurchaseSpec().start_ms + 380 * DAY_MS
    engines: list[Any] = []
    build = runner.build_engine
    monkeypatch.setattr(runner, "build_engine", lambda *a, **k: engines.append(build(*a, **k)) or engines[-1])
    rows = scores_from_file(settings, path, at).rows
    dormant = engines[-1].store.dormant()
    monkeypatch.setattr(memory.Dormant, "of", classmethod(lambda cls, profile: None))
    live_rows = scores_from_file(settings, path, at).rows
    assert engines[-1].store.dormant() == 0 and dormant > len(rows) // 4, dormant
    assert rows == live_rows and len(rows) > 200


def _deep_size(obj: object, seen: set[int] | None = None) -> int:
    import sys
    from collections import deque

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset, deque)):
        size += sum(_deep_size(item, seen) for item in obj)
    elif hasattr(obj, "__dict__"):
        size += _deep_size(vars(obj), seen)
    elif hasattr(obj, "__slots__"):
        size += sum(_deep_size(getattr(obj, a), seen) for a in obj.__slots__ if hasattr(obj, a))
    return size
