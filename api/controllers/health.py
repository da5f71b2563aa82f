"""Unauthenticated health endpoints: liveness, readiness (broker, worker heartbeat, ClickHouse,
ledger sink) and the OpenAPI document."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from litestar import Request, Response, get

from api.auth import api_state


@get("/healthz", operation_id="healthz", include_in_schema=True, tags=["health"])
async def healthz() -> Response[bytes]:
    """Liveness: the process answers."""
    return Response(b'{"status":"ok"}', media_type="application/json")


@get("/readyz", operation_id="readyz", tags=["health"])
async def readyz(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Readiness: 200 only when the broker answers, a worker heartbeat is fresh and no worker
    agent is stuck retrying a batch, ClickHouse answers and the ledger sink is inserting; 503
    with the failing checks otherwise."""
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
    }
    return Response(
        orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json"
    )


@get("/openapi.json", operation_id="openapi", include_in_schema=False)
async def openapi(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The OpenAPI 3.1 document, with each route's request body schema added."""
    cached = request.app.state.get("openapi_doc")
    if cached is None:
        doc = request.app.openapi_schema.to_schema()
        for route in request.app.routes:
            for handler in getattr(route, "route_handlers", []):
                model = handler.opt.get("body_model")
                if model is None:
                    continue
                for method in handler.http_methods:
                    op = doc.get("paths", {}).get(route.path, {}).get(method.lower())
                    if op is not None:
                        op["requestBody"] = {
                            "required": True,
                            "content": {"application/json": {"schema": model.model_json_schema()}},
                        }
        cached = orjson.dumps(doc)
        request.app.state["openapi_doc"] = cached
    return Response(cached, media_type="application/json")
