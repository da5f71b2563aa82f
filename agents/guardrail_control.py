"""Pure control logic for tenant guardrail policies: what ``guardrail.*`` commands write.

The control agent (single writer of configuration, keyed by tenant) decides these like every
other config command (``agents/control.py``): records for the config log, a reply. Every change
is a new version of the policy (one ``guardrail_policy`` record each, so the config log and its
ClickHouse copy hold every version, audited with actor and note); names are unique per tenant and
mode, as one writer sees every command of a tenant in order. No Faust, Kafka or ClickHouse here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agents.control import ConfigState, Decision, IdFactory, Refusal, _save, _tenant
from agents.governance import GUARDRAIL_ROLLBACK_FIELDS
from agents.webhook_control import decide as decide_webhooks
from schemas.commands import Command, Reply
from schemas.errors import ErrorCode
from schemas.guardrail import MAX_POLICIES, GuardrailBudget, GuardrailPolicy, GuardrailRule


def _policy(state: Any, cmd: Command) -> GuardrailPolicy:
    gp = state.guardrails.get(str(cmd.args.get("guardrail_id")))
    if gp is None or gp.tenant_id != cmd.tenant_id or gp.livemode != cmd.livemode:
        raise Refusal(
            404,
            ErrorCode.NOT_FOUND,
            f"No guardrail policy {str(cmd.args.get('guardrail_id'))[:60]!r}.",
        )
    return gp


def _rules(raw: Any) -> list[GuardrailRule]:
    try:
        rules = [GuardrailRule.model_validate(r) for r in raw or []]
    except ValueError as exc:
        raise Refusal(400, ErrorCode.INVALID_PARAMETER, str(exc)[:300], param="rules") from None
    return rules


def _budgets(raw: Any) -> list[GuardrailBudget]:
    try:
        return [GuardrailBudget.model_validate(b) for b in raw or []]
    except ValueError as exc:
        raise Refusal(400, ErrorCode.INVALID_PARAMETER, str(exc)[:300], param="budgets") from None


def _not_empty(rules: list[GuardrailRule], budgets: list[GuardrailBudget]) -> None:
    if not rules and not budgets:
        raise Refusal(
            400,
            ErrorCode.INVALID_PARAMETER,
            "a policy needs at least one rule or budget.",
            param="rules",
        )


def _note(gp: GuardrailPolicy, what: str) -> str:
    return f"{what}: {gp.id} {gp.name} v{gp.version}"


def _create(state: Any, cmd: Command, now: datetime, new_id: IdFactory):
    _tenant(state, cmd)
    body = dict(cmd.args.get("guardrail") or {})
    mine = state.guardrails_of(cmd.tenant_id or "", cmd.livemode)
    if any(g.name == body.get("name") for g in mine):
        raise Refusal(
            409,
            ErrorCode.STATE_CONFLICT,
            f"A guardrail policy named {str(body.get('name'))[:60]!r} already exists.",
        )
    if len(mine) >= MAX_POLICIES:
        raise Refusal(
            409,
            ErrorCode.STATE_CONFLICT,
            f"A tenant has at most {MAX_POLICIES} guardrail policies.",
        )
    rules, budgets = _rules(body.get("rules")), _budgets(body.get("budgets"))
    _not_empty(rules, budgets)
    gp = GuardrailPolicy(
        id=new_id("grd"),
        tenant_id=cmd.tenant_id or "",
        livemode=cmd.livemode,
        name=str(body["name"]),
        description=body.get("description"),
        status=body.get("status") or "active",
        mode=body.get("mode") or "enforce",
        rules=rules,
        budgets=budgets,
        created_at=now,
        updated_at=now,
    )
    return [
        _save(cmd, "guardrail_policy", gp, now, new_id, _note(gp, "guardrail.create"))
    ], gp.public()


def _update(state: Any, cmd: Command, now: datetime, new_id: IdFactory):
    gp = _policy(state, cmd)
    changes: dict[str, Any] = {
        k: v for k, v in dict(cmd.args.get("changes") or {}).items() if v is not None
    }
    if "name" in changes:
        if changes.pop("name") != gp.name:
            raise Refusal(
                400, ErrorCode.INVALID_PARAMETER, "name is immutable after creation.", param="name"
            )
    if "rules" in changes:
        changes["rules"] = _rules(changes["rules"])
    if "budgets" in changes:
        changes["budgets"] = _budgets(changes["budgets"])
    _not_empty(changes.get("rules", gp.rules), changes.get("budgets", gp.budgets))
    if "status" in changes and changes["status"] not in ("active", "disabled"):
        raise Refusal(
            400, ErrorCode.INVALID_PARAMETER, "status must be active or disabled.", param="status"
        )
    if "mode" in changes and changes["mode"] not in ("enforce", "shadow"):
        raise Refusal(
            400, ErrorCode.INVALID_PARAMETER, "mode must be enforce or shadow.", param="mode"
        )
    changes = {k: v for k, v in changes.items() if getattr(gp, k) != v}
    if not changes:
        return [], gp.public()  # nothing changed: no new version
    updated = gp.model_copy(update={**changes, "version": gp.version + 1, "updated_at": now})
    note = _note(updated, "guardrail.update") + " " + ",".join(sorted(changes))
    return [_save(cmd, "guardrail_policy", updated, now, new_id, note)], updated.public()


def _delete(state: Any, cmd: Command, now: datetime, new_id: IdFactory):
    gp = _policy(state, cmd)
    gone = gp.model_copy(update={"deleted": True, "version": gp.version + 1, "updated_at": now})
    rec = _save(cmd, "guardrail_policy", gone, now, new_id, _note(gone, "guardrail.delete"))
    return [rec], {"id": gp.id, "object": "guardrail_policy", "deleted": True}


def _rollback(state: Any, cmd: Command, now: datetime, new_id: IdFactory):
    """A new version with the ``description``, ``status``, ``rules`` and ``budgets`` of earlier
    version ``version`` (its stored state sent by the api as ``target``). Budgets keep what they
    have spent: spend is keyed by policy and position (decisions §36), not by version."""
    gp = _policy(state, cmd)
    target = dict(cmd.args.get("target") or {})
    version = int(cmd.args.get("version") or 0)
    if target.get("id") != gp.id or target.get("deleted") or not 1 <= version <= gp.version:
        raise Refusal(
            404, ErrorCode.NOT_FOUND, f"Guardrail policy {gp.id} has no version {version}."
        )
    changes: dict[str, Any] = {f: target.get(f) for f in GUARDRAIL_ROLLBACK_FIELDS}
    changes["rules"] = _rules(changes["rules"])
    changes["budgets"] = _budgets(changes["budgets"])
    _not_empty(changes["rules"], changes["budgets"])
    updated = gp.model_copy(update={**changes, "version": gp.version + 1, "updated_at": now})
    differ = sorted(f for f in GUARDRAIL_ROLLBACK_FIELDS if getattr(gp, f) != getattr(updated, f))
    note = _note(updated, "guardrail.rollback") + f" to v{version}"
    note += f" {','.join(differ)}" if differ else ""
    return [_save(cmd, "guardrail_policy", updated, now, new_id, note)], updated.public()


_HANDLERS = {
    "guardrail.create": _create,
    "guardrail.update": _update,
    "guardrail.delete": _delete,
    "guardrail.rollback": _rollback,
}


def decide(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory) -> Decision:
    """``agents.webhook_control.decide`` (itself ``agents.control.decide`` plus webhooks)
    extended with the guardrail commands."""
    handler = _HANDLERS.get(cmd.type)
    if handler is None:
        return decide_webhooks(state, cmd, now, new_id)
    try:
        records, result = handler(state, cmd, now, new_id)
    except Refusal as r:
        return Decision(Reply(id=cmd.id, reply_to=cmd.reply_to, ok=False, error=r.error))
    return Decision(
        Reply(
            id=cmd.id,
            reply_to=cmd.reply_to,
            ok=True,
            result=result,
            record_ids=[r.id for r in records],
        ),
        records,
    )
