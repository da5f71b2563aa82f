"""The governed loop's objects: the model's ExecutionPlan, and the plan, action and receipt the
executor records (ARCHITECTURE §6)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Decision = Literal["ALLOW", "ALERT", "BLOCK", "DEDUP"]
Outcome = Literal[
    "applied",
    "refused",
    "deduplicated",
    "failed",
    "pending_approval",
    "vetoed",
    "expired",
    "undone",
]
PlanStatus = Literal[
    "proposed", "approved", "executing", "executed", "refused", "vetoed", "expired"
]

MAX_ACTIONS_PER_PLAN = 50


class PlannedAction(BaseModel):
    """One action as the model proposes it."""

    model_config = ConfigDict(extra="forbid")

    connector: str | None = Field(default=None, max_length=100)  # cn_… or instance name
    tool: str = Field(min_length=3, max_length=100)
    args: dict[str, Any] = Field(default_factory=dict)
    value: float | None = None
    entity_key: str = Field(min_length=1, max_length=200)
    idempotency_key: str = Field(min_length=1, max_length=255)

    @field_validator("value", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("value must be a number")
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                raise ValueError("value must be a number") from None
        return v


class ExecutionPlan(BaseModel):
    """What a model must return: reasoning plus ordered actions."""

    model_config = ConfigDict(extra="forbid")

    reasoning: str | None = Field(default=None, max_length=8000)
    actions: list[PlannedAction] = Field(default_factory=list, max_length=MAX_ACTIONS_PER_PLAN)


class Verdict(BaseModel):
    decision: Decision
    rule: dict[str, Any] | None = None  # the guardrail that decided (with its index), or None
    reason: str
    # every policy version that judged the action (the operator's guardrails, then each tenant
    # guardrail policy in force, shadow ones included): set by agents.executor.vet, copied onto
    # every receipt of the action (decisions §37)
    policy_versions: list[dict[str, Any]] | None = None
    # what the verdict would be with the shadow rules enforced (None: no shadow rule in force);
    # recorded, never acted on
    shadow_verdict: dict[str, Any] | None = None


class ActionRecord(BaseModel):
    """An action of a plan after validation and policy: what the executor receives."""

    id: str  # act_…
    plan_id: str
    tenant_id: str
    livemode: bool
    operator_id: str
    operator_name: str
    guardrail_version: int
    event_id: str | None
    correlation_id: str
    connector_id: str | None
    connector_name: str | None
    tool: str
    side_effect: bool
    compensating_tool: str | None = None
    args: dict[str, Any]
    value: float | None
    entity_key: str
    idempotency_key: str
    verdict: Verdict
    approver: str | None = None
    request_id: str | None = None
    undo_of: str | None = None  # act_ this action compensates
    proposed_at: datetime
    # W3C traceparent of the plan span that proposed the action (schemas/tracing.py): its
    # execution continues that trace, also after an approval; None when tracing is off
    traceparent: str | None = None


class Plan(BaseModel):
    id: str  # pl_…
    object: Literal["execution_plan"] = "execution_plan"
    tenant_id: str
    livemode: bool
    operator_id: str
    operator_name: str
    guardrail_version: int
    event_id: str | None
    correlation_id: str
    run_id: str | None = None
    model: str
    status: PlanStatus
    reasoning: str | None
    actions: list[ActionRecord]
    refusal: str | None = None  # why a plan was refused as a whole (invalid shape, unknown tool…)
    approver: str | None = None
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None
    version: int = 1


class Receipt(BaseModel):
    id: str  # rc_…
    object: Literal["receipt"] = "receipt"
    tenant_id: str
    livemode: bool
    operator_id: str
    operator_name: str
    guardrail_version: int
    event_id: str | None
    plan_id: str
    action_id: str | None
    correlation_id: str
    connector_id: str | None
    connector_name: str | None
    tool: str | None
    entity_key: str | None
    idempotency_key: str | None
    value: float | None
    decision: Decision
    outcome: Outcome
    rule: dict[str, Any] | None
    reason: str
    result: Any = None
    error: dict[str, Any] | None = None
    approver: str | None = None
    request_id: str | None = None
    latency_ms: float | None = None
    proposed_at: datetime | None = None
    created_at: datetime
    # additive (decisions §37): the versions that judged the action, and the shadow verdict
    policy_versions: list[dict[str, Any]] | None = None
    shadow_verdict: dict[str, Any] | None = None
    # additive (decisions §45): the OpenTelemetry trace (32 hex) of the event that led to this
    # disposition, when it was traced and sampled; null when tracing is off
    trace_id: str | None = None


# ---- the documented API objects (spec §2.8, §2.9, §2.11) -----------------------------------------
# What the api returns for a plan, an action and a receipt: every stored field we returned before
# (additive only, never renamed or removed) plus every field the spec documents, under its
# documented name and type. Built in one place (api/controllers/loop.py, ``*_public``) from what
# is stored; storage and the executor keep their shapes.
PublicPlanStatus = Literal["proposed", "executed", "vetoed", "expired"]
PlanDecision = Literal["ALLOW", "ALERT", "BLOCK"]
Tier = Literal[0, 1, 2, 3]
# The internal plan status → the documented one (decisions §26). A plan leaves
# `proposed` when it is handed to the executor; from then on it is `executed` whatever its lines
# did (blocked lines are receipted `refused`, spec §2.8), unless a person vetoed it or it expired.
PUBLIC_PLAN_STATUS: dict[str, str] = {
    "proposed": "proposed",
    "approved": "executed",
    "executing": "executed",
    "executed": "executed",
    "refused": "executed",
    "vetoed": "vetoed",
    "expired": "expired",
}


class PlanVerdict(BaseModel):
    """``actions[].verdict`` of a plan: the trust decision at plan (or approval) time."""

    model_config = ConfigDict(extra="forbid")

    decision: PlanDecision
    tier: Tier  # the trust tier of the tool (connector catalogue)
    rule: dict[str, Any] | None  # the guardrail that decided; None = default-closed fall-through
    reason: str  # ours, kept
    policy_versions: list[dict[str, Any]] | None = None  # every version that judged (§37)
    shadow_verdict: dict[str, Any] | None = None  # the would-be verdict of shadow rules


class ReceiptVerdict(BaseModel):
    """``verdict`` of a receipt: the executor's disposition decision (DEDUP included)."""

    model_config = ConfigDict(extra="forbid")

    decision: Decision
    tier: Tier
    rule: dict[str, Any] | None
    guardrail_version: int  # the operator guardrail version that judged it (spec: policy version)


