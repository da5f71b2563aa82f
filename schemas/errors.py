"""The error vocabulary: one enum of codes, their HTTP status and type, and the exception.

Branch on ``code`` (stable); ``message`` is for humans. Every error any role reports to a client
goes through :class:`FibricError` so the envelope is the same everywhere.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

DOC_URL = "https://fibric.io/docs/errors#{code}"


class ErrorCode(StrEnum):
    INVALID_PARAMETER = "invalid_parameter"
    MISSING_PARAMETER = "missing_parameter"
    INVALID_JSON = "invalid_json"
    INVALID_CURSOR = "invalid_cursor"
    KEY_INVALID = "key_invalid"
    KEY_REVOKED = "key_revoked"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    TENANT_MISMATCH = "tenant_mismatch"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    STATE_CONFLICT = "state_conflict"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    ENTITY_LOCKED = "entity_locked"
    REQUEST_TOO_LARGE = "request_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    VALIDATION_FAILED = "validation_failed"
    RATE_LIMITED = "rate_limited"
    # a live stream whose client did not keep up was ended (its last frame; decisions §33)
    SLOW_CONSUMER = "slow_consumer"
    CAPABILITY_UNBOUND = "capability_unbound"
    LISTING_EARLY_ACCESS = "listing_early_access"
    AUTH_FAILED = "auth_failed"
    CONNECTOR_IN_USE = "connector_in_use"
    CONNECTOR_UPSTREAM_ERROR = "connector_upstream_error"
    # analyst SQL (POST /v1/sql, decisions §42)
    SQL_INVALID = "sql_invalid"
    SQL_REFUSED = "sql_refused"
    SQL_LIMIT_EXCEEDED = "sql_limit_exceeded"
    SQL_UNAVAILABLE = "sql_unavailable"
    INTERNAL_ERROR = "internal_error"
    SERVICE_UNAVAILABLE = "service_unavailable"


# status -> coarse error type (one per status group, seed 000 / spec §5.4)
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "validation_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
}

# The status each code is reported with.
STATUS_OF: dict[ErrorCode, int] = {
    ErrorCode.INVALID_PARAMETER: 400,
    ErrorCode.MISSING_PARAMETER: 400,
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.INVALID_CURSOR: 400,
    ErrorCode.KEY_INVALID: 401,
    ErrorCode.KEY_REVOKED: 401,
    ErrorCode.INSUFFICIENT_SCOPE: 403,
    ErrorCode.TENANT_MISMATCH: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.STATE_CONFLICT: 409,
    ErrorCode.IDEMPOTENCY_CONFLICT: 409,
    ErrorCode.ENTITY_LOCKED: 409,
    ErrorCode.REQUEST_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.VALIDATION_FAILED: 422,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.SLOW_CONSUMER: 429,
    ErrorCode.CAPABILITY_UNBOUND: 422,
    ErrorCode.LISTING_EARLY_ACCESS: 422,
    ErrorCode.AUTH_FAILED: 422,
    ErrorCode.CONNECTOR_IN_USE: 409,
    ErrorCode.CONNECTOR_UPSTREAM_ERROR: 502,
    ErrorCode.SQL_INVALID: 400,
    ErrorCode.SQL_REFUSED: 403,
    ErrorCode.SQL_LIMIT_EXCEEDED: 422,
    ErrorCode.SQL_UNAVAILABLE: 503,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
}


class FibricError(Exception):
    """An error with a stable code, reported to clients in the error envelope."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        status: int | None = None,
        param: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS_OF[code]
        self.param = param
        self.details = details or {}
        self.headers = headers or {}

    def envelope(self, request_id: str) -> dict[str, Any]:
        return error_envelope(
            self.status, self.code, self.message, request_id, param=self.param, details=self.details
        )


def error_envelope(
    status: int,
    code: str,
    message: str,
    request_id: str,
    *,
    param: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error"),
        "code": str(code),
        "message": message,
        "doc_url": DOC_URL.format(code=code),
        "request_id": request_id,
    }
    if param:
        body["param"] = param
    if details:
        body.update(details)
    return {"error": body}
