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
from typing import Any

import orjson

from agents.replay import Replayer, csv_rows, thresholds
from api.auth import AuthContext
from api.query import parse_time
from api.state import ApiState
from ledger.store import Scope
from schemas.errors import ErrorCode, FibricError
from schemas.guardrail import GuardrailPolicy, GuardrailRule, ReplayRequest
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


async def find(state: ApiState, auth: AuthContext, replay_id: str) -> dict[str, Any]:
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


async def start(state: ApiState, auth: AuthContext, req: ReplayRequest) -> dict[str, Any]:
    """Check the window and the candidate set, record a ``running`` job and start it in the
    background (at most :data:`MAX_RUNNING` per tenant and mode); the job as clients see it."""
    now = datetime.now(UTC)
    since = parse_time(req.since, "since")
    until = parse_time(req.until, "until") or now
    if since is None or since >= until:
        raise FibricError(ErrorCode.INVALID_PARAMETER, "since must be before until.", param="since")
    candidate = candidate_set(state, auth, req)
    tasks = _tasks(state)
    mine = [
        t for t in tasks.values() if not t.done() and getattr(t, "fibric_scope", None) == auth.scope
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
    return public(job.doc)


async def retrieve(state: ApiState, auth: AuthContext, replay_id: str) -> dict[str, Any]:
    return public(await find(state, auth, replay_id))


async def export(
    state: ApiState, auth: AuthContext, replay_id: str, fmt: str
) -> tuple[bytes, str, str]:
    """A complete replay's result as a file: ``(bytes, media type, file name)``; ``csv`` is one
    row per operator, tool and transition, ``jsonl`` one ``results`` line each."""
    if fmt not in EXPORT_FORMATS:
        raise FibricError(
            ErrorCode.INVALID_PARAMETER, "format must be csv or jsonl.", param="format"
        )
    doc = await find(state, auth, replay_id)
    if doc["status"] != "complete":
        raise FibricError(
            ErrorCode.STATE_CONFLICT,
            f"Replay {doc['id']} is {doc['status']}; it has no result to export.",
        )
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(csv_rows(doc))
        data = buf.getvalue().encode()
    else:
        data = b"".join(orjson.dumps(line) + b"\n" for line in doc.get("results") or [])
    return data, EXPORT_FORMATS[fmt], f"{doc['id']}.{fmt}"


def public(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "runner"}
