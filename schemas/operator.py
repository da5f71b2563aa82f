"""The operator object (seed 002) and its request bodies."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.globs import glob_problem

NAME_RE = re.compile(r"^[a-z0-9-]{3,40}$")
CAPABILITY_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
# The documented forms of what the validators below check, for the JSON schema (OpenAPI) only:
# an event-type glob (schemas/globs.py: segments of letters, digits, '_', '-' and single '*',
# or a whole '**'; at most 32 segments) and a cron expression (format "cron").
_SEG = r"(?:\*\*|\*|\*?(?:[A-Za-z0-9_-]+\*)*[A-Za-z0-9_-]+\*?)"
GLOB_PATTERN = rf"^{_SEG}(?:\.{_SEG}){{0,31}}$"
_GLOB: dict[str, Any] = {"type": "string", "pattern": GLOB_PATTERN, "minLength": 1, "maxLength": 200}


def default_triggers(capabilities: list[str]) -> list[str]:
    """Documented default: every event type of the nouns the operator acts on
    (capabilities ``order.hold``, ``order.notify`` → triggers ``["order.**"]``)."""
    return sorted({f"{c.split('.', 1)[0]}.**" for c in capabilities})


class Guardrail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connector: str | None = Field(default=None, min_length=1, max_length=100)
    tool: str | None = Field(default=None, min_length=1, max_length=100)
    max_value: float | None = Field(default=None, json_schema_extra={"minimum": 0})
    decision: Literal["ALLOW", "ALERT"]

    @field_validator("max_value", mode="before")
    @classmethod
    def _numeric(cls, v: Any) -> Any:
        if v is None:
            return v
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise ValueError("max_value must be a non-negative number")
        return v

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.connector is not None:
            out["connector"] = self.connector
        if self.tool is not None:
            out["tool"] = self.tool
        if self.max_value is not None:
            mv = self.max_value
            out["max_value"] = int(mv) if float(mv).is_integer() else mv
        out["decision"] = self.decision
        return out


class LastRun(BaseModel):
    run_id: str
    sensed: int = 0
    proposed: int = 0
    applied: int = 0
    at: datetime


class Operator(BaseModel):
    """The stored operator (the config log carries exactly this)."""

    id: str
    object: Literal["operator"] = "operator"
    tenant_id: str
    livemode: bool
    name: str
    status: Literal["active", "paused", "draft"]
    outcome: str
    capabilities: list[str]
    guardrails: list[Guardrail]
    model: str = "router:default"
    schedule: str | None = None
    triggers: list[str]
    playbook: list[dict[str, Any]] | None = None
    created_at: datetime
    updated_at: datetime
    last_run: LastRun | None = None
    version: int = 1
    paused_at: datetime | None = None
    pause_reason: str | None = None
    resumed_at: datetime | None = None
    deleted: bool = False

    def public(self) -> dict[str, Any]:
        d = self.model_dump(mode="json", exclude={"tenant_id", "deleted", "pause_reason"})
        d["guardrails"] = [g.public() for g in self.guardrails]
        if d["last_run"] is not None:  # the spec's (inferred) count names, ours kept
            lr = d["last_run"]
            lr.update(
                events_sensed=lr["sensed"],
                actions_proposed=lr["proposed"],
                actions_applied=lr["applied"],
            )
        return d

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "operator",
            "name": self.name,
            "status": self.status,
            "capabilities": self.capabilities,
            "created_at": self.model_dump(mode="json")["created_at"],
        }


class _OperatorFields(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    outcome: str | None = Field(default=None, min_length=1, max_length=4000)
    capabilities: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=50,
        json_schema_extra={"items": {"type": "string", "pattern": CAPABILITY_RE.pattern}},
    )
    guardrails: list[Guardrail] | None = Field(default=None, max_length=200)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    schedule: str | None = Field(default=None, max_length=200, json_schema_extra={"format": "cron"})
    triggers: list[str] | None = Field(
        default=None, min_length=1, max_length=50, json_schema_extra={"items": _GLOB}
    )
    playbook: list[dict[str, Any]] | None = Field(default=None, max_length=100)

    @field_validator("capabilities")
    @classmethod
    def _caps(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        for c in v:
            if not CAPABILITY_RE.match(c):
                raise ValueError(f"capability {c!r} is not noun.verb (e.g. order.hold)")
        return list(dict.fromkeys(v))

    @field_validator("triggers")
    @classmethod
    def _triggers(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        for t in v:
            problem = glob_problem(t)
            if problem:
                raise ValueError(
                    f"trigger {t[:80]!r} is not an event_type glob (e.g. order.*): {problem}"
                )
        return list(dict.fromkeys(v))

    @field_validator("playbook")
    @classmethod
    def _playbook_globs(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        # the rest of a rule is validated by the rules model; an unbounded ``when`` glob would
        # cost every event of the tenant, so it is refused here, at creation
        for rule in v or []:
            when = rule.get("when", "**")
            problem = glob_problem(when) if isinstance(when, str) else "it must be a string"
            if problem:
                raise ValueError(f"playbook rule 'when' is not an event_type glob: {problem}")
        return v

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from croniter import croniter

        if not croniter.is_valid(v):
            raise ValueError(f"schedule {v!r} is not a cron expression")
        return v


class OperatorCreate(_OperatorFields):
    name: str = Field(json_schema_extra={"pattern": NAME_RE.pattern})
    outcome: str = Field(min_length=1, max_length=4000)
    capabilities: list[str] = Field(
        min_length=1,
        max_length=50,
        json_schema_extra={"items": {"type": "string", "pattern": CAPABILITY_RE.pattern}},
    )
    guardrails: list[Guardrail] = Field(default_factory=list, max_length=200)
    status: Literal["active", "draft"] = "active"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("name must be 3–40 lowercase letters, digits and hyphens")
        return v


class OperatorUpdate(_OperatorFields):
    name: str | None = None  # immutable: sending it is refused unless it is the current name
    status: Literal["active", "draft"] | None = None

    @model_validator(mode="after")
    def _something(self) -> OperatorUpdate:
        if not self.model_fields_set:
            raise ValueError("send at least one field to update")
        return self


class PauseBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    reason: str | None = Field(default=None, max_length=1000)


class ResumeBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    catch_up: bool = False
