"""Connector workflows that talk to the connector's own MCP server from the api role: the
install-time credential check (``verify``) and the connection test (``run_test``). Credentials
are opened here only to start the connector; they never appear in a result or a log."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from api.services.context import Caller
from api.state import ApiState
from connectors.marketplace import CHECK_TOOL, Listing, load_catalogue
from connectors.pool import ConnectorSpec
from schemas.connector import Connector
from schemas.errors import ErrorCode, FibricError
from schemas.ids import new_id

# Transport-level failures mean the source (or its connector) could not be reached: 502.
UNREACHABLE = {"upstream_error", "timeout", "connector_crashed"}
_PLACEHOLDERS = {"string": "fibric connection test", "integer": 0, "number": 0, "boolean": False}


def dry_run_args(schema: dict[str, Any]) -> dict[str, Any]:
    """Placeholder values for a tool's required arguments, so a dry run can validate auth and
    reachability without real inputs (nothing is written in a dry run)."""
    props = schema.get("properties") or {}
    out: dict[str, Any] = {}
    for name in schema.get("required") or []:
        if name in ("idempotency_key", "dry_run"):
            continue
        kind = (props.get(name) or {}).get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "string")
        out[name] = _PLACEHOLDERS.get(kind or "string", "fibric connection test")
    return out


def spec(cn: Connector, listing: Listing, credentials: dict[str, Any]) -> ConnectorSpec:
    return ConnectorSpec.of(cn, listing, credentials)


async def verify(
    state: ApiState, draft: Connector, listing: Listing, credentials: dict[str, Any]
) -> list[Any]:
    """Start the connector, read its tool list, and check the credentials upstream (the tools
    as dicts: the draft's ``tools``)."""
    assert state.runtime is not None
    try:
        await state.runtime.ensure(spec(draft, listing, credentials))
        tools = await state.runtime.tools(draft.id)
        result = await state.runtime.call(draft.id, CHECK_TOOL, {})
    except Exception as exc:  # noqa: BLE001 - the connector itself failed to start
        await state.runtime.remove(draft.id)
        raise FibricError(
            ErrorCode.CONNECTOR_UPSTREAM_ERROR,
            f"The connector could not start: {type(exc).__name__}.",
        ) from None
    await state.runtime.remove(draft.id)
    if not result.ok:
        if result.error_code == "auth_failed":
            raise FibricError(
                ErrorCode.AUTH_FAILED,
                f"{listing.name} rejected the supplied credentials; nothing was installed.",
                details={"upstream_status": result.upstream_status},
            )
        raise FibricError(
            ErrorCode.CONNECTOR_UPSTREAM_ERROR,
            f"{listing.name} could not be reached: {result.error_message}; nothing was installed.",
            details={"upstream_status": result.upstream_status},
        )
    listed = {t.name for t in listing.tools}
    return [
        {
            "name": t.name,
            "side_effect": t.side_effect,
            "capability": t.capability,
            "compensating_tool": t.compensating_tool,
        }
        for t in tools
        if t.name in listed
    ]


async def run_test(caller: Caller, cn: Connector, tools: list[str] | None) -> dict[str, Any]:
    """Connection test of ``cn``: read tools run live, side-effecting tools dry-run (nothing
    written). A failure moves the connector to ``error``; an unreachable source is a 502. The
    ``connector_test`` object."""
    state = caller.state
    names = {t.name for t in cn.tools}
    wanted = tools or [t.name for t in cn.tools]
    for name in wanted:
        if name not in names:
            raise FibricError(
                ErrorCode.INVALID_PARAMETER,
                f"{name!r} is not a tool of {cn.id}.",
                param="tools",
            )
    if cn.status == "pending_auth":
        raise FibricError(
            ErrorCode.STATE_CONFLICT, f"{cn.id} is pending_auth; complete authorization first."
        )
    listing = load_catalogue()[cn.listing]
    entry = state.view.vault.get(cn.id)
    credentials = state.box.open(entry.ciphertext) if entry and entry.ciphertext else {}
    assert state.runtime is not None
    await state.runtime.ensure(spec(cn, listing, credentials))
    schemas = {t.name: t.input_schema for t in await state.runtime.tools(cn.id)}
    results = []
    for name in wanted:
        tool = next(t for t in cn.tools if t.name == name)
        args = dry_run_args(schemas.get(name) or {}) if tool.side_effect else {}
        started = time.perf_counter()
        res = await state.runtime.call(
            cn.id,
            name,
            args,
            dry_run=tool.side_effect,
            idempotency_key=None if not tool.side_effect else f"test:{new_id('req')}",
        )
        item: dict[str, Any] = {
            "tool": name,
            "mode": "dry_run" if tool.side_effect else "live",
            "ok": res.ok,
            "latency_ms": round(res.latency_ms or (time.perf_counter() - started) * 1000),
        }
        if not res.ok:
            item["error"] = {
                "code": res.error_code,
                "message": res.error_message,
                "upstream_status": res.upstream_status,
            }
        results.append(item)
    failed = [r for r in results if not r["ok"]]
    tested_at = datetime.now(UTC)
    if failed:
        detail = f"{failed[0]['tool']}: {failed[0]['error']['code']}"
        await caller.command(
            "connector.set_status",
            {"connector_id": cn.id, "status": "error", "detail": detail},
        )
        if any(r["error"]["code"] in UNREACHABLE for r in failed):
            raise FibricError(
                ErrorCode.CONNECTOR_UPSTREAM_ERROR,
                f"The source system was unreachable ({detail}); {cn.id} moved to error.",
                details={"connector_id": cn.id, "results": results},
            )
    elif cn.status != "connected" or cn.last_synced_at is None:
        await caller.command(
            "connector.set_status",
            {"connector_id": cn.id, "status": "connected", "synced": True},
        )
    return {
        "object": "connector_test",
        "connector_id": cn.id,
        "status": "failed" if failed else "passed",
        "results": results,
        "tested_at": tested_at.isoformat().replace("+00:00", "Z"),
    }
