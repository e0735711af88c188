"""Scores per contact as of a time: ``touchline scores`` and the scores in ``contact export``.

A score as of TIME is each champion's prediction on the contact's features at TIME (windows
advanced to TIME, recency measured to TIME), the same :func:`features` and champions the
engine scores with. Two sources:

- ``--input FILE``: the file's events up to TIME replayed into the in-process store, the
  configured models learning on the way as in ``touchline run --input``, and the event clock
  moved on to TIME (the timers due by then fire: labels resolve, retention forgets);
- ``--redis URL``: the stored profiles, with the models a running engine uses (the stored
  deployment's champions, restored from their checkpoints). A profile is kept as of its
  newest event (or timer): one newer than TIME cannot be wound back, so it is skipped and counted.

>>> from touchline.decisions.estimators import ScoreSettings
>>> from touchline.decisions.profile import Profile, apply_event
>>> slots = fresh_slots({"lead": ScoreSettings(name="lead"), "churn": ScoreSettings(name="churn")})
>>> p = Profile("c1", known=True)
>>> _ = apply_event(p, "e1", "page_view", 0, {}, {})
>>> row = score_profile(p, 3_600_000, slots)
>>> row.contact_id, row.lead_score, row.churn_score  # fresh models know nothing yet
('c1', 0.5, 0.5)
"""

from __future__ import annotations

from array import array

import csv
import io
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from touchline.decisions.champion import ModelSlot, Restore
from touchline.decisions.custom_attributes import CustomAttributes
from touchline.decisions.estimators import ScoreSettings
from touchline.decisions.features import features
from touchline.decisions.profile import DAY_MS, Profile, contact_of, is_known_key
from touchline.atomic_file import write_atomically
from touchline.settings import ConfigError, Settings
from touchline.time_order import TimeOrdered, input_problem

if TYPE_CHECKING:
    from touchline.state.model_store import ModelStore
    from touchline.state.redis import RedisStore

#: The CSV's columns, in order.
COLUMNS = ("contact_id", "lead_score", "churn_score", "lead_model_version", "churn_model_version")
SCORES = ("lead", "churn")
#: Decimals of a score in the CSV and in an export.
DECIMALS = 6
#: Profiles read from Redis per round trip.
CHUNK = 500


@dataclass(frozen=True, slots=True)
class ScoreRow:
    """One contact's scores and the model versions that gave them."""

    contact_id: str
    lead_score: float
    churn_score: float
    lead_model_version: str
    churn_model_version: str


@dataclass(slots=True)
class ScoreRun:
    """The rows and what a user should know about how they were made."""

    rows: list[ScoreRow] = field(default_factory=list)
    #: profiles whose stored state is newer than TIME (Redis): not scored
    newer: int = 0
    #: contacts of the replayed events the engine had forgotten by TIME (retention)
    forgotten: int = 0
    #: contacts of the replayed events none of whose events the engine took (dead letters)
    refused: int = 0
    #: what was read, and where the models came from, one line each
    notes: list[str] = field(default_factory=list)
    #: the models that gave the scores (with --input: their progressive figures from the replay)
    models: Mapping[str, ModelSlot] = field(default_factory=dict)
    #: with --input: the lines the engine refused, with the reason and the file's line number
    dead_letters: list[dict[str, Any]] | None = None


# ------------------------------------------------------------------ TIME
def parse_at(text: str, now_ms: int | None = None) -> int:
    """``--at TIME`` as epoch ms: an ISO-8601 date (its midnight, UTC) or date-time (UTC when
    it names no offset), or ``now``; ConfigError saying what is accepted otherwise.

    >>> parse_at("2026-03-01"), parse_at("2026-03-01T12:00:00Z"), parse_at("2026-03-01T13:00:00+01:00")
    (1772323200000, 1772366400000, 1772366400000)
    >>> parse_at("now", now_ms=5)
    5
    >>> parse_at("March 1st")
    Traceback (most recent call last):
    ...
    touchline.settings.ConfigError: --at 'March 1st': not a time; use ISO-8601 (2026-03-01, 2026-03-01T12:00:00Z) or now
    """
    if text.strip().lower() == "now":
        return int(time.time() * 1000) if now_ms is None else now_ms
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"--at {text!r}: not a time; use ISO-8601 (2026-03-01, 2026-03-01T12:00:00Z) "
                          "or now") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return int(at.timestamp() * 1000)


