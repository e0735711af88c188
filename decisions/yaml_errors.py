"""PyYAML's syntax errors as ``file:line:col: invalid YAML: <what is wrong, in plain words>``.

PyYAML says what its parser expected (``expected <block end>, but found '?'``); a person
editing a journey wants to know what they did: a key indented differently from its
neighbours, a bracket never closed, a tab. The position given is where the mistake is
(the unclosed bracket, the line missing its ``:``), which is not always where the parser
stopped.

>>> import yaml
>>> try:
...     yaml.safe_load("journey: w\\nentry:\\n  event: signup\\n steps: []\\n")
... except yaml.MarkedYAMLError as exc:
...     print(describe_yaml_error(exc, "w.yaml"))
w.yaml:4:2: invalid YAML: this key is indented differently from the keys before it (the mapping that starts at line 1, column 1); keys of one mapping start in the same column, with spaces
>>> try:
...     yaml.safe_load("journey: w\\nsteps:\\n\\t- wait: 1d\\n")
... except yaml.MarkedYAMLError as exc:
...     print(describe_yaml_error(exc, "w.yaml"))
w.yaml:3:1: invalid YAML: a tab character; YAML indents with spaces only
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import yaml


@dataclass(frozen=True)
class _Where:
    """The parts of a MarkedYAMLError a plain explanation needs (1-based positions)."""

    problem: str
    context: str
    line: int  # where the parser stopped
    col: int
    ctx_line: int | None  # where the construct it was reading began (an open bracket, a key)
    ctx_col: int | None

    def opened(self) -> str:
        return f"line {self.ctx_line}, column {self.ctx_col}"


#: (pattern on PyYAML's problem text, explanation, report at the context mark instead of the problem mark)
_Rule = tuple[str, Callable[[_Where, re.Match[str]], str], bool]

_FLOW_CLOSERS = {"}": "{", "]": "["}


def _block_end(w: _Where, m: re.Match[str]) -> str:
    """``expected <block end>, but found X``: the line does not line up with its block."""
    found = m.group(1)
    if "collection" in w.context and found not in _FLOW_CLOSERS:  # inside a list: a key where '- ' belongs
        return (f"a key where a list item ('- ...') was expected (the list that starts at {w.opened()}): indent it "
                "under its item to belong to it, or start a new item with '- '")
    where = f"(the mapping that starts at {w.opened()})" if w.ctx_line else "(the mapping it is in)"
    if found in ("<block mapping start>", "?", "<scalar>"):
        return (f"this key is indented differently from the keys before it {where}; keys of one mapping "
                "start in the same column, with spaces")
    if found in ("<block sequence start>", "-"):
        return (f"a list item ('- ...') where a key was expected {where}: items "
                "of one list start in the same column, a list goes on the lines after its 'key:', and a '-' "
                "needs a space after it")
    if found in _FLOW_CLOSERS:
        return f"a '{found}' that closes nothing (no '{_FLOW_CLOSERS[found]}' was opened before it)"
    return f"this line does not line up with the block {where}; check its indentation"


def _flow_unclosed(w: _Where, m: re.Match[str]) -> str:
    opener = "{" if m.group(1) == "}" else "["
    return (f"the '{opener}' here is not closed: a '{m.group(1)}' (or a ',' between entries) is missing before "
            f"line {w.line}, column {w.col}")


_RULES: list[_Rule] = [
    (r"expected <block end>, but found '?(.*?)'?$", _block_end, False),
    (r"found character '\\t' that cannot start any token", lambda w, m: "a tab character; YAML indents with "
     "spaces only", False),
    (r"found character '(.)' that cannot start any token", lambda w, m: f"a value cannot start with '{m.group(1)}' "
     f"unless it is quoted (e.g. \"{m.group(1)}...\")", False),
    (r"mapping values are not allowed here", lambda w, m: "a ':' cannot start a value here: quote a value that "
     "contains ': ' (description: \"note: this\"), or fix this line's indentation", False),
    (r"expected ',' or '([}\]])', but got", _flow_unclosed, True),
    (r"found unexpected end of stream", lambda w, m: "this quote is never closed", True),
    (r"could not find expected ':'", lambda w, m: "this line is neither 'key: value' nor a list item ('- ...'): "
     "a ':' is missing after the key, or the line is indented into the wrong block", True),
    (r"found undefined alias '(.*)'", lambda w, m: f"'*{m.group(1)}' refers to an anchor '&{m.group(1)}' that is "
     "not defined above it (quote the value to write a literal '*')", False),
    (r"found unknown escape character '(.*)'", lambda w, m: f"'\\{m.group(1)}' is not an escape in a "
     "double-quoted string; use single quotes, or write '\\\\'", False),
    (r"could not determine a constructor for the tag '(.*)'", lambda w, m: f"the tag '{_short_tag(m.group(1))}' is not "
     "allowed in a journey file; remove it, or quote the value", False),
    (r"but found another document", lambda w, m: "a second document ('---'): a journey file holds one "
     "journey", False),
    (r"expected the node content, but found ':'", lambda w, m: "a ':' with no key before it", False),
    (r"expected alphabetic or numeric character", lambda w, m: "an anchor ('&') or alias ('*') needs a name",
     False),
]


def _short_tag(tag: str) -> str:
    """``tag:yaml.org,2002:python/object`` as written in the file, ``!!python/object``."""
    return tag.replace("tag:yaml.org,2002:", "!!")


def describe_yaml_error(exc: yaml.MarkedYAMLError, source: str) -> str:
    """One line, ``source:line:col: invalid YAML: ...``, explaining ``exc`` in plain words."""
    w = _where(exc)
    for pattern, explain, at_context in _RULES:
        m = re.search(pattern, w.problem)
        if m:
            line, col = (w.ctx_line, w.ctx_col) if at_context and w.ctx_line else (w.line, w.col)
            return f"{source}:{line}:{col}: invalid YAML: {explain(w, m)}"
    context = f" ({w.context}, from {w.opened()})" if w.context and w.ctx_line else ""
    return f"{source}:{w.line}:{w.col}: invalid YAML: {w.problem}{context}"


def _where(exc: yaml.MarkedYAMLError) -> _Where:
    pm, cm = exc.problem_mark, exc.context_mark
    return _Where(problem=exc.problem or "", context=exc.context or "",
                  line=pm.line + 1 if pm else 1, col=pm.column + 1 if pm else 1,
                  ctx_line=cm.line + 1 if cm else None, ctx_col=cm.column + 1 if cm else None)
