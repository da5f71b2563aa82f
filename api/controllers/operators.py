"""``/v1/operators`` (seed 002): list, create, retrieve, update, pause, resume.

Reads come from this process's config view; writes are commands to the control agent (the single
writer), so uniqueness and ``capability_unbound`` hold even when requests race."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, patch, post

from agents.governance import OPERATOR_DIFF_FIELDS
from api.auth import AuthContext, api_state, auth_of
from api.body import read_body, validate
from api.commands import run_command
from api.controllers import caller
from api.pagination import decode_cursor, list_body, paginate, parse_limit
from api.query import only_params
from api.respond import documented, respond
from api.services import catch_up
from api.state import ApiState
from api.versions import Version, history, pick, version_diff
from schemas.errors import ErrorCode, FibricError
from schemas.governance import VersionDiff
from schemas.objects import ListOf, OperatorObject, OperatorPaused, OperatorResumed
from schemas.operator import (
    CAPABILITY_RE,
    Operator,
    OperatorCreate,
    OperatorUpdate,
    PauseBody,
    ResumeBody,
)

STATUSES = ("active", "paused", "draft")


def find_operator(state: ApiState, auth: AuthContext, operator_id: str) -> Operator:
    op = state.view.operators.get(operator_id)
    if op is None or op.tenant_id != auth.tenant.id or op.livemode != auth.key.livemode:
        raise FibricError(ErrorCode.NOT_FOUND, f"No operator {operator_id[:60]!r}.")
    return op


class OperatorsController(Controller):
    path = "/operators"
    tags = ["operators"]

    @get(
        "/",
        opt={"scope": "operators:read", "route_class": "config_read"},
        operation_id="listOperators",
        **documented(),
    )
    async def list_operators(
        self, request: Request[Any, Any, Any]
    ) -> Response[ListOf[OperatorObject]]:
        """List operators newest first; filters ``status`` and ``capability``."""
        state, auth = api_state(request), auth_of(request)
        limit = parse_limit(request.query_params.get("limit"))
        status = request.query_params.get("status")
        capability = request.query_params.get("capability")
        if status is not None and status not in STATUSES:
            raise FibricError(
                ErrorCode.INVALID_PARAMETER,
                "status must be active, paused or draft.",
                param="status",
            )
        if capability is not None and not CAPABILITY_RE.match(capability):
            raise FibricError(
                ErrorCode.INVALID_PARAMETER, "capability must be noun.verb.", param="capability"
            )
        raw = {"status": status, "capability": capability}
        after = decode_cursor(request.query_params.get("cursor"), raw)
        ops = [
            o
            for o in state.view.operators_of(auth.tenant.id, auth.key.livemode)
            if (status is None or o.status == status)
            and (capability is None or capability in o.capabilities)
        ]
        page, more, last = paginate(ops, lambda o: (o.created_at, o.id), limit, after)
        return respond(
            ListOf[OperatorObject], list_body([o.public() for o in page], more, last, raw)
        )

    @post(
        "/",
        opt={"scope": "operators:write", "route_class": "config_write"},
        operation_id="createOperator",
        status_code=201,
        **documented(409, 422, 503, body=OperatorCreate),
    )
    async def create_operator(
        self, request: Request[Any, Any, Any], data: OperatorCreate | None = None
    ) -> Response[OperatorObject]:
        """Register a named operator with its capabilities, outcome and guardrails."""
        state, auth = api_state(request), auth_of(request)
        body = await read_body(request)

        async def handle() -> Response[OperatorObject]:
            data = validate(OperatorCreate, body)
            args = {"operator": data.model_dump(mode="json", exclude_unset=False)}
            if "guardrails" not in data.model_fields_set:
                args["operator"]["guardrails"] = []
            created = await run_command(state, request, auth, "operator.create", args)
            return respond(OperatorObject, created, 201)

        return await state.idempotency.run(request, auth.scope, body, handle)

    @get(
        "/{operator_id:str}",
        opt={"scope": "operators:read", "route_class": "config_read"},
        operation_id="retrieveOperator",
        **documented(404),
    )
    async def retrieve_operator(
        self, request: Request[Any, Any, Any], operator_id: str
    ) -> Response[OperatorObject]:
        """Retrieve the full operator, guardrails and last run included."""
        op = find_operator(api_state(request), auth_of(request), operator_id)
        return respond(OperatorObject, op.public())

    @patch(
        "/{operator_id:str}",
        opt={"scope": "operators:write", "route_class": "config_write"},
        operation_id="updateOperator",
        **documented(404, 409, 422, 503, body=OperatorUpdate),
    )
    async def update_operator(
        self,
        request: Request[Any, Any, Any],
        operator_id: str,
        data: OperatorUpdate | None = None,
    ) -> Response[OperatorObject]:
        """Update the fields sent; guardrails are replaced whole; name is immutable."""
        state, auth = api_state(request), auth_of(request)
        find_operator(state, auth, operator_id)
        body = await read_body(request)

        async def handle() -> Response[OperatorObject]:
            data = validate(OperatorUpdate, body)
            changes = data.model_dump(mode="json", include=data.model_fields_set)
            args = {"operator_id": operator_id, "changes": changes}
            updated = await run_command(state, request, auth, "operator.update", args)
            return respond(OperatorObject, updated)

        return await state.idempotency.run(request, auth.scope, body, handle)

    @post(
        "/{operator_id:str}/pause",
        opt={"scope": "operators:write", "route_class": "config_write"},
        operation_id="pauseOperator",
        status_code=200,
        **documented(404, 409, 503, body=PauseBody, optional_body=True),
    )
    async def pause_operator(
        self, request: Request[Any, Any, Any], operator_id: str, data: PauseBody | None = None
    ) -> Response[OperatorPaused]:
        """Pause: stop reasoning and proposing (events keep ingesting). Idempotent."""
        state, auth = api_state(request), auth_of(request)
        find_operator(state, auth, operator_id)
        body = await read_body(request)

        async def handle() -> Response[OperatorPaused]:
            data = validate(PauseBody, body, allow_empty=True)
            args = {"operator_id": operator_id, "reason": data.reason}
            paused = await run_command(state, request, auth, "operator.pause", args)
            return respond(OperatorPaused, paused)

        return await state.idempotency.run(request, auth.scope, body, handle)

    @post(
        "/{operator_id:str}/resume",
        opt={"scope": "operators:write", "route_class": "config_write"},
        operation_id="resumeOperator",
        status_code=200,
        **documented(404, 409, 503, body=ResumeBody, optional_body=True),
    )
    async def resume_operator(
        self, request: Request[Any, Any, Any], operator_id: str, data: ResumeBody | None = None
    ) -> Response[OperatorResumed]:
        """Resume a paused operator; with ``catch_up`` it reasons over the events that arrived
        while it was paused, oldest first, and the response counts them."""
        state, auth = api_state(request), auth_of(request)
        op = find_operator(state, auth, operator_id)
        body = await read_body(request)

        async def handle() -> Response[OperatorResumed]:
            data = validate(ResumeBody, body, allow_empty=True)
            result = await catch_up.resume(caller(request), op, data.catch_up)
            return respond(OperatorResumed, result)

        return await state.idempotency.run(request, auth.scope, body, handle)

    # ---- versions (issue 12 item 5, decisions §38) --------------------------------------------
    @get(
        "/{operator_id:str}/versions",
        opt={"scope": "operators:read", "route_class": "config_read"},
        operation_id="listOperatorVersions",
        **documented(404),
    )
    async def list_versions(
        self, request: Request[Any, Any, Any], operator_id: str
    ) -> Response[ListOf[OperatorObject]]:
        """Every version of the operator as it was written, newest first (plans and receipts
        cite ``guardrail_version``, the operator's version)."""
        state, auth = api_state(request), auth_of(request)
        op = find_operator(state, auth, operator_id)
        only_params(request.query_params, frozenset({"limit", "cursor"}))
        limit = parse_limit(request.query_params.get("limit"))
        raw: dict[str, Any] = {"operator_id": op.id}
        after = decode_cursor(request.query_params.get("cursor"), raw, "operator_versions")
        versions = await _versions(state, auth, op)
        page, more, last = paginate(
            [v for v in versions.values() if not v.deleted],
            lambda v: (v.updated_at, f"{v.version:010d}"),
            limit,
            after,
        )
        data = list_body([v.public() for v in page], more, last, raw, "operator_versions")
        return respond(ListOf[OperatorObject], data)

    @get(
        "/{operator_id:str}/versions/{version:int}",
        opt={"scope": "operators:read", "route_class": "config_read"},
        operation_id="retrieveOperatorVersion",
        **documented(404),
    )
    async def retrieve_version(
        self, request: Request[Any, Any, Any], operator_id: str, version: Version
    ) -> Response[OperatorObject]:
        """The operator as it was at one version."""
        state, auth = api_state(request), auth_of(request)
        op = find_operator(state, auth, operator_id)
        v = version
        found = pick(await _versions(state, auth, op), v, f"Operator {op.id}")
        return respond(OperatorObject, found.public())

    @get(
        "/{operator_id:str}/versions/{version:int}/diff",
        opt={"scope": "operators:read", "route_class": "config_read"},
        operation_id="diffOperatorVersion",
        **documented(404),
    )
    async def diff_version(
        self, request: Request[Any, Any, Any], operator_id: str, version: Version
    ) -> Response[VersionDiff]:
        """Field-level changes of ``version`` against ``against`` (default: the version before
        it): each with ``field``, ``path``, ``op`` (added, removed, changed), ``before`` and
        ``after``."""
        state, auth = api_state(request), auth_of(request)
        op = find_operator(state, auth, operator_id)
        v = version
        versions = await _versions(state, auth, op)
        body = version_diff(
            request, auth, "operator", op.id, versions, v, OPERATOR_DIFF_FIELDS, f"Operator {op.id}"
        )
        return respond(VersionDiff, body)

    @post(
        "/{operator_id:str}/versions/{version:int}/rollback",
        opt={"scope": "operators:write", "route_class": "config_write"},
        operation_id="rollbackOperator",
        status_code=200,
        **documented(404, 422, 503),
    )
    async def rollback(
        self, request: Request[Any, Any, Any], operator_id: str, version: Version
    ) -> Response[OperatorObject]:
        """Roll back: a NEW version whose configuration (outcome, capabilities, guardrails,
        model, schedule, triggers, playbook) is that of ``version``; status is kept (pause and
        resume are their own routes). Refused with ``capability_unbound`` when a capability of
        that version is no longer fulfilled by an installed connector."""
        state, auth = api_state(request), auth_of(request)
        op = find_operator(state, auth, operator_id)
        v = version
        body = await read_body(request)

        async def handle() -> Response[OperatorObject]:
            target = pick(await _versions(state, auth, op), v, f"Operator {op.id}")
            args = {
                "operator_id": op.id,
                "version": v,
                "target": target.model_dump(mode="json"),
            }
            result = await run_command(state, request, auth, "operator.rollback", args)
            return respond(OperatorObject, result)

        return await state.idempotency.run(request, auth.scope, body, handle)


async def _versions(state: ApiState, auth: AuthContext, op: Operator) -> dict[int, Operator]:
    known = state.view.operator_versions.get(op.id, {})
    return await history(state, auth, "operator", op.id, known, Operator)