def iso(ms: int) -> str:
    """Epoch ms as an ISO-8601 UTC time, as the notes and exports print it.

    >>> iso(1772366400000)
    '2026-03-01T12:00:00Z'
    """
    at = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return at.isoformat(timespec="milliseconds" if ms % 1000 else "seconds").replace("+00:00", "Z")


# ------------------------------------------------------------------ scoring
def fresh_slots(scores: Mapping[str, ScoreSettings], restore: Restore | None = None) -> dict[str, ModelSlot]:
    """Each score's champion alone (a challenger only shadows: it gives no score)."""
    return {name: ModelSlot(name, s.model_copy(update={"challenger": None, "promote": None}), restore)
            for name, s in scores.items() if name in SCORES}


def score_profile(profile: Profile, at_ms: int, slots: Mapping[str, ModelSlot],
                  custom: CustomAttributes | None = None) -> ScoreRow:
    """The contact's scores as of ``at_ms`` (the profile's windows advance to it); ``custom``: the
    configured custom attributes, which models may read."""
    feats = features(profile, at_ms, custom)
    lead, churn = slots["lead"].champion, slots["churn"].champion
    return ScoreRow(contact_of(profile.key), round(lead.predict(feats), DECIMALS),
                    round(churn.predict(feats), DECIMALS), lead.version, churn.version)


def export_scores(profile: Profile, slots: Mapping[str, ModelSlot],
                  custom: CustomAttributes | None = None) -> dict[str, Any]:
    """What ``contact export`` adds: each score with its model, as of the profile's state."""
    at = profile.last_ts
    row = score_profile(profile, at, slots, custom)
    return {"as_of": iso(at),
            "lead": {"score": row.lead_score, "model_version": row.lead_model_version},
            "churn": {"score": row.churn_score, "model_version": row.churn_model_version}}


# ------------------------------------------------------------------ --input FILE
def scores_from_file(settings: Settings, path: Path, at_ms: int, replay: TimeOrdered | None = None) -> ScoreRun:
    """Replay ``path``'s events up to ``at_ms`` in event-time order (whatever the file's order:
    exports are often sorted by customer) into the in-process store with the configured models
    learning (as ``touchline run --input`` does), then score every known contact. ``replay``:
    the file already read for that order (:meth:`TimeOrdered.scan`)."""
    from prometheus_client import CollectorRegistry

    from touchline.runner import build_engine

    check_input(path)
    in_memory = settings.model_copy(update={
        "state": settings.state.model_copy(update={"url": "memory://"}),
        "source": settings.source.model_copy(update={"kind": "jsonl", "path": path})})
    engine = build_engine(in_memory, CollectorRegistry(), keep_models=False)
    replay = replay or TimeOrdered.scan(path, at_ms)
    fed, refused = _replay_until(engine, replay, at_ms, settings.source.batch_size)
    dead = engine.totals.dead_letters
    invalid = sum(dead.values())
    order = " in event-time order (the file is not)" if replay.reordered else ""
    why = f": {', '.join(f'{n:,} {reason}' for reason, n in dead.most_common())}" if invalid else ""
    run = ScoreRun(notes=[f"replayed {fed - invalid:,} events of {path} up to {iso(at_ms)}{order}"
                          f" ({replay.later:,} later ones left out, {invalid:,} invalid lines skipped{why})",
                          *_model_notes(engine.core.models, "learned in this replay"), *_purchase_notes(engine)],
                   models=engine.core.models, dead_letters=refused)
    profiles = [p for p in engine.store.profiles() if is_known_key(p.key)]
    run.notes.extend(fit_population(engine.core.models, profiles, at_ms, engine.core.attributes))
    run.rows = sorted((score_profile(p, at_ms, engine.core.models, engine.core.attributes) for p in profiles),
                      key=lambda r: r.contact_id)
    earliest_ms = settings.engine.min_event_time.timestamp() * 1000
    _count_unscored(run, replay.last_seen, at_ms - settings.state.retention_days * DAY_MS, earliest_ms)
    return run


