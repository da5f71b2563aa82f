"""/v1 authorisation runs as the router's request hook on HTTP routes (no per-guard handler copy)
and as a guard on WebSocket routes, which the hook does not reach (decisions §46)."""

from typing import Any

import pytest
from litestar import Litestar, Router, WebSocket, websocket
from litestar.routes import HTTPRoute, WebSocketRoute

from api.app import check_sockets_guarded, create_app
from api.auth import authorize_request, require_scope
from schemas.settings import Settings


def test_every_v1_http_route_is_authorised_by_the_hook_and_every_socket_by_the_guard(tmp_path):
    app = create_app(Settings(home=tmp_path))
    http = sockets = 0
    for route in app.routes:
        if not route.path.startswith("/v1"):
            continue
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                if handler.http_methods == {"OPTIONS"}:
                    continue  # Litestar's automatic OPTIONS answer
                assert handler.resolve_before_request() is authorize_request, route.path
                assert require_scope not in handler.resolve_guards(), route.path
                http += 1
        elif isinstance(route, WebSocketRoute):
            assert require_scope in route.route_handler.resolve_guards(), route.path
            sockets += 1
    assert http > 40 and sockets >= 1


def test_an_unguarded_v1_socket_refuses_to_build():
    @websocket("/ws")
    async def open_socket(socket: WebSocket[Any, Any, Any]) -> None:
        await socket.close()

    app = Litestar(route_handlers=[Router(path="/v1", route_handlers=[open_socket])])
    with pytest.raises(RuntimeError, match="guards=\\[require_scope\\]"):
        check_sockets_guarded(app)
