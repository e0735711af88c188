"""Reading journey files from disk (the I/O around :mod:`touchline.decisions.journeys`)."""

from __future__ import annotations

from pathlib import Path

from touchline.decisions.journeys import Journey, JourneyError, Vocabulary, parse_journey

SUFFIXES = (".yaml", ".yml")


def journey_paths(paths: list[Path]) -> list[Path]:
    """Files given, and the ``*.yaml``/``*.yml`` files in directories given, in a stable order."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
            if not found:
                raise JourneyError(f"{path}: no journey files (*.yaml, *.yml) in this directory")
            out.extend(found)
        elif path.exists():
            _check_suffix(path)
            out.append(path)
        else:
            raise JourneyError(f"{path}: no such file or directory")
    return out


def _check_suffix(path: Path) -> None:
    """A settings file given as a journey file (``--journeys examples/journeys.toml``) is named
    for what it is, not parsed as YAML into a confusing error.

    >>> _check_suffix(Path("journeys.toml"))
    Traceback (most recent call last):
    ...
    touchline.decisions.journeys.JourneyError: journeys.toml: a TOML file is a settings file, not a journey file (*.yaml, *.yml); pass it with --config, which reads the journeys it lists under [journeys] files
    """
    if path.suffix.lower() == ".toml":
        raise JourneyError(f"{path}: a TOML file is a settings file, not a journey file (*.yaml, *.yml); pass it with "
                           "--config, which reads the journeys it lists under [journeys] files")


def load_journeys(paths: list[Path], vocabulary: Vocabulary | None = None) -> tuple[list[tuple[Path, Journey]], list[str]]:
    """Every journey that parses, and every problem (file, line, field), across all files;
    ``vocabulary``: the custom event types and attributes the settings declare.

    Journey names must be unique across the files: decisions and metrics carry them.
    """
    loaded: list[tuple[Path, Journey]] = []
    problems: list[str] = []
    for path in journey_paths(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            problems.append(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})")
            continue
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror or exc}")
            continue
        try:
            loaded.append((path, parse_journey(text, str(path), vocabulary)))
        except JourneyError as exc:
            problems.append(str(exc))
    first: dict[str, Path] = {}
    for path, journey in loaded:
        if journey.journey in first:
            problems.append(f"{path}: journey name {journey.journey!r} is already used by {first[journey.journey]}")
        first.setdefault(journey.journey, path)
    return loaded, problems
