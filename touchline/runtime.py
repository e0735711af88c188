"""How the engine flow executes: Bytewax's production runtime, with recovery, on one or
several processes.

Every run goes through ``bytewax.run.cli_main`` (what ``python -m bytewax.run`` calls);
``bytewax.testing.run_main`` is left to the tests. With Kafka in and a networked state
store, recovery is on: Bytewax snapshots each Kafka partition's offset at every epoch
(``runtime.snapshot_seconds``), and a restart resumes at the last completed epoch, so
catch-up is proportional to what arrived since then, not to the topic. What the replay
re-reads is made harmless by the state store (event ids) and the outbox (decisions
committed with the state are emitted again, with the same ids).

``--processes N`` on one host starts N copies of this command, each one Bytewax process
of one worker (``-i``/``-a`` in Bytewax's terms, on loopback ports), and stops them all
when one fails, so a supervisor restarts the whole cluster.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from touchline.decisions.errors import TouchlineError

if TYPE_CHECKING:
    from bytewax.dataflow import Dataflow
    from bytewax.recovery import RecoveryConfig

    from touchline.settings import Settings
    from touchline.state.base import StateStore

log = logging.getLogger(__name__)


def recovers(settings: "Settings") -> bool:
    """Recovery applies where a restart can resume: Kafka in, state in a shared store."""
    return (settings.runtime.recovery and settings.source.kind == "kafka"
            and not settings.state.url.startswith("memory"))


def recovery_dir(settings: "Settings") -> Path:
    return settings.runtime.recovery_dir or settings.output.dir / "recovery"


def process_count(settings: "Settings") -> int:
    rt = settings.runtime
    return len(rt.addresses) if rt.addresses else 1


def prepare_recovery(settings: "Settings") -> bool:
    """Create the recovery partitions on first start; True if they existed (a resume).

    Safe when several processes start at once on one directory (a file lock)."""
    directory = recovery_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".touchline.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if any(directory.glob("part-*.sqlite3")):
            return True
        from bytewax.recovery import init_db_dir

        init_db_dir(directory, max(1, settings.runtime.processes, process_count(settings)))
        return False


def adopt_epoch(store: "StateStore", marker: Path) -> str:
    """Tie the recovery directory to the store it was made with: the store's epoch mark is
    kept beside the snapshots, so a resume finds out when the store lost its data (or is
    another one) instead of replaying a snapshot over state that is not there."""
    with open(marker.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        expected = marker.read_text().strip() if marker.exists() else None
        epoch = store.claim_epoch(expected or None)
        if expected is None:
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(epoch + "\n")
            os.replace(tmp, marker)
        return epoch


def recovery_config(settings: "Settings") -> "RecoveryConfig":
    from bytewax.recovery import RecoveryConfig

    return RecoveryConfig(str(recovery_dir(settings)), timedelta(seconds=settings.runtime.backup_seconds))


def execute(flow: "Dataflow", settings: "Settings", recovery: bool) -> None:
    """Run ``flow`` to its end on Bytewax's runtime (this process's part of the cluster)."""
    from bytewax.run import cli_main

    rt = settings.runtime
    cli_main(flow, workers_per_process=1, process_id=rt.process_id, addresses=rt.addresses or None,
             epoch_interval=timedelta(seconds=rt.snapshot_seconds),
             recovery_config=recovery_config(settings) if recovery else None)


def hold(settings: "Settings") -> Any:
    """For the whole run: this process id's lock on the recovery directory (when recovering)."""
    if not recovers(settings):
        return _nothing()
    recovery_dir(settings).mkdir(parents=True, exist_ok=True)
    return _running(settings)


class RecoveryDirInUse(TouchlineError, RuntimeError):
    """Another engine process with the same process id runs on this recovery directory."""


@contextmanager
def _running(settings: "Settings") -> Iterator[None]:
    """Hold this process id's lock on the recovery directory while running: two engines
    resuming from one snapshot would both replay it and write over each other's snapshots."""
    index = settings.runtime.process_id or 0
    path = recovery_dir(settings) / f".touchline-process-{index}.lock"
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise RecoveryDirInUse(
                f"recovery directory {recovery_dir(settings)} is in use by another engine process "
                f"(process id {index}, pid {lock.read().strip() or '?'}); run several processes with "
                "--processes N, or give each engine its own --recovery-dir") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield


@contextmanager
def _nothing() -> Iterator[None]:
    yield


