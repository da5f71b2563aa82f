"""Receipt exports (decisions §26, §29): an ``exp_`` job that writes the receipts matching the
list filters, as the receipt objects of ``GET /v1/receipts``, to a CSV, JSON lines or Parquet file
under ``FIBRIC_HOME/exports/<tenant>/``, off the event loop and chunk by chunk. The file is served
until the job expires (:data:`EXPORT_TTL`)."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from api.objects import DECISIONS, OUTCOMES, Publisher
from api.query import parse_time
from api.state import ApiState
from ledger.store import Scope
from schemas.errors import ErrorCode, FibricError
from schemas.ids import new_id
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
    # RFC 3339 with a zone, from 1900 to 2299 (what the ledger holds; api/query.py parse_time)
    since: str | None = Field(default=None, min_length=1, json_schema_extra={"format": "date-time"})
    until: str | None = Field(default=None, min_length=1, json_schema_extra={"format": "date-time"})


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def export_path(state: ApiState, scope: Scope, export_id: str, fmt: str) -> Path:
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
        writer = _Writer(export_path(state, scope, doc["id"], fmt), fmt)
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


def public(doc: dict[str, Any], base_url: str) -> dict[str, Any]:
    """The job as clients see it. ``base_url`` is FIBRIC_PUBLIC_URL, never the request's Host
    header: a link built from Host would point wherever the client (or an attacker) says."""
    out = dict(doc)
    out["url"] = (
        f"{base_url}/v1/exports/{doc['id']}/download" if doc["status"] == "complete" else None
    )
    return out


async def find(state: ApiState, scope: Scope, export_id: str) -> dict[str, Any]:
    doc = await state.store.get_export(scope, export_id) if export_id.startswith("exp_") else None
    if doc is None:
        raise FibricError(ErrorCode.NOT_FOUND, f"No export {export_id[:60]!r}.")
    return doc


async def start(state: ApiState, scope: Scope, pub: Publisher, body: ExportBody) -> dict[str, Any]:
    """Record a ``running`` job and start writing it in the background; the job as clients see
    it."""
    filters = body.model_dump(exclude={"format"})
    filters["since"] = parse_time(body.since, "since")
    filters["until"] = parse_time(body.until, "until")
    now = datetime.now(UTC)
    doc = {
        "id": new_id("exp"),
        "object": "receipt_export",
        "status": "running",
        "format": body.format,
        "filters": body.model_dump(exclude={"format"}, exclude_none=True),
        "created_at": _iso(now),
        "expires_at": _iso(now + EXPORT_TTL),
        "row_count": None,
    }
    await state.store.save_export(scope, doc, 1)
    task = asyncio.create_task(_run_export(state, scope, dict(doc), filters, pub))
    state.extra.setdefault("export_tasks", set()).add(task)
    task.add_done_callback(state.extra["export_tasks"].discard)
    return public(doc, state.settings.public_base_url)


async def retrieve(state: ApiState, scope: Scope, export_id: str) -> dict[str, Any]:
    return public(await find(state, scope, export_id), state.settings.public_base_url)


async def download(state: ApiState, scope: Scope, export_id: str) -> tuple[bytes, str, str]:
    """The complete export's file: ``(bytes, media type, file name)``."""
    doc = await find(state, scope, export_id)
    path = export_path(state, scope, doc["id"], doc["format"])
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
    return data, FORMATS[ext][1], f"{export_id}.{ext}"
