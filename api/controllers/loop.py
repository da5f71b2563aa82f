"""The governed loop's read/write API: ``/v1/plans``, ``/v1/actions``, ``/v1/receipts`` and
receipt exports (seed 000 scopes). Plans, actions and receipts are read from ClickHouse; approve,
veto and undo are commands to the control agent, which re-vets against the guardrails in force."""

from __future__ import annotations

from typing import Any

import orjson
from litestar import Controller, Request, Response, get, post
from pydantic import BaseModel, ConfigDict, Field

from api.auth import api_state, auth_of
from api.body import read_body, validate
from api.controllers import caller
from api.objects import DECISIONS, OUTCOMES, Publisher
from api.pagination import decode_cursor, list_body, parse_limit
from api.query import parse_time
from api.respond import documented, respond
from api.services import plans
from api.services.plans import check_id
from ledger.store import RECEIPT_EQ_FILTERS
from schemas.commands import CommandType
from schemas.errors import ErrorCode, FibricError
from schemas.objects import ListOf
from schemas.plan import PUBLIC_PLAN_STATUS, ActionObject, PlanObject, ReceiptObject

# The documented plan statuses (spec §2.8), the only ones `status` returns and filters on.
PLAN_STATUSES = ("proposed", "executed", "vetoed", "expired")
PAGE_PARAMS = ("limit", "cursor")
PLAN_FILTERS = ("status", "operator_id", "event_id")
ACTION_FILTERS = ("plan_id", "operator_id", "entity_key", "tool")
RECEIPT_FILTERS = (*RECEIPT_EQ_FILTERS, "since", "until")


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    approver: str | None = Field(default=None, min_length=1, max_length=200)


class UndoBody(BaseModel):
    """An undo takes no parameters: the body is empty or ``{}``; anything else is a 400."""

    model_config = ConfigDict(extra="forbid", strict=True)


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
        plan = await plans.find_plan(state, auth, plan_id)
        receipts = await state.store.receipts_for(auth.scope, "plan_id", [plan.id])
        return respond(PlanObject, Publisher.of(state, auth).plan(plan, receipts))

    async def _decide(
        self, request: Request[Any, Any, Any], plan_id: str, type_: CommandType
    ) -> Response[PlanObject]:
        state, auth = api_state(request), auth_of(request)
        body = await read_body(request)

        async def handle() -> Response[PlanObject]:
            data = validate(DecisionBody, body, allow_empty=True)
            closed = await plans.decide(caller(request), plan_id, type_, data.approver)
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
        receipts += await plans.undo_receipts(state, auth, page.items)
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
        action = await plans.find_action(state, auth, action_id)
        receipts = await state.store.receipts_for(auth.scope, "action_id", [action_id])
        receipts += await plans.undo_receipts(state, auth, [action])
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
            undo = await plans.undo(caller(request), action_id)
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
        check_id("rc", receipt_id, "receipt")
        rc = await state.store.get_receipt(auth.scope, receipt_id)
        if rc is None:
            raise FibricError(ErrorCode.NOT_FOUND, f"No receipt {receipt_id!r}.")
        return respond(ReceiptObject, Publisher.of(state, auth).receipt(rc))
