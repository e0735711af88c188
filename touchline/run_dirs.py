"""Run directories: every ``touchline run`` writes to a fresh directory of its own, so no
run's outputs are lost to another one, and ``latest`` names the run that is current.

    touchline-out/
      runs/20260105T093012.481Z-3fa9c1/   decisions.jsonl, experiments.jsonl, summary.json, models/, ...
      runs/20260105T094501.007Z-b70e2d/
      latest -> runs/20260105T094501.007Z-b70e2d   (a symlink; a one-line text file where symlinks fail)
      recovery/                         Bytewax snapshots of a production run (kept across runs)

A run's directory is created when it starts and ``latest`` is moved to it (atomically)
when it ends with a summary (done or stopped by a signal); a run that fails at start leaves
nothing behind, one that fails later keeps its directory (its dead letters, say) without
becoming ``latest``. The oldest directories beyond ``output.keep_runs`` are removed when a
run ends: never the one ``latest`` names, nor one an engine still writes to. Readers
(``touchline report``, ``touchline models ...``, ``contact erase``) given such a root read
the run ``latest`` names.

>>> run_id(datetime(2026, 1, 5, 9, 30, 12, 481_999, tzinfo=timezone.utc), "3fa9c1")
'20260105T093012.481Z-3fa9c1'
>>> is_run_id('20260105T093012.481Z-3fa9c1'), is_run_id('20260105T093012Z-3fa9c1'), is_run_id('notes')
(True, True, False)
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

from touchline.erasure_outputs import LOCK_NAME
from touchline.settings import ConfigError

log = logging.getLogger(__name__)

RUNS, LATEST, RECOVERY = "runs", "latest", "recovery"
#: ids of earlier versions have no milliseconds; they still sort among the rest by their second
_RUN_ID = re.compile(r"\d{8}T\d{6}(\.\d{3})?Z-[0-9a-f]{6}")
_STEP = timedelta(milliseconds=1)


def run_id(now: datetime | None = None, suffix: str | None = None) -> str:
    """A new run's id: its UTC start time to the millisecond (so ids sort by time) and a short
    random part (so two processes starting at once do not collide)."""
    at = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return f"{at:%Y%m%dT%H%M%S}.{at.microsecond // 1000:03d}Z-{suffix or secrets.token_hex(3)}"


def is_run_id(name: str) -> bool:
    return _RUN_ID.fullmatch(name) is not None


def is_root(path: Path) -> bool:
    """Whether ``path`` holds run directories (``runs/`` or a ``latest`` pointer)."""
    latest = path / LATEST
    return (path / RUNS).is_dir() or latest.is_symlink() or latest.exists()


def latest(root: Path) -> Path | None:
    """The run directory ``root/latest`` names (a symlink, or a text file holding the path
    relative to ``root``); None without one, or when the run it names is gone."""
    pointer = root / LATEST
    if pointer.is_symlink():
        target = root / os.readlink(pointer)
    elif pointer.is_file():
        target = root / pointer.read_text(encoding="utf-8").strip()
    else:
        return None
    return target if target.is_dir() else None


def resolve(path: Path) -> Path:
    """What a reader reads for ``path``: the run ``latest`` names when ``path`` is a root of run
    directories, else ``path`` itself."""
    return latest(path) or path


def in_use(run_dir: Path) -> bool:
    """Whether an engine holds the run directory (its shared lock on the outputs, taken for the
    whole run; see :mod:`touchline.erasure_outputs`)."""
    lock_path = run_dir / LOCK_NAME
    if not lock_path.exists():
        return False
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
    return False


def runs(root: Path) -> list[Path]:
    """The run directories under ``root``, oldest first (other entries are not ours: ignored)."""
    folder = root / RUNS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and is_run_id(p.name))


def holds_nothing(run_dir: Path) -> bool:
    """Whether a run directory holds no output (only the engines' lock files): what processes
    that all failed at start leave.

    >>> import tempfile; d = Path(tempfile.mkdtemp()); (d / LOCK_NAME).touch()
    >>> holds_nothing(d), holds_nothing(d / "absent")
    (True, True)
    """
    return not any(p.is_file() and p.name != LOCK_NAME for p in run_dir.rglob("*"))


def current(root: Path) -> Path:
    """The run a model command means: the newest one an engine is running in, else ``latest``
    (else ``root`` itself: a directory written by ``--out DIR``)."""
    for run_dir in reversed(runs(root)):
        if in_use(run_dir):
            return run_dir
    return resolve(root)


def check_root(root: Path) -> None:
    """Refuse a root whose ``latest`` or ``runs`` cannot be what this module makes of them, before
    the run starts (so its end cannot fail on it)."""
    pointer, folder = root / LATEST, root / RUNS
    if pointer.is_dir() and not pointer.is_symlink():
        raise ConfigError(f"output.dir {root}: {pointer} is a directory, not the pointer to the latest run; "
                          "move it away")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output.dir {root}: {folder} is not a directory; move it away")
    if root.exists() and not root.is_dir():
        raise ConfigError(f"output.dir {root}: not a directory")


def new_run(root: Path) -> Path:
    """The path of a new run directory under ``root`` (not created: a failed start leaves nothing),
    named to sort after every run already there: pruning removes the oldest by name, so a run
    started within the same millisecond as the last one (or after the clock stepped back) is
    stamped a millisecond after it rather than before it."""
    check_root(root)
    existing = runs(root)
    at = datetime.now(timezone.utc)
    if existing:
        at = max(at, _started(existing[-1].name) + _STEP)
    while True:
        path = root / RUNS / run_id(at)
        if not path.exists():
            return path
        at += _STEP


def _started(name: str) -> datetime:
    """The start time a run id names (ids of earlier versions: the end of their second).

    >>> _started('20260105T093012.481Z-3fa9c1').isoformat(), _started('20260105T093012Z-3fa9c1').isoformat()
    ('2026-01-05T09:30:12.481000+00:00', '2026-01-05T09:30:12.999000+00:00')
    """
    stamp = name.split("Z-")[0]
    whole, _, millis = stamp.partition(".")
    at = datetime.strptime(whole, "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
    return at + timedelta(milliseconds=int(millis) if millis else 999)


def point_latest(root: Path, run_dir: Path) -> None:
    """Make ``root/latest`` name ``run_dir``, atomically (a temporary pointer renamed over it): a
    reader sees the old run or the new one, never none. A symlink where the file system allows
    one, else a text file holding the path."""
    relative = run_dir.relative_to(root)
    tmp = root / f".{LATEST}.{os.getpid()}.{secrets.token_hex(3)}"
    try:
        os.symlink(relative, tmp, target_is_directory=True)
    except OSError:
        tmp.write_text(f"{relative}\n", encoding="utf-8")
    try:
        os.replace(tmp, root / LATEST)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def prune(root: Path, keep: int) -> list[Path]:
    """Remove the oldest run directories beyond the newest ``keep`` (0: keep all); never the one
    ``latest`` names nor one an engine writes to. Returns those removed."""
    if keep <= 0:
        return []
    protected = latest(root)
    removed = []
    for run_dir in runs(root)[:-keep]:
        if run_dir == protected or in_use(run_dir):
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        removed.append(run_dir)
    return removed


def models_of(path: Path) -> Path:
    """The model directory a ``--resume-models`` path stands for: a model directory itself
    (``deployment.json`` in it), a run directory (its ``models/``), or a root (its latest
    run's); ConfigError naming the path when there is none."""
    if (path / "deployment.json").is_file():
        return path
    run_dir = resolve(path)
    models = run_dir / "models"
    if (models / "deployment.json").is_file():
        return models
    if not path.exists():
        raise ConfigError(f"--resume-models {path}: no such directory")
    raise ConfigError(f"--resume-models {path}: no models there (neither {path}/deployment.json nor "
                      f"{models}/deployment.json; a run with models.store = auto keeps them in its models/)")


def copy_models(source: Path, target: Path) -> None:
    """Start ``target`` (a run's model directory) as a copy of ``source``, so the new run continues
    from those models while ``source``'s run keeps its own, unchanged."""
    if target.resolve() == source.resolve():
        return
    tmp = target.with_name(f".{target.name}.copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(".*"))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