def _count_unscored(run: ScoreRun, last_seen: Mapping[str, int], forget_before_ms: float,
                    earliest_ms: float) -> None:
    """Split the contacts of the replayed events that have no row: those last seen before
    ``forget_before_ms`` (forgotten by retention), unless even that event was before the
    earliest time the engine takes, and the rest (all their events refused: dead letters)."""
    scored = {r.contact_id for r in run.rows}
    for contact_id, last_ms in last_seen.items():
        if contact_id not in scored:
            if earliest_ms <= last_ms < forget_before_ms:
                run.forgotten += 1
            else:
                run.refused += 1


def check_input(path: Path) -> None:
    """A ConfigError unless ``path`` is a file."""
    problem = input_problem(path)
    if problem is not None:
        raise ConfigError(f"--input {problem}")


def fit_population(slots: Mapping[str, ModelSlot], profiles: list[Profile], at_ms: int,
                   custom: CustomAttributes | None = None) -> list[str]:
    """A churn champion built on a customer-base model has its population fitted on every
    contact's purchase summary as of ``at_ms`` (the standard BG/NBD fit, one summary per contact at
    the cut-off), before it scores them; a note saying so. Nothing for other models."""
    model = slots["churn"].champion
    fit = getattr(model.estimator, "fit_population", None)
    if fit is None:
        return []
    used = fit(features(p, at_ms, custom) for p in profiles)
    if not used:
        return [f"churn: too few buyers to fit the BG/NBD population as of {iso(at_ms)}; the fit of the replay kept"]
    return [f"churn: BG/NBD population fitted on the purchase summaries of {used:,} buyers as of {iso(at_ms)} "
            "(one per contact, as an offline fit; the replay's fits saw earlier moments)"]


def _purchase_notes(engine: Any) -> list[str]:
    """What a replay of purchase data should know about its churn scores: a horizon shorter than
    the usual gap between purchases, the settings that differ from the purchase preset, and a
    churn model no label reached."""
    from touchline.summary import _purchase_share, _repeat_purchase_lines, repeat_purchases

    totals, labels = engine.totals, engine.core.labels
    churn = engine.core.models["churn"].champion
    r = repeat_purchases(totals.purchase_gap_days, labels, _purchase_share(totals.by_type), churn.estimator_name)
    notes = [line.strip() for line in _repeat_purchase_lines(r)[1:]]  # the horizon's warning, the notes
    if r is not None and churn.labels == 0:
        alone = "; its scores are the BG/NBD model's alone" if churn.estimator_name.startswith("bgnbd") else ""
        notes.append(f"note: no churn label resolved in this replay (one resolves labels.churn_horizon_days = "
                     f"{r['churn_horizon_days']:g} days after it is observed){alone}; a horizon the history can "
                     f"resolve (about {r['suggested_churn_horizon_days']} days, 3 median gaps between purchases) "
                     "lets the labels correct the model")
    return notes


def _replay_until(engine: Any, replay: TimeOrdered, at_ms: int, batch_size: int) -> tuple[int, list[dict[str, Any]]]:
    """Feed the engine ``replay``'s lines (events up to ``at_ms`` in event-time order, invalid
    lines too: the engine dead-letters them as in a run), in batches, then move its clock to
    ``at_ms`` so the timers due by then fire (labels resolve, retention forgets); the number of
    lines fed and the dead letters, each naming the line of the file it was read from.
    Positions count in replay order (the engine takes a position lower than one it has seen
    for a redelivery), so they are turned back into line numbers at the end."""
    from touchline.decisions.batches import RawBatch

    batch: list[bytes] = []
    placed = array("q")  # replay position - 1 -> the line's byte offset in the file
    dead: list[dict[str, Any]] = []
    name = replay.path.name
    for offset, line in replay.placed_lines():
        batch.append(line)
        placed.append(offset)
        if len(batch) >= batch_size:
            dead += engine.process(RawBatch(batch, name, len(placed) - len(batch) + 1)).dead_letters
            batch = []
    dead += engine.process(RawBatch(batch, name, len(placed) - len(batch) + 1, final=True,
                                    advance_to_ms=at_ms)).dead_letters
    if engine.failure is not None:
        raise engine.failure
    return len(placed), _at_file_lines(dead, replay, placed)


