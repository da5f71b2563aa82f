"""Event-type globs: ``*`` matches exactly one dot-separated segment, ``**`` any number (≥1).

``order.*`` matches ``order.created`` but not ``order.refund.issued``; ``order.**`` matches both.
The same translation feeds Python matching (routing) and ClickHouse ``match()`` (API filters),
so a filter means the same thing everywhere.
"""

from __future__ import annotations

import re
from functools import lru_cache

_SEGMENT = r"[^.]+"


def is_glob(pattern: str) -> bool:
    return "*" in pattern


@lru_cache(maxsize=4096)
def glob_to_regex(pattern: str) -> str:
    """RE2-compatible anchored regex for ``pattern`` (also valid for ClickHouse ``match``)."""
    parts = []
    for seg in pattern.split("."):
        if seg == "**":
            parts.append(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
        elif "*" in seg:
            parts.append("[^.]*".join(re.escape(p) for p in seg.split("*")))
        else:
            parts.append(re.escape(seg))
    return "^" + r"\.".join(parts) + "$"


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(glob_to_regex(pattern))


def matches(pattern: str, event_type: str) -> bool:
    if not is_glob(pattern):
        return pattern == event_type
    return _compiled(pattern).match(event_type) is not None
