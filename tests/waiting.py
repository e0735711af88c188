"""Waiting in tests for something a running engine or server will do."""

from __future__ import annotations

import time
from typing import Any, Callable


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 30.0, interval: float = 0.2) -> Any:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy, and
    return that; fail naming ``what`` and the last answer after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last answer {last!r}")