# ------------------------------------------------------------------ several processes, one host
def free_ports(n: int) -> list[int]:
    """``n`` ports free on loopback now (for the processes' exchange addresses)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


#: Options the parent sets for each child itself.
_CHILD_OPTIONS = ("--processes", "--metrics-port", "--process-id", "--addresses", "--out", "--recovery-dir")


def without_options(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    """``argv`` without the options ``names`` and their values (``--opt v`` or ``--opt=v``), for
    a parent to set them for each child itself.

    >>> without_options(["run", "--processes", "2", "--out=o", "--kafka", "k"], ("--processes", "--out"))
    ['run', '--kafka', 'k']
    """
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg.split("=", 1)[0] in names:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def child_argv(argv: Sequence[str], index: int, addresses: list[str], metrics_port: int | None,
               where: Sequence[str] = ()) -> list[str]:
    """This command's arguments for process ``index``: without ``--processes``, with its id and
    ``where`` it writes (``--out``, ``--recovery-dir``: one run directory for all of them).

    >>> child_argv(["run", "--kafka", "k:9", "--processes", "2", "--metrics-port=9464"], 1, ["a:1", "a:2"], 9465)
    ['run', '--kafka', 'k:9', '--process-id', '1', '--addresses', 'a:1,a:2', '--metrics-port', '9465']
    >>> child_argv(["run", "--out", "o", "--processes=2"], 0, ["a:1", "a:2"], None, ["--out", "o/runs/r"])
    ['run', '--process-id', '0', '--addresses', 'a:1,a:2', '--out', 'o/runs/r']
    """
    out = without_options(argv, _CHILD_OPTIONS)
    out += ["--process-id", str(index), "--addresses", ",".join(addresses)]
    if metrics_port is not None:
        out += ["--metrics-port", str(metrics_port)]
    return out + list(where)


def run_processes(settings: "Settings", argv: Sequence[str], where: Sequence[str] = ()) -> int:
    """Start ``runtime.processes`` engine processes on this host, writing ``where`` says, and wait
    for them; the first to fail stops the others. Returns the worst exit code."""
    from touchline.logs import console

    count = settings.runtime.processes
    _preflight(settings)
    if recovers(settings):
        prepare_recovery(settings)
    addresses = [f"127.0.0.1:{p}" for p in free_ports(count)]
    port = settings.metrics.port if settings.metrics.enabled else None
    children: list[subprocess.Popen[Any]] = []
    for i in range(count):
        metrics_port = None if port is None else (0 if port == 0 else port + i)
        cmd = [sys.executable, "-m", "touchline", *child_argv(argv, i, addresses, metrics_port, where)]
        children.append(subprocess.Popen(cmd, env={**os.environ, "TOUCHLINE_RUNTIME__PROCESSES": "1"},
                                         preexec_fn=die_with_parent))
    console(f"touchline: {count} processes (pids {', '.join(str(c.pid) for c in children)}) exchanging on "
            f"{', '.join(addresses)}", pids=[c.pid for c in children], addresses=addresses)
    return supervise(children)


def die_with_parent() -> None:
    """In a child, before it runs: SIGTERM it when this parent dies, even by SIGKILL (Linux
    prctl), so a killed group leaves no engine running on its own."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the supervisor's own signal forwarding remains
        pass


def _preflight(settings: "Settings") -> None:
    """The broker and the store answer: one error for the group, not one per process."""
    from touchline.connectors.kafka import check_cluster
    from touchline.state import open_store

    check_cluster(settings.kafka.client_config(), settings.kafka.connect_timeout_seconds)
    open_store(settings.state.url, settings.state.options()).close()


def supervise(children: list[subprocess.Popen[Any]]) -> int:
    """Wait for ``children``, passing SIGINT and SIGTERM on to them; the first that fails (not
    0, 130 or 143) stops the others. Returns the worst exit code (:func:`worst_exit`)."""
    forwarded: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        forwarded.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    from touchline.logs import console

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(c.poll() is None for c in children):
            failed = [c for c in children if c.poll() not in (None, *CLEAN_EXITS)]
            if failed and not forwarded:
                console(f"touchline: process {failed[0].pid} exited with {failed[0].returncode}; stopping the others",
                        level="error", pid=failed[0].pid, exit_code=failed[0].returncode)
                forward(signal.SIGTERM, None)
                _reap(children, 30.0)
                break
            time.sleep(0.2)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return worst_exit([c.wait() for c in children])


#: Exit codes of a process that ended cleanly: done, stopped by Ctrl-C (130) or SIGTERM (143).
CLEAN_EXITS = (0, 130, 143)


def worst_exit(codes: list[int]) -> int:
    """A failure wins over a stop by a signal (the others were stopped because of it), which
    wins over success; a SIGTERM over a Ctrl-C.

    >>> worst_exit([143, 1, 143]), worst_exit([0, 130]), worst_exit([143, 130]), worst_exit([0, 0])
    (1, 130, 143, 0)
    """
    failed = [c for c in codes if c not in CLEAN_EXITS]
    if failed:
        return 1 if any(c < 0 for c in failed) else max(failed)
    return max(codes, default=0)


def _reap(children: list[subprocess.Popen[Any]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()

