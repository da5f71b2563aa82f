"""``globs``: µs per ``agents.globs.matches`` call for event-type patterns of 1–20 segments.

Every trigger of a tenant is matched against every event of that tenant (worker) and every
``event_type=`` filter against the api's overlay, so a match's cost is paid per event per
pattern. Patterns mix literal segments, ``*`` and ``**`` (one pattern per length, the same on
every run); each is matched against a typical event type (``order.payment.captured``), one of
the pattern's own shape (which it matches: every token does work) and a hostile one (32
segments the NFA keeps many positions alive over: the worst case, where a backtracking regex
takes seconds). ``**`` repeated n times (the widest NFA) is timed too. Patterns are compiled
and cached before timing, as they are in the worker. In-process, no stack: about a second.
"""

from __future__ import annotations

import time
from typing import Any

from agents.globs import compile_glob, matches

MAX_SEGMENTS = 20
# Each (pattern, event type) cell is timed for about this long, best of REPEATS slices: long
# enough for a stable per-call figure, short enough that 80 cells take well under 2 s.
CELL_S = 0.003
REPEATS = 3
# The hostile event type: the most segments an event type may reasonably have (a glob has at
# most 32, schemas/globs.py): the patterns' first literal, then one-letter segments equal to
# their other literals (every ``**`` stays live), then a segment no literal matches.
HOSTILE_SEGMENTS = 32
HOSTILE = ".".join(["order"] + ["a"] * (HOSTILE_SEGMENTS - 2) + ["zz"])
# An event type as they come: noun.verb, sometimes a qualifier (2-5 segments in the wild).
TYPICAL = "order.payment.captured"
TYPICAL_SEGMENTS = ("order", "payment", "captured", "eu", "retry")


def pattern(n: int) -> str:
    """An n-segment pattern cycling literal, ``*``, ``**`` (``order.*.**.a.*.**…``)."""
    segs = []
    for i in range(n):
        kind = i % 3
        segs.append(("order" if i == 0 else "a") if kind == 0 else "*" if kind == 1 else "**")
    return ".".join(segs)


def all_many(n: int) -> str:
    """``**`` n times: the widest NFA (every position live at every step)."""
    return ".".join(["**"] * n)


def shaped_for(p: str) -> str:
    """An event type the pattern matches: literals kept, wildcards filled with real words."""
    out = []
    for i, seg in enumerate(p.split(".")):
        out.append(seg if "*" not in seg else TYPICAL_SEGMENTS[i % len(TYPICAL_SEGMENTS)])
    return ".".join(out)


def _us_per_match(p: str, event_type: str, *, cached: bool = False) -> float:
    """µs per match of the NFA itself (an event type never seen before), or with ``cached``
    the answer cache the worker hits for an event type it has seen (agents/globs.py)."""
    matches(p, event_type)  # compile and cache, as the worker has before the first event
    fn = (lambda: matches(p, event_type)) if cached else (lambda: compile_glob(p).match(event_type))
    best = float("inf")
    for _ in range(REPEATS):
        n, t0 = 0, time.perf_counter()
        while True:
            for _ in range(50):
                fn()
            n += 50
            dt = time.perf_counter() - t0
            if dt >= CELL_S:
                break
        best = min(best, dt / n)
    return round(best * 1e6, 3)


def run_globs() -> dict[str, Any]:
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for n in range(1, MAX_SEGMENTS + 1):
        mixed, wide = pattern(n), all_many(n)
        shaped = shaped_for(mixed)
        rows.append(
            {
                "segments": n,
                "pattern": mixed,
                "typical_us": _us_per_match(mixed, TYPICAL),
                "shaped": shaped,
                "shaped_matches": matches(mixed, shaped),
                "shaped_us": _us_per_match(mixed, shaped),
                "hostile_us": _us_per_match(mixed, HOSTILE),
                "all_many_typical_us": _us_per_match(wide, TYPICAL),
                "all_many_hostile_us": _us_per_match(wide, HOSTILE),
                "cached_hostile_us": _us_per_match(mixed, HOSTILE, cached=True),
            }
        )
    typ = [r[k] for r in rows for k in ("typical_us", "shaped_us", "all_many_typical_us")]
    hos = [r[k] for r in rows for k in ("hostile_us", "all_many_hostile_us")]
    last = rows[-1]
    return {
        "max_segments": MAX_SEGMENTS,
        "typical_event_type": TYPICAL,
        "hostile_event_type": HOSTILE,
        "typical_us_max": max(typ),
        "hostile_us_max": max(hos),
        "us_1_segment": rows[0]["typical_us"],
        "us_20_segments_typical": max(last["typical_us"], last["shaped_us"]),
        "us_20_segments_hostile": max(last["hostile_us"], last["all_many_hostile_us"]),
        # what routing pays for an event type it has seen before (flat in pattern size)
        "cached_us_max": max(r["cached_hostile_us"] for r in rows),
        "rows": rows,
        "elapsed_s": round(time.perf_counter() - t0, 2),
    }