class ActionObject(BaseModel):
    """``object: "action"`` (spec §2.9), also each entry of a plan's ``actions``."""

    model_config = ConfigDict(extra="forbid")

    id: str
    object: Literal["action"] = "action"
    plan_id: str
    livemode: bool
    operator_id: str
    operator_name: str
    guardrail_version: int
    event_id: str | None
    correlation_id: str
    connector: str | None  # documented name; the cn_ instance (None only if none was bound)
    connector_id: str | None
    connector_name: str | None
    tool: str
    side_effect: bool
    compensating_tool: str | None
    reversible: bool  # side-effecting with a compensating tool, and not itself an undo
    args: dict[str, Any]
    value: float | None
    entity_key: str
    idempotency_key: str
    verdict: PlanVerdict
    decision: Decision  # the latest disposition's decision (DEDUP included), else the verdict's
    outcome: Outcome | None  # the latest receipt's outcome; None before any
    receipt_id: str | None  # the latest receipt
    receipt_ids: list[str]
    approver: str | None
    request_id: str | None
    undo_of: str | None
    proposed_at: datetime
    disposed_at: datetime | None  # the latest receipt with a final outcome; None before
    undone_at: datetime | None  # when its undo applied (receipt `undone`); None otherwise


class PlanObject(BaseModel):
    """``object: "execution_plan"`` (spec §2.8)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    object: Literal["execution_plan"] = "execution_plan"
    livemode: bool
    operator_id: str
    operator_name: str
    guardrail_version: int
    event_id: str | None
    correlation_id: str
    run_id: str | None
    model: str
    status: PublicPlanStatus
    status_detail: PlanStatus  # the internal status (approved, executing, refused …)
    reasoning: str | None
    actions: list[ActionObject]
    refusal: str | None
    approver: str | None
    proposed_at: datetime
    disposed_at: datetime | None
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    version: int
    receipt_ids: list[str]


class ReceiptObject(Receipt):
    """``object: "receipt"`` (spec §2.11): the stored receipt plus the documented names."""

    model_config = ConfigDict(extra="forbid")

    reseller_id: str | None
    operator: str  # the operator's name at action time
    connector: str | None  # the cn_ instance; None for a plan refused as a whole
    verdict: ReceiptVerdict
    at: datetime  # time of disposition
