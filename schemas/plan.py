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
