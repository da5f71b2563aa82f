"""The embedded ``rules`` model: evaluates an operator's playbook against an event and proposes an
:class:`ExecutionPlan`. Deterministic: the same event and playbook give the same plan.

A playbook is a list of rules; every rule whose ``when`` glob matches the event type and whose
``if`` conditions all hold contributes its ``then`` actions, in order::

    {"when": "order.created",
     "if": [{"field": "payload.risk_score", "op": "gte", "value": 70}],
     "then": [{"tool": "order.hold", "args": {"order_id": "{{payload.order_id}}"},
               "value": "{{payload.total}}", "entity_key": "order:{{payload.order_id}}",
               "idempotency_key": "hold:{{payload.order_id}}"}],
     "reasoning": "Risk {{payload.risk_score}} is high: hold the order."}

Templates ``{{path}}`` read the event (``payload.x.y``, ``event_type``, ``id``, ``source``,
``correlation_id``, ``entity_key``); a string that is exactly one template keeps the value's type.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agents.globs import glob_problem, matches
from schemas.envelope import Event
from schemas.plan import ExecutionPlan

_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}")
_MISSING = object()


class TemplateError(ValueError):
    pass


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str
    op: Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "exists", "contains"] = "eq"
    value: Any = None


class PlaybookAction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tool: str
    connector: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    value: Any = None
    entity_key: str
    idempotency_key: str


class PlaybookRule(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    when: str = "**"
    if_: list[Condition] = Field(default_factory=list, alias="if")
    then: list[PlaybookAction] = Field(min_length=1)
    reasoning: str | None = None

    @field_validator("when")
    @classmethod
    def _when(cls, v: str) -> str:
        problem = glob_problem(v)
        if problem:
            raise ValueError(f"when {v[:80]!r} is not an event_type glob: {problem}")
        return v


# Parsed playbooks, by the identity of the operator's playbook list: an operator's config is
# replaced (never mutated) on every change, so a new version is a new list. Parsing costs ~10 µs
# per rule and ran for every event; a few hundred entries cover every active operator.
_Actions = list[list[dict[str, Any]]]
_PARSED: dict[int, tuple[list[dict[str, Any]], list[PlaybookRule], _Actions]] = {}
_PARSED_MAX = 1024


def parse_playbook(raw: list[dict[str, Any]] | None) -> list[PlaybookRule]:
    return [PlaybookRule.model_validate(r) for r in raw or []]


def _parsed(raw: list[dict[str, Any]] | None) -> tuple[list[PlaybookRule], _Actions]:
    """The rules of ``raw`` and each rule's actions as dicts (ready to render), cached."""
    if not raw:
        return [], []
    hit = _PARSED.get(id(raw))
    if hit is not None and hit[0] is raw:
        return hit[1], hit[2]
    rules = parse_playbook(raw)
    dumped = [[a.model_dump(exclude_none=False) for a in r.then] for r in rules]
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[id(raw)] = (raw, rules, dumped)
    return rules, dumped


def _lookup(ctx: dict[str, Any], path: str) -> Any:
    cur: Any = ctx
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def render(value: Any, ctx: dict[str, Any]) -> Any:
    if isinstance(value, str):
        whole = _TEMPLATE.fullmatch(value.strip())
        if whole:
            found = _lookup(ctx, whole.group(1))
            if found is _MISSING:
                raise TemplateError(
                    f"template {{{{{whole.group(1)}}}}} names no field of the event"
                )
            return found

        def sub(m: re.Match[str]) -> str:
            found = _lookup(ctx, m.group(1))
            if found is _MISSING:
                raise TemplateError(f"template {{{{{m.group(1)}}}}} names no field of the event")
            return str(found)

        return _TEMPLATE.sub(sub, value)
    if isinstance(value, dict):
        return {k: render(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, ctx) for v in value]
    return value


def _holds(cond: Condition, ctx: dict[str, Any]) -> bool:
    found = _lookup(ctx, cond.field)
    if cond.op == "exists":
        return (found is not _MISSING) == (cond.value is not False)
    if found is _MISSING:
        return False
    try:
        if cond.op == "eq":
            return found == cond.value
        if cond.op == "ne":
            return found != cond.value
        if cond.op == "in":
            return found in (cond.value or [])
        if cond.op == "contains":
            return cond.value in found
        a, b = found, cond.value
        if isinstance(a, str) and isinstance(b, int | float):
            a = float(a)
        return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[cond.op]
    except (TypeError, ValueError):
        return False


def context(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "event_type": event.event_type,
        "source": event.source,
        "correlation_id": event.correlation_id,
        "entity_key": event.entity_key,
        "workspace_id": event.workspace_id,
        "payload": event.payload,
    }


def propose(playbook: list[dict[str, Any]] | None, event: Event) -> ExecutionPlan:
    """The plan the playbook proposes for ``event`` (possibly with no actions).
    Raises ValueError (TemplateError / ValidationError) when the playbook cannot be applied."""
    ctx = context(event)
    actions: list[dict[str, Any]] = []
    reasons: list[str] = []
    rules, dumped = _parsed(playbook)
    for rule, then in zip(rules, dumped, strict=True):
        if not matches(rule.when, event.event_type) or not all(_holds(c, ctx) for c in rule.if_):
            continue
        for act in then:
            actions.append(render(act, ctx))
        if rule.reasoning:
            reasons.append(str(render(rule.reasoning, ctx)))
    try:
        return ExecutionPlan.model_validate(
            {"reasoning": " ".join(reasons) or None, "actions": actions}
        )
    except ValidationError as exc:
        raise ValueError(
            f"the playbook produced an invalid plan: {exc.errors()[0]['msg']}"
        ) from None
