"""Pure plan building: routing an event to operators, turning a model's proposal into a
:class:`Plan` (validated, connectors bound, every action judged by policy), and the receipts a
plan's dispositions produce. Ids are derived from their inputs, so reprocessing an event after a
crash produces the same plan, actions and receipts, which the ledger stores once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from agents.globs import matches
from agents.policy import evaluate
from schemas.connector import Connector
from schemas.envelope import Event
from schemas.ids import derived_id
from schemas.operator import Operator
from schemas.plan import ActionRecord, ExecutionPlan, Outcome, Plan, Receipt, Verdict

# Plans awaiting approval expire after this long (spec §5.2: 72 h default).
APPROVAL_TTL = timedelta(hours=72)


def routed_operators(
    operators: Sequence[Operator], event: Event, route_to: str | None = None
) -> list[Operator]:
    """Active operators of the event's tenant and mode whose triggers match its type. An event
    addressed to one operator (``route_to``: a catch-up replay; or a scheduled run, source
    ``cron``) goes to that operator only."""
    target = route_to or (event.agent_id if event.source == "cron" else None)
    if target:
        return [
            op
            for op in operators
            if op.id == target
            and op.status == "active"
            and op.tenant_id == event.tenant_id
            and op.livemode == event.livemode
        ]
    return sorted(
        (
            op
            for op in operators
            if op.status == "active"
            and op.tenant_id == event.tenant_id
            and op.livemode == event.livemode
            and any(matches(t, event.event_type) for t in op.triggers)
        ),
        key=lambda op: op.id,
    )


@dataclass
class Built:
    plan: Plan
    receipts: list[Receipt] = field(default_factory=list)
    dispatch: list[ActionRecord] = field(default_factory=list)  # to the executor now


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def bind_connector(
    connectors: Sequence[Connector], tool: str, requested: str | None
) -> Connector | None:
    usable = sorted(connectors, key=lambda c: (c.created_at, c.id))
    if requested:
        usable = [c for c in usable if requested in (c.id, c.name)]
    return next((c for c in usable if any(t.name == tool for t in c.tools)), None)


def build_plan(
    *,
    event: Event,
    operator: Operator,
    connectors: Sequence[Connector],
    proposal: ExecutionPlan | None,
    refusal: str | None,
    now: datetime,
    run_id: str | None = None,
    approval_ttl: timedelta = APPROVAL_TTL,
) -> Built:
    plan_id = derived_id("pl", _ms(event.created_at), event.id, operator.id, operator.version)
    plan = Plan(
        id=plan_id,
        tenant_id=event.tenant_id,
        livemode=event.livemode,
        operator_id=operator.id,
        operator_name=operator.name,
        guardrail_version=operator.version,
        event_id=event.id,
        correlation_id=event.correlation_id,
        run_id=run_id or event.session_id,
        model=operator.model,
        status="executing",
        reasoning=proposal.reasoning if proposal else None,
        actions=[],
        created_at=now,
        updated_at=now,
    )
    if proposal is None or refusal:
        return _refuse(plan, refusal or "the model returned no plan", now)
    actions: list[ActionRecord] = []
    for i, pa in enumerate(proposal.actions):
        if pa.tool not in operator.capabilities:
            return _refuse(plan, f"{pa.tool} is outside the operator's capabilities", now)
        cn = bind_connector(connectors, pa.tool, pa.connector)
        if cn is None:
            return _refuse(
                plan,
                f"{pa.tool} is bound to no installed connector"
                + (f" named {pa.connector!r}" if pa.connector else ""),
                now,
            )
        tool = next(t for t in cn.tools if t.name == pa.tool)
        verdict = evaluate(
            operator.guardrails,
            tool=pa.tool,
            side_effect=tool.side_effect,
            value=pa.value,
            connector_names=(cn.id, cn.name, cn.listing),
        )
        actions.append(
            ActionRecord(
                id=derived_id("act", _ms(event.created_at), plan_id, i),
                plan_id=plan_id,
                tenant_id=event.tenant_id,
                livemode=event.livemode,
                operator_id=operator.id,
                operator_name=operator.name,
                guardrail_version=operator.version,
                event_id=event.id,
                correlation_id=event.correlation_id,
                connector_id=cn.id,
                connector_name=cn.name,
                tool=pa.tool,
                side_effect=tool.side_effect,
                compensating_tool=tool.compensating_tool,
                args=pa.args,
                value=pa.value,
                entity_key=pa.entity_key,
                idempotency_key=pa.idempotency_key,
                verdict=verdict,
                request_id=event.request_id,
                proposed_at=now,
            )
        )
    plan.actions = actions
    built = Built(plan)
    held = any(a.verdict.decision == "ALERT" for a in actions)
    if held:
        plan.status = "proposed"
        plan.expires_at = now + approval_ttl
    for a in actions:
        if a.verdict.decision == "BLOCK":
            built.receipts.append(receipt(a, "BLOCK", "refused", a.verdict.reason, now))
        elif held and a.verdict.decision == "ALERT":
            built.receipts.append(receipt(a, "ALERT", "pending_approval", a.verdict.reason, now))
        elif not held:
            built.dispatch.append(a)
    if not held and not built.dispatch:
        plan.status = "refused" if actions else "executed"
    return built


def _refuse(plan: Plan, reason: str, now: datetime) -> Built:
    plan.status = "refused"
    plan.refusal = reason
    rc = Receipt(
        id=derived_id("rc", _ms(plan.created_at), plan.id, "plan-refused"),
        tenant_id=plan.tenant_id,
        livemode=plan.livemode,
        operator_id=plan.operator_id,
        operator_name=plan.operator_name,
        guardrail_version=plan.guardrail_version,
        event_id=plan.event_id,
        plan_id=plan.id,
        action_id=None,
        correlation_id=plan.correlation_id,
        connector_id=None,
        connector_name=None,
        tool=None,
        entity_key=None,
        idempotency_key=None,
        value=None,
        decision="BLOCK",
        outcome="refused",
        rule=None,
        reason=f"plan refused: {reason}",
        created_at=now,
    )
    return Built(plan, [rc])


def receipt(
    a: ActionRecord,
    decision: str,
    outcome: Outcome,
    reason: str,
    now: datetime,
    *,
    result: Any = None,
    error: dict[str, Any] | None = None,
    latency_ms: float | None = None,
    approver: str | None = None,
    request_id: str | None = None,
) -> Receipt:
    """The receipt of one disposition; its id is derived from the action and the outcome, so a
    replayed disposition produces the same receipt id (stored once)."""
    return Receipt(
        id=derived_id("rc", _ms(a.proposed_at), a.id, outcome),
        tenant_id=a.tenant_id,
        livemode=a.livemode,
        operator_id=a.operator_id,
        operator_name=a.operator_name,
        guardrail_version=a.guardrail_version,
        event_id=a.event_id,
        plan_id=a.plan_id,
        action_id=a.id,
        correlation_id=a.correlation_id,
        connector_id=a.connector_id,
        connector_name=a.connector_name,
        tool=a.tool,
        entity_key=a.entity_key,
        idempotency_key=a.idempotency_key,
        value=a.value,
        decision=decision,  # type: ignore[arg-type]
        outcome=outcome,
        rule=a.verdict.rule,
        reason=reason,
        result=result,
        error=error,
        approver=approver or a.approver,
        request_id=request_id or a.request_id,
        latency_ms=latency_ms,
        proposed_at=a.proposed_at,
        created_at=now,
    )


def revet(a: ActionRecord, operator: Operator | None, connectors: Sequence[Connector]) -> Verdict:
    """Judge an action again with the guardrails in force now (approval time). A deleted operator
    or connector blocks."""
    if operator is None:
        return Verdict(decision="BLOCK", rule=None, reason="the operator no longer exists")
    cn = next((c for c in connectors if c.id == a.connector_id), None)
    if cn is None:
        return Verdict(decision="BLOCK", rule=None, reason="the connector is no longer installed")
    return evaluate(
        operator.guardrails,
        tool=a.tool,
        side_effect=a.side_effect,
        value=a.value,
        connector_names=(cn.id, cn.name, cn.listing),
    )
