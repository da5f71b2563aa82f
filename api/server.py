"""The error envelope where Litestar's exception handlers cannot reach: the outermost ASGI
callable (cancelled requests, failures inside an error handler, a handler that never answers)
and uvicorn's own replies to malformed HTTP. Nothing here may ever write a non-envelope body."""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import replace
from typing import Any

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.routes import HTTPRoute
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.errors import raw_error, request_id_of, send_error, service_unavailable, to_error
from api.metrics import ApiMetrics, ApiMiddleware
from api.respond import COMPONENT_HEADERS
from schemas.errors import ErrorCode, FibricError
from schemas.ids import new_id

log = logging.getLogger(__name__)

MALFORMED_MESSAGE = "The request is not valid HTTP/1.1 (request line or headers malformed)."

# The cyclic collector's thresholds for the api process once it has started (decisions §46).
# Python's default first threshold (700 net container allocations) ran a young collection every
# few requests and, as surviving rows, cache entries and pending events were promoted, a full
# collection over the whole heap (~200k objects at rest: modules, schemas, the config view) that
# cost ~9 % of the api's CPU under S2 and stalled the loop for tens of ms at a time. Objects
# alive at the end of startup are frozen (never scanned again); young collections run every
# 20,000 net allocations (refcounting frees almost everything a request makes, so few survive to
# be scanned); the older generations keep Python's ratios.
GC_THRESHOLDS = (20_000, 10, 10)


def tune_gc() -> None:
    """Freeze what startup built and raise the young threshold (end of the api's lifespan
    start-up; idempotent). Cycles among frozen objects are never collected: startup makes few."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


BEARER = SecurityScheme(
    type="http", scheme="bearer", description="Authorization: Bearer sk_live_… or sk_test_…"
)


def with_conventions(config: OpenAPIConfig | None) -> OpenAPIConfig:
    """The OpenAPI config with what every operation refers to: bearer security (the health
    endpoints opt out) and the response headers (api/respond.py FibricOperation)."""
    config = config or OpenAPIConfig(title="Fibric API", version="1.0.0")
    components = config.components
    if isinstance(components, list):  # Litestar allows a list; ours is one Components
        components = components[0] if components else Components()
    components = replace(
        components,
        headers={**(components.headers or {}), **COMPONENT_HEADERS},
        security_schemes={**(components.security_schemes or {}), "bearer": BEARER},
    )
    config.components = components
    config.security = config.security or [{"bearer": []}]
    return config


def rebind_options_handlers(app: Litestar) -> int:
    """Make each automatic OPTIONS answer list every method of its path (``Allow``).

    Litestar builds a path's route again for each handler registered on it and keeps the OPTIONS
    handler made for the first one, whose ``Allow`` lists only that first handler's methods
    (``OPTIONS, POST`` on ``/v1/events``, which also takes GET). The handler reads the route it
    closes over at request time, so pointing it at the final route is enough."""
    fixed = 0
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            fn = getattr(handler, "fn", None)
            closure = getattr(fn, "__closure__", None)
            if getattr(fn, "__name__", "") != "options_handler" or not closure:
                continue
            for cell in closure:
                if isinstance(cell.cell_contents, HTTPRoute) and cell.cell_contents is not route:
                    cell.cell_contents = route
                    fixed += 1
    return fixed


class FibricLitestar(Litestar):
    """Litestar with a last-resort guard: whatever escapes the app before the response started
    becomes an envelope (uvicorn would send a plain-text "Internal Server Error"); its OpenAPI
    document declares bearer auth and the conventional response headers."""

    def __init__(
        self,
        *args: Any,
        openapi_config: OpenAPIConfig | None = None,
        metrics: ApiMetrics | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(*args, openapi_config=with_conventions(openapi_config), **kw)
        rebind_options_handlers(self)
        # outermost of all, so requests no route matched and envelopes made here count too
        self._measured = ApiMiddleware(self._guarded, metrics) if metrics is not None else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._measured is not None:
            await self._measured(scope, receive, send)
        else:
            await self._guarded(scope, receive, send)

    async def _guarded(self, scope: Any, receive: Any, send: Any) -> None:
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
