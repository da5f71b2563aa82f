"""The connector error vocabulary: one enum of codes and the exception servers raise.

Pure: no I/O. Servers report these codes inside an MCP tool error (``isError``) as
``{"error": {"code", "message", "status"}}``; the pool reports the same codes plus its own
transport-level ones. This module must never grow vendor-specific knowledge.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ConnectorErrorCode(StrEnum):
    # Reported by a connector server (in the tool result).
    AUTH_FAILED = "auth_failed"  # upstream said 401/403: the credentials are wrong or too weak
    UPSTREAM_ERROR = "upstream_error"  # upstream 5xx, unreachable, or timed out
    NOT_FOUND = "not_found"  # upstream 404: the object named in the arguments does not exist
    INVALID_ARGS = "invalid_args"  # arguments fail the schema, or upstream rejected them (4xx)
    UNKNOWN_TOOL = "unknown_tool"  # no tool by that name on this connector
    # Reported by the pool (the call never produced a tool result).
    TIMEOUT = "timeout"  # the per-call deadline passed; the outcome of a side effect is unknown
    CONNECTOR_CRASHED = "connector_crashed"  # the server process died / the transport broke
    UNKNOWN_CONNECTOR = "unknown_connector"  # no such instance was ensure()d in this runtime


class ConnectorError(Exception):
    """A failure a tool reports to its caller; ``status`` is the upstream HTTP status if any."""

    def __init__(
        self,
        code: ConnectorErrorCode,
        message: str,
        *,
        status: int | None = None,
        outcome_unknown: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = ConnectorErrorCode(code)
        self.message = message
        self.status = status
        # An upstream's 429 ``Retry-After`` (seconds), for a server that waits and retries.
        self.retry_after_s = retry_after_s
        # True when a write may have reached the upstream (timeout after sending, 500/504):
        # the idempotency journal then must not free the key for a blind retry.
        self.outcome_unknown = outcome_unknown

    def payload(self) -> dict[str, Any]:
        return {"error": {"code": str(self.code), "message": self.message, "status": self.status}}


def code_for_http_status(status: int) -> ConnectorErrorCode:
    """Map an upstream HTTP error status to a connector error code (one place for the rule)."""
    if status in (401, 403):
        return ConnectorErrorCode.AUTH_FAILED
    if status == 404:
        return ConnectorErrorCode.NOT_FOUND
    if status == 429:
        # rate limited (AWS ThrottlingException, Kustomer's 429): the same call passes later
        return ConnectorErrorCode.UPSTREAM_ERROR
    if 400 <= status < 500:
        # 400/409/422 etc.: the upstream refused these arguments for this object's state
        # (e.g. Magento "A hold action is not available."); retrying unchanged will not help.
        return ConnectorErrorCode.INVALID_ARGS
    return ConnectorErrorCode.UPSTREAM_ERROR


def parse_error_payload(data: Any) -> tuple[str, str, int | None] | None:
    """Read ``{"error": {code, message, status}}``; None if ``data`` is not that shape."""
    if not isinstance(data, dict):
        return None
    err = data.get("error")
    if not isinstance(err, dict) or not isinstance(err.get("code"), str):
        return None
    status = err.get("status")
    return (
        err["code"],
        str(err.get("message") or ""),
        status if isinstance(status, int) and not isinstance(status, bool) else None,
    )
