"""``/v1/guardrails`` (spec §2.10, §3.8): tenant guardrail policies and the dry-run evaluator.

Reads come from this process's config view (which keeps every version of every policy); writes
are ``guardrail.*`` commands to the control agent. ``POST /v1/guardrails/evaluate`` judges
proposed actions with the executor's own pure function (``agents.executor.vet``, the one the
plan builder and approval call) against the guardrails in force now: nothing runs, nothing is
written, no receipt.
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Controller, Request, Response, delete, get, patch, post

from agents.executor import vet
from agents.planning import bind_connector
from api.auth import AuthContext, api_state, auth_of
from api.body import read_body, validate
from api.commands import run_command
from api.controllers.loop import tool_tier
from api.pagination import decode_cursor, list_body, paginate, parse_limit
from api.respond import documented, respond
from api.state import ApiState
from schemas.errors import ErrorCode, FibricError
from schemas.guardrail import (
    DeletedGuardrail,
    EvaluateRequest,
    Evaluation,
    GuardrailCreate,
    GuardrailPolicy,
    GuardrailPolicyObject,
    GuardrailUpdate,
)
from schemas.objects import ListOf
from schemas.operator import Operator
from schemas.plan import Verdict

STATUSES = ("active", "disabled")
_GRD = re.compile(r"^grd_[0-9A-Z]{26}$")


def find_policy(state: ApiState, auth: AuthContext, guardrail_id: str) -> GuardrailPolicy:
    """Another tenant's policy, or one of the other mode, reads as not found."""
    gp = state.view.guardrails.get(guardrail_id) if _GRD.match(guardrail_id) else None
    if gp is None or gp.tenant_id != auth.tenant.id or gp.livemode != auth.key.livemode:
        raise FibricError(ErrorCode.NOT_FOUND, f"No guardrail policy {guardrail_id[:60]!r}.")
    return gp


