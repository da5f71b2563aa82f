"""Tenant guardrail policies (spec §2.10 "Guardrail policy", §3.8; ``grd_`` ids).

A policy applies to every operator of its tenant and mode. Its ``rules`` mirror an operator
guardrail (``connector``, ``tool``, ``max_value``, ``decision``) plus ``BLOCK`` and an
``operator`` matcher; ``operator``, ``connector`` and ``tool`` are globs (schemas/globs.py: ``*``
is one dot segment, ``**`` several) over the operator's name, the connector's id, name or listing
and the tool name. How they combine with an operator's own guardrails is
``agents/executor.py::judge`` (decisions §35). Pure: no I/O here.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.globs import glob_problem
from schemas.operator import GLOB_PATTERN, NAME_RE

RuleDecision = Literal["ALLOW", "ALERT", "BLOCK"]
PolicyStatus = Literal["active", "disabled"]
# ``shadow``: judged on real traffic, its would-be verdict recorded on the receipt
# (``shadow_verdict``), never acted on (decisions §37). A rule is shadow when it or its policy is.
PolicyMode = Literal["enforce", "shadow"]
# Rules per policy and policies per tenant and mode: every action is judged against all active
# rules of its tenant, so both are bounded (a policy is a reviewed document, not a data set).
MAX_RULES = 100
MAX_POLICIES = 50
MAX_DESCRIPTION_CHARS = 500
# Budgets per policy: each matching budget is one reservation per executed side effect.
MAX_BUDGETS = 20
# A budget window: one minute to 31 days (a "per hour", "per day" or "per month" cap).
MIN_WINDOW_SECONDS = 60
MAX_WINDOW_SECONDS = 31 * 24 * 3600
BudgetScope = Literal["operator", "connector", "tool", "entity"]
# Actions one evaluate request may ask about: a plan has at most 50 (schemas/plan.py).
MAX_EVALUATE_ACTIONS = 50

_GLOB: dict[str, Any] = {"pattern": GLOB_PATTERN}


def _check_glob(v: str | None, what: str) -> str | None:
    if v is None:
        return v
    problem = glob_problem(v)
    if problem:
        raise ValueError(f"{what} {v[:80]!r} is not a glob (e.g. order.*): {problem}")
    return v


class GuardrailRule(BaseModel):
    """One rule of a tenant policy. Omitted matchers match anything."""

    model_config = ConfigDict(extra="forbid", strict=True)

    operator: str | None = Field(
        default=None, min_length=1, max_length=200, json_schema_extra=_GLOB
    )
    connector: str | None = Field(
        default=None, min_length=1, max_length=200, json_schema_extra=_GLOB
    )
    tool: str | None = Field(default=None, min_length=1, max_length=200, json_schema_extra=_GLOB)
    max_value: float | None = Field(default=None, json_schema_extra={"minimum": 0})
    decision: RuleDecision
    mode: PolicyMode = "enforce"

    @field_validator("operator", "connector", "tool")
    @classmethod
    def _globs(cls, v: str | None, info: Any) -> str | None:
        return _check_glob(v, info.field_name)

    @field_validator("max_value", mode="before")
    @classmethod
    def _numeric(cls, v: Any) -> Any:
        if v is None:
            return v
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise ValueError("max_value must be a non-negative number")
        return float(v)

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in ("operator", "connector", "tool"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        if self.max_value is not None:
            mv = self.max_value
            # whole numbers print as integers, but only where JSON integers are exact (a larger
            # one, e.g. 1e149, would not even serialise as an int64)
            out["max_value"] = int(mv) if mv.is_integer() and abs(mv) <= 2**53 else mv
        out["decision"] = self.decision
        if self.mode == "shadow":
            out["mode"] = "shadow"  # cited rules of enforced policies read as before
        return out


class GuardrailBudget(BaseModel):
    """A cap on what the matching side effects may do over a sliding window (decisions §36):
    at most ``max_count`` executions and/or a summed action ``value`` of at most ``max_value``.
    Counted separately ``per`` operator, connector, tool and/or entity (none: the whole tenant
    and mode). A budget only narrows: it never allows what the rules do not."""

    model_config = ConfigDict(extra="forbid", strict=True)

    operator: str | None = Field(
        default=None, min_length=1, max_length=200, json_schema_extra=_GLOB
    )
    connector: str | None = Field(
        default=None, min_length=1, max_length=200, json_schema_extra=_GLOB
    )
    tool: str | None = Field(default=None, min_length=1, max_length=200, json_schema_extra=_GLOB)
    per: list[BudgetScope] = Field(default_factory=list, max_length=4)
    window_seconds: int = Field(ge=MIN_WINDOW_SECONDS, le=MAX_WINDOW_SECONDS)
    max_count: int | None = Field(default=None, ge=1, le=10**9)
    max_value: float | None = Field(default=None, json_schema_extra={"minimum": 0})
    on_exhausted: Literal["BLOCK", "ALERT"] = "BLOCK"

    @field_validator("operator", "connector", "tool")
    @classmethod
    def _globs(cls, v: str | None, info: Any) -> str | None:
        return _check_glob(v, info.field_name)

    @field_validator("max_value", mode="before")
    @classmethod
    def _numeric(cls, v: Any) -> Any:
        return GuardrailRule._numeric(v)

    @field_validator("per")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("per lists each scope at most once")
        return v

    @model_validator(mode="after")
    def _capped(self) -> GuardrailBudget:
        if self.max_count is None and self.max_value is None:
            raise ValueError("a budget needs max_count, max_value or both")
        return self

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in ("operator", "connector", "tool"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        out["per"] = list(self.per)
        out["window_seconds"] = self.window_seconds
        out["max_count"] = self.max_count
        mv = self.max_value
        out["max_value"] = (
            int(mv) if mv is not None and mv.is_integer() and abs(mv) <= 2**53 else mv
        )
        out["on_exhausted"] = self.on_exhausted
        return out


class GuardrailPolicy(BaseModel):
    """The stored policy (the config log carries exactly this, one record per version)."""

    id: str  # grd_…
    object: Literal["guardrail_policy"] = "guardrail_policy"
    tenant_id: str
    livemode: bool
    name: str
    description: str | None = None
    status: PolicyStatus = "active"
    mode: PolicyMode = "enforce"
    version: int = 1
    rules: list[GuardrailRule]
    budgets: list[GuardrailBudget] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime
    deleted: bool = False

    def public(self) -> dict[str, Any]:
        d = self.model_dump(mode="json", exclude={"tenant_id", "deleted"})
        d["rules"] = [r.public() for r in self.rules]
        d["budgets"] = [b.public() for b in self.budgets]
        return d

    def ref(self) -> dict[str, Any]:
        """How a verdict cites this policy."""
        return {"id": self.id, "name": self.name, "version": self.version}

    def citation(self) -> dict[str, Any]:
        """How a receipt's ``policy_versions`` cites this policy (``id@version`` and its mode)."""
        return {
            "kind": "guardrail_policy",
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "mode": self.mode,
        }


