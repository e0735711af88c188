"""``touchline why CONTACT``: a contact's recent decisions and non-decisions, from a run's outputs.

Decision records say what was sent; no-action records (:mod:`touchline.decisions.no_action`)
say which decision points sent nothing and why each candidate was held back. This command
reads both files (never the state store), keeps the contact's records and prints the most
recent ones in time order, as text or JSON.

An anonymous visitor's records carry its anonymous id (``contact_id`` is ``anon:<id>``) until
an event links the id to a contact; after that its decision points are the contact's. Neither
output says which anonymous ids a contact had, so the links come from the events the run read
(``events.jsonl`` in the output directory of a simulator run, or ``--events FILE``): the first
event carrying both ids links them, as the engine does.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import orjson

from touchline.logs import console
from touchline.decisions.errors import TouchlineError
from touchline.decisions.profile import ANON_PREFIX

EXIT_NOT_FOUND, EXIT_USAGE = 1, 2
DEFAULT_LIMIT = 20
#: What the run's summary calls the two outputs (``outputs``), and the default file names.
OUTPUTS = {"decisions": ("decisions", "decisions.jsonl"), "no_actions": ("no-action records", "no_actions.jsonl")}


class WhyError(TouchlineError):
    """A usage error: an input that is not there (the message names it)."""


def add_parser(subparsers: "argparse._SubParsersAction[Any]") -> None:
    """Add the ``why`` subcommand to the ``touchline`` parser."""
    p = subparsers.add_parser(
        "why", help="a contact's recent decisions and non-decisions (and why), from a run's outputs",
        description="Print a contact's most recent decision records (what was sent) and no-action records "
        "(decision points where every candidate was held back, with each candidate's reason) in time order. "
        "CONTACT is a contact id or an anonymous id (also as anon:ID); an anonymous id linked to a contact "
        "shows the contact's records too.")
    p.add_argument("contact", metavar="CONTACT", help="contact id or anonymous id")
    p.add_argument("--out", type=Path, default=Path("touchline-out"), metavar="DIR",
                   help="the run's output directory, where the records are found (default touchline-out: the run "
                        "touchline-out/latest names)")
    p.add_argument("--decisions", type=Path, metavar="FILE", help="decisions JSONL (default DIR/decisions.jsonl)")
    p.add_argument("--no-actions", type=Path, metavar="FILE",
                   help="no-action records JSONL (default DIR/no_actions.jsonl)")
    p.add_argument("--events", type=Path, metavar="FILE", help="the events the run read, to link anonymous ids to "
                   "contacts (default DIR/events.jsonl if it exists)")
    p.add_argument("--limit", type=_positive, default=DEFAULT_LIMIT, metavar="N",
                   help=f"show at most this many records, the most recent (default {DEFAULT_LIMIT})")
    p.add_argument("--json", action="store_true", help="print JSON: the identities, sources and records")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


@dataclass
class Sources:
    """The files read, and what is worth saying about them."""

    decisions: Path | None
    no_actions: Path | None
    events: Path | None
    notes: list[str] = field(default_factory=list)
    #: the run's audit.no_action_share, when its summary says
    share: float | None = None


@dataclass
class Identity:
    """Who the records are of: contact ids, and anonymous ids with the event that linked each."""

    query: str
    contacts: set[str]
    anonymous: dict[str, str | None]  # anonymous id -> the event that linked it (None: not linked)

    def record_ids(self) -> set[str]:
        """The ``contact_id`` values of this identity's records."""
        return self.contacts | {ANON_PREFIX + a for a in self.anonymous}


