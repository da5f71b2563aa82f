"""``/v1/guardrails`` (spec §2.10, §3.8): tenant guardrail policies and the dry-run evaluator.

Reads come from this process's config view (which keeps every version of every policy); writes
are ``guardrail.*`` commands to the control agent. ``POST /v1/guardrails/evaluate`` judges
proposed actions with the executor's own pure function (``agents.executor.vet``, the one the
plan builder and approval call) against the guardrails in force now: nothing runs, nothing is
written, no receipt.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Controller, Request, Response, delete, get, patch, post

from agents import budget
from agents.executor import vet
from agents.globs import matches
from agents.governance import GUARDRAIL_DIFF_FIELDS
from agents.planning import bind_connector
from api.auth import AuthContext, api_state, auth_of
from api.body import read_body, validate
from api.commands import run_command
from api.controllers.loop import tool_tier
from api.pagination import decode_cursor, list_body, paginate, parse_limit
from api.respond import documented, respond
from api.state import ApiState
from api.versions import Version, history, pick, version_diff
from schemas.connector import Connector
from schemas.errors import ErrorCode, FibricError
from schemas.governance import VersionDiff
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


_SCOPE_COLUMNS = {
    "operator": "operator_id",
    "connector": "connector_id",
    "tool": "tool",
    "entity": "entity_key",
}


def _glob_ok(pattern: str | None, *names: str | None) -> bool:
    return pattern is None or any(n is not None and matches(pattern, n) for n in names)


async def budgets_left(
    state: ApiState,
    auth: AuthContext,
    counted: list[budget.Counted],
    amount: float | None,
    connectors: list[Connector],
    cache: dict[str, tuple[int, float]],
) -> list[dict[str, Any]]:
    """What each budget that would count this action has spent and has left, from the stored
    receipts (the executor's state holds the exact figure, including calls in flight; the dry
    run reads the ledger, so it can lag by the sink's batch)."""
    now = datetime.now(UTC)
    names = {c.id: (c.id, c.name, c.listing) for c in connectors}
    out = []
    for c in counted:
        if c.key not in cache:
            b = c.budget
            equal = {_SCOPE_COLUMNS[k]: v for k, v in c.scope.items()}
            rows = await state.store.budget_spend(
                auth.scope, now - timedelta(seconds=b.window_seconds), equal
            )
            n, total = 0, 0.0
            for op_name, cn_id, tool, count, value in rows:
                if (
                    _glob_ok(b.operator, op_name)
                    and _glob_ok(b.connector, *names.get(cn_id, (cn_id,)))
                    and _glob_ok(b.tool, tool)
                ):
                    n += count
                    total += value
            cache[c.key] = (n, total)
        n, total = cache[c.key]
        lim = c.limits
        out.append(
            {
                "guardrail_id": c.policy.id,
                "guardrail": c.policy.name,
                "guardrail_version": c.policy.version,
                "index": c.index,
                "scope": dict(c.scope),
                "window_seconds": c.budget.window_seconds,
                "max_count": lim.max_count,
                "max_value": lim.max_value,
                "on_exhausted": c.budget.on_exhausted,
                "spent_count": n,
                "spent_value": total,
                "count_left": None if lim.max_count is None else max(0, lim.max_count - n),
                "value_left": None if lim.max_value is None else max(0.0, lim.max_value - total),
                "exhausted": not budget.fits(n, total, amount, lim),
            }
        )
    return out


async def evaluate_actions(
    state: ApiState, auth: AuthContext, req: EvaluateRequest
) -> dict[str, Any]:
    """Judge each proposed action as the plan builder would (agents/planning.py): outside the
    operator's capabilities or bound to no connector → BLOCK; else :func:`vet`. A side effect
    that budgets count gets what is left of each (``budget``); an exhausted ``BLOCK`` budget
    turns an ALLOW or ALERT into the BLOCK the executor would give (``budget_exhausted``)."""
    op = _operator(state, auth, req.operator)
    connectors = state.view.connectors_of(auth.tenant.id, auth.key.livemode)
    policies = state.view.guardrails_of(auth.tenant.id, auth.key.livemode)
    spend: dict[str, tuple[int, float]] = {}
    out = []
    for i, pa in enumerate(req.actions()):
        cn = bind_connector(connectors, pa.tool, pa.connector)
        tool = next((t for t in cn.tools if t.name == pa.tool), None) if cn else None
        side_effect = tool.side_effect if tool else None
        left = None
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
            counted = (
                budget.counting(
                    policies,
                    tenant_id=auth.tenant.id,
                    livemode=auth.key.livemode,
                    operator_id=op.id,
                    operator_name=op.name,
                    connector_id=cn.id,
                    connector_names=(cn.id, cn.name, cn.listing),
                    tool=pa.tool,
                    entity_key=pa.entity_key or "",
                )
                if tool.side_effect
                else []
            )
            if counted:
                left = await budgets_left(state, auth, counted, pa.value, connectors, spend)
                over = next(
                    (
                        (c, b)
                        for c, b in zip(counted, left, strict=True)
                        if b["exhausted"] and c.budget.on_exhausted == "BLOCK"
                    ),
                    None,
                )
                if over is not None and v.decision != "BLOCK":
                    c = over[0]
                    why = budget.exhausted_reason(c, pa.tool, pa.value)
                    v = Verdict(decision="BLOCK", rule=c.rule(), reason=why)
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
                "budget": left,
                "shadow_verdict": v.shadow_verdict,
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
        ``decision`` ``ALLOW`` | ``ALERT`` | ``BLOCK``) and/or ``budgets`` (the same globs,
        ``window_seconds``, ``max_count`` and/or ``max_value`` over the summed action values,
        counted ``per`` operator/connector/tool/entity, ``on_exhausted`` ``BLOCK`` | ``ALERT``).
        A tenant BLOCK always wins."""
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
        that decided and ``budget``: what is left of each budget that would count it (null when
        none does; an exhausted BLOCK budget makes the decision BLOCK, ``budget_exhausted``).
        Nothing runs, nothing is reserved and no receipt is written."""
        state, auth = api_state(request), auth_of(request)
        req = validate(EvaluateRequest, await read_body(request))
        return respond(Evaluation, await evaluate_actions(state, auth, req))

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
        """Change ``description``, ``status``, ``rules`` or ``budgets`` (each replaced as a
        whole; a budget keeps its spend while it keeps its position). Every change
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
        versions = [v for v in (await _versions(state, auth, gp)).values() if not v.deleted]
        page, more, last = paginate(
            versions, lambda v: (v.updated_at, f"{v.version:010d}"), limit, after
        )
        data = list_body([v.public() for v in page], more, last, raw, "guardrail_versions")
        return respond(ListOf[GuardrailPolicyObject], data)

    @get(
        "/{guardrail_id:str}/versions/{version:int}",
        opt={"scope": "guardrails:read", "route_class": "config_read"},
        operation_id="retrieveGuardrailPolicyVersion",
        **documented(404),
    )
    async def retrieve_version(
        self, request: Request[Any, Any, Any], guardrail_id: str, version: Version
    ) -> Response[GuardrailPolicyObject]:
        """The policy as it was at one version (receipts cite it in ``rule``)."""
        state, auth = api_state(request), auth_of(request)
        gp = find_policy(state, auth, guardrail_id)
        v = version
        found = pick(await _versions(state, auth, gp), v, f"Guardrail policy {gp.id}")
        return respond(GuardrailPolicyObject, found.public())

    @get(
        "/{guardrail_id:str}/versions/{version:int}/diff",
        opt={"scope": "guardrails:read", "route_class": "config_read"},
        operation_id="diffGuardrailPolicyVersion",
        **documented(404),
    )
    async def diff_version(
        self, request: Request[Any, Any, Any], guardrail_id: str, version: Version
    ) -> Response[VersionDiff]:
        """Field-level changes of ``version`` against ``against`` (default: the version before
        it), e.g. ``rules[0].decision`` changed from ``BLOCK`` to ``ALERT``."""
        state, auth = api_state(request), auth_of(request)
        gp = find_policy(state, auth, guardrail_id)
        v = version
        versions = await _versions(state, auth, gp)
        what = f"Guardrail policy {gp.id}"
        body = version_diff(
            request, auth, "guardrail_policy", gp.id, versions, v, GUARDRAIL_DIFF_FIELDS, what
        )
        return respond(VersionDiff, body)

    @post(
        "/{guardrail_id:str}/versions/{version:int}/rollback",
        opt={"scope": "guardrails:write", "route_class": "config_write"},
        operation_id="rollbackGuardrailPolicy",
        status_code=200,
        **documented(404, 503),
    )
    async def rollback(
        self, request: Request[Any, Any, Any], guardrail_id: str, version: Version
    ) -> Response[GuardrailPolicyObject]:
        """Roll back: a NEW version with the ``description``, ``status`` and ``rules`` of
        ``version``; the next plan is judged by it."""
        state, auth = api_state(request), auth_of(request)
        gp = find_policy(state, auth, guardrail_id)
        v = version
        body = await read_body(request)

        async def handle() -> Response[GuardrailPolicyObject]:
            target = pick(await _versions(state, auth, gp), v, f"Guardrail policy {gp.id}")
            args = {"guardrail_id": gp.id, "version": v, "target": target.model_dump(mode="json")}
            result = await run_command(state, request, auth, "guardrail.rollback", args)
            return respond(GuardrailPolicyObject, result)

        return await state.idempotency.run(request, auth.scope, body, handle)


async def _versions(
    state: ApiState, auth: AuthContext, gp: GuardrailPolicy
) -> dict[int, GuardrailPolicy]:
    known = state.view.guardrail_versions.get(gp.id, {})
    return await history(state, auth, "guardrail_policy", gp.id, known, GuardrailPolicy)
