"""One Litestar Controller per resource: thin (read the request, call a service in
``api/services/``, return the declared model; decisions §48). Controllers never import each
other."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection

from api.auth import api_state, auth_of
from api.services.context import Caller


def caller(connection: ASGIConnection[Any, Any, Any, Any]) -> Caller:
    """The authenticated caller of this request, as services take it."""
    return Caller(
        api_state(connection), auth_of(connection), connection.scope["state"]["request_id"]
    )
