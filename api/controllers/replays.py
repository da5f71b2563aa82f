"""Policy replay (issue 12 item 4, decisions §37): ``POST /v1/guardrails/replays`` starts a
``grr_`` job in this api process that re-judges the tenant's stored actions from ClickHouse under
a candidate guardrail set with the executor's own judge (``agents/replay.py``);
``GET /v1/guardrails/replays/{id}`` reports it and its result, and ``…/{id}/export`` serves the
result as CSV or JSON lines. A job changes nothing but its own ``guardrail_replays`` rows.

A running job saves a heartbeat every few seconds; one whose heartbeat is older than
:data:`STALE_AFTER` (the api process running it stopped), or whose runner is this process but no
task of it is alive, reads as ``failed`` and is saved so.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from litestar import Controller, Request, Response, get, post
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Schema
from litestar.openapi.spec.enums import OpenAPIType

from agents.replay import Replayer, csv_rows, thresholds
from api.auth import AuthContext, api_state, auth_of
from api.body import read_body, validate
from api.controllers.events import parse_time
from api.respond import FibricOperation, documented, respond
from api.state import ApiState
from ledger.store import Scope
from schemas.errors import ErrorCode, FibricError
from schemas.guardrail import GuardrailPolicy, GuardrailReplay, GuardrailRule, ReplayRequest
from schemas.ids import new_id

log = logging.getLogger(__name__)

HEARTBEAT = timedelta(seconds=5)
STALE_AFTER = timedelta(seconds=60)
# Replays running at once per tenant and mode in one api process (each is a full scan).
MAX_RUNNING = 1
EXPORT_FORMATS = {"csv": "text/csv", "jsonl": "application/x-ndjson"}
# This process's identity on the jobs it runs.
RUNNER = new_id("run")


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _at(raw: str) -> datetime:
    return datetime.fromisoformat(raw.replace("Z", "+00:00"))


@dataclass
class _Job:
    """One running replay: its doc, saved as a new version on every change (single writer)."""

    state: ApiState
    scope: Scope
    doc: dict[str, Any]
    version: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def save(self, **changes: Any) -> None:
        async with self.lock:
            self.doc.update(changes, heartbeat_at=_iso(datetime.now(UTC)))
            self.version += 1
            await self.state.store.save_replay(self.scope, self.doc, self.version)


def _tasks(state: ApiState) -> dict[str, asyncio.Task[None]]:
    return state.extra.setdefault("replay_tasks", {})


def candidate_set(state: ApiState, auth: AuthContext, req: ReplayRequest) -> list[GuardrailPolicy]:
    """The tenant policies a replay judges with: the candidate set as sent, or the tenant's set in
    force with one policy at the version named."""
    now = datetime.now(UTC)
    if req.guardrails is not None:
        return [
            GuardrailPolicy(
                id=f"candidate_{i}",
                tenant_id=auth.tenant.id,
                livemode=auth.key.livemode,
                name=g.name,
                description=g.description,
                status=g.status,
                mode=g.mode,
                rules=[GuardrailRule.model_validate(r.model_dump()) for r in g.rules],
                created_at=now,
                updated_at=now,
            )
            for i, g in enumerate(req.guardrails)
        ]
    ref = req.guardrail or ""
    gid, _, ver = ref.partition("@")
    history = state.view.guardrail_versions.get(gid, {})
    newest = max(history, default=0)
    gp = history.get(int(ver) if ver else newest)
    if (
        gp is None
        or gp.tenant_id != auth.tenant.id
        or gp.livemode != auth.key.livemode
        or (not ver and gp.deleted)
    ):
        raise FibricError(
            ErrorCode.NOT_FOUND, f"No guardrail policy version {ref[:60]!r}.", param="guardrail"
        )
    others = [p for p in state.view.guardrails_of(auth.tenant.id, auth.key.livemode) if p.id != gid]
    return [*others, gp.model_copy(update={"deleted": False})]


async def _heartbeat(job: _Job) -> None:
    while True:
        await asyncio.sleep(HEARTBEAT.total_seconds())
        await job.save()


async def run_replay(job: _Job, filters: dict[str, Any], candidate: list[GuardrailPolicy]) -> None:
    """Re-judge the window bucket by bucket (the judging runs in a thread, off the loop)."""
    state, scope = job.state, job.scope
    started = time.perf_counter()
    beat = asyncio.create_task(_heartbeat(job))
    try:
        operators = {(o.id, o.version): o for o in await state.store.operator_versions(scope)}
        current = {o.id: o for o in state.view.operators_of(scope.tenant_id, scope.livemode)}
        connectors = {c.id: c for c in state.view.connectors_of(scope.tenant_id, scope.livemode)}
        replayer = Replayer(candidate, operators, current, connectors)
        filters["thresholds"] = thresholds(candidate, [*operators.values(), *current.values()])

        def progress(rows: int, fraction: float) -> None:
            job.doc.update(rows_scanned=rows, progress=round(fraction, 4))

        await state.store.rejudge(scope, filters, replayer, progress=progress)
        outcome: dict[str, Any] = {
            **replayer.result(),
            "status": "complete",
            "completed_at": _iso(datetime.now(UTC)),
        }
    except Exception as exc:  # noqa: BLE001 - the job reports its failure
        log.exception("replay %s failed", job.doc["id"])
        outcome = {"status": "failed", "failure": type(exc).__name__}
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
    outcome["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
    await job.save(**outcome)


async def _find(state: ApiState, auth: AuthContext, replay_id: str) -> dict[str, Any]:
    found = (
        await state.store.get_replay(auth.scope, replay_id)
        if replay_id.startswith("grr_") and len(replay_id) <= 40
        else None
    )
    if found is None:
        raise FibricError(ErrorCode.NOT_FOUND, f"No guardrail replay {replay_id[:60]!r}.")
    doc, version = found
    if doc["status"] == "running" and interrupted(doc, _tasks(state), datetime.now(UTC)):
        # read again: a job of this process may have saved its end since the first read
        doc, version = await state.store.get_replay(auth.scope, replay_id) or found
        if doc["status"] == "running":
            doc.update(status="failed", failure="interrupted: the api process running it stopped")
            await state.store.save_replay(auth.scope, doc, version + 1)
    return doc


def interrupted(doc: dict[str, Any], tasks: dict[str, asyncio.Task[None]], now: datetime) -> bool:
    """A running job nobody runs any more: ours but no live task, or its heartbeat is stale."""
    if doc.get("runner") == RUNNER:
        task = tasks.get(doc["id"])
        return task is None or task.done()
    beat = _at(doc.get("heartbeat_at") or doc["created_at"])
    return now - beat > STALE_AFTER


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
            now = datetime.now(UTC)
            since = parse_time(req.since, "since")
            until = parse_time(req.until, "until") or now
            if since is None or since >= until:
                raise FibricError(
                    ErrorCode.INVALID_PARAMETER, "since must be before until.", param="since"
                )
            candidate = candidate_set(state, auth, req)
            tasks = _tasks(state)
            mine = [
                t
                for t in tasks.values()
                if not t.done() and getattr(t, "fibric_scope", None) == auth.scope
            ]
            if len(mine) >= MAX_RUNNING:
                raise FibricError(
                    ErrorCode.STATE_CONFLICT,
                    "A guardrail replay of this tenant is running; wait for it to finish.",
                )
            filters = {"since": since, "until": until, "operator": req.operator, "tool": req.tool}
            doc: dict[str, Any] = {
                "id": new_id("grr"),
                "object": "guardrail_replay",
                "livemode": auth.key.livemode,
                "status": "running",
                "since": _iso(since),
                "until": _iso(until),
                "filters": {k: v for k, v in (("operator", req.operator), ("tool", req.tool)) if v},
                "candidate": (
                    {"guardrail": req.guardrail}
                    if req.guardrail is not None
                    else {"guardrails": [g.name for g in req.guardrails or []]}
                ),
                "policies": [p.citation() for p in candidate],
                "created_at": _iso(now),
                "runner": RUNNER,
            }
            job = _Job(state, auth.scope, doc)
            await job.save()
            task = asyncio.create_task(run_replay(job, filters, candidate))
            task.fibric_scope = auth.scope  # type: ignore[attr-defined]
            tasks[doc["id"]] = task
            replay_id = doc["id"]

            def forget(_: asyncio.Task[None]) -> None:
                tasks.pop(replay_id, None)

            task.add_done_callback(forget)
            return respond(GuardrailReplay, _public(job.doc), 202)

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
        return respond(GuardrailReplay, _public(await _find(state, auth, replay_id)))

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
        if format not in EXPORT_FORMATS:
            raise FibricError(
                ErrorCode.INVALID_PARAMETER, "format must be csv or jsonl.", param="format"
            )
        doc = await _find(state, auth, replay_id)
        if doc["status"] != "complete":
            raise FibricError(
                ErrorCode.STATE_CONFLICT,
                f"Replay {doc['id']} is {doc['status']}; it has no result to export.",
            )
        if format == "csv":
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(csv_rows(doc))
            data = buf.getvalue().encode()
        else:
            data = b"".join(orjson.dumps(line) + b"\n" for line in doc.get("results") or [])
        return Response(
            data,
            media_type=EXPORT_FORMATS[format],
            headers={"Content-Disposition": f'attachment; filename="{doc["id"]}.{format}"'},
        )


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "runner"}
