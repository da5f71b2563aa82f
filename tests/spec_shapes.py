"""The documented object tables of ../shared/reference/fibric-spec.md §2 (event §2.2, operator
§2.3, connector §2.4, execution_plan §2.8, action §2.9, receipt §2.11, api_key §2.12, export
§2.14, list §2.15, error §2.16) and seed 001's connector_test, transcribed field by field, and
one checker used by the unit tests (against the response models and the builders) and the e2e
tests (against the running api).

A type is a tuple of JSON kinds: "string", "integer", "number", "boolean", "object", "array",
"null", "rfc3339" (a string in RFC 3339 UTC). ``enum`` lists the documented values: a returned
value must be one of ours, and ours must include every documented one (additive enum members are
allowed by the versioning rules, seed 000) unless ``exact`` (plan status: only documented values).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


@dataclass(frozen=True)
class Field:
    types: tuple[str, ...]
    enum: tuple[Any, ...] | None = None
    exact: bool = False  # the enum is closed: no value beyond the documented ones
    prefix: str | None = None
    const: Any = None
    optional: bool = False  # may be absent (spec writes `value?`)


S, N = ("string",), ("string", "null")

PLAN_VERDICT = {
    "decision": Field(S, ("ALLOW", "ALERT", "BLOCK"), exact=True),
    "tier": Field(("integer",), (0, 1, 2, 3), exact=True),
    "rule": Field(("object", "null")),
}
RECEIPT_VERDICT = {
    "decision": Field(S, ("ALLOW", "ALERT", "BLOCK", "DEDUP"), exact=True),
    "tier": Field(("integer",), (0, 1, 2, 3), exact=True),
    "rule": Field(("object", "null")),
}

# §2.8: each of a plan's actions is "{ id: act_..., connector, tool, args, value?, entity_key,
# idempotency_key, verdict }".
PLAN_ACTION = {
    "id": Field(S, prefix="act_"),
    "connector": Field(S),
    "tool": Field(S),
    "args": Field(("object",)),
    "value": Field(("number", "null"), optional=True),
    "entity_key": Field(S),
    "idempotency_key": Field(S),
    "verdict": Field(("object",)),
}

EXECUTION_PLAN = {
    "id": Field(S, prefix="pl_"),
    "object": Field(S, const="execution_plan"),
    "operator_id": Field(S),
    "event_id": Field(N),
    "status": Field(S, ("proposed", "executed", "vetoed", "expired"), exact=True),
    "reasoning": Field(N),
    "actions": Field(("array",)),
    "proposed_at": Field(("rfc3339",)),
    "disposed_at": Field(("rfc3339", "null")),
}

# §2.9: "id act_, the PlannedAction fields, verdict", and the (inferred) fields we return:
# object, plan_id, operator_id, outcome (the receipt outcome enum), reversible, receipt_id,
# disposed_at, undone_at, undo_of.
RECEIPT_OUTCOMES = ("applied", "refused", "deduplicated", "failed")
ACTION = {
    **PLAN_ACTION,
    "object": Field(S, const="action"),
    "plan_id": Field(S, prefix="pl_"),
    "operator_id": Field(S),
    "outcome": Field(N, RECEIPT_OUTCOMES),
    "reversible": Field(("boolean",)),
    "receipt_id": Field(N),
    "disposed_at": Field(("rfc3339", "null")),
    "undone_at": Field(("rfc3339", "null")),
    "undo_of": Field(N),
}

RECEIPT = {
    "id": Field(S, prefix="rc_"),
    "object": Field(S, const="receipt"),
    "reseller_id": Field(N),
    "tenant_id": Field(S),
    "operator_id": Field(S),
    "operator": Field(S),
    "event_id": Field(N),
    "plan_id": Field(S, prefix="pl_"),
    "action_id": Field(S),
    "connector": Field(S),
    "tool": Field(S),
    "entity_key": Field(S),
    "idempotency_key": Field(S),
    "verdict": Field(("object",)),
    "outcome": Field(S, RECEIPT_OUTCOMES),
    "approver": Field(N),
    "request_id": Field(S),
    "at": Field(("rfc3339",)),
}

# ---- the other objects (spec §2.2–2.4, §2.12, §2.14–2.16, seed 001) -------------------------------
# §2.2: the kernel envelope's fields verbatim plus id/object and ingest metadata (created_at).
EVENT = {
    "id": Field(S, prefix="ev_"),
    "object": Field(S, const="event"),
    "reseller_id": Field(N),
    "tenant_id": Field(S),
    "workspace_id": Field(N),
    "source": Field(S),
    "event_type": Field(S),
    "correlation_id": Field(S),
    "payload": Field(("object",)),
    "agent_id": Field(N),
    "session_id": Field(N),
    "created_at": Field(("rfc3339",)),
}

# §2.3 (last_run's count names are the spec's inferred ones).
LAST_RUN = {
    "run_id": Field(S),
    "events_sensed": Field(("integer",)),
    "actions_proposed": Field(("integer",)),
    "actions_applied": Field(("integer",)),
    "at": Field(("rfc3339",)),
}
GUARDRAIL = {
    "connector": Field(S, optional=True),
    "tool": Field(S, optional=True),
    "max_value": Field(("number",), optional=True),
    "decision": Field(S, ("ALLOW", "ALERT"), exact=True),
}
OPERATOR = {
    "id": Field(S, prefix="op_"),
    "object": Field(S, const="operator"),
    "name": Field(S),
    "status": Field(S, ("active", "paused", "draft"), exact=True),
    "outcome": Field(S),
    "capabilities": Field(("array",)),
    "guardrails": Field(("array",)),
    "model": Field(S),
    "schedule": Field(N),
    "created_at": Field(("rfc3339",)),
    "last_run": Field(("object", "null")),
}

# §2.4 (status: the recommended union with `degraded`; auth types: the SDK union).
CONNECTOR_TOOL = {"name": Field(S), "side_effect": Field(("boolean",))}
CONNECTOR_AUTH = {
    "type": Field(S, ("api_key", "oauth2", "basic", "aws_iam", "mtls", "none")),
    "hint": Field(S),
}
CONNECTOR = {
    "id": Field(S, prefix="cn_"),
    "object": Field(S, const="connector"),
    "listing": Field(S),
    "name": Field(S),
    "kind": Field(S, ("saas", "hardware"), exact=True),
    "transport": Field(S, const="mcp"),
    "capabilities": Field(("array",)),
    "tools": Field(("array",)),
    "auth": Field(("object",)),
    "status": Field(S, ("connected", "degraded", "pending_auth", "error")),
    "installed_at": Field(("rfc3339",)),
    "last_synced_at": Field(("rfc3339", "null")),
}
# seed 001's connection-test response
CONNECTOR_TEST_RESULT = {
    "tool": Field(S),
    "mode": Field(S, ("live", "dry_run"), exact=True),
    "ok": Field(("boolean",)),
    "latency_ms": Field(("integer",)),
}
CONNECTOR_TEST = {
    "object": Field(S, const="connector_test"),
    "connector_id": Field(S, prefix="cn_"),
    "status": Field(S, ("passed", "failed"), exact=True),
    "results": Field(("array",)),
    "tested_at": Field(("rfc3339",)),
}

# §2.12
API_KEY = {
    "id": Field(S, prefix="key_"),
    "object": Field(S, const="api_key"),
    "name": Field(S),
    "mode": Field(S, ("live", "test"), exact=True),
    "role": Field(N, ("read_only", "ingest", "operate", "admin"), exact=True),
    "scopes": Field(("array",)),
    "workspace_id": Field(N),
    "hint": Field(S),
    "status": Field(S, ("active", "revoked"), exact=True),
    "last_used_at": Field(("rfc3339", "null")),
    "created_at": Field(("rfc3339",)),
}

# §2.14 (an inferred design; `url` is null until the job is complete)
EXPORT = {
    "id": Field(S, prefix="exp_"),
    "object": Field(S, const="receipt_export"),
    "status": Field(S, ("pending", "running", "complete", "failed"), exact=True),
    "filters": Field(("object",)),
    "format": Field(S, ("jsonl", "csv")),
    "url": Field(N),
    "expires_at": Field(("rfc3339",)),
    "created_at": Field(("rfc3339",)),
}

# §2.15, §2.16
LIST = {
    "object": Field(S, const="list"),
    "data": Field(("array",)),
    "has_more": Field(("boolean",)),
    "next_cursor": Field(N, prefix="cur_"),
}
ERROR_BODY = {
    "type": Field(S),
    "code": Field(S),
    "message": Field(S),
    "doc_url": Field(S),
    "request_id": Field(S, prefix="req_"),
}
ERROR = {"error": Field(("object",))}

# Deliberate deviations (docs/decisions.md §26): a receipt of a plan refused as a
# whole names no action, connector, tool, entity or idempotency key; a disposition no API request
# caused (an event published to Kafka, an expiry) has no request_id; an action bound to no
# connector (never stored: such a plan is refused whole) would have connector null.
NULLABLE = {
    ("receipt", "action_id"),
    ("receipt", "connector"),
    ("receipt", "tool"),
    ("receipt", "entity_key"),
    ("receipt", "idempotency_key"),
    ("receipt", "request_id"),
    ("action", "connector"),
    ("plan_action", "connector"),
    # decisions §29: a guardrail's matchers are omitted when unset (the model also takes null);
    # a key created by the CLI without --name has none; an oauth2 connector awaiting its
    # authorization has no credential to hint at.
    ("guardrail", "connector"),
    ("guardrail", "tool"),
    ("guardrail", "max_value"),
    ("api_key", "name"),
    ("connector_auth", "hint"),
}
NESTED = {
    ("execution_plan", "actions"): ("plan_action", PLAN_ACTION),
    ("plan_action", "verdict"): ("plan_verdict", PLAN_VERDICT),
    ("action", "verdict"): ("plan_verdict", PLAN_VERDICT),
    ("receipt", "verdict"): ("receipt_verdict", RECEIPT_VERDICT),
    ("operator", "last_run"): ("last_run", LAST_RUN),
    ("operator", "guardrails"): ("guardrail", GUARDRAIL),
    ("connector", "tools"): ("connector_tool", CONNECTOR_TOOL),
    ("connector", "auth"): ("connector_auth", CONNECTOR_AUTH),
    ("connector_test", "results"): ("connector_test_result", CONNECTOR_TEST_RESULT),
    ("error", "error"): ("error_body", ERROR_BODY),
}
TABLES = {
    "execution_plan": EXECUTION_PLAN,
    "action": ACTION,
    "receipt": RECEIPT,
    "plan_action": PLAN_ACTION,
    "plan_verdict": PLAN_VERDICT,
    "receipt_verdict": RECEIPT_VERDICT,
    "event": EVENT,
    "operator": OPERATOR,
    "last_run": LAST_RUN,
    "guardrail": GUARDRAIL,
    "connector": CONNECTOR,
    "connector_tool": CONNECTOR_TOOL,
    "connector_auth": CONNECTOR_AUTH,
    "connector_test": CONNECTOR_TEST,
    "connector_test_result": CONNECTOR_TEST_RESULT,
    "api_key": API_KEY,
    "export": EXPORT,
    "list": LIST,
    "error": ERROR,
    "error_body": ERROR_BODY,
}


def allowed_types(name: str, field: str, f: Field) -> set[str]:
    types = set(f.types)
    if (name, field) in NULLABLE:
        types.add("null")
    return types


def kind(v: Any) -> set[str]:
    if v is None:
        return {"null"}
    if isinstance(v, bool):
        return {"boolean"}
    if isinstance(v, int):
        return {"integer", "number"}
    if isinstance(v, float):
        return {"number"}
    if isinstance(v, str):
        return {"string", "rfc3339"} if RFC3339.match(v) else {"string"}
    if isinstance(v, list):
        return {"array"}
    if isinstance(v, dict):
        return {"object"}
    return {type(v).__name__}


def problems(obj: dict[str, Any], name: str, where: str = "") -> list[str]:
    """Every way ``obj`` (a JSON object as returned) departs from the spec table ``name``."""
    out: list[str] = []
    where = where or name
    for field, f in TABLES[name].items():
        if field not in obj:
            if not f.optional:
                out.append(f"{where}.{field}: missing")
            continue
        v = obj[field]
        types = allowed_types(name, field, f)
        if not kind(v) & types:
            out.append(f"{where}.{field}: {v!r} is not {'|'.join(sorted(types))}")
            continue
        if "rfc3339" in types and isinstance(v, str) and not RFC3339.match(v):
            out.append(f"{where}.{field}: {v!r} is not RFC 3339 UTC")
        if f.const is not None and v != f.const:
            out.append(f"{where}.{field}: {v!r} != {f.const!r}")
        if f.prefix and isinstance(v, str) and not v.startswith(f.prefix):
            out.append(f"{where}.{field}: {v!r} lacks prefix {f.prefix}")
        if f.enum is not None and f.exact and v is not None and v not in f.enum:
            out.append(f"{where}.{field}: {v!r} not in the documented {f.enum}")
        sub = NESTED.get((name, field))
        if sub is not None and v is not None:
            items = v if isinstance(v, list) else [v]
            for i, item in enumerate(items):
                out += problems(item, sub[0], f"{where}.{field}[{i}]")
    return out
