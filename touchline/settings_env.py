"""Catch a mistyped ``TOUCHLINE_`` variable, which pydantic-settings would otherwise ignore.

A variable names a setting as ``TOUCHLINE_<SECTION>__<KEY>``. A misspelled key inside a known
section is already refused by the section's own model; a misspelled *section*, or one
underscore where two belong, matches no field and silently changes nothing: the engine
would run on its defaults while the operator believes otherwise.

>>> misnamed_variables({"TOUCHLINE_METRIC__HOST": "x", "TOUCHLINE_POLICY_HOLDOUT_SHARE": "0.1",
...                     "TOUCHLINE_REDIS_PASSWORD": "p", "TOUCHLINE_STATE__URL": "redis://"}, ["metrics", "policy", "state"])
["TOUCHLINE_METRIC__HOST: no settings section 'metric' (did you mean 'metrics'?)", \
'TOUCHLINE_POLICY_HOLDOUT_SHARE: levels are separated by two underscores: TOUCHLINE_POLICY__HOLDOUT_SHARE']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from touchline.decisions.errors import did_you_mean

PREFIX = "TOUCHLINE_"


def misnamed_variables(environ: Mapping[str, str], sections: Iterable[str]) -> list[str]:
    """One problem per variable that looks like a setting but names none.

    Variables without ``__`` that do not start with a section name (``TOUCHLINE_REDIS_PASSWORD``
    in the compose file's ``.env``) are someone else's and left alone.
    """
    known = sorted(sections)
    problems = []
    for name in sorted(environ):
        if not name.upper().startswith(PREFIX):
            continue
        problem = _problem(name, name[len(PREFIX):].lower(), known)
        if problem:
            problems.append(f"{name}: {problem}")
    return problems


def _problem(name: str, rest: str, known: list[str]) -> str | None:
    if "__" in rest:
        section = rest.split("__", 1)[0]
        if section in known:
            return None
        hint = did_you_mean(section, known)
        return f"no settings section {section!r}" + (f" ({hint})" if hint else f"; known: {', '.join(known)}")
    for section in known:
        if rest.startswith(section + "_"):
            return f"levels are separated by two underscores: {PREFIX}{section.upper()}__{name[len(PREFIX) + len(section) + 1:]}"
    return None