# ---- API objects and bodies ----------------------------------------------------------------------
class GuardrailRuleObject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operator: str | None = None
    connector: str | None = None
    tool: str | None = None
    max_value: float | None = None
    decision: RuleDecision
    mode: PolicyMode = "enforce"


class GuardrailBudgetObject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operator: str | None = None
    connector: str | None = None
    tool: str | None = None
    per: list[BudgetScope]
    window_seconds: int
    max_count: int | None
    max_value: float | None
    on_exhausted: Literal["BLOCK", "ALERT"]


class GuardrailPolicyObject(BaseModel):
    """``object: "guardrail_policy"`` (spec §2.10)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    object: Literal["guardrail_policy"] = "guardrail_policy"
    livemode: bool
    name: str
    description: str | None
    status: PolicyStatus
    mode: PolicyMode = "enforce"
    version: int
    rules: list[GuardrailRuleObject]
    budgets: list[GuardrailBudgetObject]
    created_at: datetime
    updated_at: datetime


class DeletedGuardrail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    object: Literal["guardrail_policy"] = "guardrail_policy"
    deleted: bool


class GuardrailCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(json_schema_extra={"pattern": NAME_RE.pattern})
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_CHARS)
    status: PolicyStatus = "active"
    mode: PolicyMode = "enforce"
    rules: list[GuardrailRule] = Field(default_factory=list, max_length=MAX_RULES)
    budgets: list[GuardrailBudget] = Field(default_factory=list, max_length=MAX_BUDGETS)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("name must be 3–40 lowercase letters, digits and hyphens")
        return v

    @model_validator(mode="after")
    def _something(self) -> GuardrailCreate:
        if not self.rules and not self.budgets:
            raise ValueError("a policy needs at least one rule or budget")
        return self


class GuardrailUpdate(BaseModel):
    """PATCH body: the fields sent replace the stored ones (``rules`` as a whole); ``name`` is
    immutable; null leaves a field as it is."""

    model_config = ConfigDict(extra="forbid", strict=True)

    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_CHARS)
    status: PolicyStatus | None = None
    mode: PolicyMode | None = None
    rules: list[GuardrailRule] | None = Field(default=None, max_length=MAX_RULES)
    budgets: list[GuardrailBudget] | None = Field(default=None, max_length=MAX_BUDGETS)

    @model_validator(mode="after")
    def _something(self) -> GuardrailUpdate:
        if not self.model_fields_set:
            raise ValueError("send at least one field to update")
        return self


class ProposedAction(BaseModel):
    """One action to judge: what a model would propose (entity and idempotency keys are not
    needed to judge it)."""

    model_config = ConfigDict(extra="forbid")

    connector: str | None = Field(default=None, min_length=1, max_length=100)
    tool: str = Field(min_length=3, max_length=100)
    value: float | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    entity_key: str | None = Field(default=None, max_length=200)
    idempotency_key: str | None = Field(default=None, max_length=255)

    @field_validator("value", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        if v is None:
            return v
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError("value must be a finite number")
        return v


class EvaluateRequest(BaseModel):
    """``POST /v1/guardrails/evaluate``: an operator (id or name) and either one ``action`` or a
    ``plan`` (``{"actions": [...]}``), plus an optional ``envelope`` (accepted for the documented
    shape; no rule reads it yet)."""

    model_config = ConfigDict(extra="forbid")

    operator: str = Field(min_length=1, max_length=100)
    action: ProposedAction | None = None
    plan: EvaluatePlan | None = None
    envelope: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> EvaluateRequest:
        if (self.action is None) == (self.plan is None):
            raise ValueError("send exactly one of action or plan")
        return self

    def actions(self) -> list[ProposedAction]:
        return [self.action] if self.action is not None else list(self.plan.actions)  # type: ignore[union-attr]


class EvaluatePlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reasoning: str | None = Field(default=None, max_length=8000)
    actions: list[ProposedAction] = Field(min_length=1, max_length=MAX_EVALUATE_ACTIONS)


EvaluateRequest.model_rebuild()


class BudgetLeft(BaseModel):
    """One budget as the dry run sees it: spent and left over its window, from the ledger."""

    model_config = ConfigDict(extra="forbid")

    guardrail_id: str
    guardrail: str
    guardrail_version: int
    index: int  # the budget's position in the policy's ``budgets``
    scope: dict[str, str]  # the ``per`` values this action counts under
    window_seconds: int
    max_count: int | None
    max_value: float | None
    on_exhausted: Literal["BLOCK", "ALERT"]
    spent_count: int
    spent_value: float
    count_left: int | None
    value_left: float | None
    exhausted: bool  # this action would exceed it


class EvaluatedAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    connector: str | None  # the cn_ instance the action would be bound to (None: none would)
    tool: str
    value: float | None
    side_effect: bool | None  # None when no installed connector has the tool
    decision: RuleDecision
    tier: Literal[0, 1, 2, 3]
    rule: dict[str, Any] | None
    reason: str
    # the budgets that would count this action, with what is left of each now (decisions §36);
    # null for an action no budget counts
    budget: list[BudgetLeft] | None = None
    shadow_verdict: dict[str, Any] | None = None  # with the shadow rules enforced (§37)


class Evaluation(BaseModel):
    """The answer of ``POST /v1/guardrails/evaluate``: nothing ran, no receipt was written."""

    model_config = ConfigDict(extra="forbid")

    object: Literal["guardrail_evaluation"] = "guardrail_evaluation"
    livemode: bool
    operator_id: str
    operator_name: str
    guardrail_version: int  # the operator guardrail version that judged
    policies: list[dict[str, Any]]  # the tenant policies in force: {id, name, version}
    decision: RuleDecision  # the plan's: BLOCK if any BLOCK, else ALERT if any ALERT, else ALLOW
    actions: list[EvaluatedAction]


# ---- policy replay (decisions §37) -------------------------------------------------------------
REPLAY_REF = r"^grd_[0-9A-Z]{26}(@[1-9][0-9]{0,8})?$"


class ReplayRequest(BaseModel):
    """``POST /v1/guardrails/replays``: re-judge the stored actions whose receipts fall in
    ``[since, until)`` (default until: now), optionally one ``operator`` (id or name) and a
    ``tool`` (name or glob), under a candidate: either ``guardrails`` (a whole candidate set of
    policies, in the create shape, replacing the tenant's) or ``guardrail`` (``grd_…@N``: the
    tenant's set with that policy at version N, or at its current version without ``@N``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    since: str = Field(min_length=1, json_schema_extra={"format": "date-time"})
    until: str | None = Field(default=None, min_length=1, json_schema_extra={"format": "date-time"})
    operator: str | None = Field(default=None, min_length=1, max_length=100)
    tool: str | None = Field(default=None, min_length=1, max_length=200, json_schema_extra=_GLOB)
    guardrail: str | None = Field(default=None, json_schema_extra={"pattern": REPLAY_REF})
    guardrails: list[GuardrailCreate] | None = Field(default=None, max_length=MAX_POLICIES)

    @field_validator("tool")
    @classmethod
    def _tool(cls, v: str | None) -> str | None:
        return _check_glob(v, "tool")

    @field_validator("guardrail")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        if v is not None and not re.match(REPLAY_REF, v):
            raise ValueError("guardrail must be grd_… or grd_…@version")
        return v

    @model_validator(mode="after")
    def _one(self) -> ReplayRequest:
        if (self.guardrail is None) == (self.guardrails is None):
            raise ValueError("send exactly one of guardrail or guardrails")
        return self


class ReplayLine(BaseModel):
    """One operator and tool of a replay: verdicts re-judged, how many flipped, the count per
    transition (``ALLOW->BLOCK``, unchanged ones too) and up to three example plan ids per flip."""

    model_config = ConfigDict(extra="forbid")

    operator_id: str
    operator: str
    tool: str
    judged: int
    flipped: int
    transitions: dict[str, int]
    examples: dict[str, list[str]]


class GuardrailReplay(BaseModel):
    """``object: "guardrail_replay"``: a replay job and, once ``complete``, its result. Nothing
    a replay does changes a policy, a plan or a receipt."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^grr_")
    object: Literal["guardrail_replay"] = "guardrail_replay"
    livemode: bool
    status: Literal["running", "complete", "failed"]
    since: datetime
    until: datetime
    filters: dict[str, Any]  # operator, tool as sent
    candidate: dict[str, Any]  # {"guardrail": "grd_…@N"} or {"guardrails": [names]}
    policies: list[dict[str, Any]]  # the candidate set judged: {id, name, version, mode}
    rows_scanned: int | None = None  # receipt rows in the window
    progress: float | None = None  # 0..1
    judged: int | None = None  # actions re-judged
    flipped: int | None = None
    skipped: int | None = None  # actions whose operator the config history does not know
    distinct_inputs: int | None = None  # judge calls (identical inputs are judged once)
    operator_version_missing: int | None = None  # judged with the operator's current version
    flips: dict[str, int] | None = None  # flips by transition, every operator and tool
    results: list[ReplayLine] | None = None
    duration_ms: float | None = None
    created_at: datetime
    heartbeat_at: datetime | None = None
    completed_at: datetime | None = None
    failure: str | None = None
