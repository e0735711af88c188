"""The one base class of the errors Touchline raises on purpose.

Every error class of the package derives from :class:`TouchlineError` (and from the
built-in class it always was, so ``except ValueError`` keeps working): an entry point
catches ``TouchlineError`` to report a clear one-line error, and anything else is a bug.

>>> class ExampleError(TouchlineError, ValueError):
...     '''An example.'''
>>> isinstance(ExampleError("x"), (TouchlineError, ValueError))
True
"""

from __future__ import annotations

import difflib
from typing import Iterable


class TouchlineError(Exception):
    """Base of every error Touchline raises on purpose (see the module docstring)."""


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """``did you mean 'x'?`` when ``value`` is a near miss of one of ``choices``, else ``""``.

    >>> did_you_mean("emial", ["email", "sms"]), did_you_mean("fax", ["email", "sms"])
    ("did you mean 'email'?", '')
    """
    close = close_match(value, choices)
    return f"did you mean {close!r}?" if close else ""


def close_match(value: object, choices: Iterable[str]) -> str | None:
    """The one of ``choices`` that ``value`` most likely misspells, if any is close."""
    close = difflib.get_close_matches(str(value), sorted(set(choices)), n=1, cutoff=0.6)
    return close[0] if close else None
