"""Receipt exports: ``POST /v1/receipts/exports`` starts an ``exp_`` job (CSV, JSONL or Parquet,
the list endpoint's filters); ``GET /v1/exports/{id}`` reports it with a download link; the file
is served, tenant-scoped, at ``GET /v1/exports/{id}/download`` until it expires. The job itself
is ``api/services/exports.py``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType

from api.auth import api_state, auth_of
from api.body import read_body, validate
from api.objects import Publisher
from api.respond import FibricOperation, documented, respond
from api.services import exports
from api.services.exports import FORMATS, ExportBody
from schemas.objects import ExportObject


@dataclass
class DownloadOperation(FibricOperation):
    """The download's 200 is the file, in the media type of the export's format."""

    def __post_init__(self) -> None:
        super().__post_init__()
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse):
            binary = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
            ok.content = {m: OpenAPIMediaType(schema=binary) for _, m in FORMATS.values()}


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
            doc = await exports.start(state, auth.scope, Publisher.of(state, auth), data)
            return respond(ExportObject, doc, 202)

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
        return respond(ExportObject, await exports.retrieve(state, auth.scope, export_id))

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
        data, media_type, filename = await exports.download(state, auth.scope, export_id)
        return Response(
            data,
            media_type=media_type,
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
