"""The guardrails' dry run (``POST /v1/guardrails/evaluate``): proposed actions judged with the
executor's own pure function (``agents.executor.vet``, the one the plan builder and approval
call) against the guardrails in force now, with what each budget that would count them has
left. Nothing runs, nothing is reserved, nothing is written, no receipt."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from agents import budget
from agents.executor import vet
from agents.globs import matches
from agents.planning import bind_connector
from api.auth import AuthContext
from api.objects import tool_tier
from api.state import ApiState
from schemas.connector import Connector
from schemas.errors import ErrorCode, FibricError
from schemas.guardrail import EvaluateRequest
from schemas.operator import Operator
from schemas.plan import Verdict


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


async def evaluate(state: ApiState, auth: AuthContext, req: EvaluateRequest) -> dict[str, Any]:
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