def _params(request: Request[Any, Any, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise FibricError(
            ErrorCode.INVALID_PARAMETER,
            f"{unknown[0][:60]} is not a recognised parameter.",
            param=unknown[0][:60],
        )


def _operator(state: ApiState, auth: AuthContext, ref: str) -> Operator:
    mine = state.view.operators_of(auth.tenant.id, auth.key.livemode)
    op = next((o for o in mine if ref in (o.id, o.name) and not o.deleted), None)
    if op is None:
        raise FibricError(ErrorCode.NOT_FOUND, f"No operator {ref[:60]!r}.", param="operator")
    return op


def evaluate_actions(state: ApiState, auth: AuthContext, req: EvaluateRequest) -> dict[str, Any]:
    """Judge each proposed action as the plan builder would (agents/planning.py): outside the
    operator's capabilities or bound to no connector → BLOCK; else :func:`vet`."""
    op = _operator(state, auth, req.operator)
    connectors = state.view.connectors_of(auth.tenant.id, auth.key.livemode)
    policies = state.view.guardrails_of(auth.tenant.id, auth.key.livemode)
    out = []
    for i, pa in enumerate(req.actions()):
        cn = bind_connector(connectors, pa.tool, pa.connector)
        tool = next((t for t in cn.tools if t.name == pa.tool), None) if cn else None
        side_effect = tool.side_effect if tool else None
        if pa.tool not in op.capabilities:
            v = Verdict(
                decision="BLOCK", reason=f"{pa.tool} is outside the operator's capabilities"
            )
        elif cn is None or tool is None:
            v = Verdict(decision="BLOCK", reason=f"{pa.tool} is bound to no installed connector")
        else:
            v = vet(
                op,
                cn,
                tool=pa.tool,
                side_effect=tool.side_effect,
                value=pa.value,
                policies=policies,
            )
        out.append(
            {
                "index": i,
                "connector": cn.id if cn else None,
                "tool": pa.tool,
                "value": pa.value,
                "side_effect": side_effect,
                "decision": v.decision,
                "tier": tool_tier(cn.listing if cn else None, pa.tool, side_effect),
                "rule": v.rule,
                "reason": v.reason,
                "budget": None,
            }
        )
    decisions = {a["decision"] for a in out}
    overall = "BLOCK" if "BLOCK" in decisions else "ALERT" if "ALERT" in decisions else "ALLOW"
    return {
        "object": "guardrail_evaluation",
        "livemode": auth.key.livemode,
        "operator_id": op.id,
        "operator_name": op.name,
        "guardrail_version": op.version,
        "policies": [p.ref() for p in policies if p.status == "active"],
        "decision": overall,
        "actions": out,
    }


class GuardrailsController(Controller):
    path = "/guardrails"
    tags = ["guardrails"]

    @get(
        "/",
        opt={"scope": "guardrails:read", "route_class": "config_read"},
        operation_id="listGuardrailPolicies",
        **documented(),
    )
    async def list_guardrails(
        self, request: Request[Any, Any, Any]
    ) -> Response[ListOf[GuardrailPolicyObject]]:
        """List this tenant's guardrail policies (the calling key's mode), newest first; filter
        ``status`` (``active`` | ``disabled``)."""
        state, auth = api_state(request), auth_of(request)
        _params(request, frozenset({"limit", "cursor", "status"}))
        limit = parse_limit(request.query_params.get("limit"))
        status = request.query_params.get("status")
        if status is not None and status not in STATUSES:
            raise FibricError(
                ErrorCode.INVALID_PARAMETER,
                f"status must be one of {', '.join(STATUSES)}.",
                param="status",
            )
        raw = {"status": status}
        after = decode_cursor(request.query_params.get("cursor"), raw, "guardrails")
        items = [
            g
            for g in state.view.guardrails_of(auth.tenant.id, auth.key.livemode)
            if status is None or g.status == status
        ]
        page, more, last = paginate(items, lambda g: (g.created_at, g.id), limit, after)
        data = list_body([g.public() for g in page], more, last, raw, "guardrails")
        return respond(ListOf[GuardrailPolicyObject], data)

    @post(
        "/",
        opt={"scope": "guardrails:write", "route_class": "config_write"},
        operation_id="createGuardrailPolicy",
        status_code=201,
        **documented(409, 503, body=GuardrailCreate),
    )
    async def create_guardrail(
        self, request: Request[Any, Any, Any], data: GuardrailCreate | None = None
    ) -> Response[GuardrailPolicyObject]:
        """Create a policy that applies to every operator of the tenant: ``rules`` (each with
        optional ``operator``, ``connector`` and ``tool`` globs, an optional ``max_value`` and a
        ``decision`` ``ALLOW`` | ``ALERT`` | ``BLOCK``). A tenant BLOCK always wins."""
        state, auth = api_state(request), auth_of(request)
        body = await read_body(request)

        async def handle() -> Response[GuardrailPolicyObject]:
            draft = validate(GuardrailCreate, body)
            args = {"guardrail": draft.model_dump(mode="json", exclude_none=True)}
            created = await run_command(state, request, auth, "guardrail.create", args)
            return respond(GuardrailPolicyObject, created, 201)

        return await state.idempotency.run(request, auth.scope, body, handle)

    @post(
        "/evaluate",
        opt={"scope": "guardrails:read", "route_class": "config_read"},
        operation_id="evaluateGuardrails",
        status_code=200,
        **documented(404, body=EvaluateRequest),
    )
    async def evaluate(
        self, request: Request[Any, Any, Any], data: EvaluateRequest | None = None
    ) -> Response[Evaluation]:
        """Dry run: what would the guardrails in force now decide for these actions of this
        ``operator`` (id or name)? Send one ``action`` or a ``plan`` (``{"actions": […]}``) and
        optionally the ``envelope``. Each action gets its ``decision``, ``tier``, the ``rule``
        that decided and ``budget`` (null: budgets are not enforced yet). Nothing runs and no
        receipt is written."""
        state, auth = api_state(request), auth_of(request)
        req = validate(EvaluateRequest, await read_body(request))
        return respond(Evaluation, evaluate_actions(state, auth, req))

    @get(
        "/{guardrail_id:str}",
        opt={"scope": "guardrails:read", "route_class": "config_read"},
        operation_id="retrieveGuardrailPolicy",
        **documented(404),
    )
    async def retrieve_guardrail(
        self, request: Request[Any, Any, Any], guardrail_id: str
    ) -> Response[GuardrailPolicyObject]:
        """Retrieve one policy at its current version."""
        gp = find_policy(api_state(request), auth_of(request), guardrail_id)
        return respond(GuardrailPolicyObject, gp.public())

    @patch(
        "/{guardrail_id:str}",
        opt={"scope": "guardrails:write", "route_class": "config_write"},
        operation_id="updateGuardrailPolicy",
        **documented(404, 503, body=GuardrailUpdate),
    )
    async def update_guardrail(
        self,
        request: Request[Any, Any, Any],
        guardrail_id: str,
        data: GuardrailUpdate | None = None,
    ) -> Response[GuardrailPolicyObject]:
        """Change ``description``, ``status`` or ``rules`` (replaced as a whole). Every change
        is a new ``version``; the next plan is judged by it, plans already judged keep theirs."""
        state, auth = api_state(request), auth_of(request)
        find_policy(state, auth, guardrail_id)
        body = await read_body(request)

        async def handle() -> Response[GuardrailPolicyObject]:
            upd = validate(GuardrailUpdate, body)
            changes = upd.model_dump(mode="json", exclude_unset=True, exclude_none=True)
            args = {"guardrail_id": guardrail_id, "changes": changes}
            result = await run_command(state, request, auth, "guardrail.update", args)
            return respond(GuardrailPolicyObject, result)

        return await state.idempotency.run(request, auth.scope, body, handle)

    @delete(
        "/{guardrail_id:str}",
        opt={"scope": "guardrails:write", "route_class": "config_write"},
        operation_id="deleteGuardrailPolicy",
        status_code=200,
        **documented(404, 503),
    )
    async def delete_guardrail(
        self, request: Request[Any, Any, Any], guardrail_id: str
    ) -> Response[DeletedGuardrail]:
        """Delete a policy: it judges nothing from now on (its versions stay in the audit
        trail, ``config_log``)."""
        state, auth = api_state(request), auth_of(request)
        find_policy(state, auth, guardrail_id)
        args = {"guardrail_id": guardrail_id}
        result = await run_command(state, request, auth, "guardrail.delete", args)
        return respond(DeletedGuardrail, result)

    @get(
        "/{guardrail_id:str}/versions",
        opt={"scope": "guardrails:read", "route_class": "config_read"},
        operation_id="listGuardrailPolicyVersions",
        **documented(404),
    )
    async def list_versions(
        self, request: Request[Any, Any, Any], guardrail_id: str
    ) -> Response[ListOf[GuardrailPolicyObject]]:
        """Every version of a policy, newest first (receipts cite ``guardrail_version``)."""
        state, auth = api_state(request), auth_of(request)
        gp = find_policy(state, auth, guardrail_id)
        _params(request, frozenset({"limit", "cursor"}))
        limit = parse_limit(request.query_params.get("limit"))
        raw: dict[str, Any] = {"guardrail_id": gp.id}
        after = decode_cursor(request.query_params.get("cursor"), raw, "guardrail_versions")
        versions = [
            v for v in state.view.guardrail_versions.get(gp.id, {}).values() if not v.deleted
        ]
        page, more, last = paginate(
            versions, lambda v: (v.updated_at, f"{v.version:010d}"), limit, after
        )
        data = list_body([v.public() for v in page], more, last, raw, "guardrail_versions")
        return respond(ListOf[GuardrailPolicyObject], data)
