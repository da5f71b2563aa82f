"""The governed loop's lookups and decisions from the api: find a plan (stored, or still held
in the config view), approve or veto one awaiting approval, undo an applied action. Decisions
are commands to the control agent, which re-vets against the guardrails in force."""

from __future__ import annotations

import re

from api.auth import AuthContext
from api.broker import BROKER_WAIT_S, bounded
from api.services.context import Caller
from api.state import ApiState
from schemas.commands import CommandType
from schemas.errors import ErrorCode, FibricError
from schemas.plan import ActionRecord, Plan, Receipt

_ID = {p: re.compile(rf"^{p}_[0-9A-Z]{{26}}$") for p in ("pl", "act", "rc")}


def check_id(prefix: str, value: str, what: str) -> None:
    """An id that cannot be one of ours is a 404 without a query."""
    if not _ID[prefix].match(value):
        raise FibricError(ErrorCode.NOT_FOUND, f"No {what} {value[:60]!r}.")


async def find_plan(state: ApiState, auth: AuthContext, plan_id: str) -> Plan:
    check_id("pl", plan_id, "plan")
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


async def find_action(state: ApiState, auth: AuthContext, action_id: str) -> ActionRecord:
    check_id("act", action_id, "action")
    action = await state.store.get_action(auth.scope, action_id)
    if action is None:
        raise FibricError(ErrorCode.NOT_FOUND, f"No action {action_id!r}.")
    return action


async def undo_receipts(
    state: ApiState, auth: AuthContext, actions: list[ActionRecord]
) -> list[Receipt]:
    """The receipts of the undos of ``actions`` (idempotency key ``<original>:undo``), for
    ``undone_at``."""
    keys = [f"{a.idempotency_key}:undo" for a in actions if a.compensating_tool and not a.undo_of]
    return await state.store.receipts_for(auth.scope, "idempotency_key", keys)


async def decide(caller: Caller, plan_id: str, type_: CommandType, approver: str | None) -> Plan:
    """Approve or veto (``type_``) a plan awaiting approval; 409 when it no longer is. The
    plan as the control agent closed it."""
    state, auth = caller.state, caller.auth
    plan = await find_plan(state, auth, plan_id)
    await bounded(state.view.sync(BROKER_WAIT_S))
    if plan_id not in state.view.pending_plans:
        current = await state.store.get_plan(auth.scope, plan_id) or plan
        verb = "approved" if type_ == "plan.approve" else "vetoed"
        raise FibricError(
            ErrorCode.STATE_CONFLICT,
            f"Plan {plan_id} is {current.status} and cannot be {verb}.",
        )
    who = approver or auth.key.name or auth.key.id
    result = await caller.command(type_, {"plan_id": plan_id, "approver": who})
    return Plan.model_validate(result)


async def undo(caller: Caller, action_id: str) -> ActionRecord:
    """Undo an applied action with its tool's compensating tool (itself a governed action,
    idempotency key ``<original>:undo``); 409 when it was not applied or is not reversible.
    The undo action."""
    state, auth = caller.state, caller.auth
    action = await find_action(state, auth, action_id)
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
    result = await caller.command("action.undo", {"action": action.model_dump(mode="json")})
    return ActionRecord.model_validate(result)
