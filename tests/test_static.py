"""Static checks as tests: type hints hold (mypy) and no unused or undefined names (ruff)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["decisions", "state", "flows", "connectors", "metrics", "touchline"]


def test_mypy_finds_no_type_errors():
    done = subprocess.run([sys.executable, "-m", "mypy", *PACKAGES], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_finds_no_unused_or_undefined_names():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F,E9", *PACKAGES, "tests"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
