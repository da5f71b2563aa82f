"""The governed loop's read/write API: ``/v1/plans``, ``/v1/actions``, ``/v1/receipts`` and
receipt exports (seed 000 scopes). Plans, actions and receipts are read from ClickHouse; approve,
veto and undo are commands to the control agent, which re-vets against the guardrails in force."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import orjson
from litestar import Controller, Request, Response, get, post
from pydantic import BaseModel, ConfigDict, Field

from api.auth import AuthContext, api_state, auth_of
from api.body import read_body, validate
from api.broker import BROKER_WAIT_S, bounded
from api.commands import run_command
from api.controllers.events import parse_time
from api.pagination import decode_cursor, list_body, parse_limit
from api.respond import documented, respond
from api.state import ApiState
from connectors.marketplace import CATALOGUE_FILE
from ledger.store import RECEIPT_EQ_FILTERS
from schemas.commands import CommandType
from schemas.errors import ErrorCode, FibricError
from schemas.objects import ListOf
from schemas.plan import (
    PUBLIC_PLAN_STATUS,
    ActionObject,
    ActionRecord,
    Plan,
    PlanObject,
    Receipt,
    ReceiptObject,
)

_ID = {p: re.compile(rf"^{p}_[0-9A-Z]{{26}}$") for p in ("pl", "act", "rc", "exp", "op", "ev")}
# The documented plan statuses (spec §2.8), the only ones `status` returns and filters on.
PLAN_STATUSES = ("proposed", "executed", "vetoed", "expired")
PAGE_PARAMS = ("limit", "cursor")
PLAN_FILTERS = ("status", "operator_id", "event_id")
ACTION_FILTERS = ("plan_id", "operator_id", "entity_key", "tool")
RECEIPT_FILTERS = (*RECEIPT_EQ_FILTERS, "since", "until")
OUTCOMES = (
    "applied",
    "refused",
    "deduplicated",
    "failed",
    "pending_approval",
    "vetoed",
    "expired",
    "undone",
)
DECISIONS = ("ALLOW", "ALERT", "BLOCK", "DEDUP")
TERMINAL = {"applied", "refused", "deduplicated", "failed", "vetoed", "expired", "undone"}


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    approver: str | None = Field(default=None, min_length=1, max_length=200)


class UndoBody(BaseModel):
    """An undo takes no parameters: the body is empty or ``{}``; anything else is a 400."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _check_id(prefix: str, value: str, what: str) -> None:
    if not _ID[prefix].match(value):
        raise FibricError(ErrorCode.NOT_FOUND, f"No {what} {value[:60]!r}.")


