"""Pure control logic for webhook endpoints: what ``webhook.*`` commands write (spec §2.13).

The control agent (single writer of configuration, keyed by tenant) decides these like every
other config command (``agents/control.py``): records for the config log, a reply. The endpoint
record never holds the secret; the sealed secret travels as a ``vault`` record keyed by the
endpoint id (the same vault connector credentials use), so a delete purges it.
No Faust, Kafka or ClickHouse imports here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agents.control import (
    ConfigState,
    Decision,
    IdFactory,
    Refusal,
    _record,
    _save,
    _tenant,
)
from agents.control import (
    decide as decide_config,
)
from schemas.commands import Command, Reply
from schemas.connector import VaultEntry
from schemas.errors import ErrorCode
from schemas.webhook import DELIVERY_TYPES, WebhookEndpoint

# Endpoints per tenant and mode: a receiver per integration, not one per object.
MAX_ENDPOINTS = 16


def is_webhook_command(cmd: Command) -> bool:
    return cmd.type.startswith("webhook.")


def _endpoint(state: Any, cmd: Command) -> WebhookEndpoint:
    ep = state.webhooks.get(str(cmd.args.get("webhook_id")))
    if ep is None or ep.tenant_id != cmd.tenant_id or ep.livemode != cmd.livemode:
        raise Refusal(404, ErrorCode.NOT_FOUND, f"No webhook endpoint {cmd.args.get('webhook_id')!r}.")
    return ep


def _types(raw: Any) -> list[str]:
    types = list(dict.fromkeys(raw or []))
    bad = [t for t in types if t not in DELIVERY_TYPES]
    if not types or bad:
        raise Refusal(
            400,
            ErrorCode.INVALID_PARAMETER,
            f"types must name delivery types ({', '.join(DELIVERY_TYPES)}).",
            param="types",
        )
    return types


def _vault(cmd: Command, ep: WebhookEndpoint, ciphertext: str | None, now, new_id, note: str):
    entry = VaultEntry(connector_id=ep.id, tenant_id=ep.tenant_id, ciphertext=ciphertext)
    return _record(cmd, "vault", ep.tenant_id, entry.model_dump(mode="json"), 1, now, new_id, note)


def _create(state: Any, cmd: Command, now: datetime, new_id: IdFactory):
    _tenant(state, cmd)
    draft = dict(cmd.args.get("webhook") or {})
    ciphertext = cmd.args.get("ciphertext")
    if not ciphertext or not draft.get("secret_hint"):
        raise Refusal(400, ErrorCode.INVALID_PARAMETER, "webhook.create needs a sealed secret.")
    mine = [
        e
        for e in state.webhooks.values()
        if e.tenant_id == cmd.tenant_id and e.livemode == cmd.livemode
    ]
    if len(mine) >= MAX_ENDPOINTS:
        raise Refusal(
            409, ErrorCode.STATE_CONFLICT, f"A tenant has at most {MAX_ENDPOINTS} webhook endpoints."
        )
    ep = WebhookEndpoint(
        id=str(draft.get("id") or new_id("whk")),
        tenant_id=cmd.tenant_id or "",
        livemode=cmd.livemode,
        url=str(draft["url"]),
        types=_types(draft.get("types")),
        description=draft.get("description"),
        secret_hint=str(draft["secret_hint"]),
        created_at=now,
        updated_at=now,
    )
    if ep.id in state.webhooks:
        raise Refusal(409, ErrorCode.STATE_CONFLICT, f"Webhook endpoint {ep.id} already exists.")
    note = f"webhook.create: {ep.id} {ep.url[:200]}"
    records = [
        _save(cmd, "webhook_endpoint", ep, now, new_id, note),
        _vault(cmd, ep, ciphertext, now, new_id, "vault.seal"),
    ]
    return records, ep.public()


def _update(state: Any, cmd: Command, now: datetime, new_id: IdFactory):
    ep = _endpoint(state, cmd)
    changes: dict[str, Any] = {
        k: v for k, v in dict(cmd.args.get("changes") or {}).items() if v is not None
    }
    if "types" in changes:
        changes["types"] = _types(changes["types"])
    status = changes.get("status")
    if status is not None and status not in ("active", "disabled"):
        raise Refusal(
            400, ErrorCode.INVALID_PARAMETER, "status must be active or disabled.", param="status"
        )
    if status == "active":
        changes["status_reason"] = None  # re-activating clears a suspension
    elif status == "disabled" and ep.status != "disabled":
        changes["status_reason"] = "disabled by the owner"
    changes = {k: v for k, v in changes.items() if getattr(ep, k) != v}
    if not changes:
        return [], ep.public()
    updated = ep.model_copy(update={**changes, "version": ep.version + 1, "updated_at": now})
    note = "webhook.update: " + ", ".join(sorted(changes))
    return [_save(cmd, "webhook_endpoint", updated, now, new_id, note)], updated.public()


def _rotate(state: Any, cmd: Command, now: datetime, new_id: IdFactory):
    ep = _endpoint(state, cmd)
    ciphertext, hint = cmd.args.get("ciphertext"), cmd.args.get("secret_hint")
    if not ciphertext or not hint:
        raise Refusal(400, ErrorCode.INVALID_PARAMETER, "webhook.rotate needs a sealed secret.")
    updated = ep.model_copy(
        update={
            "secret_hint": hint,
            "secret_rotated_at": now,
            "version": ep.version + 1,
            "updated_at": now,
        }
    )
    records = [
        _save(cmd, "webhook_endpoint", updated, now, new_id, f"webhook.rotate: {ep.id}"),
        _vault(cmd, ep, ciphertext, now, new_id, "vault.seal"),
    ]
    return records, updated.public()


def _set_status(state: Any, cmd: Command, now: datetime, new_id: IdFactory):
    """Fibric's own status changes (``suspended`` after sustained failures or a 410)."""
    ep = _endpoint(state, cmd)
    status = str(cmd.args.get("status"))
    if status not in ("active", "disabled", "suspended"):
        raise Refusal(400, ErrorCode.INVALID_PARAMETER, "unknown endpoint status.", param="status")
    if ep.status == status:
        return [], ep.public()
    if status == "suspended" and ep.status == "disabled":
        return [], ep.public()  # the owner's decision stands
    reason = cmd.args.get("reason")
    updated = ep.model_copy(
        update={
            "status": status,
            "status_reason": reason,
            "version": ep.version + 1,
            "updated_at": now,
        }
    )
    note = f"webhook.set_status: {status} {reason or ''}".rstrip()
    return [_save(cmd, "webhook_endpoint", updated, now, new_id, note)], updated.public()


def _delete(state: Any, cmd: Command, now: datetime, new_id: IdFactory):
    ep = _endpoint(state, cmd)
    gone = ep.model_copy(update={"deleted": True, "version": ep.version + 1, "updated_at": now})
    records = [
        _save(cmd, "webhook_endpoint", gone, now, new_id, f"webhook.delete: {ep.id}"),
        _vault(cmd, ep, None, now, new_id, "vault.purge"),
    ]
    return records, {"id": ep.id, "object": "webhook_endpoint", "deleted": True}


_HANDLERS = {
    "webhook.create": _create,
    "webhook.update": _update,
    "webhook.rotate": _rotate,
    "webhook.set_status": _set_status,
    "webhook.delete": _delete,
}


def decide(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory) -> Decision:
    """``agents.control.decide`` extended with the webhook commands."""
    handler = _HANDLERS.get(cmd.type)
    if handler is None:
        return decide_config(state, cmd, now, new_id)
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
