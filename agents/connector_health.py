"""Connector health, the pure part (decisions §43): what one probe of ``connector.check`` makes
of a connector's status and health block.

``connected ⇄ degraded ⇄ error``: a passing probe is ``connected``; a failing one that may pass
by itself (unreachable, timed out, 5xx, rate limited) is ``degraded`` until it has failed
``ERROR_AFTER`` times in a row, then ``error``; a failure only a person fixes (credentials
rejected, a revoked grant, a malformed configuration) is ``error`` at once. ``pending_auth`` is
never probed: nothing to probe with yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.connector import ConnectorHealth, ConnectorStatus, ProbeError

# Consecutive transient failures before degraded becomes error (3 probes: minutes by default).
ERROR_AFTER = 3
# Codes a person must act on: no amount of waiting makes the next probe pass.
NEEDS_A_PERSON = frozenset({"auth_failed", "invalid_args", "grant_revoked", "not_found"})
PROBED = frozenset({"connected", "degraded", "error"})


@dataclass(frozen=True)
class Probe:
    at: datetime
    ok: bool
    latency_ms: int
    error_code: str | None = None
    error_message: str | None = None


def record(previous: ConnectorHealth | None, probe: Probe) -> ConnectorHealth:
    """The health block after ``probe``."""
    base = previous or ConnectorHealth()
    failures = 0 if probe.ok else base.consecutive_failures + 1
    last_error = base.last_error
    if not probe.ok:
        last_error = ProbeError(
            code=probe.error_code or "upstream_error",
            message=(probe.error_message or "the health check failed")[:300],
            at=probe.at,
        )
    return base.model_copy(
        update={
            "last_probe_at": probe.at,
            "ok": probe.ok,
            "latency_ms": probe.latency_ms,
            "consecutive_failures": failures,
            "last_error": last_error,
        }
    )


def next_status(
    current: ConnectorStatus, health: ConnectorHealth
) -> tuple[ConnectorStatus, str | None]:
    """``(status, status_detail)`` after the probe recorded in ``health``."""
    if current not in PROBED:
        return current, None
    if health.ok:
        return "connected", None
    err = health.last_error
    code = err.code if err else "upstream_error"
    detail = f"health check failed: {code}" + (f": {err.message}" if err else "")
    if code in NEEDS_A_PERSON or health.consecutive_failures >= ERROR_AFTER:
        return "error", detail[:300]
    if current == "error":
        # an error stays an error until a probe passes (a transient failure proves nothing)
        return "error", detail[:300]
    return "degraded", detail[:300]
