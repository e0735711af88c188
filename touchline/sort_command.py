"""``touchline sort FILE --out SORTED``: a file of events rewritten in event-time order.

A stream takes events in the order given. An export sorted by customer (or by anything but
time) replayed with ``touchline run --input`` finds most customers' events late or far ahead
of the event clock, and dead-letters them. Sorting it first fixes that; ``touchline scores
--input`` sorts by itself. The sort is stable (events at one time keep the file's order),
keeps invalid lines after the valid line before them (the run dead-letters them as before),
drops blank lines, costs 16 bytes of memory a line, and replaces ``--out`` atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from touchline.atomic_file import write_atomically
from touchline.logs import console
from touchline.time_order import TimeOrdered, input_problem

EXIT_USAGE, EXIT_FAILED = 2, 1


def add_parser(subparsers: "argparse._SubParsersAction[Any]") -> None:
    """Add the ``sort`` subcommand to the ``touchline`` parser."""
    p = subparsers.add_parser(
        "sort", help="rewrite a file of events in event-time order (for a replay with run --input)",
        description="Write FILE's events in event-time order (a stable sort: events at one time keep the file's "
        "order; invalid lines stay after the valid line before them; blank lines are dropped). A stream takes "
        "events in the order given, so an export sorted by customer loses most events as late when replayed "
        "with 'touchline run --input'; sort it first. 'touchline scores --input' sorts by itself.")
    p.add_argument("input", type=Path, metavar="FILE", help="events, JSONL (the event contract)")
    p.add_argument("--out", required=True, type=Path, metavar="SORTED",
                   help="file to write (replaced atomically; not FILE itself)")


def main(args: argparse.Namespace) -> int:
    """Run ``touchline sort``: 0 when written, 2 for a bad input or output, 1 when writing fails."""
    problem = _problem(args.input, args.out)
    if problem is not None:
        console(f"touchline sort: {problem}", level="error")
        return EXIT_USAGE
    replay = TimeOrdered.scan(args.input, until_ms=2**63 - 1, contacts=False)
    try:
        write_atomically(args.out, (line + b"\n" for line in replay.lines()))
    except OSError as exc:
        console(f"touchline sort: cannot write {args.out}: {exc.strerror or exc}", level="error")
        return EXIT_FAILED
    moved = "reordered by event time" if replay.reordered else "already in event-time order, copied"
    console(f"wrote {len(replay):,} lines of {args.input} to {args.out} ({moved})")
    return 0


def _problem(source: Path, out: Path) -> str | None:
    """What stops the sort before it starts, or None."""
    problem = input_problem(source)
    if problem is not None:
        return problem
    if out.exists() and out.resolve() == source.resolve():
        return f"--out {out} is FILE itself: write the sorted events to another file"
    if not out.parent.is_dir():
        return f"--out {out}: no such directory {out.parent}"
    return None
