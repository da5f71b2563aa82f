"""Bearer-key authentication, scope guards and the tenant scope every handler works within.

The tenant is derived from the key and nothing else. An unknown key triggers one catch-up of the
config view (a key created a moment ago by ``fibric admin`` is then found) before a 401.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from api.key_usage import key_usage
from api.state import ApiState
from ledger.store import Scope
from schemas.config import ApiKey, Tenant, hash_secret
from schemas.errors import ErrorCode, FibricError

# An unknown key waits at most this long for the config view to catch up before 401.
UNKNOWN_KEY_SYNC_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class AuthContext:
    key: ApiKey
    tenant: Tenant

    @property
    def scope(self) -> Scope:
        return Scope(self.tenant.id, self.key.livemode)


def api_state(connection: ASGIConnection[Any, Any, Any, Any]) -> ApiState:
    return connection.app.state["fibric"]


async def _lookup(state: ApiState, secret: str) -> ApiKey | None:
    digest = hash_secret(secret)
    key = state.view.keys_by_hash.get(digest)
    if key is None:
        try:
            await state.view.sync(timeout=UNKNOWN_KEY_SYNC_TIMEOUT_S)
        except (TimeoutError, Exception):  # noqa: BLE001 - fall through to 401
            return None
        key = state.view.keys_by_hash.get(digest)
    return key


async def require_scope(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Guard on every /v1 route: authenticate, check the route's scope, count the rate budget."""
    state = api_state(connection)
    header = connection.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    if (
        scheme.lower() != "bearer"
        or not secret.startswith(("sk_live_", "sk_test_"))
        or len(secret) > 200
    ):
        raise FibricError(
            ErrorCode.KEY_INVALID, "Send a valid secret API key as 'Authorization: Bearer sk_…'."
        )
    key = await _lookup(state, secret)
    if key is None:
        raise FibricError(ErrorCode.KEY_INVALID, "The API key is invalid.")
    if key.status != "active":
        raise FibricError(ErrorCode.KEY_REVOKED, "The API key has been revoked.")
    tenant = state.view.tenants.get(key.tenant_id)
    if tenant is None:
        raise FibricError(ErrorCode.KEY_INVALID, "The API key's tenant does not exist.")
    key_usage(state).note(state, key)  # last_used_at: in memory; a background touch when due
    needed = handler.opt.get("scope")
    if needed and needed not in key.scopes:
        raise FibricError(
            ErrorCode.INSUFFICIENT_SCOPE,
            f"This key lacks the {needed} scope required by this route.",
            details={"required_scope": needed},
        )
    verdict = state.limiter.hit(tenant.id, handler.opt.get("route_class", "default"))
    connection.scope["state"].setdefault("response_headers", {}).update(verdict.headers())
    if not verdict.allowed:
        raise FibricError(
            ErrorCode.RATE_LIMITED,
            "Rate limit exceeded for this route class; retry after Retry-After seconds.",
        )
    connection.scope["state"]["auth"] = AuthContext(key, tenant)


def auth_of(connection: ASGIConnection[Any, Any, Any, Any]) -> AuthContext:
    return connection.scope["state"]["auth"]
