"""Every dead letter names its exact source line, blank lines counted, late events included."""

from __future__ import annotations

import orjson

from touchline.runner import run

DAY_MS = 86_400_000
T = 1_767_571_200_000  # 2026-01-05


def _event(event_id: str, ts: int) -> bytes:
    return orjson.dumps({"event_id": event_id, "type": "page_view", "ts": ts, "contact_id": "c1"})


def test_dead_letters_point_at_their_own_line(small_settings, tmp_path):
    lines = [b"", _event("e1", T), b"", b"   ", b"{not json", _event("e2", T + DAY_MS), b"",
             _event("e0", T - 40 * DAY_MS), b'{"event_id": "x"}']
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    settings = small_settings(**{"source.kind": "jsonl", "source.path": path, "source.batch_size": 2,
                                 "engine.time_jump_quorum": 1})  # three events: each moves the clock
    run(settings, progress=None)
    dead = [orjson.loads(line) for line in (settings.output.dir / "dead_letters.jsonl").read_bytes().splitlines()]
    where = {d["reason"]: d["source"] for d in dead}
    assert where == {"bad_json": "events.jsonl:5", "late_event": "events.jsonl:8",
                     "missing_field": "events.jsonl:9"}, dead
