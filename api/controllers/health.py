"""Unauthenticated health endpoints: liveness, readiness (broker, worker heartbeat, ClickHouse,
ledger sink) and the OpenAPI document."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from litestar import Request, Response, get
from litestar.openapi.datastructures import ResponseSpec
from pydantic import BaseModel

from api.auth import api_state
from api.respond import ERROR_DESCRIPTIONS, FibricOperation, respond
from schemas.objects import ErrorEnvelope, Health, Readiness

# Health endpoints answer without a key; the envelope covers a Fibric-Version they refuse.
_HEALTH_ERRORS = {
    s: ResponseSpec(ErrorEnvelope, description=ERROR_DESCRIPTIONS[s], generate_examples=False)
    for s in (400, 500)
}


@get(
    "/healthz",
    operation_id="healthz",
    tags=["health"],
    security=[{}],
    responses=_HEALTH_ERRORS,
    operation_class=FibricOperation,
)
async def healthz() -> Response[Health]:
    """Liveness: the process answers."""
    return respond(Health, b'{"status":"ok"}')


@get(
    "/readyz",
    operation_id="readyz",
    tags=["health"],
    security=[{}],
    responses={
        **_HEALTH_ERRORS,
        503: ResponseSpec(Readiness, description="not ready: the failing checks"),
    },
    operation_class=FibricOperation,
)
async def readyz(request: Request[Any, Any, Any]) -> Response[Readiness]:
    """Readiness: 200 only when the broker answers, a worker heartbeat is fresh and no worker
    agent is stuck retrying a batch, ClickHouse answers, the ledger sink is inserting and the
    vault seals and opens its entries with this key; 503 with the failing checks otherwise."""
    state = api_state(request)
    broker_ok = True
    try:
        await asyncio.wait_for(state.producer.client.fetch_all_metadata(), 3.0)
    except Exception:  # noqa: BLE001 - reported as not ready
        broker_ok = False
    workers = state.view.live_workers(state.settings.heartbeat_stale_s)
    # a worker whose agent has retried one batch for long is alive but not processing
    stalled = {w["worker_id"]: w["stalled"] for w in workers if w.get("stalled")}
    checks = {
        "broker": broker_ok,
        "worker": bool(workers),
        "pipeline": not stalled,
        "clickhouse": await state.store.ping(),
        "ledger_sink": state.sink.healthy,
    }
    vault = vault_health(state)
    checks["vault"] = vault["status"] == "healthy"
    ready = all(checks.values())
    body = {
        "status": "ready" if ready else "not_ready",
        "checks": checks,
        "workers": [
            {
                "worker_id": w["worker_id"],
                "partitions": w.get("partitions", []),
                "stalled": w.get("stalled") or {},
            }
            for w in workers
        ],
        "vault": vault,
    }
    return respond(Readiness, body, 200 if ready else 503)


# Stored vault entries test-opened per readiness check (a wrong FIBRIC_SECRET_KEY fails them all).
VAULT_SAMPLE = 20


def vault_health(state: Any) -> dict[str, Any]:
    """The secrets backend (the peer's ``GET /health/secrets``): sealing and opening work with
    this FIBRIC_SECRET_KEY, and a sample of the stored entries opens with it."""
    checks = {"seal": "ok", "open_stored": "ok"}
    try:
        probe = {"probe": "readyz"}
        if state.box.open(state.box.seal(probe)) != probe:
            checks["seal"] = "failed"
    except Exception:  # noqa: BLE001 - reported, never raised
        checks["seal"] = "failed"
    entries = list(state.view.vault.values())[-VAULT_SAMPLE:]
    failed = 0
    for entry in entries:
        try:
            state.box.open(entry.ciphertext)
        except Exception:  # noqa: BLE001 - counted
            failed += 1
    if failed:
        checks["open_stored"] = "failed"
    return {
        "status": "healthy" if all(v == "ok" for v in checks.values()) else "unhealthy",
        "backend": "fernet",
        "checks": checks,
        "entries": len(state.view.vault),
        "sampled": len(entries),
        "undecryptable": failed,
    }


def _jsonable(value: Any) -> Any:
    """Generated examples may be model instances (a ResponseSpec's generate_examples)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@get("/openapi.json", operation_id="openapi", include_in_schema=False)
async def openapi(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The OpenAPI 3.1 document Litestar generates from the handlers' declared models (the same
    as ``/schema/openapi.json``), serialised once."""
    cached = request.app.state.get("openapi_doc")
    if cached is None:
        cached = orjson.dumps(request.app.openapi_schema.to_schema(), default=_jsonable)
        request.app.state["openapi_doc"] = cached
    return Response(cached, media_type="application/json")
