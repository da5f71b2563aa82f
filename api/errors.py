"""The one exception → HTTP error-envelope mapping. Every error response goes through here, so
no client ever sees Litestar's default error body."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)

from schemas.errors import ErrorCode, FibricError, error_envelope
from schemas.ids import new_id

log = logging.getLogger(__name__)

_HTTP_CODES: dict[int, tuple[ErrorCode, str]] = {
    400: (ErrorCode.INVALID_PARAMETER, "The request is malformed."),
    401: (ErrorCode.KEY_INVALID, "A valid API key is required."),
    403: (ErrorCode.INSUFFICIENT_SCOPE, "This key may not call this route."),
    404: (ErrorCode.NOT_FOUND, "No such resource."),
    405: (ErrorCode.METHOD_NOT_ALLOWED, "This method is not allowed on this route."),
    413: (ErrorCode.REQUEST_TOO_LARGE, "The request body is too large."),
    415: (ErrorCode.UNSUPPORTED_MEDIA_TYPE, "Send Content-Type: application/json."),
    429: (ErrorCode.RATE_LIMITED, "Too many requests."),
}


def request_id_of(scope: Any) -> str:
    state = scope.get("state") if isinstance(scope, dict) else None
    if isinstance(state, dict) and "request_id" in state:
        return str(state["request_id"])
    return new_id("req")


def to_error(exc: Exception) -> FibricError:
    if isinstance(exc, FibricError):
        return exc
    if isinstance(exc, NotFoundException):
        return FibricError(ErrorCode.NOT_FOUND, "No such route or resource.")
    if isinstance(exc, MethodNotAllowedException):
        return FibricError(
            ErrorCode.METHOD_NOT_ALLOWED, "This method is not allowed on this route."
        )
    if isinstance(exc, ValidationException):
        return FibricError(ErrorCode.INVALID_PARAMETER, str(exc.detail or "invalid request"))
    if isinstance(exc, HTTPException):
        code, message = _HTTP_CODES.get(
            exc.status_code, (ErrorCode.INVALID_PARAMETER, "The request could not be processed.")
        )
        if exc.status_code >= 500:
            code = ErrorCode.INTERNAL_ERROR
        return FibricError(code, message, status=exc.status_code)
    return FibricError(ErrorCode.INTERNAL_ERROR, "An internal error occurred; retry with backoff.")


def error_response(exc: FibricError, request_id: str) -> Response[bytes]:
    headers = {"Request-Id": request_id, **exc.headers}
    return Response(
        orjson.dumps(exc.envelope(request_id)),
        status_code=exc.status,
        media_type="application/json",
        headers=headers,
    )


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    err = to_error(exc)
    rid = request_id_of(request.scope)
    if err.status >= 500:
        log.exception(
            "unhandled error on %s %s (%s)", request.method, request.url.path, rid, exc_info=exc
        )
    return error_response(err, rid)


def raw_error(status: int, code: ErrorCode, message: str, request_id: str, **extra: Any) -> bytes:
    return orjson.dumps(error_envelope(status, code, message, request_id, **extra))
