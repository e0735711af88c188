"""SIGTERM before a command's own handler is up: stop at once, with the exit code a shell expects.

A process started as PID 1 (the engine in a container without ``--init``) ignores every
signal it installed no handler for, so ``docker stop`` during start-up (a broker being
waited for, a store retried) waited its full grace period and then killed. Commands install
this first; ``touchline run`` replaces it with its graceful one while it processes.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


def aborted(signum: int) -> KeyboardInterrupt:
    """A KeyboardInterrupt (no ``except Exception`` on its way can swallow it) that names the
    signal (``signum``), so the exit code can.

    >>> aborted(signal.SIGTERM).signum == signal.SIGTERM
    True
    """
    exc = KeyboardInterrupt(signal.Signals(signum).name)
    exc.signum = signum  # type: ignore[attr-defined]
    return exc


def _abort(signum: int, frame: FrameType | None) -> None:
    raise aborted(signum)


@contextmanager
def sigterm_aborts() -> Iterator[None]:
    """While the block runs, SIGTERM raises :func:`aborted`; the previous handler comes back
    after (a test calling ``main()`` keeps its own). Only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _abort)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