def main(args: argparse.Namespace) -> int:
    """Run ``touchline why``: 0 with records shown, 1 when none were found, 2 for a bad input. A
    directory of run directories stands for the run its ``latest`` names."""
    from touchline.run_dirs import resolve as latest_run

    args.out = latest_run(args.out)
    if not args.contact.strip():
        console("touchline why: CONTACT is empty; give a contact id or an anonymous id", level="error")
        return EXIT_USAGE
    try:
        sources = find_sources(args.out, args.decisions, args.no_actions, args.events)
        identity = resolve(args.contact, sources.events)
        records, skipped = read_records(sources, identity.record_ids())
    except WhyError as exc:
        console(f"touchline why: {exc}", level="error")
        return EXIT_USAGE
    except OSError as exc:
        console(f"touchline why: cannot read {exc.filename}: {exc.strerror or exc}", level="error")
        return EXIT_NOT_FOUND
    sources.notes += skipped
    if not records:
        console(f"touchline why: no records found for {args.contact!r} in {_looked_in(sources)}", level="error")
        for note in sources.notes:
            console(f"  {note}")
        return EXIT_NOT_FOUND
    shown = records[-args.limit:]
    print(_dumps(identity, sources, records, shown) if args.json else format_why(identity, sources, records, shown))
    return 0


# ------------------------------------------------------------------------------ sources
def find_sources(out: Path, decisions: Path | None, no_actions: Path | None, events: Path | None) -> Sources:
    """The files to read: as given (each must exist), else in ``out`` under the names its run's
    summary gives (else the defaults); raises :class:`WhyError` when there is nothing to read."""
    for flag, path in (("--decisions", decisions), ("--no-actions", no_actions), ("--events", events)):
        if path is not None and not path.is_file():
            raise WhyError(f"{flag} {path}: no such file")
    if decisions is not None or no_actions is not None:
        return _given(decisions, no_actions, events)
    return _in_dir(out, events)


#: Said when no events file is read.
NO_EVENTS = "anonymous ids are not linked to contacts: no events file (pass --events FILE, the events the run read)"


def _given(decisions: Path | None, no_actions: Path | None, events: Path | None) -> Sources:
    """Only the files named on the command line."""
    notes = [f"--{flag} not given: none read" for flag, path in (("decisions", decisions),
                                                                   ("no-actions", no_actions)) if path is None]
    return Sources(decisions, no_actions, events, notes + ([] if events is not None else [NO_EVENTS]))


def _in_dir(out: Path, events: Path | None) -> Sources:
    """The run's outputs in ``out``, and its events when it recorded them (a simulator run)."""
    summary = _summary(out)
    notes: list[str] = []
    found = {role: _default(out, role, summary, notes) for role in OUTPUTS}
    if not any(found.values()):
        where = " nor ".join(str(out / name) for _, name in OUTPUTS.values())
        raise WhyError("; ".join([f"no records to read: neither {where} exists (run `touchline run` first, or pass "
                                  "--out DIR / --decisions FILE / --no-actions FILE)",
                                  *(n for n in notes if n.startswith("the run wrote"))]))
    recorded = out / "events.jsonl"
    events = events or (recorded if recorded.is_file() else None)
    return Sources(found["decisions"], found["no_actions"], events, notes + ([] if events is not None else [NO_EVENTS]),
                   _share(summary))


def _share(summary: dict[str, Any]) -> float | None:
    """The run's ``audit.no_action_share``, as its summary gives it.

    >>> _share({"no_actions": {"share": 0.25}}), _share({})
    (0.25, None)
    """
    found = summary.get("no_actions")
    share = found.get("share") if isinstance(found, dict) else None
    return float(share) if isinstance(share, (int, float)) else None


