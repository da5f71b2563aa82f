"""Receipt exports: ``POST /v1/receipts/exports`` starts an ``exp_`` job (CSV, JSONL or Parquet,
the list endpoint's filters); ``GET /v1/exports/{id}`` reports it with a download link; the file
is served, tenant-scoped, at ``GET /v1/exports/{id}/download`` until it expires."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson
from litestar import Controller, Request, Response, get, post
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType
from pydantic import BaseModel, ConfigDict, Field

from api.auth import AuthContext, api_state, auth_of
from api.body import read_body, validate
from api.controllers.events import parse_time
from api.controllers.loop import DECISIONS, OUTCOMES, Publisher
from api.respond import FibricOperation, documented, respond
from api.state import ApiState
from ledger.store import Scope
from schemas.errors import ErrorCode, FibricError
from schemas.ids import new_id
from schemas.objects import ExportObject
from schemas.plan import ReceiptObject

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
    # RFC 3339 with a zone, from 1900 to 2299 (what the ledger holds; api/controllers/events.py)
    since: str | None = Field(default=None, min_length=1, json_schema_extra={"format": "date-time"})
    until: str | None = Field(default=None, min_length=1, json_schema_extra={"format": "date-time"})


@dataclass
class DownloadOperation(FibricOperation):
    """The download's 200 is the file, in the media type of the export's format."""

    def __post_init__(self) -> None:
        super().__post_init__()
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse):
            binary = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
            ok.content = {m: OpenAPIMediaType(schema=binary) for _, m in FORMATS.values()}


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _path(state: ApiState, scope: Scope, export_id: str, fmt: str) -> Path:
    return state.settings.resolved_home / "exports" / scope.tenant_id / f"{export_id}.{fmt}"


# The export row is the receipt object of GET /v1/receipts (spec §2.11), column for column in
# this order; CSV and Parquet hold nested values (verdict, rule, result, error) as JSON text.
EXPORT_COLUMNS = tuple(ReceiptObject.model_fields)
NESTED = {"verdict", "rule", "result", "error", "policy_versions", "shadow_verdict"}
TIMESTAMPS = {"proposed_at", "created_at", "at"}


def csv_cell(value: Any) -> str:
    """A CSV cell: null is an empty cell (never ``\\N``), booleans ``true``/``false``, objects
    JSON, timestamps the RFC 3339 strings of the JSON object."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def csv_lines(rows: list[dict[str, Any]], header: bool) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(EXPORT_COLUMNS)
    for row in rows:
        w.writerow([csv_cell(row.get(c)) for c in EXPORT_COLUMNS])
    return buf.getvalue().encode()


def jsonl_lines(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def _parquet_schema() -> Any:
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    types = {
        "livemode": pa.bool_(),
        "guardrail_version": pa.int64(),
        "value": pa.float64(),
        "latency_ms": pa.float64(),
        "verdict": pa.struct(
            [
                ("decision", pa.string()),
                ("tier", pa.int8()),
                ("rule", pa.string()),
                ("guardrail_version", pa.int64()),
            ]
        ),
    }
    return pa.schema(
        [(c, ts if c in TIMESTAMPS else types.get(c, pa.string())) for c in EXPORT_COLUMNS]
    )


def parquet_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    def conv(c: str, v: Any) -> Any:
        if v is None:
            return None
        if c in TIMESTAMPS:
            return datetime.fromisoformat(v.replace("Z", "+00:00"))
        if c == "verdict":
            return {**v, "rule": None if v["rule"] is None else orjson.dumps(v["rule"]).decode()}
        if c in NESTED:
            return orjson.dumps(v).decode()
        return v

    return {c: [conv(c, r.get(c)) for r in rows] for c in EXPORT_COLUMNS}


class _Writer:
    """Writes an export file chunk by chunk (bounded memory), off the event loop."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt, self.rows = path, fmt, 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = path.open("wb")
        self._pq: Any = None
        if fmt == "csv":
            self._f.write(csv_lines([], header=True))

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.rows += len(rows)
        if self.fmt == "jsonl":
            self._f.write(jsonl_lines(rows))
        elif self.fmt == "csv":
            self._f.write(csv_lines(rows, header=False))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = _parquet_schema()
            if self._pq is None:
                self._pq = pq.ParquetWriter(self._f, schema)
            self._pq.write_table(pa.table(parquet_columns(rows), schema=schema))

    def close(self) -> int:
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            if self._pq is None:  # no rows: still a valid, empty Parquet file
                self._pq = pq.ParquetWriter(self._f, _parquet_schema())
            self._pq.close()
        self._f.close()
        return self.path.stat().st_size


async def _run_export(
    state: ApiState,
    scope: Scope,
    doc: dict[str, Any],
    filters: dict[str, Any],
    pub: Publisher,
) -> None:
    fmt = doc["format"]
    try:
        writer = _Writer(_path(state, scope, doc["id"], fmt), fmt)
        try:
            async for chunk in state.store.iter_receipts(scope, filters):
                await asyncio.to_thread(writer.write, [pub.receipt(r) for r in chunk])
        finally:
            size = await asyncio.to_thread(writer.close)
        doc.update(
            status="complete",
            size_bytes=size,
            row_count=writer.rows,
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
        opt={"scope": "receipts:read", "route_class": "receipts_read"},
        operation_id="createReceiptExport",
        status_code=202,
        **documented(409, body=ExportBody),
    )
    async def create_export(
        self, request: Request[Any, Any, Any], data: ExportBody | None = None
    ) -> Response[ExportObject]:
        """Start an export of the receipts matching the filters (CSV, JSONL or Parquet)."""
        state, auth = api_state(request), auth_of(request)
        body = await read_body(request)

        async def handle() -> Response[ExportObject]:
            # a body is required (``{}`` exports every receipt): a missing one is a 400
            data = validate(ExportBody, body)
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
            pub = Publisher.of(state, auth)
            task = asyncio.create_task(_run_export(state, auth.scope, dict(doc), filters, pub))
            state.extra.setdefault("export_tasks", set()).add(task)
            task.add_done_callback(state.extra["export_tasks"].discard)
            return respond(ExportObject, _public(doc, state.settings.public_base_url), 202)

        return await state.idempotency.run(request, auth.scope, body, handle)

    @get(
        "/exports/{export_id:str}",
        opt={"scope": "receipts:read", "route_class": "receipts_read"},
        operation_id="retrieveExport",
        **documented(404),
    )
    async def retrieve_export(
        self, request: Request[Any, Any, Any], export_id: str
    ) -> Response[ExportObject]:
        """An export job: status, row count, and the download link once complete."""
        state, auth = api_state(request), auth_of(request)
        doc = await _find(state, auth, export_id)
        return respond(ExportObject, _public(doc, state.settings.public_base_url))

    @get(
        "/exports/{export_id:str}/download",
        opt={"scope": "receipts:read", "route_class": "receipts_read"},
        operation_id="downloadExport",
        **{**documented(404, 409), "operation_class": DownloadOperation},
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
