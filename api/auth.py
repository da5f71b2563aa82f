"""Bearer-key authentication, scope checks, rate limiting and the tenant scope every handler
works within: three separate functions, run in that order by one hook (:func:`authorize`).

The tenant is derived from the key and nothing else. An unknown key triggers one catch-up of the
config view (a key created a moment ago by ``fibric admin`` is then found) before a 401,
bounded in all by :data:`UNKNOWN_KEY_SYNC_TIMEOUT_S` so a stalled broker never delays it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection, Request
from litestar.handlers.base import BaseRouteHandler

from api.key_usage import key_usage
from api.state import ApiState
from ledger.store import Scope
from schemas.config import ApiKey, Tenant, hash_secret
from schemas.errors import ErrorCode, FibricError

# An unknown key waits at most this long, in all, for the config view to catch up before 401:
# the broker's end offsets and the view's progress together (a healthy broker answers both in
# milliseconds; a stalled one must not hold a 401 back).
UNKNOWN_KEY_SYNC_TIMEOUT_S = 1.0
# Unauthenticated requests are counted in this budget (tenant "") so a 401 carries X-RateLimit-*.
UNAUTHENTICATED = ("", "unauthenticated")


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
        await _catch_up(state)
        key = state.view.keys_by_hash.get(digest)
    return key


async def _catch_up(state: ApiState) -> None:
    """One bounded catch-up of the config view, shared by every unknown key that arrives while
    it runs (a flood of bad keys costs one end-offsets request, not one each)."""
    task: asyncio.Task[None] | None = state.extra.get("key_sync")
    if task is None or task.done():
        task = asyncio.ensure_future(state.view.sync(timeout=UNKNOWN_KEY_SYNC_TIMEOUT_S))
        task.add_done_callback(_retrieve)
        state.extra["key_sync"] = task
    try:
        # the whole catch-up is bounded: ConfigView.sync bounds only its wait for progress, not
        # the end-offsets request before it, which a stalled broker never answers
        await asyncio.wait_for(asyncio.shield(task), UNKNOWN_KEY_SYNC_TIMEOUT_S)
    except (TimeoutError, Exception):  # noqa: BLE001 - fall through to 401
        return


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # consumed: a failed catch-up is a 401, not an unhandled error


def _unauthenticated(connection: ASGIConnection[Any, Any, Any, Any], state: ApiState) -> None:
    verdict = state.limiter.hit(*UNAUTHENTICATED)
    headers = verdict.headers()
    headers.pop("Retry-After", None)  # a 401 is never a 429: nothing to wait for
    connection.scope["state"].setdefault("response_headers", {}).update(headers)


async def require_scope(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Guard form of :func:`authorize` (WebSocket routes: Litestar runs no request hook for
    them, and it copies the route handler for each guard call)."""
    await authorize(connection, handler.opt)


async def authorize_request(request: Request[Any, Any, Any]) -> None:
    """The /v1 router's ``before_request`` hook: :func:`authorize` once per HTTP request, with
    the route's options, without the handler copy Litestar makes for each guard (decisions
    §46). Raising here is the same envelope a guard's raise was; returning None lets the
    handler run."""
    await authorize(request, request.scope["route_handler"].opt)


async def authorize(connection: ASGIConnection[Any, Any, Any, Any], opt: dict[str, Any]) -> None:
    """On every /v1 route, three separate checks in order: :func:`authenticate` (who), then
    :func:`check_scope` (may this key call this route), then :func:`rate_limit` (is there budget
    left). One hook calls the three so Litestar copies no route handler per check (§46, §50)."""
    state = api_state(connection)
    if opt.get("auth") == "none":
        # authenticated by something else than a key (the OAuth callback's signed state);
        # counted in the unauthenticated budget
        rate_limit(connection, state, *UNAUTHENTICATED)
        return
    key, tenant = await authenticate(connection, state)
    check_scope(key, opt.get("scope"))
    rate_limit(connection, state, tenant.id, opt.get("route_class", "default"))
    connection.scope["state"]["auth"] = AuthContext(key, tenant)


async def authenticate(
    connection: ASGIConnection[Any, Any, Any, Any], state: ApiState
) -> tuple[ApiKey, Tenant]:
    """The bearer key and its tenant, or a 401 (``key_invalid`` / ``key_revoked``) counted in the
    unauthenticated rate budget so it carries ``X-RateLimit-*``. Notes the key's use."""
    header = _authorization(connection.scope)
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    if (
        scheme.lower() != "bearer"
        or not secret.startswith(("sk_live_", "sk_test_"))
        or len(secret) > 200
    ):
        _unauthenticated(connection, state)
        raise FibricError(
            ErrorCode.KEY_INVALID, "Send a valid secret API key as 'Authorization: Bearer sk_…'."
        )
    key = await _lookup(state, secret)
    if key is None:
        _unauthenticated(connection, state)
        raise FibricError(ErrorCode.KEY_INVALID, "The API key is invalid.")
    if key.status != "active":
        _unauthenticated(connection, state)
        raise FibricError(ErrorCode.KEY_REVOKED, "The API key has been revoked.")
    tenant = state.view.tenants.get(key.tenant_id)
    if tenant is None:
        _unauthenticated(connection, state)
        raise FibricError(ErrorCode.KEY_INVALID, "The API key's tenant does not exist.")
    key_usage(state).note(state, key)  # last_used_at: in memory; a background touch when due
    return key, tenant


def check_scope(key: ApiKey, needed: str | None) -> None:
    """403 ``insufficient_scope`` unless the key holds the route's scope (if it names one)."""
    if needed and needed not in key.scopes:
        raise FibricError(
            ErrorCode.INSUFFICIENT_SCOPE,
            f"This key lacks the {needed} scope required by this route.",
            details={"required_scope": needed},
        )


def rate_limit(
    connection: ASGIConnection[Any, Any, Any, Any],
    state: ApiState,
    tenant_id: str,
    route_class: str,
) -> None:
    """Count one request in the tenant's budget for the route class; its ``X-RateLimit-*``
    headers go on the response whatever happens next; 429 ``rate_limited`` when spent."""
    verdict = state.limiter.hit(tenant_id, route_class)
    connection.scope["state"].setdefault("response_headers", {}).update(verdict.headers())
    if verdict.allowed:
        return
    if (tenant_id, route_class) == UNAUTHENTICATED:
        raise FibricError(
            ErrorCode.RATE_LIMITED, "Rate limit exceeded; retry after Retry-After seconds."
        )
    if state.metrics is not None:
        state.metrics.rate_limited(route_class)
    raise FibricError(
        ErrorCode.RATE_LIMITED,
        "Rate limit exceeded for this route class; retry after Retry-After seconds.",
    )


def _authorization(scope: Any) -> str:
    """The Authorization header straight from the ASGI scope (no Headers object per request;
    names are lower-case in ASGI). Several: the first, as Litestar's ``headers.get`` did."""
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            return value.decode("latin-1")
    return ""


def auth_of(connection: ASGIConnection[Any, Any, Any, Any]) -> AuthContext:
    return connection.scope["state"]["auth"]