def _summary(out: Path) -> dict[str, Any]:
    """The run's summary.json in ``out`` ({} when there is none or it cannot be read)."""
    try:
        summary = orjson.loads((out / "summary.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return summary if isinstance(summary, dict) else {}


def _default(out: Path, role: str, summary: dict[str, Any], notes: list[str]) -> Path | None:
    """The ``role`` output in ``out``: the file its summary names (by file name: the run may
    have been started elsewhere), else the default name; None, with a note, when it is not there."""
    label, name = OUTPUTS[role]
    where = summary.get("outputs", {}).get(label) if isinstance(summary.get("outputs"), dict) else None
    if isinstance(where, str) and where.startswith("kafka topic"):
        notes.append(f"the run wrote its {label} to {where}: pass its records as a JSONL file "
                     f"(--{role.replace('_', '-')} FILE)")
        return None
    path = out / (Path(where).name if isinstance(where, str) and where else name)
    if path.is_file():
        return path
    notes.append(f"no {label}: {path} does not exist" + (" (a run from before no-action records, or with "
                                                         "audit.no_action_share = 0)" if role == "no_actions" else ""))
    return None


def _looked_in(sources: Sources) -> str:
    """The files read: ``out/decisions.jsonl and out/no_actions.jsonl; anonymous ids linked through out/events.jsonl``."""
    files = [str(p) for p in (sources.decisions, sources.no_actions) if p is not None]
    linked = f"; anonymous ids linked through {sources.events}" if sources.events is not None else ""
    return " and ".join(files) + linked


# ------------------------------------------------------------------------------ identity
def resolve(query: str, events: Path | None) -> Identity:
    """Who ``query`` is: a contact id, or an anonymous id (``anon:ID``, or bare when the events
    link it to a contact), with every anonymous id the events link to the same contact."""
    anon = query[len(ANON_PREFIX):] if query.startswith(ANON_PREFIX) else query
    links = first_links(events) if events is not None else {}
    linked = links.get(anon)
    if linked is not None:
        contacts = {linked[0]}
    else:  # not an anonymous id the events link: a contact id (or a visitor never linked)
        contacts = set() if query.startswith(ANON_PREFIX) else {query}
    anonymous: dict[str, str | None] = {anon: None}
    anonymous.update({a: event_id for a, (contact, event_id) in links.items() if contact in contacts})
    return Identity(query, contacts, anonymous)


def first_links(events: Path) -> dict[str, tuple[str, str]]:
    """Anonymous id -> (contact id, event id) of the first event in ``events`` carrying both:
    the link the engine makes (a later event naming another contact does not move it)."""
    links: dict[str, tuple[str, str]] = {}
    for doc in _docs(events, (b'"anonymous_id"',), need_all=(b'"contact_id"',)):
        anon, contact = doc.get("anonymous_id"), doc.get("contact_id")
        if isinstance(anon, str) and isinstance(contact, str) and anon not in links:
            links[anon] = (contact, str(doc.get("event_id", "?")))
    return links


# ------------------------------------------------------------------------------ records
def read_records(sources: Sources, ids: set[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of ``ids`` in both outputs, oldest first (each tagged ``kind``), and a note
    per file with lines that are not JSON objects."""
    needles = tuple(orjson.dumps(i) for i in ids)
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    for kind, path in (("decision", sources.decisions), ("no_action", sources.no_actions)):
        if path is None:
            continue
        bad: list[int] = []
        for doc in _docs(path, needles, bad=bad):
            contact = doc.get("contact_id")
            if isinstance(contact, str) and contact in ids:
                records.append({**doc, "kind": kind})
        if bad:
            notes.append(f"{path}: {len(bad):,} line(s) that are not JSON objects skipped (first at line {bad[0]})")
    records.sort(key=lambda r: (_ms(r, "decision_time_ms"), _ms(r, "event_time_ms"), r["kind"] == "decision"))
    return records, notes


def _ms(record: dict[str, Any], key: str) -> int:
    value = record.get(key)
    return value if isinstance(value, int) else 0


def _docs(path: Path, any_of: tuple[bytes, ...], need_all: tuple[bytes, ...] = (),
          bad: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """The JSON objects of the lines of ``path`` that contain one of ``any_of`` and all of
    ``need_all`` (a byte test first: most lines are never parsed); line numbers of lines that
    matched but are not JSON objects go to ``bad``."""
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not any(n in line for n in any_of) or not all(n in line for n in need_all):
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                doc = None
            if isinstance(doc, dict):
                yield doc
            elif bad is not None:
                bad.append(number)


# ------------------------------------------------------------------------------ output
def format_why(identity: Identity, sources: Sources, records: list[dict[str, Any]],
               shown: list[dict[str, Any]]) -> str:
    """The records as text: a header (who, how many, from where), then one block per record;
    a run of no-action points that held back the same candidates for the same reasons after the
    same kind of trigger (a journey step deferred hour after hour) is one block."""
    out = _header(identity, sources, records, shown)
    for run in _runs(shown):
        first = run[0]
        if first["kind"] == "decision":
            out += decision_lines(first)
            continue
        lines = no_action_lines(run[-1])  # the latest of the run (a deferral's latest "deferred to")
        if len(run) > 1:
            lines[0] += f"  (x{len(run)} since {_when(first)})"
        out += lines
    return "\n".join(out)


def _runs(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive no-action records with the same :func:`_same` key grouped; each decision alone."""
    runs: list[list[dict[str, Any]]] = []
    for record in records:
        if runs and record["kind"] == "no_action" and runs[-1][0]["kind"] == "no_action" \
                and _same(runs[-1][0]) == _same(record):
            runs[-1].append(record)
        else:
            runs.append([record])
    return runs


def _same(record: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two no-action points alike: the trigger (a timer kind, an event type), the
    holdout, and each candidate's action, channel and reason."""
    trigger = record.get("trigger")
    kind = (trigger.get("timer") or trigger.get("type")) if isinstance(trigger, dict) else None
    return (kind, record.get("holdout"),
            tuple((c.get("action"), c.get("channel"), c.get("reason")) for c in _entries(record, "candidates")))


def _entries(record: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The objects in ``record[key]`` (a hand-edited or foreign file may hold anything there).

    >>> _entries({"suppressed": [{"action": "a"}, "junk", 3]}, "suppressed"), _entries({"suppressed": 7}, "suppressed")
    ([{'action': 'a'}], [])
    """
    found = record.get(key)
    return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []


def _header(identity: Identity, sources: Sources, records: list[dict[str, Any]],
            shown: list[dict[str, Any]]) -> list[str]:
    """Who, how many of what, which part is shown, and where it was read."""
    decisions = sum(1 for r in records if r["kind"] == "decision")
    part = f"the last {len(shown):,} of {len(records):,}, oldest first" if len(shown) < len(records) else "oldest first"
    counts = [_n(decisions, "decision")] if sources.decisions is not None else []
    if sources.no_actions is not None:
        counts.append(f"{_n(len(records) - decisions, 'decision point')} that sent nothing")
    lines = [f"{identity.query}: {' and '.join(counts)} ({part})", f"  read {_looked_in(sources)}"]
    lines += _identity_lines(identity)
    if sources.share is not None and sources.share < 1:
        lines.append(f"  no-action records are a sample: audit.no_action_share was {sources.share:g} for this run")
    return lines + [f"  {note}" for note in sources.notes]


def _identity_lines(identity: Identity) -> list[str]:
    """The contact an anonymous id is linked to, and the contact's other anonymous ids."""
    lines = []
    others = sorted(identity.contacts - {identity.query})
    if others:
        lines.append(f"  {identity.query} is an anonymous id linked to contact {', '.join(others)}")
    anon = identity.query.removeprefix(ANON_PREFIX)
    links = [f"{a} (event {e})" for a, e in sorted(identity.anonymous.items()) if e is not None and a != anon]
    if links:
        lines.append(f"  anonymous ids of the same contact: {', '.join(links)}")
    return lines


def _n(count: int, word: str) -> str:
    """``1 decision``, ``2 decisions``.

    >>> _n(1, "decision"), _n(1200, "decision point")
    ('1 decision', '1,200 decision points')
    """
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def decision_lines(d: dict[str, Any]) -> list[str]:
    """A decision record as text: when, what was sent and why, what else was held back.

    >>> print("\\n".join(decision_lines({"decision_time": "2026-01-05T10:30:00.000Z", "action": "cart_reminder",
    ...     "channel": "email", "reasons": ["cart 40.00 open for 30 min"], "trigger": {"kind": "timer", "timer": "cart"},
    ...     "suppressed": [{"action": "cart_reminder", "channel": "sms", "reason": "no_consent"}]})))
    2026-01-05 10:30:00Z  SENT     cart_reminder by email (cart 40.00 open for 30 min)  [timer cart]
                          held back  cart_reminder/sms: no_consent
    """
    reasons = d.get("reasons") if isinstance(d.get("reasons"), list) else []
    what = f"{d.get('action')} by {d.get('channel')}" + _journey(d, str(reasons[0]) if reasons else "")
    if reasons:
        what += f" ({reasons[0]})"
    lines = [f"{_when(d)}  SENT     {what}  [{_trigger(d.get('trigger'))}]"]
    return lines + [_held_line(s) for s in _entries(d, "suppressed")]


def no_action_lines(r: dict[str, Any]) -> list[str]:
    """A no-action record as text: when, what triggered it, each candidate and why it was held back.

    >>> print("\\n".join(no_action_lines({"decision_time": "2026-01-06T09:12:03.000Z", "holdout": True,
    ...     "trigger": {"kind": "event", "type": "page_view", "event_id": "e-9"}, "scores": {"lead": {"p": 0.81}},
    ...     "would_send": {"action": "sales_handoff", "channel": "sales_task"},
    ...     "candidates": [{"action": "sales_handoff", "channel": "sales_task", "reason": "holdout",
    ...                     "why": "lead score 0.81 crossed 0.70"}]})))
    2026-01-06 09:12:03Z  NOTHING  in the holdout (would have sent sales_handoff by sales_task)  [event page_view e-9; lead 0.81]
                          held back  sales_handoff/sales_task: holdout (lead score 0.81 crossed 0.70)
    """
    given = r.get("scores")
    scores = "; ".join(f"{name} {s['p']:.2f}" for name, s in sorted((given if isinstance(given, dict) else {}).items())
                       if isinstance(s, dict) and isinstance(s.get("p"), (int, float)))
    context = _trigger(r.get("trigger")) + (f"; {scores}" if scores else "")
    what = "every candidate held back"
    if r.get("holdout"):
        would = r.get("would_send")
        what = "in the holdout" + (f" (would have sent {would.get('action')} by {would.get('channel')})"
                                   if isinstance(would, dict) else "")
    return [f"{_when(r)}  NOTHING  {what}  [{context}]", *(_held_line(c) for c in _entries(r, "candidates"))]


def _held_line(c: dict[str, Any]) -> str:
    """One held-back candidate: action/channel, reason, and what proposed it."""
    detail = [str(x) for x in (c.get("why"), c.get("journey_step")) if x]
    return (f"{'':22}held back  {c.get('action')}/{c.get('channel')}{_journey(c, ' '.join(detail))}: "
            f"{c.get('reason')}" + (f" ({'; '.join(detail)})" if detail else ""))


def _journey(entry: dict[str, Any], said: str) -> str:
    """`` in journey J step S`` for a journey's candidate, unless ``said`` (its reason) names them.

    >>> _journey({"journey": "welcome", "step": "2"}, "cart open"), _journey({"journey": "welcome"}, "journey welcome, step 2")
    (' in journey welcome step 2', '')
    """
    journey = entry.get("journey")
    if not journey or f"journey {journey}" in said:
        return ""
    return f" in journey {journey} step {entry.get('step')}"


def _when(record: dict[str, Any]) -> str:
    """The decision time, to the second: ``2026-01-05T10:30:00.000Z`` -> ``2026-01-05 10:30:00Z``."""
    t = str(record.get("decision_time") or record.get("event_time") or "?")
    return t[:19].replace("T", " ") + "Z" if len(t) >= 19 else t


def _trigger(trigger: Any) -> str:
    """What caused the decision point: ``event page_view e-9`` or ``timer cart``."""
    if not isinstance(trigger, dict):
        return "trigger unknown"
    if trigger.get("kind") == "timer":
        return f"timer {trigger.get('timer')}"
    return f"event {trigger.get('type')} {trigger.get('event_id')}"


def _dumps(identity: Identity, sources: Sources, records: list[dict[str, Any]],
           shown: list[dict[str, Any]]) -> str:
    return orjson.dumps({
        "query": identity.query, "contact_ids": sorted(identity.contacts),
        "anonymous_ids": {a: e for a, e in sorted(identity.anonymous.items()) if e is not None},
        "sources": {"decisions": _str(sources.decisions), "no_actions": _str(sources.no_actions),
                    "events": _str(sources.events)},
        "no_action_share": sources.share, "notes": sources.notes,
        "total": len(records), "shown": len(shown), "records": shown,
    }, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def _str(path: Path | None) -> str | None:
    return str(path) if path is not None else None
