"""Event-type globs: ``*`` matches exactly one dot-separated segment, ``**`` any number (≥1).

``order.*`` matches ``order.created`` but not ``order.refund.issued``; ``order.**`` matches both.
A ``*`` inside a segment (``order.cre*``) matches any characters except the dot.

Matching must never be a denial of service: one tenant's trigger (or one ``event_type=`` query
filter) is evaluated against every event of that tenant, on the worker and in the api's
read-your-writes overlay. Python's backtracking ``re`` is exponential on patterns such as
``**.**.**.…`` (twelve of them: seconds per match), so Python-side matching never uses ``re``:
a pattern is compiled once into segment tokens and run as an NFA over the event type's segments
(a set of positions advanced segment by segment), which is O(segments × tokens) whatever the
pattern. ClickHouse gets :func:`glob_to_regex`: its ``match()`` is RE2, linear-time by design.
Patterns are also bounded (``schemas/globs.py``) and validated
where they enter (operator triggers, playbook ``when``, list filters) by :func:`glob_problem`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from schemas.globs import GlobError, glob_problem

__all__ = [
    "Glob",
    "GlobError",
    "compile_glob",
    "glob_problem",
    "glob_to_regex",
    "is_glob",
    "matches",
]

_SEGMENT = r"[^.]+"

# Token kinds
_LITERAL = 0  # the segment equals the text
_ONE = 1  # ``*``: any single segment
_MANY = 2  # ``**``: one or more segments
_WILD = 3  # a segment with ``*`` inside it: glob over the segment's characters


def is_glob(pattern: str) -> bool:
    return "*" in pattern


@dataclass(frozen=True, slots=True)
class Glob:
    """A compiled pattern: one token per segment."""

    pattern: str
    kinds: tuple[int, ...]
    # per token: the literal text, or for _WILD the segment's parts between the stars
    texts: tuple[str, ...]
    parts: tuple[tuple[str, ...], ...]

    def match(self, event_type: str) -> bool:
        segments = event_type.split(".")
        n = len(self.kinds)
        # A pattern without ``**`` matches exactly one segment per token: no NFA needed.
        if _MANY not in self.kinds:
            if len(segments) != n:
                return False
            return all(self._token_matches(i, s) for i, s in enumerate(segments))
        states = {0}
        for seg in segments:
            nxt: set[int] = set()
            for i in states:
                if i >= n or not self._token_matches(i, seg):
                    continue
                nxt.add(i + 1)
                if self.kinds[i] == _MANY:
                    nxt.add(i)  # ``**`` may go on consuming segments
            if not nxt:
                return False
            states = nxt
        return n in states

    def _token_matches(self, i: int, seg: str) -> bool:
        kind = self.kinds[i]
        if kind == _LITERAL:
            return seg == self.texts[i]
        if kind != _WILD:
            return bool(seg)  # _ONE and _MANY take any non-empty segment
        return _wild_matches(self.parts[i], seg)


def _wild_matches(parts: tuple[str, ...], seg: str) -> bool:
    """Star-glob over one segment's characters. Greedy leftmost search is exact for patterns
    whose only wildcard is ``*``: O(len(seg) × len(parts)), no backtracking."""
    first, last = parts[0], parts[-1]
    if len(seg) < len(first) + len(last) or not seg.startswith(first) or not seg.endswith(last):
        return False
    pos, end = len(first), len(seg) - len(last)
    for middle in parts[1:-1]:
        found = seg.find(middle, pos, end)
        if found < 0:
            return False
        pos = found + len(middle)
    return True


@lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> Glob:
    """Compile (and cache) ``pattern``; raises :class:`GlobError` for an invalid one."""
    problem = glob_problem(pattern)
    if problem:
        raise GlobError(f"{pattern[:80]!r}: {problem}")
    kinds, texts, parts = [], [], []
    for seg in pattern.split("."):
        if seg == "**":
            kinds.append(_MANY)
        elif seg == "*":
            kinds.append(_ONE)
        elif "*" in seg:
            kinds.append(_WILD)
        else:
            kinds.append(_LITERAL)
        texts.append(seg)
        parts.append(tuple(seg.split("*")) if "*" in seg else ())
    return Glob(pattern, tuple(kinds), tuple(texts), tuple(parts))


@lru_cache(maxsize=4096)
def glob_to_regex(pattern: str) -> str:
    """RE2 anchored regex for ``pattern``, for ClickHouse ``match()`` (RE2 is linear-time).
    Never compiled with Python's backtracking ``re`` outside tests."""
    compile_glob(pattern)  # validates
    out = []
    for seg in pattern.split("."):
        if seg == "**":
            out.append(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
        elif "*" in seg:
            out.append("[^.]*".join(re.escape(p) for p in seg.split("*")))
        else:
            out.append(re.escape(seg))
    return "^" + r"\.".join(out) + "$"


def matches(pattern: str, event_type: str) -> bool:
    """Does ``event_type`` match ``pattern``? An invalid pattern matches nothing."""
    if not is_glob(pattern):
        return pattern == event_type
    return _matches(pattern, event_type)


# Event types are few per tenant (tens to hundreds), so routing asks the same (pattern, type)
# questions over and over: answers are cached, which makes the per-event cost flat in pattern
# complexity (a dict lookup). Unique types per event defeat the cache and fall back to the NFA,
# whose worst case is bounded by the pattern limits (schemas/globs.py; benchmarks: `globs`).
MATCH_CACHE_SIZE = 65_536


@lru_cache(maxsize=MATCH_CACHE_SIZE)
def _matches(pattern: str, event_type: str) -> bool:
    try:
        return compile_glob(pattern).match(event_type)
    except GlobError:
        return False
