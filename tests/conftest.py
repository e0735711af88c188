"""Shared fixtures: small, fast settings for end-to-end runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from touchline.settings import Settings, load_settings


@pytest.fixture
def small_settings(tmp_path: Path):
    """A factory for settings of a small simulated run writing under tmp_path."""

    def make(out: str = "out", **overrides) -> Settings:
        base = {
            "simulator.contacts": 200,
            "simulator.days": 14,
            "output.dir": tmp_path / out,
            "metrics.enabled": False,
        }
        base.update(overrides)
        return load_settings(None, base)

    return make
