"""The fuzz test: 100,000 mutated lines mixed into a simulated stream, through the CLI.

Every kind of damage a careless or hostile sender makes (byte flips, truncation, deep
nesting combined with lateness, far-future and far-past times, BOM, NUL, CRLF, duplicate
keys, 10 KB ids, blank lines, ids that collide with the anonymous namespace). The run must
end with exit 0 and no traceback; every line is accounted for (applied, duplicate or dead
letter) and every dead letter names its own line; and the bad lines change the decisions
of no contact they do not name: a third of the contacts never appear in a bad line, and
their decisions are byte-identical to the clean run's (models frozen, so that a contact's
decisions depend on its own events only).
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import orjson
import pytest

from touchline.connectors.simulator import Simulator
from touchline.runner import simulator_spec
from touchline.settings import load_settings

MUTATED_LINES = 100_000
DAY_MS = 86_400_000
CONFIG = """
[models]
learn = false
store = "off"
"""


def _deep(depth: int) -> bytes:
    """``depth`` nested objects as JSON text (deeper than any encoder will write)."""
    return b'{"n":' * depth + b"1" + b"}" * depth


def _doc(line: bytes) -> dict[str, Any]:
    return orjson.loads(line)


def _reencode(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


# Each mutation takes (original line, rng, newest ts) and returns replacement lines.
def _byte_flip(line: bytes, rng: random.Random, _: int) -> list[bytes]:
    b = bytearray(line)
    for _ in range(rng.randrange(1, 4)):
        b[rng.randrange(len(b))] = rng.randrange(256)
    return [bytes(b)]


def _truncate(line: bytes, rng: random.Random, _: int) -> list[bytes]:
    return [line[: rng.randrange(1, len(line))]]


def _deep_and_late(line: bytes, rng: random.Random, newest: int) -> list[bytes]:
    doc = _doc(line)
    doc.pop("properties", None)
    doc["ts"] = max(946_684_800_001, newest - rng.randrange(31, 60) * DAY_MS)
    doc["event_id"] = f"{doc['event_id']}-deep{rng.randrange(10**9)}"
    return [_reencode(doc)[:-1] + b',"properties":' + _deep(rng.choice([60, 200, 250, 253, 300, 2000])) + b"}"]


def _far_time(line: bytes, rng: random.Random, _: int) -> list[bytes]:
    doc = _doc(line)
    doc["ts"] = rng.choice(["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", 32503680000000, -1, 0,
                            "2999-01-01T00:00:00+14:00", "1970-01-01T00:00:00Z"])
    return [_reencode(doc)]


def _ahead(line: bytes, rng: random.Random, _: int) -> list[bytes]:
    """A device clock hours or months ahead: never beyond today, so only the robust clock stops it."""
    doc = _doc(line)
    ts = doc["ts"] if isinstance(doc["ts"], int) else None
    if ts is None:
        return [line]
    doc["ts"] = ts + rng.choice([3_600_000, 6 * 3_600_000, 20 * 3_600_000, 45 * DAY_MS])
    doc["event_id"] = f"{doc['event_id']}-ahead"
    return [_reencode(doc)]


def _bom(line: bytes, rng: random.Random, _: int) -> list[bytes]:
    return [b"\xef\xbb\xbf" + line]


def _nul(line: bytes, rng: random.Random, _: int) -> list[bytes]:
    at = rng.randrange(len(line))
    return [line[:at] + b"\x00" + line[at:]]


def _crlf(line: bytes, rng: random.Random, _: int) -> list[bytes]:
    return [line + b"\r"]  # written with "\n": the line ends in CRLF


def _duplicate_key(line: bytes, rng: random.Random, _: int) -> list[bytes]:
    key = rng.choice([b'"event_id"', b'"type"', b'"contact_id"', b'"ts"'])
    if key not in line:
        key = b'"event_id"'
    return [line[:-1] + b"," + key + b':"dup-' + str(rng.randrange(10**6)).encode() + b'"}']


def _huge_id(line: bytes, rng: random.Random, _: int) -> list[bytes]:
    doc = _doc(line)
    doc[rng.choice(["event_id", "contact_id", "anonymous_id", "session_id"])] = "x" * 10_240
    return [_reencode(doc)]


def _blank(line: bytes, rng: random.Random, _: int) -> list[bytes]:
    return [b"", rng.choice([b"   ", b"\t", b""]), line]


def _anon_prefix(line: bytes, rng: random.Random, _: int) -> list[bytes]:
    doc = _doc(line)
    if "contact_id" in doc:
        doc["contact_id"] = "anon:" + doc["contact_id"]
        doc["event_id"] = f"{doc['event_id']}-ns"
    return [_reencode(doc)]


MUTATIONS: list[Callable[[bytes, random.Random, int], list[bytes]]] = [
    _byte_flip, _truncate, _deep_and_late, _far_time, _ahead, _bom, _nul, _crlf, _duplicate_key, _huge_id,
    _blank, _anon_prefix]


def _ids(line: bytes) -> set[str]:
    """Every identity a line names, as far as it can be read."""
    try:
        doc = orjson.loads(line.strip(b"\r\n\t \xef\xbb\xbf"))
    except orjson.JSONDecodeError:
        return set()
    if not isinstance(doc, dict):
        return set()
    return {v for k in ("contact_id", "anonymous_id") if isinstance(v := doc.get(k), str)}


@pytest.fixture(scope="module")
def streams(tmp_path_factory) -> tuple[Path, Path, set[str]]:
    """The clean stream, the fuzzed one, and the contacts no bad line names."""
    root = tmp_path_factory.mktemp("fuzz")
    settings = load_settings(None, {"simulator.contacts": 1200, "simulator.days": 14, "simulator.malformed_rate": 0,
                                    "output.dir": root / "sim"})
    clean = list(Simulator(simulator_spec(settings)).lines())
    linked: dict[str, str] = {}  # anonymous id -> contact (from the clean stream's identify events)
    contact_of_line: list[str | None] = []
    for line in clean:
        doc = orjson.loads(line)
        if "anonymous_id" in doc and "contact_id" in doc:
            linked.setdefault(doc["anonymous_id"], doc["contact_id"])
    for line in clean:
        doc = orjson.loads(line)
        contact_of_line.append(doc.get("contact_id") or linked.get(doc.get("anonymous_id", "")))
    contacts = sorted({c for c in contact_of_line if c})
    rng = random.Random(20261202)
    spared = set(rng.sample(contacts, len(contacts) // 3))
    victims = [i for i, c in enumerate(contact_of_line) if c not in spared]
    newest = max(orjson.loads(x)["ts"] if isinstance(orjson.loads(x)["ts"], int) else 0 for x in clean)
    inserts: dict[int, list[bytes]] = defaultdict(list)
    named: set[str] = set()
    for n in range(MUTATED_LINES):
        source = rng.choice(victims)
        mutated = MUTATIONS[n % len(MUTATIONS)](clean[source], rng, newest)
        inserts[min(len(clean), max(0, source + rng.randrange(-20, 21)))] += mutated  # about when it was sent
        for line in mutated:
            named |= _ids(line)
        named.add(contact_of_line[source] or "")
    named |= {linked[a] for a in list(named) if a in linked}
    out: list[bytes] = []
    for i, line in enumerate(clean):
        out += inserts.get(i, [])
        out.append(line)
    out += inserts.get(len(clean), [])
    (root / "clean.jsonl").write_bytes(b"\n".join(clean) + b"\n")
    (root / "fuzzed.jsonl").write_bytes(b"\n".join(out) + b"\n")
    untouched = spared - named
    assert len(untouched) > 80  # byte flips name some spared contacts by chance
    return root / "clean.jsonl", root / "fuzzed.jsonl", untouched


def _run(path: Path, out: Path) -> subprocess.CompletedProcess:
    config = out.parent / f"{out.name}.toml"
    config.write_text(CONFIG)
    return subprocess.run([sys.executable, "-m", "touchline", "run", "--input", str(path), "--out", str(out),
                           "--config", str(config), "--no-metrics"], capture_output=True, text=True, timeout=1200)


def _by_contact(out: Path) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = defaultdict(list)
    for line in (out / "decisions.jsonl").read_bytes().splitlines():
        found[orjson.loads(line)["contact_id"]].append(line)
    return found


def test_a_hundred_thousand_mutated_lines(streams, tmp_path):
    clean_path, fuzzed_path, untouched = streams
    clean = _run(clean_path, tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr
    fuzzed = _run(fuzzed_path, tmp_path / "fuzzed")
    assert fuzzed.returncode == 0, fuzzed.stderr[-3000:]
    for proc in (clean, fuzzed):
        assert "Traceback" not in proc.stderr and "panicked" not in proc.stderr, proc.stderr[-3000:]

    # every line accounted for: applied, duplicate, or a dead letter naming its own line
    raw_lines = fuzzed_path.read_bytes().split(b"\n")[:-1]
    summary = orjson.loads((tmp_path / "fuzzed" / "summary.json").read_bytes())
    non_blank = sum(1 for x in raw_lines if x.strip())
    assert summary["lines_read"] == non_blank
    assert (summary["events_processed"] + summary["duplicates_ignored"] + summary["dead_letters_total"]
            + summary["erased_events_dropped"]) == non_blank
    dead = [orjson.loads(x) for x in (tmp_path / "fuzzed" / "dead_letters.jsonl").read_bytes().splitlines()]
    assert len(dead) == summary["dead_letters_total"] > 30_000
    for d in dead:
        name, _, number = d["source"].rpartition(":")
        assert name == "fuzzed.jsonl", d
        line = raw_lines[int(number) - 1].rstrip(b"\r")
        if d["reason"] != "oversized":
            assert d["raw"] == line.decode("utf-8", "backslashreplace"), (d["source"], d["reason"])
    reasons = {d["reason"] for d in dead}
    assert {"bad_json", "future_event", "before_floor", "late_event", "invalid"} <= reasons, reasons

    # the bad lines change nobody else's decisions
    before, after = _by_contact(tmp_path / "clean"), _by_contact(tmp_path / "fuzzed")
    assert sum(len(before[c]) for c in untouched) > 50
    changed = sorted(c for c in untouched if before.get(c, []) != after.get(c, []))
    assert changed == [], f"{len(changed)} contacts no bad line names got other decisions: {changed[:5]}"
