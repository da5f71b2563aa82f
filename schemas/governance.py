"""API objects of governance (issue 12 items 5 and 7, decisions §38): the diff between two
config versions, the audit trail's entries, the governance report and approval statistics."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

_PUBLIC = ConfigDict(extra="forbid")

VersionedType = Literal["operator", "guardrail_policy"]
AuditObjectType = Literal["operator", "connector", "webhook_endpoint", "guardrail_policy", "api_key"]
AuditVerb = Literal["create", "update", "delete", "rollback", "revoke", "rotate", "pause", "resume"]


class FieldChange(BaseModel):
    model_config = _PUBLIC

    field: str  # e.g. guardrails[0].decision
    path: list[str | int]  # the same as segments (list indices are integers)
    op: Literal["added", "removed", "changed"]
    before: Any = None
    after: Any = None


class VersionDiff(BaseModel):
    """``object: "version_diff"``: what ``version`` changed relative to ``against``."""

    model_config = _PUBLIC

    object: Literal["version_diff"] = "version_diff"
    livemode: bool
    object_type: VersionedType
    id: str  # the operator's or the policy's id
    version: int
    against: int | None  # None: against nothing (every field of version 1 is added)
    changes: list[FieldChange]


class AuditLogEntry(BaseModel):
    """``object: "audit_log_entry"``: one config change (a config record), never its data."""

    model_config = _PUBLIC

    id: str  # the config record's cfg_ id
    object: Literal["audit_log_entry"] = "audit_log_entry"
    livemode: bool
    action: str  # the command that made it: operator.update, key.revoke, guardrail.rollback …
    verb: AuditVerb
    object_type: AuditObjectType
    object_id: str
    version: int  # the object's version after the change
    actor: str  # the calling key's id (key_…), or admin-cli / a worker for internal changes
    actor_key_id: str | None  # the key, when a key made the change
    request_id: str | None
    note: str | None
    created_at: datetime


class LatencyStats(BaseModel):
    model_config = _PUBLIC

    count: int  # decided plans (approved or vetoed)
    p50: float | None
    p95: float | None
    mean: float | None
    max: float | None


class ApprovalCounts(BaseModel):
    model_config = _PUBLIC

    requested: int  # plans that asked for approval in the window
    approved: int
    vetoed: int
    expired: int
    pending: int
    veto_rate: float | None  # vetoed / (approved + vetoed); None when none was decided
    latency_ms: LatencyStats  # from the plan's request to its decision


class OperatorApprovals(ApprovalCounts):
    operator_id: str
    operator_name: str


class ApproverApprovals(ApprovalCounts):
    approver: str | None


class ApprovalStatistics(ApprovalCounts):
    """``object: "approval_statistics"`` (``GET /v1/governance/approvals``)."""

    object: Literal["approval_statistics"] = "approval_statistics"
    livemode: bool
    since: datetime
    until: datetime
    operator_id: str | None
    by_operator: list[OperatorApprovals]
    by_approver: list[ApproverApprovals]


class Disposition(BaseModel):
    model_config = _PUBLIC

    operator_id: str
    operator_name: str
    tool: str | None
    decision: Literal["ALLOW", "ALERT", "BLOCK", "DEDUP"]
    outcome: str
    count: int
    value_sum: float


class OperatorDispositions(BaseModel):
    model_config = _PUBLIC

    operator_id: str
    operator_name: str
    receipts: int
    by_decision: dict[str, int]
    by_outcome: dict[str, int]


class BlockedTool(BaseModel):
    model_config = _PUBLIC

    tool: str
    count: int
    operators: int  # how many operators were blocked on it


class BudgetConsumed(BaseModel):
    model_config = _PUBLIC

    guardrail_id: str
    guardrail: str  # the policy's name
    guardrail_version: int
    index: int  # the budget's position in the policy's ``budgets``
    per: list[str]
    window_seconds: int
    max_count: int | None
    max_value: float | None
    on_exhausted: Literal["BLOCK", "ALERT"]
    consumed_count: int  # executions it counts in the report's window (all scope values)
    consumed_value: float  # their summed ``value``
    exhausted_blocked: int  # actions refused because it was exhausted
    exhausted_alerted: int  # actions that ran over it as a soft cap (on_exhausted ALERT)


class BudgetsSection(BaseModel):
    """Budgets consumed in the window: every budget of the tenant's active guardrail policies
    (decisions §36), whatever ``operator_id`` the report is filtered by."""

    model_config = _PUBLIC

    available: bool
    detail: str
    data: list[BudgetConsumed]


class GovernanceReport(BaseModel):
    """``object: "governance_report"`` (``GET /v1/governance/report``), over the receipts of
    ``[since, until)``."""

    model_config = _PUBLIC

    object: Literal["governance_report"] = "governance_report"
    livemode: bool
    since: datetime
    until: datetime
    operator_id: str | None
    receipts: int
    by_decision: dict[str, int]
    by_outcome: dict[str, int]
    by_operator: list[OperatorDispositions]
    dispositions: list[Disposition]  # one per operator, tool, decision and outcome
    top_blocked_tools: list[BlockedTool]
    veto_rate: float | None
    approvals: ApprovalCounts
    budgets: BudgetsSection
