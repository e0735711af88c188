"""What an erasure leaves outside the state store: a run's JSONL outputs and the Kafka topics.

``touchline contact erase ID`` lists them; with ``--outputs DIR`` it rewrites the JSONL
files in DIR (and in each run directory under it, ``runs/<id>/``) without the lines that mention the contact or its anonymous ids. A run holds a
shared lock on its output directory (:func:`writing_outputs`) for as long as it writes
there; the rewrite takes it exclusively, so it refuses while an engine runs on the
directory (an engine appending to a file replaced under it would write into the old,
unlinked copy: those lines would be lost, the erased ones not), and a run starting
during a rewrite waits for it.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from touchline.decisions.errors import TouchlineError
from touchline.state.erasure import erased_lines

if TYPE_CHECKING:
    from touchline.settings import Settings

#: The lock a run holds (shared) on its output directory while it writes there.
LOCK_NAME = ".touchline-outputs.lock"


class OutputsInUse(TouchlineError, RuntimeError):
    """An engine is writing to the output directory."""


@contextmanager
def writing_outputs(out_dir: Path) -> Iterator[None]:
    """For a whole run: a shared lock on its output directory (several processes of one
    deployment share it; ``contact erase --outputs`` waits for none of them)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK_NAME, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield


def output_dirs(out_dir: Path) -> list[Path]:
    """The directories runs wrote to in ``out_dir``: itself and, when it holds run directories
    (``touchline run`` without ``--out``), each ``runs/<id>/``."""
    runs = out_dir / "runs"
    kept = sorted(p for p in runs.iterdir() if p.is_dir() and not p.is_symlink()) if runs.is_dir() else []
    return [out_dir, *kept]


def jsonl_outputs(out_dir: Path) -> list[Path]:
    """The JSONL files runs wrote in the output directory (and in every run directory under it):
    decisions (and decisions emitted again from the outbox), experiments, dead letters, the
    simulator's events, and the file channel connectors' ``outbox/<channel>.jsonl`` (the API's:
    ``api-outbox/``, ``worker-<n>-outbox/``)."""
    if not out_dir.is_dir():
        return []
    found = [p for d in output_dirs(out_dir) for p in (*d.glob("*.jsonl"), *d.glob("*outbox/*.jsonl"))]
    return sorted(p for p in found if p.is_file())


def count_mentions(out_dir: Path, ids: Iterable[str]) -> dict[Path, int]:
    """Lines mentioning any of ``ids``, per JSONL output (files without any are left out)."""
    ids = list(ids)
    out = {}
    for path in jsonl_outputs(out_dir):
        with path.open("rb") as f:
            n = sum(erased_lines(f, ids))
        if n:
            out[path] = n
    return out


def rewrite_without(out_dir: Path, ids: Iterable[str]) -> dict[Path, int]:
    """Rewrite each JSONL output that mentions any of ``ids`` without those lines (a temporary
    file beside it, fsynced, then renamed over it: a reader sees the old file or the new one);
    files that mention none are not touched. Returns the lines removed per file. Raises
    :class:`OutputsInUse` while a run holds the directory."""
    ids = list(ids)
    with ExitStack() as held:
        for directory in output_dirs(out_dir):
            held.enter_context(_exclusive(directory))
        removed = {}
        for path, n in count_mentions(out_dir, ids).items():
            _rewrite(path, ids)
            removed[path] = n
        return removed


@contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """The directory's output lock, exclusively; :class:`OutputsInUse` while a run holds it."""
    lock_path = directory / LOCK_NAME
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputsInUse(f"an engine is writing to {directory} (it holds {lock_path}); stop it, or run "
                               "this again once it has finished") from None
        yield


def _rewrite(path: Path, ids: list[str]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".erasing", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out, path.open("rb") as src:
            for line in src:
                if not erased_lines([line], ids)[0]:
                    out.write(line)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def kafka_notes(settings: "Settings", contact_id: str) -> list[str]:
    """What the configured Kafka topics may still hold about the contact, and how to remove it."""
    ks = settings.kafka
    if not ks.bootstrap:
        return []
    keyed = [ks.decisions_topic, ks.experiments_topic, *([ks.no_actions_topic] if settings.audit.no_action_share > 0 else []),
             *settings.delivery.kafka_topics(ks.channel_topic_prefix).values()]
    return [
        f"Kafka at {ks.bootstrap} may still hold the contact:",
        f"  keyed by contact id {contact_id!r}: {', '.join(keyed)}",
        f"  keyed by contact or anonymous id (as Touchline's producers key them): {ks.events_topic}",
        f"  {ks.dead_letter_topic}: failed deliveries keyed by contact id; invalid events not keyed (they leave "
        "only with the topic's retention.ms)",
        "  on a compacted topic (cleanup.policy=compact), producing a tombstone, a record with the contact's key "
        "and a null value, removes its records at the next compaction; other topics drop them only when "
        "retention.ms has passed (see README, Erasure)",
    ]
