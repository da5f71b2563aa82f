"""``/v1/governance/report``, ``/v1/governance/approvals`` and ``/v1/audit_log`` (issue 12 item
7, decisions §38): computed in ClickHouse over the tenant's receipts and config_log, scoped to
the calling key's tenant and mode (scope ``governance:read``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Controller, Request, Response, get

from agents.governance import (
    AUDITED_KINDS,
    approval_counts,
    audit_action,
    audit_verb,
    budgets_consumed,
    summarise_dispositions,
)
from api.auth import AuthContext, api_state, auth_of
from api.controllers.events import parse_time
from api.pagination import decode_cursor, list_body, parse_limit
from api.respond import documented, respond
from ledger.governance import (
    AuditFilters,
    approvals,
    audit_log,
    budget_hits,
    dispositions,
    executions,
)
from schemas.config import ConfigRecord
from schemas.errors import ErrorCode, FibricError
from schemas.governance import ApprovalStatistics, AuditLogEntry, GovernanceReport
from schemas.objects import ListOf

# The window when none is given: the last 7 days up to now.
DEFAULT_WINDOW = timedelta(days=7)
BUDGETS_DETAIL = (
    "Every budget of the tenant's active guardrail policies: the executions it counts in this "
    "window (all its scope values summed; its own sliding window is what the executor enforces) "
    "and the actions its exhaustion refused or let run over a soft cap."
)
# the command names an audit_log ``action`` filter accepts
AUDIT_ACTIONS = frozenset(
    {
        "operator.create",
        "operator.update",
        "operator.pause",
        "operator.resume",
        "operator.rollback",
        "connector.install",
        "connector.set_status",
        "connector.uninstall",
        "webhook.create",
        "webhook.update",
        "webhook.rotate",
        "webhook.set_status",
        "webhook.delete",
        "guardrail.create",
        "guardrail.update",
        "guardrail.delete",
        "guardrail.rollback",
        "key.create",
        "key.revoke",
    }
)
# the API object type -> its config record kind
OBJECT_TYPES = {v: k for k, v in AUDITED_KINDS.items()}


def _only(request: Request[Any, Any, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise FibricError(
            ErrorCode.INVALID_PARAMETER,
            f"{unknown[0][:60]} is not a recognised parameter.",
            param=unknown[0][:60],
        )


def _opt(request: Request[Any, Any, Any], name: str, max_len: int = 100) -> str | None:
    v = request.query_params.get(name)
    if v is None or v == "":
        return None
    if len(v) > max_len or not v.isprintable():
        raise FibricError(ErrorCode.INVALID_PARAMETER, f"{name} is not valid.", param=name)
    return v


def window(request: Request[Any, Any, Any]) -> tuple[datetime, datetime]:
    until = parse_time(request.query_params.get("until"), "until") or datetime.now(UTC)
    since = parse_time(request.query_params.get("since"), "since")
    if since is None:
        since = max(until - DEFAULT_WINDOW, datetime(1900, 1, 1, tzinfo=UTC))
    if since >= until:
        raise FibricError(ErrorCode.INVALID_PARAMETER, "since must be before until.", param="since")
    return since, until


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


async def approval_statistics(
    request: Request[Any, Any, Any], auth: AuthContext, since: datetime, until: datetime
) -> dict[str, Any]:
    state = api_state(request)
    operator_id = _opt(request, "operator_id")
    got = await approvals(state.store, auth.scope, since, until, operator_id)
    return {
        **approval_counts(got["overall"]),
        "object": "approval_statistics",
        "livemode": auth.key.livemode,
        "since": _iso(since),
        "until": _iso(until),
        "operator_id": operator_id,
        "by_operator": [
            {
                "operator_id": r["operator_id"],
                "operator_name": r["operator_name"],
                **approval_counts(r),
            }
            for r in got["by_operator"]
        ],
        "by_approver": [
            {"approver": r["approver"], **approval_counts(r)} for r in got["by_approver"]
        ],
    }


async def budgets_section(
    request: Request[Any, Any, Any], auth: AuthContext, since: datetime, until: datetime
) -> list[dict[str, Any]]:
    state = api_state(request)
    policies = state.view.guardrails_of(auth.tenant.id, auth.key.livemode)
    if not any(p.budgets for p in policies):
        return []
    names = {
        c.id: (c.id, c.name, c.listing)
        for c in state.view.connectors_of(auth.tenant.id, auth.key.livemode)
    }
    runs = await executions(state.store, auth.scope, since, until)
    hits = await budget_hits(state.store, auth.scope, since, until)
    return budgets_consumed(policies, runs, hits, names)


class GovernanceController(Controller):
    path = "/governance"
    tags = ["governance"]

    @get(
        "/report",
        opt={"scope": "governance:read", "route_class": "receipts_read"},
        operation_id="retrieveGovernanceReport",
        **documented(),
    )
    async def report(self, request: Request[Any, Any, Any]) -> Response[GovernanceReport]:
        """Dispositions of ``[since, until)`` (default: the last 7 days) by operator, tool,
        decision and outcome; approval counts, latency p50/p95 and the veto rate; the most
        blocked tools; what each budget of the tenant's active policies consumed and how often
        its exhaustion refused an action. Optional ``operator_id`` (not applied to budgets)."""
        state, auth = api_state(request), auth_of(request)
        _only(request, frozenset({"since", "until", "operator_id"}))
        since, until = window(request)
        operator_id = _opt(request, "operator_id")
        rows = await dispositions(state.store, auth.scope, since, until, operator_id)
        summary = summarise_dispositions(rows)
        appr = await approval_statistics(request, auth, since, until)
        keep = ("requested", "approved", "vetoed", "expired", "pending", "veto_rate", "latency_ms")
        body = {
            "object": "governance_report",
            "livemode": auth.key.livemode,
            "since": _iso(since),
            "until": _iso(until),
            "operator_id": operator_id,
            **summary,
            "dispositions": rows,
            "veto_rate": appr["veto_rate"],
            "approvals": {k: appr[k] for k in keep},
            "budgets": {
                "available": True,
                "detail": BUDGETS_DETAIL,
                "data": await budgets_section(request, auth, since, until),
            },
        }
        return respond(GovernanceReport, body)

    @get(
        "/approvals",
        opt={"scope": "governance:read", "route_class": "receipts_read"},
        operation_id="retrieveApprovalStatistics",
        **documented(),
    )
    async def approvals(self, request: Request[Any, Any, Any]) -> Response[ApprovalStatistics]:
        """Approval statistics of the plans that asked for approval in ``[since, until)``
        (default: the last 7 days): requested, approved, vetoed, expired, still pending, the
        veto rate, and the request-to-decision latency (p50, p95, mean, max, ms); overall, by
        operator and by approver. Optional ``operator_id``."""
        auth = auth_of(request)
        _only(request, frozenset({"since", "until", "operator_id"}))
        since, until = window(request)
        return respond(ApprovalStatistics, await approval_statistics(request, auth, since, until))


def audit_entry(rec: ConfigRecord, livemode: bool) -> dict[str, Any]:
    action = audit_action(rec.note, rec.kind)
    return {
        "id": rec.id,
        "object": "audit_log_entry",
        "livemode": livemode,
        "action": action,
        "verb": audit_verb(action),
        "object_type": AUDITED_KINDS[rec.kind],
        "object_id": str(rec.data.get("id", "")),
        "version": rec.version,
        "actor": rec.actor,
        "actor_key_id": rec.actor if rec.actor.startswith("key_") else None,
        "request_id": rec.request_id,
        "note": rec.note,
        "created_at": _iso(rec.at.astimezone(UTC)),
    }


class AuditLogController(Controller):
    path = "/audit_log"
    tags = ["governance"]

    @get(
        "/",
        opt={"scope": "governance:read", "route_class": "receipts_read"},
        operation_id="listAuditLog",
        **documented(),
    )
    async def list_audit_log(
        self, request: Request[Any, Any, Any]
    ) -> Response[ListOf[AuditLogEntry]]:
        """Config changes of this tenant and mode, newest first: operators, connectors,
        webhooks, guardrail policies and API keys created, updated, deleted, rolled back or
        revoked, each with the actor (the calling key's id), the object and its version.
        Filters ``object_type``, ``object_id``, ``action`` (e.g. ``key.revoke``), ``actor``,
        ``since``, ``until``. Reads the ledger: a change shows once the sink stored it."""
        state, auth = api_state(request), auth_of(request)
        allowed = {"limit", "cursor", "object_type", "object_id", "action", "actor"}
        _only(request, frozenset({*allowed, "since", "until"}))
        limit = parse_limit(request.query_params.get("limit"))
        object_type = _opt(request, "object_type")
        if object_type is not None and object_type not in OBJECT_TYPES:
            raise FibricError(
                ErrorCode.INVALID_PARAMETER,
                f"object_type must be one of {', '.join(sorted(OBJECT_TYPES))}.",
                param="object_type",
            )
        action = _opt(request, "action")
        if action is not None and action not in AUDIT_ACTIONS:
            raise FibricError(
                ErrorCode.INVALID_PARAMETER,
                f"action must be one of {', '.join(sorted(AUDIT_ACTIONS))}.",
                param="action",
            )
        f = AuditFilters(
            kind=OBJECT_TYPES[object_type] if object_type else None,
            object_id=_opt(request, "object_id"),
            action=action,
            actor=_opt(request, "actor"),
            since=parse_time(request.query_params.get("since"), "since"),
            until=parse_time(request.query_params.get("until"), "until"),
        )
        raw = {k: request.query_params.get(k) for k in sorted(allowed - {"limit", "cursor"})}
        raw.update(since=request.query_params.get("since"), until=request.query_params.get("until"))
        after = decode_cursor(request.query_params.get("cursor"), raw, "audit_log")
        page = await audit_log(state.store, auth.scope, f, limit, after)
        data = [audit_entry(r, auth.key.livemode) for r in page.items]
        body = list_body(data, page.has_more, page.last_key, raw, "audit_log")
        return respond(ListOf[AuditLogEntry], body)


