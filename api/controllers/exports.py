"""Receipt exports: ``POST /v1/receipts/exports`` starts an ``exp_`` job (CSV, JSONL or Parquet,
the list endpoint's filters); ``GET /v1/exports/{id}`` reports it with a download link; the file
is served, tenant-scoped, at ``GET /v1/exports/{id}/download`` until it expires."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson
from litestar import Controller, Request, Response, get, post
from pydantic import BaseModel, ConfigDict, Field

from api.auth import AuthContext, api_state, auth_of
from api.body import read_body, validate
from api.controllers.events import parse_time
from api.controllers.loop import DECISIONS, OUTCOMES
from api.state import ApiState
from ledger.store import Scope
from schemas.errors import ErrorCode, FibricError
from schemas.ids import new_id

log = logging.getLogger(__name__)

# A download link is valid this long; the file is removed on the first request after.
EXPORT_TTL = timedelta(hours=24)
FORMATS = {
    "csv": ("CSVWithNames", "text/csv"),
    "jsonl": ("JSONEachRow", "application/x-ndjson"),
    "parquet": ("Parquet", "application/vnd.apache.parquet"),
}


class ExportBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    format: Literal["csv", "jsonl", "parquet"] = "jsonl"
    operator_id: str | None = Field(default=None, max_length=255)
    outcome: Literal[OUTCOMES] | None = None  # type: ignore[valid-type]
    decision: Literal[DECISIONS] | None = None  # type: ignore[valid-type]
    entity_key: str | None = Field(default=None, max_length=255)
    correlation_id: str | None = Field(default=None, max_length=255)
    plan_id: str | None = Field(default=None, max_length=255)
    since: str | None = None
    until: str | None = None


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _path(state: ApiState, scope: Scope, export_id: str, fmt: str) -> Path:
    return state.settings.resolved_home / "exports" / scope.tenant_id / f"{export_id}.{fmt}"


async def _run_export(
    state: ApiState, scope: Scope, doc: dict[str, Any], filters: dict[str, Any]
) -> None:
    fmt = doc["format"]
    try:
        data = await state.store.export_receipts(scope, filters, FORMATS[fmt][0])
        path = _path(state, scope, doc["id"], fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(path.write_bytes, data)
        rows = data.count(b"\n") - (1 if fmt == "csv" else 0) if fmt != "parquet" else None
        doc.update(
            status="complete",
            size_bytes=len(data),
            row_count=rows,
            completed_at=_iso(datetime.now(UTC)),
        )
    except Exception as exc:  # noqa: BLE001 - the job reports its failure
        log.exception("export %s failed", doc["id"])
        doc.update(status="failed", failure=type(exc).__name__)
    await state.store.save_export(scope, doc, 2)


def _public(doc: dict[str, Any], base_url: str) -> dict[str, Any]:
    """The job as clients see it. ``base_url`` is FIBRIC_PUBLIC_URL, never the request's Host
    header: a link built from Host would point wherever the client (or an attacker) says."""
    out = dict(doc)
    out["url"] = (
        f"{base_url}/v1/exports/{doc['id']}/download" if doc["status"] == "complete" else None
    )
    return out


async def _find(state: ApiState, auth: AuthContext, export_id: str) -> dict[str, Any]:
    doc = (
        await state.store.get_export(auth.scope, export_id)
        if export_id.startswith("exp_")
        else None
    )
    if doc is None:
        raise FibricError(ErrorCode.NOT_FOUND, f"No export {export_id[:60]!r}.")
    return doc


class ExportsController(Controller):
    path = "/"
    tags = ["receipts"]

    @post(
        "/receipts/exports",
        opt={"scope": "receipts:read", "route_class": "receipts_read", "body_model": ExportBody},
        operation_id="createReceiptExport",
        status_code=202,
    )
    async def create_export(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """Start an export of the receipts matching the filters (CSV, JSONL or Parquet)."""
        state, auth = api_state(request), auth_of(request)
        body = await read_body(request)

        async def handle() -> Response[bytes]:
            data = validate(ExportBody, body, allow_empty=True)
            filters = data.model_dump(exclude={"format"})
            filters["since"] = parse_time(data.since, "since")
            filters["until"] = parse_time(data.until, "until")
            now = datetime.now(UTC)
            doc = {
                "id": new_id("exp"),
                "object": "receipt_export",
                "status": "running",
                "format": data.format,
                "filters": data.model_dump(exclude={"format"}, exclude_none=True),
                "created_at": _iso(now),
                "expires_at": _iso(now + EXPORT_TTL),
                "row_count": None,
            }
            await state.store.save_export(auth.scope, doc, 1)
            task = asyncio.create_task(_run_export(state, auth.scope, dict(doc), filters))
            state.extra.setdefault("export_tasks", set()).add(task)
            task.add_done_callback(state.extra["export_tasks"].discard)
            return Response(
                orjson.dumps(_public(doc, state.settings.public_base_url)),
                status_code=202,
                media_type="application/json",
            )

        return await state.idempotency.run(request, auth.scope, body, handle)

    @get(
        "/exports/{export_id:str}",
        opt={"scope": "receipts:read", "route_class": "receipts_read"},
        operation_id="retrieveExport",
    )
    async def retrieve_export(
        self, request: Request[Any, Any, Any], export_id: str
    ) -> Response[bytes]:
        """An export job: status, row count, and the download link once complete."""
        state, auth = api_state(request), auth_of(request)
        doc = await _find(state, auth, export_id)
        return Response(
            orjson.dumps(_public(doc, state.settings.public_base_url)),
            media_type="application/json",
        )

    @get(
        "/exports/{export_id:str}/download",
        opt={"scope": "receipts:read", "route_class": "receipts_read"},
        operation_id="downloadExport",
    )
    async def download_export(
        self, request: Request[Any, Any, Any], export_id: str
    ) -> Response[bytes]:
        """The exported file (same key, same tenant)."""
        state, auth = api_state(request), auth_of(request)
        doc = await _find(state, auth, export_id)
        path = _path(state, auth.scope, doc["id"], doc["format"])
        if doc["status"] != "complete" or not path.exists():
            raise FibricError(
                ErrorCode.STATE_CONFLICT,
                f"Export {export_id} is {doc['status']}; nothing to download.",
            )
        if datetime.fromisoformat(doc["expires_at"].replace("Z", "+00:00")) < datetime.now(UTC):
            path.unlink(missing_ok=True)
            raise FibricError(ErrorCode.NOT_FOUND, f"Export {export_id} has expired.")
        data = await asyncio.to_thread(path.read_bytes)
        ext = doc["format"]
        return Response(
            data,
            media_type=FORMATS[ext][1],
            headers={"Content-Disposition": f'attachment; filename="{export_id}.{ext}"'},
        )
