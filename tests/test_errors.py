"""One error base class: every exception class the package defines derives from TouchlineError,
so an entry point can tell an error raised on purpose (one clear line) from a bug."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from touchline.decisions.errors import TouchlineError


PACKAGES = ("touchline", "touchline.decisions", "touchline.state", "touchline.connectors", "touchline.metrics",
            "touchline.flows")


def _modules() -> list[str]:
    """Every module of the package (the subpackages live in their own folders: see pyproject's package-dir)."""
    names = set()
    for package in PACKAGES:
        path = importlib.import_module(package).__path__
        names.update(m.name for m in pkgutil.walk_packages(path, package + ".") if not m.name.endswith("__main__"))
    return sorted(names)


def test_every_error_class_of_the_package_derives_from_touchline_error():
    found, stray = [], []
    for name in _modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, BaseException):
                found.append(f"{name}.{cls.__name__}")
                if not issubclass(cls, TouchlineError):
                    stray.append(f"{name}.{cls.__name__}")
    assert len(found) > 15, found  # the walk saw the package's modules
    assert stray == [], f"error classes outside TouchlineError: {stray}"
