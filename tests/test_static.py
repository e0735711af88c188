"""Static checks as tests: type hints hold (mypy) and no unused or undefined names (ruff).

mypy checks the package as it is installed and imported, ``touchline.*``: pyproject's
``package-dir`` maps ``touchline.flows`` to ``flows/``, ``touchline.decisions`` to
``decisions/`` and so on, which mypy cannot follow from the source folders (checked there,
every cross-package import would be a module it cannot find). The test builds that tree
itself under a temporary directory, one symlink per source file, and runs
``mypy -p touchline`` on it with the project's ``[tool.mypy]`` settings (strict on
``touchline.decisions``, ``touchline.state``, ``touchline.metrics`` and ``touchline.flows``).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["decisions", "state", "flows", "connectors", "metrics", "touchline"]


def package_sources(root: Path = ROOT) -> dict[str, Path]:
    """Each package setuptools installs (pyproject's ``packages``) -> the folder holding it."""
    setup = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = setup["package-dir"]
    out = {}
    for package in setup["packages"]:
        parts = package.split(".")
        for n in range(len(parts), 0, -1):  # the longest mapped prefix decides
            prefix = ".".join(parts[:n])
            if prefix in mapping:
                out[package] = root.joinpath(mapping[prefix], *parts[n:])
                break
        else:
            out[package] = root.joinpath(*parts)
    return out


def build_link_tree(dest: Path, root: Path = ROOT) -> Path:
    """``dest/touchline/...`` laid out as the installed package, every module a symlink to
    its source file (so mypy reports errors against ``touchline/<package>/<file>.py``)."""
    for package, source in package_sources(root).items():
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(source.iterdir()):
            if path.suffix in (".py", ".pyi") or path.name == "py.typed":
                (target / path.name).symlink_to(path)
    return dest


def run_mypy(tree: Path, *options: str, capture_output: bool = False,
             timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """``mypy -p touchline`` on ``tree`` with the project's settings. It runs from the tree:
    the working directory comes first on mypy's search path, so ``touchline`` is the tree and
    never the source folder of the same name."""
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                           "--cache-dir", str(ROOT / ".mypy_cache"), "-p", "touchline", *options],
                          cwd=tree, text=True, capture_output=capture_output, timeout=timeout)


def test_link_tree_holds_every_source_module(tmp_path):
    """Every module in a package folder is in the tree mypy checks (none left unchecked)."""
    tree = build_link_tree(tmp_path)
    linked = {p.resolve() for p in tree.rglob("*.py")}
    sources = {p.resolve() for folder in PACKAGES for p in (ROOT / folder).rglob("*.py")
               if "__pycache__" not in p.parts}
    assert sources - linked == set()
    assert (tree / "touchline" / "connectors" / "channels" / "__init__.py").resolve() == \
        ROOT / "connectors" / "channels" / "__init__.py"


def test_mypy_finds_no_type_errors(tmp_path):
    done = run_mypy(build_link_tree(tmp_path / "tree"), capture_output=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues found" in done.stdout


def test_ruff_finds_no_unused_or_undefined_names():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F,E9", *PACKAGES, "tests"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


if __name__ == "__main__":  # the type check alone: python tests/test_static.py [mypy options]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(run_mypy(build_link_tree(Path(tmp)), *sys.argv[1:]).returncode)
