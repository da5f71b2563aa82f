"""The error envelope where Litestar's exception handlers cannot reach: the outermost ASGI
callable (cancelled requests, failures inside an error handler, a handler that never answers)
and uvicorn's own replies to malformed HTTP. Nothing here may ever write a non-envelope body."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from litestar import Litestar
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.errors import raw_error, request_id_of, send_error, service_unavailable, to_error
from schemas.errors import ErrorCode, FibricError
from schemas.ids import new_id

log = logging.getLogger(__name__)

MALFORMED_MESSAGE = "The request is not valid HTTP/1.1 (request line or headers malformed)."


class FibricLitestar(Litestar):
    """Litestar with a last-resort guard: whatever escapes the app before the response started
    becomes an envelope (uvicorn would send a plain-text "Internal Server Error")."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await super().__call__(scope, receive, tracked)
        except asyncio.CancelledError:
            # uvicorn cancels requests still running when its graceful shutdown times out.
            if not started:
                err = service_unavailable("The server is shutting down; retry shortly.")
                await send_error(send, err, request_id_of(scope), close=True)
            raise
        except Exception as exc:
            if started:
                raise
            log.error("error outside the handler chain on %s", scope.get("path"), exc_info=exc)
            await send_error(send, to_error(exc), request_id_of(scope), close=True)
            return
        if not started:
            err = FibricError(ErrorCode.INTERNAL_ERROR, "The server produced no response; retry.")
            await send_error(send, err, request_id_of(scope), close=True)


def malformed_request_response(default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """The raw bytes of a 400 envelope for a request that never parsed into an ASGI scope."""
    request_id = new_id("req")
    body = raw_error(400, ErrorCode.INVALID_PARAMETER, MALFORMED_MESSAGE, request_id)
    head = [b"HTTP/1.1 400 Bad Request\r\n"]
    head.extend(name + b": " + value + b"\r\n" for name, value in default_headers)
    head.append(b"content-type: application/json\r\n")
    head.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
    head.append(b"request-id: " + request_id.encode() + b"\r\n")
    head.append(b"connection: close\r\n\r\n")
    return b"".join(head) + body


class EnvelopeHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (what ``fibric api`` runs), answering a parse error with
    the envelope instead of ``text/plain`` "Invalid HTTP request received."."""

    def send_400_response(self, msg: str) -> None:
        self.transport.write(malformed_request_response(self.server_state.default_headers))
        self.transport.close()


class EnvelopeH11Protocol(H11Protocol):
    """The same for uvicorn's pure-Python h11 protocol (where httptools is unavailable)."""

    def send_400_response(self, msg: str) -> None:
        self.transport.write(malformed_request_response(self.server_state.default_headers))
        self.transport.close()
