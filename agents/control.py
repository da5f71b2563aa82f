"""Pure control logic: decide what one config command does, given the current config state.

The control agent (the single writer of configuration, keyed by tenant) calls :func:`decide` for
each command in order and writes the returned records; because one writer sees every command of
a tenant in order, uniqueness (operator and connector names, tenant slugs), ``capability_unbound``
and ``connector_in_use`` are decided consistently even when two requests race.
No Faust, Kafka or ClickHouse imports here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from agents.executor import receipt, revet, undo_action
from agents.governance import OPERATOR_ROLLBACK_FIELDS
from agents.oauth import credentials_fingerprint
from schemas.commands import Command, Reply, ReplyError
from schemas.config import (
    LAST_USED_RESOLUTION_S,
    SLUG_RE,
    ApiKey,
    ConfigKind,
    ConfigRecord,
    Tenant,
    expand_scopes,
    missing_scopes,
)
from schemas.connector import Connector, ConnectorHealth, VaultEntry
from schemas.errors import ErrorCode
from schemas.guardrail import GuardrailPolicy
from schemas.operator import Guardrail, LastRun, Operator, default_triggers
from schemas.plan import ActionRecord, Plan


class ConfigState(Protocol):
    tenants: dict[str, Tenant]
    tenant_by_slug: dict[str, Tenant]
    keys: dict[str, ApiKey]
    operators: dict[str, Operator]
    connectors: dict[str, Connector]
    vault: dict[str, VaultEntry]
    pending_plans: dict[str, Plan]

    def operators_of(self, tenant_id: str, livemode: bool) -> list[Operator]: ...
    def connectors_of(self, tenant_id: str, livemode: bool) -> list[Connector]: ...
    def guardrails_of(self, tenant_id: str, livemode: bool) -> list[GuardrailPolicy]: ...


@dataclass
class Decision:
    reply: Reply
    records: list[ConfigRecord] = field(default_factory=list)
    # ledger rows ("plan" | "receipt" | "action", object) and actions for the executor
    outputs: list[tuple[str, Any]] = field(default_factory=list)
    dispatch: list[ActionRecord] = field(default_factory=list)


class Refusal(Exception):
    def __init__(self, status: int, code: ErrorCode, message: str, **details: Any) -> None:
        super().__init__(message)
        self.error = ReplyError(status=status, code=code, message=message, details=details)


IdFactory = Callable[[str], str]


def decide(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory) -> Decision:
    handler = _HANDLERS.get(cmd.type)
    try:
        if handler is None:
            raise Refusal(400, ErrorCode.INVALID_PARAMETER, f"unknown command {cmd.type!r}")
        out = handler(state, cmd, now, new_id)
    except Refusal as r:
        return Decision(Reply(id=cmd.id, reply_to=cmd.reply_to, ok=False, error=r.error))
    records, result = out[0], out[1]
    outputs, dispatch = (out[2], out[3]) if len(out) == 4 else ([], [])
    return Decision(
        Reply(
            id=cmd.id,
            reply_to=cmd.reply_to,
            ok=True,
            result=result,
            record_ids=[r.id for r in records],
        ),
        records,
        outputs,
        dispatch,
    )


def _record(
    cmd: Command,
    kind: ConfigKind,
    tenant_id: str,
    data: dict[str, Any],
    version: int,
    now: datetime,
    new_id: IdFactory,
    note: str | None = None,
) -> ConfigRecord:
    return ConfigRecord(
        id=new_id("cfg"),
        kind=kind,
        tenant_id=tenant_id,
        version=version,
        data=data,
        actor=cmd.actor,
        note=note or cmd.type,
        request_id=cmd.request_id,
        at=now,
    )


def _save(
    cmd: Command,
    kind: ConfigKind,
    obj: Any,
    now: datetime,
    new_id: IdFactory,
    note: str | None = None,
) -> ConfigRecord:
    """The config record of ``obj``'s new state, at ``obj``'s own version."""
    return _record(
        cmd, kind, obj.tenant_id, obj.model_dump(mode="json"), obj.version, now, new_id, note
    )


# ---- tenants and keys -----------------------------------------------------------------------
def _tenant_create(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    slug = str(cmd.args.get("slug", ""))
    if not SLUG_RE.match(slug):
        raise Refusal(
            400,
            ErrorCode.INVALID_PARAMETER,
            f"invalid slug {slug!r}: 3–40 lowercase letters, digits and hyphens",
        )
    if slug in state.tenant_by_slug:
        raise Refusal(
            409,
            ErrorCode.STATE_CONFLICT,
            f"tenant slug {slug!r} already exists ({state.tenant_by_slug[slug].id})",
        )
    tenant = Tenant(id=new_id("t"), slug=slug, name=cmd.args.get("name") or slug, created_at=now)
    data = tenant.model_dump(mode="json")
    return [_record(cmd, "tenant", tenant.id, data, 1, now, new_id)], data


def _issuer(state: ConfigState, cmd: Command, tenant_id: str) -> ApiKey | None:
    """The key a command came from (the api sends ``actor`` = the calling key's id), or None for
    an operator's own tools (``fibric admin``, workers), which hold no key. A key that has been
    revoked since it authenticated can no longer manage keys."""
    if not cmd.actor.startswith("key_"):
        return None
    issuer = state.keys.get(cmd.actor)
    if issuer is None or issuer.tenant_id != tenant_id:
        raise Refusal(401, ErrorCode.KEY_INVALID, "The API key is invalid.")
    if issuer.status != "active":
        raise Refusal(401, ErrorCode.KEY_REVOKED, "The API key has been revoked.")
    return issuer


def _no_escalation(issuer: ApiKey | None, scopes: list[str], what: str) -> None:
    if issuer is None:
        return
    missing = missing_scopes(issuer.scopes, scopes)
    if missing:
        raise Refusal(
            403,
            ErrorCode.INSUFFICIENT_SCOPE,
            f"A key can only {what} keys within its own scopes; this key lacks "
            f"{', '.join(missing)}.",
            missing_scopes=missing,
        )


def _key_create(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    tenant = _tenant(state, cmd)
    issuer = _issuer(state, cmd, tenant.id)
    draft = dict(cmd.args.get("key") or {})
    mode = draft.get("mode") or (issuer.mode if issuer else "test")
    role = draft.get("role")
    if not role and not draft.get("scopes"):
        raise Refusal(400, ErrorCode.MISSING_PARAMETER, "Send a role or scopes.", param="role")
    try:
        # the role is expanded here, once: later preset changes never alter existing keys
        scopes = expand_scopes(role, None) if role else expand_scopes(None, draft.get("scopes"))
    except ValueError as exc:
        raise Refusal(
            400, ErrorCode.INVALID_PARAMETER, str(exc), param="role" if role else "scopes"
        ) from None
    secret_hash, hint = str(draft.get("secret_hash") or ""), str(draft.get("hint") or "")
    if len(secret_hash) != 64 or not hint:
        raise Refusal(400, ErrorCode.INVALID_PARAMETER, "key.create needs secret_hash and hint.")
    if issuer is not None:
        if mode != issuer.mode:
            raise Refusal(
                400,
                ErrorCode.INVALID_PARAMETER,
                f"A {issuer.mode} key creates {issuer.mode} keys only.",
                param="mode",
            )
        _no_escalation(issuer, scopes, "create")
        if issuer.workspace_id and draft.get("workspace_id") != issuer.workspace_id:
            raise Refusal(
                403,
                ErrorCode.INSUFFICIENT_SCOPE,
                f"This key is pinned to workspace {issuer.workspace_id}; so are the keys it creates.",
            )
    name = draft.get("name")
    # Names are unique among a tenant's active keys of one mode (the other mode's names stay
    # invisible). Enforced for keys created through the API; `fibric admin` (standing in for the
    # console) may reuse a name, so re-running `fibric up --demo` keeps working.
    if (
        issuer is not None
        and name is not None
        and any(
            k.name == name and k.tenant_id == tenant.id and k.mode == mode and k.status == "active"
            for k in state.keys.values()
        )
    ):
        raise Refusal(
            409, ErrorCode.STATE_CONFLICT, f"An active key named {name!r} already exists."
        )
    if any(k.secret_hash == secret_hash for k in state.keys.values()):
        raise Refusal(
            409, ErrorCode.STATE_CONFLICT, "This secret is already in use; make a new one."
        )
    key = ApiKey(
        id=new_id("key"),
        tenant_id=tenant.id,
        name=name,
        mode=mode,
        role=role,
        scopes=scopes,
        workspace_id=draft.get("workspace_id"),
        hint=hint,
        secret_hash=secret_hash,
        created_at=now,
    )
    # the note names the key, never its secret or hash (those stay in the data, as the hash is
    # the key's only stored form)
    note = f"key.create: {key.id} {name or ''} {role or 'scopes'}={','.join(scopes)}"
    rec = _record(cmd, "api_key", tenant.id, key.model_dump(mode="json"), 1, now, new_id, note)
    return [rec], key.public()


def _key(state: ConfigState, cmd: Command, issuer: ApiKey | None) -> ApiKey:
    """The key a command names; another tenant's (or, for a key caller, another mode's) key
    reads as not found."""
    key = state.keys.get(str(cmd.args.get("key_id")))
    if (
        key is None
        or (cmd.tenant_id and key.tenant_id != cmd.tenant_id)
        or (issuer is not None and key.mode != issuer.mode)
    ):
        raise Refusal(404, ErrorCode.NOT_FOUND, f"No API key {str(cmd.args.get('key_id'))[:60]!r}.")
    return key


def _key_revoke(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    issuer = _issuer(state, cmd, cmd.tenant_id or "")
    key = _key(state, cmd, issuer)
    if key.status == "revoked":
        return [], key.public()  # revocation is permanent; repeating it changes nothing
    # managing a key is as powerful as holding it: no revoking a key wider than oneself
    _no_escalation(issuer, key.scopes, "revoke")
    revoked = key.model_copy(update={"status": "revoked", "revoked_at": now})
    note = f"key.revoke: {key.id} {key.name or ''}".rstrip()
    data = revoked.model_dump(mode="json")
    return [_record(cmd, "api_key", key.tenant_id, data, 2, now, new_id, note)], revoked.public()


def _key_touch(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    """Record that a key authenticated (sent fire-and-forget by the api, at most once per key per
    window per process). Never an error: a revoked, unknown or fresh key writes nothing."""
    key = state.keys.get(str(cmd.args.get("key_id")))
    try:
        used = datetime.fromisoformat(str(cmd.args.get("used_at")))
    except ValueError:
        used = now
    if used.tzinfo is None:
        used = used.replace(tzinfo=now.tzinfo)
    used = min(used, now)  # a clock ahead of the control agent's cannot date a use in the future
    if (
        key is None
        or key.tenant_id != cmd.tenant_id
        or key.status != "active"
        or (
            key.last_used_at is not None
            and (used - key.last_used_at).total_seconds() < LAST_USED_RESOLUTION_S
        )
    ):
        return [], {"id": cmd.args.get("key_id"), "object": "api_key", "touched": False}
    touched = key.model_copy(update={"last_used_at": used})
    data = touched.model_dump(mode="json")
    rec = _record(cmd, "api_key", key.tenant_id, data, 1, now, new_id, f"key.touch: {key.id}")
    return [rec], {"id": key.id, "object": "api_key", "touched": True}


def _tenant(state: ConfigState, cmd: Command) -> Tenant:
    tenant = state.tenants.get(cmd.tenant_id or "")
    if tenant is None:
        raise Refusal(404, ErrorCode.NOT_FOUND, f"no tenant {cmd.tenant_id!r}")
    return tenant


# ---- operators ------------------------------------------------------------------------------
def _unbound(state: ConfigState, cmd: Command, capabilities: list[str]) -> None:
    bound: set[str] = set()
    for cn in state.connectors_of(cmd.tenant_id or "", cmd.livemode):
        bound.update(cn.capabilities)
    missing = [c for c in capabilities if c not in bound]
    if missing:
        raise Refusal(
            422,
            ErrorCode.CAPABILITY_UNBOUND,
            f"{missing[0]} is fulfilled by no installed connector; install one first.",
            capability=missing[0],
            capabilities=missing,
        )


def _operator(state: ConfigState, cmd: Command) -> Operator:
    op = state.operators.get(str(cmd.args.get("operator_id")))
    if op is None or op.tenant_id != cmd.tenant_id or op.livemode != cmd.livemode:
        raise Refusal(404, ErrorCode.NOT_FOUND, f"No operator {cmd.args.get('operator_id')!r}.")
    return op


def _operator_create(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    _tenant(state, cmd)
    body = cmd.args["operator"]
    name = body["name"]
    if any(o.name == name for o in state.operators_of(cmd.tenant_id or "", cmd.livemode)):
        raise Refusal(
            409,
            ErrorCode.STATE_CONFLICT,
            f"An operator named {name!r} already exists in this tenant.",
        )
    _unbound(state, cmd, body["capabilities"])
    op = Operator(
        id=new_id("op"),
        tenant_id=cmd.tenant_id or "",
        livemode=cmd.livemode,
        name=name,
        status=body.get("status") or "active",
        outcome=body["outcome"],
        capabilities=body["capabilities"],
        guardrails=[Guardrail.model_validate(g) for g in body.get("guardrails") or []],
        model=body.get("model") or "router:default",
        schedule=body.get("schedule"),
        triggers=body.get("triggers") or default_triggers(body["capabilities"]),
        playbook=body.get("playbook"),
        created_at=now,
        updated_at=now,
    )
    return [
        _record(cmd, "operator", op.tenant_id, op.model_dump(mode="json"), 1, now, new_id)
    ], op.public()


def _operator_update(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    op = _operator(state, cmd)
    changes: dict[str, Any] = dict(cmd.args["changes"])
    if "name" in changes:
        if changes["name"] != op.name:
            raise Refusal(
                400, ErrorCode.INVALID_PARAMETER, "name is immutable after creation.", param="name"
            )
        del changes["name"]
    if "capabilities" in changes:
        _unbound(state, cmd, changes["capabilities"])
    if "status" in changes and changes["status"] != op.status:
        if op.status == "paused":
            raise Refusal(
                409, ErrorCode.STATE_CONFLICT, "Use /resume to reactivate a paused operator."
            )
    if "guardrails" in changes:
        changes["guardrails"] = [Guardrail.model_validate(g) for g in changes["guardrails"]]
    if not changes:
        return [], op.public()
    updated = op.model_copy(update={**changes, "version": op.version + 1, "updated_at": now})
    note = "operator.update: " + ", ".join(sorted(changes))
    rec = _save(cmd, "operator", updated, now, new_id, note)
    return [rec], updated.public()


def _operator_pause(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    op = _operator(state, cmd)
    if op.status == "draft":
        raise Refusal(
            409, ErrorCode.STATE_CONFLICT, f"Operator {op.id} is a draft; it is not running."
        )
    if op.status == "paused":
        return [], {
            "id": op.id,
            "object": "operator",
            "name": op.name,
            "status": "paused",
            "paused_at": _iso(op.paused_at),
        }
    reason = cmd.args.get("reason")
    updated = op.model_copy(
        update={
            "status": "paused",
            "paused_at": now,
            "pause_reason": reason,
            "version": op.version + 1,
            "updated_at": now,
        }
    )
    note = f"operator.pause: {reason}" if reason else "operator.pause"
    rec = _save(cmd, "operator", updated, now, new_id, note)
    return [rec], {
        "id": op.id,
        "object": "operator",
        "name": op.name,
        "status": "paused",
        "paused_at": _iso(now),
    }


def _operator_resume(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    op = _operator(state, cmd)
    if op.status == "draft":
        raise Refusal(
            409,
            ErrorCode.STATE_CONFLICT,
            f"Operator {op.id} is a draft; activate it with PATCH first.",
        )
    catch_up = bool(cmd.args.get("catch_up"))
    if op.status == "active":
        return [], {
            "id": op.id,
            "object": "operator",
            "name": op.name,
            "status": "active",
            "resumed_at": _iso(op.resumed_at),
            "catch_up_events": 0,
        }
    updated = op.model_copy(
        update={"status": "active", "resumed_at": now, "version": op.version + 1, "updated_at": now}
    )
    note = "operator.resume (catch_up)" if catch_up else "operator.resume"
    rec = _save(cmd, "operator", updated, now, new_id, note)
    result = {
        "id": op.id,
        "object": "operator",
        "name": op.name,
        "status": "active",
        "resumed_at": _iso(now),
        "catch_up_events": int(cmd.args.get("catch_up_events") or 0) if catch_up else 0,
        "catch_up_window": {"from": _iso(op.paused_at), "to": _iso(now)} if catch_up else None,
    }
    return [rec], result


def _operator_rollback(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    """A new version whose configuration (``agents.governance.OPERATOR_ROLLBACK_FIELDS``) is
    that of an earlier version ``version``, whose stored state the api sends as ``target``
    (it reads the history; this writer checks it still fits: capabilities bound, guardrails
    valid). Status is not restored: pause and resume stay their own commands."""
    op = _operator(state, cmd)
    target = dict(cmd.args.get("target") or {})
    version = int(cmd.args.get("version") or 0)
    if target.get("id") != op.id or not 1 <= version <= op.version:
        raise Refusal(404, ErrorCode.NOT_FOUND, f"Operator {op.id} has no version {version}.")
    changes = {f: target.get(f) for f in OPERATOR_ROLLBACK_FIELDS}
    _unbound(state, cmd, list(changes["capabilities"] or []))
    changes["guardrails"] = [Guardrail.model_validate(g) for g in changes["guardrails"] or []]
    updated = op.model_copy(update={**changes, "version": op.version + 1, "updated_at": now})
    updated = Operator.model_validate(updated.model_dump())
    differ = sorted(f for f in OPERATOR_ROLLBACK_FIELDS if getattr(op, f) != getattr(updated, f))
    note = f"operator.rollback: to v{version}" + (f" {', '.join(differ)}" if differ else "")
    return [_save(cmd, "operator", updated, now, new_id, note)], updated.public()


def _operator_record_run(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    op = _operator(state, cmd)
    updated = op.model_copy(
        update={"last_run": LastRun.model_validate(cmd.args["last_run"]), "updated_at": now}
    )
    rec = _record(
        cmd, "operator", op.tenant_id, updated.model_dump(mode="json"), op.version, now, new_id
    )
    return [rec], updated.public()


# ---- connectors -----------------------------------------------------------------------------
def _connector(state: ConfigState, cmd: Command) -> Connector:
    cn = state.connectors.get(str(cmd.args.get("connector_id")))
    if cn is None or cn.tenant_id != cmd.tenant_id or cn.livemode != cmd.livemode:
        raise Refusal(404, ErrorCode.NOT_FOUND, f"No connector {cmd.args.get('connector_id')!r}.")
    return cn


def _connector_install(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    _tenant(state, cmd)
    draft = dict(cmd.args["connector"])
    if any(c.name == draft["name"] for c in state.connectors_of(cmd.tenant_id or "", cmd.livemode)):
        raise Refusal(
            409,
            ErrorCode.STATE_CONFLICT,
            f"A connector named {draft['name']!r} already exists in this tenant.",
        )
    cn = Connector.model_validate(
        {
            **draft,
            "tenant_id": cmd.tenant_id,
            "livemode": cmd.livemode,
            "created_at": now,
            "updated_at": now,
        }
    )
    records = [_record(cmd, "connector", cn.tenant_id, cn.model_dump(mode="json"), 1, now, new_id)]
    if cmd.args.get("ciphertext"):
        vault = VaultEntry(
            connector_id=cn.id, tenant_id=cn.tenant_id, ciphertext=cmd.args["ciphertext"]
        )
        records.append(
            _record(cmd, "vault", cn.tenant_id, vault.model_dump(mode="json"), 1, now, new_id)
        )
    return records, cn.public()


def _expect_version(cn: Connector, cmd: Command) -> None:
    """A background writer (the health probe, a token refresh) decided on the version it read;
    a change since (a re-authorization, a test, an uninstall) wins over its stale decision."""
    want = cmd.args.get("expect_version")
    if want is not None and want != cn.version:
        raise Refusal(
            409,
            ErrorCode.STATE_CONFLICT,
            f"{cn.id} changed (version {cn.version}, not {want}); decide again.",
        )


def _expect_credentials(state: ConfigState, cn: Connector, cmd: Command) -> bool:
    """A token refresh's guard (decisions §47): the sealed tokens it replaced must still be the
    vault's, so of two refreshers racing on one grant the first renewal stays and a revocation
    concluded from tokens someone else already renewed is refused. False when not asked."""
    want = cmd.args.get("expect_credentials")
    if want is None:
        return False
    entry = state.vault.get(cn.id)
    if credentials_fingerprint(entry.ciphertext if entry else None) != want:
        raise Refusal(
            409,
            ErrorCode.STATE_CONFLICT,
            f"{cn.id}'s credentials were replaced meanwhile; decide again.",
        )
    return True


def _health(cmd: Command, cn: Connector) -> ConnectorHealth | None:
    raw = cmd.args.get("health")
    return ConnectorHealth.model_validate(raw) if raw is not None else cn.health


def _connector_set_status(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    cn = _connector(state, cmd)
    _expect_version(cn, cmd)
    _expect_credentials(state, cn, cmd)
    update: dict[str, Any] = {
        "status": cmd.args["status"],
        "status_detail": cmd.args.get("detail"),
        "health": _health(cmd, cn),
        "updated_at": now,
        "version": cn.version + 1,
    }
    if cmd.args.get("synced"):
        update["last_synced_at"] = now
    if cmd.args.get("grant"):
        update["grant"] = cmd.args["grant"]
    updated = cn.model_copy(update=update)
    # the note starts "connector.set_status" for every status change: the audit trail and the
    # connector.status_changed webhook (api/deliveries.py) are derived from it
    note = f"connector.set_status: {updated.status}"
    if cmd.args.get("reason"):
        note += f" ({cmd.args['reason']})"
    rec = _save(cmd, "connector", updated, now, new_id, note)
    return [rec], updated.public()


def _oauth_connector(state: ConfigState, cmd: Command) -> Connector:
    cn = _connector(state, cmd)
    if cn.auth.get("type") != "oauth2":
        raise Refusal(
            409, ErrorCode.STATE_CONFLICT, f"{cn.id} does not authorize through OAuth 2.0."
        )
    return cn


def _connector_authorize(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    """The callback's outcome (decisions §43): the state's nonce must be the one the connector
    accepts now, so a state completes once even when two callbacks race."""
    cn = _oauth_connector(state, cmd)
    nonce = cmd.args.get("nonce")
    if not nonce or cn.oauth_nonce != nonce:
        raise Refusal(
            409,
            ErrorCode.STATE_CONFLICT,
            "This authorization was already completed or superseded; start it again from the "
            "connector's authorize_url.",
        )
    granted = cmd.args.get("outcome") == "granted"
    update: dict[str, Any] = {
        "status": "connected" if granted else "error",
        "status_detail": None if granted else cmd.args.get("detail"),
        "oauth_nonce": None,
        "authorize_url": None,
        "grant": "granted" if granted else cn.grant,
        "health": _health(cmd, cn),
        "updated_at": now,
        "version": cn.version + 1,
    }
    updated = cn.model_copy(update=update)
    reason = "authorized" if granted else "authorization failed"
    records = [
        _save(
            cmd,
            "connector",
            updated,
            now,
            new_id,
            f"connector.set_status: {updated.status} ({reason})",
        )
    ]
    if granted and cmd.args.get("ciphertext"):
        vault = VaultEntry(
            connector_id=cn.id, tenant_id=cn.tenant_id, ciphertext=cmd.args["ciphertext"]
        )
        records.append(
            _record(
                cmd,
                "vault",
                cn.tenant_id,
                vault.model_dump(mode="json"),
                updated.version,
                now,
                new_id,
                "vault.seal: oauth2 tokens",
            )
        )
    return records, updated.public()


def _connector_reauthorize(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    """Start the dance again (an expired link, a failed exchange, a revoked grant)."""
    cn = _oauth_connector(state, cmd)
    updated = cn.model_copy(
        update={
            "status": "pending_auth",
            "status_detail": None,
            "oauth_nonce": cmd.args["nonce"],
            "authorize_url": cmd.args["authorize_url"],
            "grant": "revoked" if cn.grant == "revoked" else "pending",
            "updated_at": now,
            "version": cn.version + 1,
        }
    )
    note = "connector.set_status: pending_auth (authorization started)"
    return [_save(cmd, "connector", updated, now, new_id, note)], updated.public()


def _connector_credentials(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    """Refreshed tokens, sealed: a new vault record and a new connector version (workers
    restart their session with the new token when the version moves)."""
    cn = _oauth_connector(state, cmd)
    # a refresh guards on the tokens it replaced, not on the version: a health touch or a
    # config change meanwhile must not throw away a renewal (the provider may have rotated the
    # refresh token, so the old one no longer works)
    if not _expect_credentials(state, cn, cmd):
        _expect_version(cn, cmd)
    if cn.status == "pending_auth" or cn.grant != "granted":
        raise Refusal(409, ErrorCode.STATE_CONFLICT, f"{cn.id} holds no granted authorization.")
    updated = cn.model_copy(
        update={"health": _health(cmd, cn), "updated_at": now, "version": cn.version + 1}
    )
    vault = VaultEntry(
        connector_id=cn.id, tenant_id=cn.tenant_id, ciphertext=cmd.args["ciphertext"]
    )
    records = [
        _save(
            cmd, "connector", updated, now, new_id, "connector.credentials: oauth2 token refreshed"
        ),
        _record(
            cmd,
            "vault",
            cn.tenant_id,
            vault.model_dump(mode="json"),
            updated.version,
            now,
            new_id,
            "vault.seal: oauth2 tokens",
        ),
    ]
    return records, updated.public()


def _connector_touch(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    """A probe that changed no status: its health, and ``last_synced_at`` when it succeeded
    (written at most every probe interval by the caller; no version change)."""
    cn = _connector(state, cmd)
    _expect_version(cn, cmd)
    update: dict[str, Any] = {"health": _health(cmd, cn)}
    if cmd.args.get("synced"):
        update["last_synced_at"] = now
    updated = cn.model_copy(update=update)
    return [
        _save(cmd, "connector", updated, now, new_id, "connector.touch: health probe")
    ], updated.public()


def _connector_uninstall(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    cn = _connector(state, cmd)
    others: set[str] = set()
    for other in state.connectors_of(cn.tenant_id, cn.livemode):
        if other.id != cn.id:
            others.update(other.capabilities)
    sole = [c for c in cn.capabilities if c not in others]
    dependents = sorted(
        (
            op
            for op in state.operators_of(cn.tenant_id, cn.livemode)
            if op.status == "active" and any(c in sole for c in op.capabilities)
        ),
        key=lambda op: op.id,
    )
    if dependents:
        caps = sorted({c for op in dependents for c in op.capabilities if c in sole})
        ids = ", ".join(op.id for op in dependents)
        raise Refusal(
            409,
            ErrorCode.CONNECTOR_IN_USE,
            f"{', '.join(caps)} {'is' if len(caps) == 1 else 'are'} fulfilled only by {cn.id}; "
            f"operators {ids} depend on it.",
            operators=[{"id": op.id, "name": op.name} for op in dependents],
            capabilities=caps,
        )
    gone = cn.model_copy(update={"deleted": True, "updated_at": now, "version": cn.version + 1})
    purge = VaultEntry(connector_id=cn.id, tenant_id=cn.tenant_id, ciphertext=None)
    records = [
        _save(cmd, "connector", gone, now, new_id),
        _record(
            cmd, "vault", cn.tenant_id, purge.model_dump(mode="json"), 2, now, new_id, "vault.purge"
        ),
    ]
    return records, {"id": cn.id, "object": "connector", "deleted": True}


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt else None


_HANDLERS = {
    "tenant.create": _tenant_create,
    "key.create": _key_create,
    "key.revoke": _key_revoke,
    "key.touch": _key_touch,
    "operator.create": _operator_create,
    "operator.update": _operator_update,
    "operator.pause": _operator_pause,
    "operator.resume": _operator_resume,
    "operator.record_run": _operator_record_run,
    "operator.rollback": _operator_rollback,
    "connector.install": _connector_install,
    "connector.set_status": _connector_set_status,
    "connector.uninstall": _connector_uninstall,
    "connector.authorize": _connector_authorize,
    "connector.reauthorize": _connector_reauthorize,
    "connector.credentials": _connector_credentials,
    "connector.touch": _connector_touch,
}


# ---- plans awaiting approval, and undo --------------------------------------------------------
# These commands also emit ledger rows (plan versions, receipts) and actions for the executor;
# the control agent writes them with the config records. See streams/app.py::_apply_command.
def _pending(state: ConfigState, cmd: Command) -> Plan:
    plan = state.pending_plans.get(str(cmd.args.get("plan_id")))
    if plan is None or plan.tenant_id != cmd.tenant_id or plan.livemode != cmd.livemode:
        raise Refusal(
            409,
            ErrorCode.STATE_CONFLICT,
            f"Plan {cmd.args.get('plan_id')} is not awaiting approval and cannot be "
            f"{'approved' if cmd.type == 'plan.approve' else 'vetoed'}.",
        )
    return plan


def _close_plan(
    cmd: Command, plan: Plan, status: str, now: datetime, new_id: IdFactory, approver: str | None
) -> tuple[Plan, ConfigRecord]:
    closed = plan.model_copy(
        update={
            "status": status,
            "approver": approver,
            "updated_at": now,
            "version": plan.version + 1,
        }
    )
    rec = _save(cmd, "pending_plan", closed, now, new_id, f"{cmd.type}: {approver or 'system'}")
    return closed, rec


def _plan_approve(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    plan = _pending(state, cmd)
    approver = str(cmd.args.get("approver") or cmd.actor)
    operator = state.operators.get(plan.operator_id)
    connectors = state.connectors_of(plan.tenant_id, plan.livemode)
    policies = state.guardrails_of(plan.tenant_id, plan.livemode)
    closed, rec = _close_plan(cmd, plan, "approved", now, new_id, approver)
    outputs: list[tuple[str, Any]] = [("plan", closed)]
    dispatch: list[ActionRecord] = []
    actions = []
    for a in plan.actions:
        if a.verdict.decision == "BLOCK":
            actions.append(a)
            continue  # approval never runs a BLOCK; its refusal receipt already exists
        verdict = revet(a, operator, connectors, policies)
        approved = a.model_copy(
            update={
                "approver": approver,
                "request_id": cmd.request_id,
                "verdict": verdict,
                "guardrail_version": operator.version if operator else a.guardrail_version,
            }
        )
        actions.append(approved)
        if verdict.decision == "BLOCK":
            outputs.append(
                (
                    "receipt",
                    receipt(
                        approved, "BLOCK", "refused", f"blocked at approval: {verdict.reason}", now
                    ),
                )
            )
        else:
            dispatch.append(approved)
    closed.actions = actions
    rec.data = closed.model_dump(mode="json")
    return [rec], closed.model_dump(mode="json"), outputs, dispatch


def _plan_veto(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    plan = _pending(state, cmd)
    approver = str(cmd.args.get("approver") or cmd.actor)
    closed, rec = _close_plan(cmd, plan, "vetoed", now, new_id, approver)
    outputs: list[tuple[str, Any]] = [("plan", closed)]
    for a in plan.actions:
        if a.verdict.decision != "BLOCK":
            outputs.append(
                (
                    "receipt",
                    receipt(
                        a,
                        a.verdict.decision,
                        "vetoed",
                        f"vetoed by {approver}",
                        now,
                        approver=approver,
                        request_id=cmd.request_id,
                    ),
                )
            )
    return [rec], closed.model_dump(mode="json"), outputs, []


def _plan_expire(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    plan = _pending(state, cmd)
    if plan.expires_at is None or plan.expires_at > now:
        raise Refusal(409, ErrorCode.STATE_CONFLICT, f"Plan {plan.id} has not expired yet.")
    closed, rec = _close_plan(cmd, plan, "expired", now, new_id, None)
    outputs: list[tuple[str, Any]] = [("plan", closed)]
    for a in plan.actions:
        if a.verdict.decision != "BLOCK":
            outputs.append(
                (
                    "receipt",
                    receipt(
                        a, a.verdict.decision, "expired", "no approval before the plan expired", now
                    ),
                )
            )
    return [rec], closed.model_dump(mode="json"), outputs, []


def _action_undo(state: ConfigState, cmd: Command, now: datetime, new_id: IdFactory):
    original = ActionRecord.model_validate(cmd.args["action"])
    if original.tenant_id != cmd.tenant_id or original.livemode != cmd.livemode:
        raise Refusal(404, ErrorCode.NOT_FOUND, f"No action {original.id!r}.")
    if not original.compensating_tool:
        raise Refusal(
            409,
            ErrorCode.STATE_CONFLICT,
            f"{original.tool} declares no compensating tool; it cannot be undone.",
        )
    operator = state.operators.get(original.operator_id)
    connectors = state.connectors_of(original.tenant_id, original.livemode)
    policies = state.guardrails_of(original.tenant_id, original.livemode)
    undo = undo_action(original, operator, connectors, now, cmd.request_id, policies)
    return [], undo.model_dump(mode="json"), [("action", undo)], [undo]


_HANDLERS.update(
    {
        "plan.approve": _plan_approve,
        "plan.veto": _plan_veto,
        "plan.expire": _plan_expire,
        "action.undo": _action_undo,
    }
)
