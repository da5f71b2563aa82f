"""What a valid event-type glob is (the contract every entry point validates against).

Matching lives in ``agents/globs.py``; this module only says which patterns are acceptable, so
pydantic models in ``schemas`` can validate triggers and playbook rules without importing logic.
"""

from __future__ import annotations

import re

# The longest event type is 200 characters (schemas/envelope.py), so a longer pattern could
# never match anything.
MAX_GLOB_CHARS = 200
# Event types in the wild have 2–5 segments; 32 leaves room for deep taxonomies while bounding
# the NFA's width (its cost per event is proportional to this).
MAX_GLOB_SEGMENTS = 32
# Characters a pattern segment may hold: the event-type alphabet plus ``*``.
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_*-]+$")


class GlobError(ValueError):
    """The pattern is not a valid event-type glob."""


def glob_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not an acceptable glob, or None. The one validator for every entry."""
    if not isinstance(pattern, str) or not pattern:
        return "a glob must be a non-empty string"
    if len(pattern) > MAX_GLOB_CHARS:
        return f"a glob is at most {MAX_GLOB_CHARS} characters"
    segments = pattern.split(".")
    if len(segments) > MAX_GLOB_SEGMENTS:
        return f"a glob has at most {MAX_GLOB_SEGMENTS} dot-separated segments"
    for seg in segments:
        if not _SEGMENT_RE.match(seg):
            return "segments are letters, digits, '_', '-' or '*', separated by single dots"
        if "**" in seg and seg != "**":
            return "'**' must be a whole segment"
    return None
