"""Pure plan building: routing an event to operators, turning a model's proposal into a
:class:`Plan` (validated, connectors bound, every action judged by policy), and the receipts a
plan's dispositions produce. Ids are derived from their inputs, so reprocessing an event after a
crash produces the same plan, actions and receipts, which the ledger stores once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from agents.executor import plan_receipt, receipt, revet, vet
from agents.globs import matches
from schemas.connector import Connector
from schemas.envelope import Event
from schemas.guardrail import GuardrailPolicy
from schemas.ids import derived_id
from schemas.operator import Operator
from schemas.plan import ActionRecord, ExecutionPlan, Plan, Receipt

# re-exported for callers that build receipts from a plan's actions
__all__ = ["Built", "bind_connector", "build_plan", "receipt", "revet", "routed_operators"]

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
    policies: Sequence[GuardrailPolicy] = (),
    traceparent: str | None = None,
) -> Built:
    """``traceparent``: the plan span's (schemas/tracing.py), kept on every action so its
    execution (also after an approval) continues the event's trace; None when tracing is off."""
    plan_id = derived_id("pl", _ms(event.created_at), event.id, operator.id, operator.version)
    # The plan and its actions are dated by their event, not by the clock: a replay after a crash
    # (same event, same operator version) then yields byte-identical rows and receipt ids, which
    # the ledger stores once. `now` only dates what really happens now (the approval window and
    # the receipts of this disposition).
    at = event.created_at
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
        created_at=at,
        updated_at=at,
    )
    if proposal is None or refusal:
        return _refuse(plan, refusal or "the model returned no plan", now, traceparent)
    actions: list[ActionRecord] = []
    for i, pa in enumerate(proposal.actions):
        if pa.tool not in operator.capabilities:
            return _refuse(
                plan, f"{pa.tool} is outside the operator's capabilities", now, traceparent
            )
        cn = bind_connector(connectors, pa.tool, pa.connector)
        if cn is None:
            return _refuse(
                plan,
                f"{pa.tool} is bound to no installed connector"
                + (f" named {pa.connector!r}" if pa.connector else ""),
                now,
                traceparent,
            )
        tool = next(t for t in cn.tools if t.name == pa.tool)
        verdict = vet(
            operator,
            cn,
            tool=pa.tool,
            side_effect=tool.side_effect,
            value=pa.value,
            policies=policies,
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
                proposed_at=at,
                traceparent=traceparent,
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


def _refuse(plan: Plan, reason: str, now: datetime, traceparent: str | None = None) -> Built:
    plan.status = "refused"
    plan.refusal = reason
    return Built(plan, [plan_receipt(plan, reason, now, traceparent)])
