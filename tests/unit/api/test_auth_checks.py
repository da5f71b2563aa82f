"""The /v1 request checks are three separate functions run in order by one hook: authenticate,
check_scope, rate_limit (decisions §50). Each is exercised alone, then their order through
``authorize``: a 401 or a 403 never spends the tenant's budget, a 429 comes after both."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from api.auth import UNAUTHENTICATED, authenticate, authorize, check_scope, rate_limit
from api.ratelimit import RateLimiter
from schemas.config import ApiKey, Tenant, hash_secret
from schemas.errors import ErrorCode, FibricError

SECRET = "sk_test_" + "a" * 32
NOW = datetime.now(UTC)


def _key(**kw: Any) -> ApiKey:
    fields: dict[str, Any] = {
        "id": "key_1",
        "tenant_id": "ten_1",
        "scopes": ["events:read"],
        "hint": "aaaa",
        "secret_hash": hash_secret(SECRET),
        # used just now: no background last_used_at touch is started
        "last_used_at": NOW,
        "created_at": NOW - timedelta(days=1),
    }
    fields.update(kw)
    return ApiKey(**fields)


class _View:
    def __init__(self, key: ApiKey, tenants: dict[str, Tenant]) -> None:
        self.keys_by_hash = {key.secret_hash: key}
        self.tenants = tenants

    async def sync(self, timeout: float) -> None:  # an unknown key's catch-up finds nothing new
        return None


def _conn(key: ApiKey, per_minute: int = 100, authorization: str = f"Bearer {SECRET}"):
    tenant = Tenant(id="ten_1", slug="acme", name="Acme", created_at=NOW)
    state = SimpleNamespace(
        view=_View(key, {tenant.id: tenant}),
        limiter=RateLimiter(per_minute),
        metrics=None,
        extra={},
    )
    conn = SimpleNamespace(
        scope={"state": {}, "headers": [(b"authorization", authorization.encode())]},
        app=SimpleNamespace(state={"fibric": state}),
    )
    return conn, state


async def test_authenticate_returns_the_key_and_its_tenant() -> None:
    conn, state = _conn(_key())
    key, tenant = await authenticate(conn, state)
    assert (key.id, tenant.id) == ("key_1", "ten_1")


@pytest.mark.parametrize(
    ("authorization", "status", "code"),
    [
        ("Basic abc", "active", ErrorCode.KEY_INVALID),
        ("Bearer sk_test_unknown", "active", ErrorCode.KEY_INVALID),
        (f"Bearer {SECRET}", "revoked", ErrorCode.KEY_REVOKED),
    ],
)
async def test_authenticate_refuses_with_a_rate_limit_header(authorization, status, code) -> None:
    conn, state = _conn(_key(status=status), authorization=authorization)
    with pytest.raises(FibricError) as err:
        await authenticate(conn, state)
    assert err.value.code is code
    # counted in the unauthenticated budget, so the 401 carries X-RateLimit-* and no Retry-After
    headers = conn.scope["state"]["response_headers"]
    assert "X-RateLimit-Remaining" in headers and "Retry-After" not in headers


def test_check_scope_names_the_missing_scope() -> None:
    check_scope(_key(), None)
    check_scope(_key(), "events:read")
    with pytest.raises(FibricError) as err:
        check_scope(_key(), "events:write")
    assert err.value.code is ErrorCode.INSUFFICIENT_SCOPE
    assert err.value.details == {"required_scope": "events:write"}


def test_rate_limit_sets_headers_then_refuses_when_spent() -> None:
    conn, state = _conn(_key(), per_minute=2)
    rate_limit(conn, state, "ten_1", "read")
    rate_limit(conn, state, "ten_1", "read")
    assert conn.scope["state"]["response_headers"]["X-RateLimit-Remaining"] == "0"
    with pytest.raises(FibricError) as err:
        rate_limit(conn, state, "ten_1", "read")
    assert err.value.code is ErrorCode.RATE_LIMITED
    assert "Retry-After" in conn.scope["state"]["response_headers"]
    rate_limit(conn, state, "ten_1", "write")  # another route class has its own budget
    rate_limit(conn, state, *UNAUTHENTICATED)  # and so has the unauthenticated budget
    rate_limit(conn, state, *UNAUTHENTICATED)
    with pytest.raises(FibricError) as err:
        rate_limit(conn, state, *UNAUTHENTICATED)
    assert err.value.code is ErrorCode.RATE_LIMITED


async def test_authorize_runs_the_three_in_order_and_a_refusal_spends_no_tenant_budget() -> None:
    conn, state = _conn(_key(), per_minute=1)
    with pytest.raises(FibricError) as err:
        await authorize(conn, {"scope": "events:write", "route_class": "write"})
    assert err.value.code is ErrorCode.INSUFFICIENT_SCOPE
    # the 403 came before the budget: the tenant's one request a minute is still there
    await authorize(conn, {"scope": "events:read", "route_class": "write"})
    assert conn.scope["state"]["auth"].tenant.id == "ten_1"
    with pytest.raises(FibricError) as err:
        await authorize(conn, {"scope": "events:read", "route_class": "write"})
    assert err.value.code is ErrorCode.RATE_LIMITED
