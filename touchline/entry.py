"""The ``touchline`` command's entry: SIGTERM ends it from the first instant, not only once the
command is loaded.

A process started as PID 1 (a container without ``--init``) ignores every signal it has no
handler for. Loading the commands takes about half a second, so ``docker stop`` right after
``docker run`` used to wait the whole grace period and then kill. This module imports nothing
heavy: it installs a handler that exits 143 (nothing is open or written yet), then loads the
commands, whose own handlers replace it (:mod:`touchline.stop_signals`, then ``run``'s
graceful one).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Literal

EXIT_TERMINATED = 143
MESSAGE = "touchline: terminated"


def main() -> int:
    """Install the early SIGTERM handler, then run the command line."""
    signal.signal(signal.SIGTERM, terminated_while_loading)
    from touchline.cli import main as run_command_line

    return run_command_line()


def terminated_while_loading(signum: int, frame: FrameType | None) -> None:
    """SIGTERM before the command runs: say so and exit 143. It may interrupt any import half
    way, so it imports nothing: the line is written by hand (a JSON object like
    :func:`touchline.logs.json_line`'s when JSON logs are asked for)."""
    sys.stderr.write(terminated_line(asked_format(sys.argv[1:]), time.time()) + "\n")
    sys.stderr.flush()
    os._exit(EXIT_TERMINATED)


def terminated_line(log_format: str, now: float) -> str:
    """The line a SIGTERM while loading writes.

    >>> terminated_line("text", 0.0)
    'touchline: terminated'
    >>> terminated_line("json", 1767614400.25)
    '{"ts":"2026-01-05T12:00:00.250+00:00","level":"error","logger":"touchline","message":"touchline: terminated","exit_code":143}'
    """
    if log_format != "json":
        return MESSAGE
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}+00:00"
    return (f'{{"ts":"{ts}","level":"error","logger":"touchline","message":"{MESSAGE}",'
            f'"exit_code":{EXIT_TERMINATED}}}')


def asked_format(argv: Sequence[str]) -> Literal["text", "json"]:
    """The log format asked for before the arguments are parsed (so a usage error can follow
    it): ``--log-format json`` or TOUCHLINE_LOGGING__FORMAT=json.

    >>> asked_format(["run", "--log-format", "json"]), asked_format(["run", "--log-format=json"]), asked_format(["run"])
    ('json', 'json', 'text')
    """
    flags = list(argv)
    wanted = os.environ.get("TOUCHLINE_LOGGING__FORMAT", "text").strip().lower()
    for i, arg in enumerate(flags):
        if arg.startswith("--log-format="):
            wanted = arg.partition("=")[2]
        elif arg == "--log-format" and i + 1 < len(flags):
            wanted = flags[i + 1]
    return "json" if wanted == "json" else "text"


if __name__ == "__main__":
    sys.exit(main())