def _at_file_lines(dead: list[dict[str, Any]], replay: TimeOrdered, placed: array) -> list[dict[str, Any]]:
    """``dead`` with each ``source`` naming the file's line (``name:position`` in replay order
    before); a record without a position of the replay is left as it is."""
    name = replay.path.name
    positions = [_position(d.get("source"), name, len(placed)) for d in dead]
    numbers = replay.line_numbers([placed[p - 1] for p in positions if p is not None])
    return [{**d, "source": f"{name}:{numbers[placed[p - 1]]}"} if p is not None else d
            for d, p in zip(dead, positions)]


def _position(source: Any, name: str, fed: int) -> int | None:
    """The replay position in ``name:position``, if it is one of the ``fed`` lines.

    >>> _position("e.jsonl:7", "e.jsonl", 10), _position("e.jsonl:70", "e.jsonl", 10), _position(None, "e", 1)
    (7, None, None)
    """
    if not isinstance(source, str) or not source.startswith(name + ":"):
        return None
    tail = source[len(name) + 1:]
    return int(tail) if tail.isdigit() and 1 <= int(tail) <= fed else None


def dead_letters_path(out: Path) -> Path | None:
    """Where ``scores --out FILE`` puts the lines it refused, unless told: beside the CSV
    (``--out -``, stdout: nowhere unless ``--dead-letters`` says; the count is printed).

    >>> dead_letters_path(Path("out/scores.csv")), dead_letters_path(Path("-"))
    (PosixPath('out/scores.dead_letters.jsonl'), None)
    """
    if str(out) == "-":
        return None
    return out.with_name(f"{out.stem}.dead_letters.jsonl")


def write_dead_letters(records: list[dict[str, Any]], out: Path) -> None:
    """The dead letters as JSONL (the run's format), written atomically; an OSError naming the path."""
    import orjson

    check_writable(out)
    try:
        write_atomically(out, [orjson.dumps(r, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)
                               for r in records])
    except OSError as exc:
        raise _unwritable(out, exc.strerror or str(exc)) from None


# ------------------------------------------------------------------ --redis URL
def scores_from_redis(settings: Settings, at_ms: int) -> ScoreRun:
    """Score the profiles stored in Redis as of ``at_ms`` with the engine's deployed models;
    a profile whose state is newer than ``at_ms`` is counted in ``newer``, not scored."""
    from touchline.redact import redact_url
    from touchline.state import open_store
    from touchline.state.redis import RedisStore

    if not settings.state.url.startswith("redis"):
        raise ConfigError(f"state.url is {redact_url(settings.state.url)}, which keeps nothing after a run: pass "
                          "--input FILE (replay it) or --redis URL (the engine's stored state)")
    store = open_store(settings.state.url, settings.state.options())
    if not isinstance(store, RedisStore):
        store.close()
        raise ConfigError(f"state.url {redact_url(settings.state.url)}: scores reads profiles from Redis only")
    try:
        slots, notes = stored_models(settings)
        run = ScoreRun(notes=[f"profiles stored in {redact_url(settings.state.url)}", *notes])
        custom = settings.custom_attributes()
        for profile in _stored_profiles(store):
            if profile.last_ts > at_ms:
                run.newer += 1
            else:
                run.rows.append(score_profile(profile, at_ms, slots, custom))
    finally:
        store.close()
    run.rows.sort(key=lambda r: r.contact_id)
    return run


def _stored_profiles(store: "RedisStore") -> Iterator[Profile]:
    """Every known contact's stored profile (anonymous visitors' left out), read in chunks."""
    from touchline.state.redis import PREFIX

    head, tail = f"{PREFIX}:{{", "}:p"
    names = store._with_retry("scan", lambda: [
        k.decode() if isinstance(k, bytes) else k for k in store.client.scan_iter(match=f"{head}*{tail}", count=1000)])
    keys = sorted(k[len(head):-len(tail)] for k in names)
    known = [k for k in keys if is_known_key(k)]
    for i in range(0, len(known), CHUNK):
        yield from store.load(known[i:i + CHUNK]).values()


def contact_scores(store: Any, settings: Settings, contact_id: str) -> dict[str, Any]:
    """The stored contact's scores as of its state, with the models a running engine uses."""
    from touchline.decisions.profile import contact_key

    key = contact_key(contact_id)
    slots, _ = stored_models(settings)
    return export_scores(store.load([key])[key], slots, settings.custom_attributes())


