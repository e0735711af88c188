"""Files replaced whole: a reader sees the old file or the complete new one, never half.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     out = Path(d, "a.txt")
...     write_atomically(out, [b"one\\n", b"two\\n"])
...     out.read_bytes(), sorted(p.name for p in Path(d).iterdir())
(b'one\\ntwo\\n', ['a.txt'])
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable


def write_atomically(out: Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to a temporary file beside ``out``, flushed to disk, then renamed over
    ``out``; on any failure (or an interruption) the temporary file is removed and ``out`` is
    left as it was. OSErrors are the caller's to word."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
