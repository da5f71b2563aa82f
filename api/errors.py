"""The one exception → HTTP error-envelope mapping. Every error response goes through here, so
no client ever sees Litestar's default error body."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)

from api.broker import BrokerUnavailable
from schemas.errors import ErrorCode, FibricError, error_envelope
from schemas.ids import new_id

log = logging.getLogger(__name__)

# Retry-After on every 503: about the time the broker or control plane needs to come back from a
# restart (a consumer-group session, 6 s, plus start-up), so a client's first retry has a chance.
RETRY_AFTER_S = 10

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


def service_unavailable(message: str) -> FibricError:
    """503 with Retry-After: a dependency (broker, control plane) did not answer in time."""
    return FibricError(
        ErrorCode.SERVICE_UNAVAILABLE, message, headers={"Retry-After": str(RETRY_AFTER_S)}
    )


def to_error(exc: BaseException) -> FibricError:
    if isinstance(exc, FibricError):
        return exc
    if isinstance(exc, BrokerUnavailable | KafkaError):
        return service_unavailable(
            "The event broker is not answering; retry with backoff and the same Idempotency-Key."
        )
    if isinstance(exc, NotFoundException):
        return FibricError(ErrorCode.NOT_FOUND, "No such route or resource.")
    if isinstance(exc, MethodNotAllowedException):
        # Litestar's router names the route's methods (RFC 9110: a 405 carries Allow)
        allow = (exc.headers or {}).get("allow") or (exc.headers or {}).get("Allow")
        return FibricError(
            ErrorCode.METHOD_NOT_ALLOWED,
            "This method is not allowed on this route.",
            headers={"Allow": allow} if allow else None,
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
    if err.code is ErrorCode.SERVICE_UNAVAILABLE:
        log.warning("%s %s (%s): %s", request.scope.get("method"), _path(request), rid, exc)
    elif err.status >= 500:
        log.error(
            "unhandled error on %s %s (%s)",
            request.scope.get("method"),
            _path(request),
            rid,
            exc_info=exc,
        )
    return error_response(err, rid)


def _path(request: Request[Any, Any, Any]) -> str:
    # The raw scope path: request.url would be rebuilt from the client-controlled Host header.
    return str(request.scope.get("path", "?"))[:200]


def raw_error(status: int, code: ErrorCode, message: str, request_id: str, **extra: Any) -> bytes:
    return orjson.dumps(error_envelope(status, code, message, request_id, **extra))


async def send_error(send: Any, err: FibricError, request_id: str, *, close: bool = False) -> None:
    """Write ``err`` as a whole ASGI response (for code outside Litestar's handler chain)."""
    body = orjson.dumps(err.envelope(request_id))
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"request-id", request_id.encode()),
        *((k.lower().encode(), v.encode()) for k, v in err.headers.items()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
