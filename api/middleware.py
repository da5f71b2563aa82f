"""ASGI middleware applied to every request before routing: request id, ``Fibric-Version``,
JSON-only bodies, and the response headers every reply carries."""

from __future__ import annotations

from typing import Any

from api.errors import send_error
from schemas.errors import ErrorCode, FibricError
from schemas.ids import sequential_id

# Dated revisions this server can serve, oldest first; the last is served when none is pinned.
API_REVISIONS = ("2026-06-01",)
LATEST_REVISION = API_REVISIONS[-1]
_BODY_METHODS = {b"POST", b"PATCH", b"PUT"}


class ConventionsMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = sequential_id("req")
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        headers = dict(scope.get("headers") or [])
        revision = headers.get(b"fibric-version", b"").decode("latin-1").strip()
        served = revision or LATEST_REVISION
        extra: list[tuple[bytes, bytes]] = [
            (b"request-id", request_id.encode()),
            (b"fibric-version", (served if served in API_REVISIONS else LATEST_REVISION).encode()),
        ]

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                hdrs = list(message.get("headers") or [])
                present = {k.lower() for k, _ in hdrs}
                hdrs.extend((k, v) for k, v in extra if k not in present)
                for k, v in state.get("response_headers", {}).items():
                    hdrs.append((k.encode(), str(v).encode()))
                message = {**message, "headers": hdrs}
            await send(message)

        if revision and revision not in API_REVISIONS:
            await _reply(
                send_with_headers,
                400,
                ErrorCode.INVALID_PARAMETER,
                f"Unknown Fibric-Version {revision[:40]!r}; valid revisions: "
                f"{', '.join(API_REVISIONS)}.",
                request_id,
                param="Fibric-Version",
            )
            return
        method = scope.get("method", "GET").encode()
        if method in _BODY_METHODS and _has_body(headers):
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if ctype != b"application/json":
                await _reply(
                    send_with_headers,
                    415,
                    ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                    "Request bodies must be JSON: send Content-Type: application/json.",
                    request_id,
                )
                return
        await self.app(scope, receive, send_with_headers)


def _has_body(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length")
    if length is not None:
        return length.strip() not in (b"", b"0")
    return b"transfer-encoding" in headers


async def _reply(
    send: Any, status: int, code: ErrorCode, message: str, request_id: str, **kw: Any
) -> None:
    await send_error(send, FibricError(code, message, status=status, **kw), request_id)
