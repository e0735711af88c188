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
from types import FrameType

EXIT_TERMINATED = 143


def main() -> int:
    """Install the early SIGTERM handler, then run the command line."""
    signal.signal(signal.SIGTERM, terminated_while_loading)
    from touchline.cli import main as run_command_line

    return run_command_line()


def terminated_while_loading(signum: int, frame: FrameType | None) -> None:
    """SIGTERM before the command runs: say so (as JSON when JSON logs are asked for) and exit 143."""
    try:
        from touchline import logs

        logs.configure(fmt=logs.asked_format(sys.argv[1:]))
        logs.console("touchline: terminated", level="error", exit_code=EXIT_TERMINATED)
    except Exception:  # noqa: BLE001 - caught while that very module loads: the plain line
        sys.stderr.write("touchline: terminated\n")
        sys.stderr.flush()
    os._exit(EXIT_TERMINATED)


if __name__ == "__main__":
    sys.exit(main())
