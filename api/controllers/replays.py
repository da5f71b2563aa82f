"""Policy replay (issue 12 item 4, decisions §37): ``POST /v1/guardrails/replays`` starts a
``grr_`` job in this api process that re-judges the tenant's stored actions from ClickHouse under
a candidate guardrail set with the executor's own judge (``agents/replay.py``);
``GET /v1/guardrails/replays/{id}`` reports it and its result, and ``…/{id}/export`` serves the
result as CSV or JSON lines. A job changes nothing but its own ``guardrail_replays`` rows. The jobs are
``api/services/guardrail_replays.py``.

A running job saves a heartbeat every few seconds; one whose heartbeat is older than
:data:`STALE_AFTER` (the api process running it stopped), or whose runner is this process but no
task of it is alive, reads as ``failed`` and is saved so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from litestar import Controller, Request, Response, get, post
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Schema
from litestar.openapi.spec.enums import OpenAPIType

from api.auth import api_state, auth_of
from api.body import read_body, validate
from api.respond import FibricOperation, documented, respond
from api.services import guardrail_replays as replays
from api.services.guardrail_replays import EXPORT_FORMATS
from schemas.guardrail import GuardrailReplay, ReplayRequest


@dataclass
class ExportOperation(FibricOperation):
    """The export's 200 is the result file: CSV or JSON lines."""

    def __post_init__(self) -> None:
        super().__post_init__()
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse):
            text = Schema(type=OpenAPIType.STRING)
            ok.content = {m: OpenAPIMediaType(schema=text) for m in EXPORT_FORMATS.values()}


class ReplaysController(Controller):
    path = "/guardrails/replays"
    tags = ["guardrails"]

    @post(
        "/",
        opt={"scope": "guardrails:read", "route_class": "receipts_read"},
        operation_id="createGuardrailReplay",
        status_code=202,
        **documented(404, 409, body=ReplayRequest),
    )
    async def create_replay(
        self, request: Request[Any, Any, Any], data: ReplayRequest | None = None
    ) -> Response[GuardrailReplay]:
        """Re-judge the stored actions of a time window under a candidate guardrail set (a set
        of policies, or one policy at a version: ``grd_…@N``) with the executor's own judge, and
        count per operator and tool the verdicts that would flip between ALLOW, ALERT and BLOCK,
        with example plan ids. Runs in the background; poll ``GET …/replays/{id}``. Changes
        nothing."""
        state, auth = api_state(request), auth_of(request)
        body = await read_body(request)

        async def handle() -> Response[GuardrailReplay]:
            req = validate(ReplayRequest, body)
            return respond(GuardrailReplay, await replays.start(state, auth, req), 202)

        return await state.idempotency.run(request, auth.scope, body, handle)

    @get(
        "/{replay_id:str}",
        opt={"scope": "guardrails:read", "route_class": "receipts_read"},
        operation_id="retrieveGuardrailReplay",
        **documented(404),
    )
    async def retrieve_replay(
        self, request: Request[Any, Any, Any], replay_id: str
    ) -> Response[GuardrailReplay]:
        """A replay job: its status and progress, and once complete the flips per operator and
        tool (``results``) with example plan ids."""
        state, auth = api_state(request), auth_of(request)
        return respond(GuardrailReplay, await replays.retrieve(state, auth, replay_id))

    @get(
        "/{replay_id:str}/export",
        opt={"scope": "guardrails:read", "route_class": "receipts_read"},
        operation_id="exportGuardrailReplay",
        **{**documented(400, 404, 409), "operation_class": ExportOperation},
    )
    async def export_replay(
        self,
        request: Request[Any, Any, Any],
        replay_id: str,
        format: Literal["csv", "jsonl"] = "csv",
    ) -> Response[bytes]:
        """A complete replay's result as a file: ``format=csv`` (one row per operator, tool and
        transition, with example plan ids) or ``jsonl`` (one ``results`` line each)."""
        state, auth = api_state(request), auth_of(request)
        data, media_type, filename = await replays.export(state, auth, replay_id, format)
        return Response(
            data,
            media_type=media_type,
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