def stored_models(settings: Settings) -> tuple[dict[str, ModelSlot], list[str]]:
    """The champions a running engine scores with: the stored deployment's (the configured
    ones while none is stored), restored from their checkpoints; and a note on each."""
    from touchline.redact import redact_url
    from touchline.runner import model_keeper

    keeper = model_keeper(settings)
    if keeper is None:
        slots = fresh_slots(settings.models.scores())
        return slots, ["models.store is off: no stored models, scored with untrained configured models",
                       *_model_notes(slots, "")]
    try:
        scores, where = deployed_scores(keeper.store, settings)
        slots = fresh_slots(scores, keeper.restore)
    finally:
        keeper.store.close()
    return slots, [f"models: {where} in {redact_url(keeper.store.url)}", *keeper.refused,
                   *_model_notes(slots, "")]


def deployed_scores(store: "ModelStore", settings: Settings) -> tuple[dict[str, ScoreSettings], str]:
    """The stored deployment's scores (a score it lacks as configured) and which revision;
    the configured scores while no deployment is stored. Reads only: nothing is written."""
    from touchline.model_keeper import parse_scores

    configured = settings.models.scores()
    doc = store.read_deployment()
    if doc is None:
        return dict(configured), "no deployment stored yet, the configured models"
    deployed = parse_scores(doc, f"model store {store.url}")
    return {**configured, **deployed}, f"deployment revision {doc.get('revision')}"


def _model_notes(slots: Mapping[str, ModelSlot], how: str) -> list[str]:
    """One line per score: its champion's version and where its state came from (``how``,
    else its checkpoint, else untrained), with the labels it learned."""
    out = []
    for name, slot in slots.items():
        m = slot.champion
        if how or m.origin == "fresh":
            out.append(f"{name}: {m.version} ({how or 'untrained: no checkpoint'}; {m.labels:,} labels)")
        else:
            out.append(f"{name}: {m.version} ({m.origin} from its checkpoint)")
    return out


# ------------------------------------------------------------------ CSV
def csv_text(rows: Iterable[ScoreRow]) -> str:
    """The rows as CSV with a header line.

    >>> print(csv_text([ScoreRow("c1", 0.25, 0.5, "logreg-1", "logreg-2")]), end="")
    contact_id,lead_score,churn_score,lead_model_version,churn_model_version
    c1,0.25,0.5,logreg-1,logreg-2
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows((r.contact_id, r.lead_score, r.churn_score, r.lead_model_version, r.churn_model_version)
                     for r in rows)
    return buf.getvalue()


def check_writable(out: Path) -> None:
    """Fail before the work, not after it: ``out``'s directory exists (made if need be) and
    takes files; an OSError naming the path otherwise (``-`` is stdout: always fine)."""
    if str(out) == "-":
        return
    _make_parent(out)
    if out.is_dir():
        raise _unwritable(out, "a directory")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise _unwritable(out, "permission denied")


def _make_parent(out: Path) -> None:
    """Create ``out``'s missing directories; an OSError when a file stands in the way."""
    above = next((d for d in out.parents if d.exists()), None)
    if above is not None and not above.is_dir():
        raise _unwritable(out, f"{above} is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(out, exc.strerror or str(exc)) from None


def _unwritable(out: Path, why: str) -> OSError:
    """The one-line error for an ``--out`` that cannot be written.

    >>> str(_unwritable(Path("/x/s.csv"), "permission denied"))
    '--out /x/s.csv: cannot write there: permission denied'
    """
    return OSError(f"--out {out}: cannot write there: {why}")


def write_csv(rows: Iterable[ScoreRow], out: Path, stdout: IO[str] | None = None) -> None:
    """Write the CSV to ``out`` atomically (a temporary file beside it, renamed over it:
    a reader sees the old file or the whole new one), or to ``stdout`` for ``-``;
    an OSError naming the path when it cannot be written."""
    text = csv_text(rows)
    if str(out) == "-":
        stream = stdout or sys.stdout  # looked up now: the caller may have redirected it
        stream.write(text)
        stream.flush()
        return
    check_writable(out)
    try:
        write_atomically(out, [text.encode("utf-8")])
    except OSError as exc:
        raise _unwritable(out, exc.strerror or str(exc)) from None
