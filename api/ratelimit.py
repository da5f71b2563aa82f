"""Per-tenant, per-route-class request budgets (fixed one-minute windows, spec §5.3).

Budgets are per api process; route classes are independent, so exhausting event writes never
blocks receipt reads. Every response reports the budget in X-RateLimit-* headers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

WINDOW_S = 60


@dataclass(slots=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset: int  # unix seconds when the window resets

    def headers(self) -> dict[str, str]:
        h = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }
        if not self.allowed:
            h["Retry-After"] = str(max(1, self.reset - int(time.time())))
        return h


class RateLimiter:
    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._windows: dict[tuple[str, str], tuple[int, int]] = {}

    def hit(self, tenant_id: str, route_class: str, now: float | None = None) -> Verdict:
        now = time.time() if now is None else now
        window = int(now // WINDOW_S)
        key = (tenant_id, route_class)
        start, count = self._windows.get(key, (window, 0))
        if start != window:
            start, count = window, 0
        count += 1
        self._windows[key] = (start, count)
        reset = (window + 1) * WINDOW_S
        allowed = count <= self.per_minute
        return Verdict(allowed, self.per_minute, max(0, self.per_minute - count), reset)
