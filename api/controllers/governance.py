"""``/v1/governance/report``, ``/v1/governance/approvals`` and ``/v1/audit_log`` (issue 12 item
7, decisions §38): computed in ClickHouse over the tenant's receipts and config_log, scoped to
the calling key's tenant and mode (scope ``governance:read``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Controller, Request, Response, get

from agents.governance import (
    AUDITED_KINDS,
    audit_action,
    audit_verb,
)
from api.auth import api_state, auth_of
from api.pagination import decode_cursor, list_body, parse_limit
from api.query import only_params, parse_time
from api.respond import documented, respond
from api.services import governance
from ledger.governance import (
    AuditFilters,
    audit_log,
)
from schemas.config import ConfigRecord
from schemas.errors import ErrorCode, FibricError
from schemas.governance import ApprovalStatistics, AuditLogEntry, GovernanceReport
from schemas.objects import ListOf

# The window when none is given: the last 7 days up to now.
DEFAULT_WINDOW = timedelta(days=7)
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
        only_params(request.query_params, frozenset({"since", "until", "operator_id"}))
        since, until = window(request)
        operator_id = _opt(request, "operator_id")
        body = await governance.report(state, auth, since, until, operator_id)
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
        state, auth = api_state(request), auth_of(request)
        only_params(request.query_params, frozenset({"since", "until", "operator_id"}))
        since, until = window(request)
        operator_id = _opt(request, "operator_id")
        body = await governance.approval_statistics(state, auth, since, until, operator_id)
        return respond(ApprovalStatistics, body)


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
        only_params(request.query_params, frozenset({*allowed, "since", "until"}))
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
