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


class TouchlineError(Exception):
    """Base of every error Touchline raises on purpose (see the module docstring)."""