def _enum(request: Request[Any, Any, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query_params.get(name)
    if value is not None and value not in allowed:
        raise FibricError(
            ErrorCode.INVALID_PARAMETER, f"{name} must be one of {', '.join(allowed)}.", param=name
        )
    return value


def _opt(request: Request[Any, Any, Any], name: str) -> str | None:
    value = request.query_params.get(name)
    if value is not None and (not value or len(value) > 255):
        raise FibricError(
            ErrorCode.INVALID_PARAMETER, f"{name} must be 1–255 characters.", param=name
        )
    return value


# ---- the documented objects, built in one place from what is stored ----------------------------
# A tool the catalogue gives no tier: read tools are tier 0; a side-effecting tool of unknown
# trust is treated as the most dangerous tier (fail-closed, like the policy).
UNTIERED_WRITE_TIER = 3
# The verdict tier of a receipt that names no tool (a plan refused as a whole): nothing ran and
# nothing could have; decisions §26.
NO_TOOL_TIER = 0


@cache
def _catalogue_tiers() -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """Tool trust tiers from connectors/catalogue.json: by (listing, tool), and by tool name
    alone (the highest tier any listing gives it) for connectors since uninstalled. Read from
    the packaged JSON because the catalogue's pydantic model does not carry ``tier`` yet."""
    doc = orjson.loads(resources.files("connectors").joinpath(CATALOGUE_FILE).read_bytes())
    by_listing: dict[tuple[str, str], int] = {}
    by_tool: dict[str, int] = {}
    for listing in doc["listings"]:
        for t in listing["tools"]:
            tier = t.get("tier")
            if tier is None:
                tier = UNTIERED_WRITE_TIER if t["side_effect"] else 0
            by_listing[(listing["id"], t["name"])] = int(tier)
            by_tool[t["name"]] = max(by_tool.get(t["name"], 0), int(tier))
    return by_listing, by_tool


def tool_tier(listing: str | None, tool: str | None, side_effect: bool | None = None) -> int:
    """The trust tier (0–3) of a tool: the catalogue's, else 0 for a read and 3 otherwise."""
    if tool is None:
        return NO_TOOL_TIER
    by_listing, by_tool = _catalogue_tiers()
    if listing is not None and (listing, tool) in by_listing:
        return by_listing[(listing, tool)]
    if tool in by_tool:
        return by_tool[tool]
    return 0 if side_effect is False else UNTIERED_WRITE_TIER


@dataclass(frozen=True, slots=True)
class Publisher:
    """What turning stored rows into API objects needs beyond the rows: the tenant's reseller
    and the installed connectors (a connector's listing gives its tools' tiers). ``listing_of``
    is the config view's live mapping, read per lookup (never copied: it holds every tenant's)."""

    reseller_id: str | None
    connectors: Mapping[str, Any]  # cn_ id -> an object with ``listing`` (Connector)

    @classmethod
    def of(cls, state: ApiState, auth: AuthContext) -> Publisher:
        return cls(auth.tenant.reseller_id, getattr(state.view, "connectors", {}))

    def tier(self, connector_id: str | None, tool: str | None, side_effect: bool | None) -> int:
        cn = self.connectors.get(connector_id) if connector_id else None
        return tool_tier(getattr(cn, "listing", None), tool, side_effect)

    def receipt(self, r: Receipt) -> dict[str, Any]:
        return receipt_public(r, self)

    def action(self, a: ActionRecord, receipts: list[Receipt]) -> dict[str, Any]:
        return action_public(a, receipts, self)

    def plan(self, p: Plan, receipts: list[Receipt]) -> dict[str, Any]:
        return plan_public(p, receipts, self)


NO_PUBLISHER = Publisher(None, {})


def receipt_public(r: Receipt, pub: Publisher = NO_PUBLISHER) -> dict[str, Any]:
    """The receipt object (spec §2.11): every stored field, plus ``reseller_id``, ``operator``,
    ``connector``, ``verdict {decision, tier, rule}`` and ``at``."""
    d = r.model_dump(mode="json")
    d["reseller_id"] = pub.reseller_id
    d["operator"] = r.operator_name
    d["connector"] = r.connector_id
    d["verdict"] = {
        "decision": r.decision,
        "tier": pub.tier(r.connector_id, r.tool, None),
        "rule": d["rule"],
        "guardrail_version": r.guardrail_version,
    }
    d["at"] = d["created_at"]
    return d


def action_public(
    a: ActionRecord, receipts: list[Receipt], pub: Publisher = NO_PUBLISHER
) -> dict[str, Any]:
    """The action object (spec §2.8 ``actions[]``, §2.9): the stored action with its latest
    disposition, plus ``connector``, ``verdict.tier``, ``reversible``, ``receipt_id`` and
    ``disposed_at``, and ``undone_at`` (when its undo applied: pass the undo's receipts too,
    :func:`undo_receipts`)."""
    mine = sorted((r for r in receipts if r.action_id == a.id), key=lambda r: (r.created_at, r.id))
    # traceparent is propagation state (schemas/tracing.py); receipts carry the trace id
    d = a.model_dump(mode="json", exclude={"tenant_id", "traceparent"})
    d["object"] = "action"
    d["connector"] = a.connector_id
    d["verdict"]["tier"] = pub.tier(a.connector_id, a.tool, a.side_effect)
    d["reversible"] = bool(a.side_effect and a.compensating_tool and a.undo_of is None)
    d["decision"] = mine[-1].decision if mine else a.verdict.decision
    d["outcome"] = mine[-1].outcome if mine else None
    d["receipt_id"] = mine[-1].id if mine else None
    d["receipt_ids"] = [r.id for r in mine]
    final = [r for r in mine if r.outcome in TERMINAL]
    d["disposed_at"] = _iso(final[-1].created_at) if final else None
    undo_key = f"{a.idempotency_key}:undo"
    undone = [
        r.created_at for r in receipts if r.outcome == "undone" and r.idempotency_key == undo_key
    ]
    d["undone_at"] = _iso(min(undone)) if undone else None
    return d


async def undo_receipts(
    state: ApiState, auth: AuthContext, actions: list[ActionRecord]
) -> list[Receipt]:
    """The receipts of the undos of ``actions`` (idempotency key ``<original>:undo``), for
    ``undone_at``."""
    keys = [f"{a.idempotency_key}:undo" for a in actions if a.compensating_tool and not a.undo_of]
    return await state.store.receipts_for(auth.scope, "idempotency_key", keys)


def plan_status_detail(plan: Plan, actions: list[dict[str, Any]]) -> str:
    """The internal status, with ``executing``/``approved`` read as ``executed`` once every
    action has a final receipt (what ``status`` returned before it was mapped)."""
    outcomes = [a["outcome"] for a in actions]
    if (
        plan.status in ("executing", "approved")
        and outcomes
        and all(o in TERMINAL for o in outcomes)
    ):
        return "executed"
    return plan.status


def plan_public(
    plan: Plan, receipts: list[Receipt], pub: Publisher = NO_PUBLISHER
) -> dict[str, Any]:
    """The execution_plan object (spec §2.8): ``status`` is one of the documented four
    (PUBLIC_PLAN_STATUS, decisions §26), the internal one is ``status_detail``;
    ``proposed_at`` and ``disposed_at`` (null while proposed)."""
    d = plan.model_dump(mode="json", exclude={"tenant_id"})
    d["actions"] = [action_public(a, receipts, pub) for a in plan.actions]
    d["status_detail"] = plan_status_detail(plan, d["actions"])
    d["status"] = PUBLIC_PLAN_STATUS[plan.status]
    d["proposed_at"] = d["created_at"]
    d["disposed_at"] = None if d["status"] == "proposed" else d["updated_at"]
    d["receipt_ids"] = sorted(r.id for r in receipts if r.plan_id == plan.id)
    return d


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def check_params(request: Request[Any, Any, Any], allowed: tuple[str, ...]) -> None:
    """A list refuses a query parameter it does not take (a misspelt filter silently matching
    everything is worse than a 400): the error names the parameter."""
    for name in request.query_params:
        if name not in allowed and name not in PAGE_PARAMS:
            raise FibricError(
                ErrorCode.INVALID_PARAMETER,
                f"Unknown query parameter {name[:60]!r}; this list takes "
                f"{', '.join((*allowed, *PAGE_PARAMS))}.",
                param=name[:60],
            )


async def find_plan(state: ApiState, auth: AuthContext, plan_id: str) -> Plan:
    _check_id("pl", plan_id, "plan")
    plan = await state.store.get_plan(auth.scope, plan_id)
    if plan is None:
        pending = state.view.pending_plans.get(plan_id)
        if (
            pending is not None
            and pending.tenant_id == auth.tenant.id
            and pending.livemode == auth.key.livemode
        ):
            return pending
        raise FibricError(ErrorCode.NOT_FOUND, f"No plan {plan_id!r}.")
    return plan


class PlansController(Controller):
    path = "/plans"
    tags = ["plans"]

    @get(
        "/",
        opt={"scope": "plans:read", "route_class": "loop_read"},
        operation_id="listPlans",
        **documented(),
    )
    async def list_plans(self, request: Request[Any, Any, Any]) -> Response[ListOf[PlanObject]]:
        """Plans newest first; filters ``status``, ``operator_id``, ``event_id``."""
        state, auth = api_state(request), auth_of(request)
        check_params(request, PLAN_FILTERS)
        limit = parse_limit(request.query_params.get("limit"))
        raw = {
            "status": _enum(request, "status", PLAN_STATUSES),
            "operator_id": _opt(request, "operator_id"),
            "event_id": _opt(request, "event_id"),
        }
        after = decode_cursor(request.query_params.get("cursor"), raw, "plans")
        # `status` filters on what is returned: the stored statuses that map to it
        stored = (
            None
            if raw["status"] is None
            else [k for k, v in PUBLIC_PLAN_STATUS.items() if v == raw["status"]]
        )
        page = await state.store.list_plans(
            auth.scope, stored, raw["operator_id"], raw["event_id"], limit, after
        )
        receipts = await state.store.receipts_for(auth.scope, "plan_id", [p.id for p in page.items])
        pub = Publisher.of(state, auth)
        return respond(
            ListOf[PlanObject],
            list_body(
                [pub.plan(p, receipts) for p in page.items],
                page.has_more,
                page.last_key,
                raw,
                "plans",
            ),
        )

    @get(
        "/{plan_id:str}",
        opt={"scope": "plans:read", "route_class": "loop_read"},
        operation_id="retrievePlan",
        **documented(404),
    )
    async def retrieve_plan(
        self, request: Request[Any, Any, Any], plan_id: str
    ) -> Response[PlanObject]:
        """One plan with its actions, their verdicts and outcomes."""
        state, auth = api_state(request), auth_of(request)
        plan = await find_plan(state, auth, plan_id)
        receipts = await state.store.receipts_for(auth.scope, "plan_id", [plan.id])
        return respond(PlanObject, Publisher.of(state, auth).plan(plan, receipts))

    async def _decide(
        self, request: Request[Any, Any, Any], plan_id: str, type_: CommandType
    ) -> Response[PlanObject]:
        state, auth = api_state(request), auth_of(request)
        body = await read_body(request)

        async def handle() -> Response[PlanObject]:
            data = validate(DecisionBody, body, allow_empty=True)
            plan = await find_plan(state, auth, plan_id)
            await bounded(state.view.sync(BROKER_WAIT_S))
            if plan_id not in state.view.pending_plans:
                current = await state.store.get_plan(auth.scope, plan_id) or plan
                verb = "approved" if type_ == "plan.approve" else "vetoed"
                raise FibricError(
                    ErrorCode.STATE_CONFLICT,
                    f"Plan {plan_id} is {current.status} and cannot be {verb}.",
                )
            approver = data.approver or auth.key.name or auth.key.id
            result = await run_command(
                state, request, auth, type_, {"plan_id": plan_id, "approver": approver}
            )
            closed = Plan.model_validate(result)
            return respond(PlanObject, Publisher.of(state, auth).plan(closed, []))

        return await state.idempotency.run(request, auth.scope, body, handle)

    @post(
        "/{plan_id:str}/approve",
        opt={"scope": "plans:approve", "route_class": "loop_write"},
        operation_id="approvePlan",
        status_code=200,
        **documented(404, 409, 503, body=DecisionBody, optional_body=True),
    )
    async def approve_plan(
        self, request: Request[Any, Any, Any], plan_id: str, data: DecisionBody | None = None
    ) -> Response[PlanObject]:
        """Ask the executor to run a plan awaiting approval. Every action is re-vetted against
        the guardrails in force now; approval never runs a BLOCK."""
        return await self._decide(request, plan_id, "plan.approve")

    @post(
        "/{plan_id:str}/veto",
        opt={"scope": "plans:approve", "route_class": "loop_write"},
        operation_id="vetoPlan",
        status_code=200,
        **documented(404, 409, 503, body=DecisionBody, optional_body=True),
    )
    async def veto_plan(
        self, request: Request[Any, Any, Any], plan_id: str, data: DecisionBody | None = None
    ) -> Response[PlanObject]:
        """Veto a plan awaiting approval: nothing in it runs; the veto is receipted."""
        return await self._decide(request, plan_id, "plan.veto")


class ActionsController(Controller):
    path = "/actions"
    tags = ["actions"]

    @get(
        "/",
        opt={"scope": "actions:read", "route_class": "loop_read"},
        operation_id="listActions",
        **documented(),
    )
    async def list_actions(self, request: Request[Any, Any, Any]) -> Response[ListOf[ActionObject]]:
        """Actions newest first with their latest disposition; filters ``plan_id``,
        ``operator_id``, ``entity_key``, ``tool``."""
        state, auth = api_state(request), auth_of(request)
        check_params(request, ACTION_FILTERS)
        limit = parse_limit(request.query_params.get("limit"))
        raw = {k: _opt(request, k) for k in ACTION_FILTERS}
        after = decode_cursor(request.query_params.get("cursor"), raw, "actions")
        page = await state.store.list_actions(auth.scope, raw, limit, after)
        receipts = await state.store.receipts_for(
            auth.scope, "action_id", [a.id for a in page.items]
        )
        receipts += await undo_receipts(state, auth, page.items)
        pub = Publisher.of(state, auth)
        return respond(
            ListOf[ActionObject],
            list_body(
                [pub.action(a, receipts) for a in page.items],
                page.has_more,
                page.last_key,
                raw,
                "actions",
            ),
        )

    @get(
        "/{action_id:str}",
        opt={"scope": "actions:read", "route_class": "loop_read"},
        operation_id="retrieveAction",
        **documented(404),
    )
    async def retrieve_action(
        self, request: Request[Any, Any, Any], action_id: str
    ) -> Response[ActionObject]:
        """One action with its verdict and receipts."""
        state, auth = api_state(request), auth_of(request)
        _check_id("act", action_id, "action")
        action = await state.store.get_action(auth.scope, action_id)
        if action is None:
            raise FibricError(ErrorCode.NOT_FOUND, f"No action {action_id!r}.")
        receipts = await state.store.receipts_for(auth.scope, "action_id", [action_id])
        receipts += await undo_receipts(state, auth, [action])
        return respond(ActionObject, Publisher.of(state, auth).action(action, receipts))

    @post(
        "/{action_id:str}/undo",
        opt={"scope": "actions:write", "route_class": "loop_write"},
        operation_id="undoAction",
        status_code=202,
        **documented(404, 409, 503, body=UndoBody, optional_body=True),
    )
    async def undo_action(
        self, request: Request[Any, Any, Any], action_id: str, data: UndoBody | None = None
    ) -> Response[ActionObject]:
        """Undo an applied action with its tool's compensating tool. The undo is itself a
        governed action (policy, single-flight, idempotency key ``<original>:undo``)."""
        state, auth = api_state(request), auth_of(request)
        body = await read_body(request)

        async def handle() -> Response[ActionObject]:
            validate(UndoBody, body, allow_empty=True)
            _check_id("act", action_id, "action")
            action = await state.store.get_action(auth.scope, action_id)
            if action is None:
                raise FibricError(ErrorCode.NOT_FOUND, f"No action {action_id!r}.")
            receipts = await state.store.receipts_for(auth.scope, "action_id", [action_id])
            if not any(r.outcome == "applied" for r in receipts):
                raise FibricError(
                    ErrorCode.STATE_CONFLICT,
                    f"Action {action_id} was not applied; nothing to undo.",
                )
            if action.undo_of is not None or not action.compensating_tool:
                raise FibricError(
                    ErrorCode.STATE_CONFLICT,
                    f"{action.tool} is not reversible (no compensating tool).",
                )
            result = await run_command(
                state, request, auth, "action.undo", {"action": action.model_dump(mode="json")}
            )
            undo = ActionRecord.model_validate(result)
            return respond(ActionObject, Publisher.of(state, auth).action(undo, []), 202)

        return await state.idempotency.run(request, auth.scope, body, handle)


class ReceiptsController(Controller):
    path = "/receipts"
    tags = ["receipts"]

    @staticmethod
    def filters(request: Request[Any, Any, Any]) -> dict[str, Any]:
        check_params(request, RECEIPT_FILTERS)
        f: dict[str, Any] = {
            k: _opt(request, k)
            for k in (
                "operator_id",
                "entity_key",
                "correlation_id",
                "plan_id",
                "action_id",
                "event_id",
            )
        }
        f["outcome"] = _enum(request, "outcome", OUTCOMES)
        f["decision"] = _enum(request, "decision", DECISIONS)
        f["since"] = parse_time(request.query_params.get("since"), "since")
        f["until"] = parse_time(request.query_params.get("until"), "until")
        return f

    @get(
        "/",
        opt={"scope": "receipts:read", "route_class": "receipts_read"},
        operation_id="listReceipts",
        **documented(),
    )
    async def list_receipts(
        self, request: Request[Any, Any, Any]
    ) -> Response[ListOf[ReceiptObject]]:
        """Receipts newest first; filters ``operator_id``, ``outcome``, ``decision``,
        ``entity_key``, ``correlation_id``, ``plan_id``, ``action_id``, ``event_id``,
        ``since``/``until``."""
        state, auth = api_state(request), auth_of(request)
        limit = parse_limit(request.query_params.get("limit"))
        f = self.filters(request)
        after = decode_cursor(request.query_params.get("cursor"), f, "receipts")
        pub = Publisher.of(state, auth)
        key = (
            str(auth.scope.livemode),
            *sorted(f"{k}={v}" for k, v in request.query_params.multi_items()),
        )

        async def produce() -> bytes:
            page = await state.store.list_receipts(auth.scope, f, limit, after)
            items = [pub.receipt(r) for r in page.items]
            return orjson.dumps(list_body(items, page.has_more, page.last_key, f, "receipts"))

        if state.reads is None:
            body = await produce()
        else:
            body = await state.reads.read(auth.scope.tenant_id, "receipts", key, produce)
        return respond(ListOf[ReceiptObject], body)

    @get(
        "/{receipt_id:str}",
        opt={"scope": "receipts:read", "route_class": "receipts_read"},
        operation_id="retrieveReceipt",
        **documented(404),
    )
    async def retrieve_receipt(
        self, request: Request[Any, Any, Any], receipt_id: str
    ) -> Response[ReceiptObject]:
        """One receipt."""
        state, auth = api_state(request), auth_of(request)
        _check_id("rc", receipt_id, "receipt")
        rc = await state.store.get_receipt(auth.scope, receipt_id)
        if rc is None:
            raise FibricError(ErrorCode.NOT_FOUND, f"No receipt {receipt_id!r}.")
        return respond(ReceiptObject, Publisher.of(state, auth).receipt(rc))


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
