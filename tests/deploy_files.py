"""Readers for what the repository ships to deploy the engine (Dockerfile, .dockerignore,
deploy/compose.yaml and the files it mounts), for tests/test_deploy_files.py. Docker cannot
run here, so the tests read these files the way Docker and Compose would."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
EXAMPLE_ENV = DEPLOY / "example.env"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK = ROOT / "requirements.lock"

_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[?-])((?:[^{}]|\{[^{}]*\})*))?\}|\$(\w+)")


class Unset(ValueError):
    """A required Compose variable (``${VAR:?message}``) with no value."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``,
    ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``.

    >>> interpolate("a ${X:-b} $$Y ${Z}", {"Z": "z"})
    'a b $Y z'
    >>> interpolate("${P:?set P}", {"P": ""})
    Traceback (most recent call last):
    ...
    deploy_files.Unset: P: set P
    """
    def one(m: re.Match[str]) -> str:
        if m.group() == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        value = env.get(name)
        missing = value is None or (op is not None and op.startswith(":") and value == "")
        if op and op.endswith("?") and missing:
            raise Unset(f"{name}: {arg}")
        if op and op.endswith("-") and missing:
            return arg
        return value or ""
    return _VARIABLE.sub(one, text)


def interpolated(node: Any, env: Mapping[str, str]) -> Any:
    """Every string of a parsed YAML tree interpolated."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolated(x, env) for x in node]
    if isinstance(node, dict):
        return {k: interpolated(v, env) for k, v in node.items()}
    return node


def variables(text: str) -> set[str]:
    """The variable names a Compose file uses (``$$`` is an escaped dollar, not one)."""
    return {m.group(1) or m.group(4) for m in _VARIABLE.finditer(text) if m.group() != "$$"}


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a Compose .env file (comments and blank lines skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: {line!r} is not KEY=VALUE"
            out[key.strip()] = value.strip()
    return out


def compose(env: Mapping[str, str]) -> dict[str, Any]:
    """deploy/compose.yaml parsed and interpolated with ``env``."""
    return interpolated(yaml.safe_load(COMPOSE.read_text()), env)


@dataclass
class Mount:
    source: str  # a named volume, or a host path relative to deploy/
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/"))

    def host_path(self) -> Path:
        return (DEPLOY / self.source).resolve()


def mounts(service: Mapping[str, Any]) -> list[Mount]:
    """A service's volumes in Compose's short syntax (SOURCE:TARGET[:ro])."""
    out = []
    for spec in service.get("volumes", []):
        parts = spec.split(":")
        assert len(parts) in (2, 3), f"volume {spec!r}: expected SOURCE:TARGET[:ro]"
        out.append(Mount(parts[0], parts[1], parts[2:] == ["ro"]))
    return out


def host_path(service: Mapping[str, Any], container_path: str) -> Path | None:
    """Where a path inside a service's container comes from on this checkout: the bind mount
    with the longest target that holds it (None when no bind mount does)."""
    path = PurePosixPath(container_path)
    best = None
    for m in mounts(service):
        target = PurePosixPath(m.target)
        if m.is_bind and (path == target or target in path.parents):
            if best is None or len(target.parts) > len(PurePosixPath(best.target).parts):
                best = m
    if best is None:
        return None
    return best.host_path() / path.relative_to(best.target)


def published(service: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """A service's ports as (host address, host port, container port)."""
    out = []
    for spec in service.get("ports", []):
        address, host, container = str(spec).rsplit(":", 2) if str(spec).count(":") == 2 else ("", *str(spec).split(":"))
        out.append((address, int(host), int(container)))
    return out


# ----------------------------------------------------------------------------- Dockerfile
@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def all(self, instruction: str) -> list[str]:
        return [args for inst, args in self.instructions if inst == instruction]


def dockerfile_stages(text: str | None = None) -> list[Stage]:
    """The Dockerfile's stages, each with its instructions (continuation lines joined,
    comments dropped)."""
    text = DOCKERFILE.read_text() if text is None else text
    lines, current = [], ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        if raw.lstrip().startswith("#"):
            continue
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            lines.append(current.strip())
        current = ""
    stages: list[Stage] = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, words[0]))
        else:
            assert stages, f"{instruction} before FROM"
            stages[-1].instructions.append((instruction, args.strip()))
    return stages


def stage_env(stages: list[Stage], name: str) -> dict[str, str]:
    """The ENV a stage ends with, its base stages' included."""
    by_name = {s.name: s for s in stages}
    chain, stage = [], by_name[name]
    while True:
        chain.append(stage)
        if stage.base not in by_name:
            break
        stage = by_name[stage.base]
    env: dict[str, str] = {}
    for s in reversed(chain):
        for args in s.all("ENV"):
            for word in shlex.split(args):
                key, sep, value = word.partition("=")
                assert sep, f"ENV {args!r}: use KEY=VALUE"
                env[key] = value
    return env


def exec_form(args: str) -> list[str]:
    """A CMD/ENTRYPOINT/HEALTHCHECK CMD in exec (JSON) form."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(x, str) for x in value), f"not exec form: {args}"
    return value


def copy_sources(stage: Stage) -> list[str]:
    """The build-context paths a stage COPYs (COPY --from=... copies from another stage)."""
    out = []
    for args in stage.all("COPY"):
        words = shlex.split(args)
        if any(w.startswith("--from") for w in words):
            continue
        out.extend(w for w in words[:-1] if not w.startswith("--"))
    return out


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore ``patterns`` keep ``path`` (relative to the context) out: the last
    pattern matching the path or one of its parents decides; ``!`` lets it back in.

    >>> dockerignored("touchline/cli.py", ["*", "!touchline", "**/__pycache__"])
    False
    >>> dockerignored("touchline/__pycache__/x.pyc", ["*", "!touchline", "**/__pycache__"])
    True
    >>> dockerignored(".venv/bin/python", ["*", "!touchline"])
    True
    """
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        for candidate in candidates:
            if pattern.startswith("**/"):
                names = candidate.split("/")
                hit = any(fnmatch.fnmatchcase("/".join(names[i:]), pattern[3:]) for i in range(len(names)))
            else:
                hit = fnmatch.fnmatchcase(candidate, pattern) and candidate.count("/") == pattern.count("/")
            if hit:
                ignored = not negated
                break
    return ignored


def dockerignore_patterns() -> list[str]:
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
