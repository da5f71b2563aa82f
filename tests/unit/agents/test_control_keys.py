"""The control agent's key commands (key.create, key.revoke, key.touch), applied in order to a
config view: role expansion, no scope escalation, tenancy and mode walls, permanent revocation,
the audit note and actor, and last_used_at's write bound. No broker needed."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from agents.control import decide
from schemas.commands import Command
from schemas.config import (
    LAST_USED_RESOLUTION_S,
    ROLES,
    SCOPES,
    ApiKey,
    hash_secret,
    new_secret,
    secret_hint,
)
from streams.config_view import ConfigView

NOW = datetime(2026, 7, 2, 15, 0, tzinfo=UTC)
_seq = itertools.count()

SPEC_FIELDS = {
    "id",
    "object",
    "name",
    "mode",
    "role",
    "scopes",
    "workspace_id",
    "hint",
    "status",
    "last_used_at",
    "created_at",
}


def new_id(prefix: str) -> str:
    return f"{prefix}_{next(_seq):026d}"


def draft(mode="test", **extra):
    secret = new_secret(mode)
    return {"mode": mode, "hint": secret_hint(secret), "secret_hash": hash_secret(secret), **extra}


class Keys:
    def __init__(self) -> None:
        self.view = ConfigView("unused:9092")
        self.tenant = self.ok("tenant.create", tenant=None, slug="acme")["id"]
        self.other = self.ok("tenant.create", tenant=None, slug="globex")["id"]
        # the first admin keys come from the console stand-in (`fibric admin`, no issuing key)
        self.admin = self.ok("key.create", key=draft(role="admin"))["id"]
        self.live_admin = self.ok("key.create", key=draft("live", role="admin"))["id"]

    def run(self, type_, tenant="__default__", actor="admin-cli", now=NOW, **args):
        cmd = Command(
            id=new_id("cmd"),
            reply_to="test",
            type=type_,
            tenant_id=self.tenant if tenant == "__default__" else tenant,
            actor=actor,
            args=args,
            at=now,
        )
        d = decide(self.view, cmd, now, new_id)
        for rec in d.records:
            self.view.apply_record(rec)
        return d

    def ok(self, type_, **kw):
        d = self.run(type_, **kw)
        assert d.reply.ok, d.reply.error
        return d.reply.result

    def err(self, type_, status, code, **kw):
        d = self.run(type_, **kw)
        assert not d.reply.ok and not d.records, d.reply
        assert (d.reply.error.status, d.reply.error.code) == (status, code), d.reply.error
        return d.reply.error


def test_role_is_expanded_by_the_agent_and_the_object_has_the_spec_fields():
    k = Keys()
    key = k.ok("key.create", actor=k.admin, key=draft(name="ci", role="operate"))
    assert SPEC_FIELDS <= set(key)
    assert key["object"] == "api_key" and key["id"].startswith("key_")
    assert key["role"] == "operate" and key["scopes"] == list(ROLES["operate"])
    assert key["status"] == "active" and key["last_used_at"] is None
    assert key["workspace_id"] is None and key["revoked_at"] is None
    assert "secret_hash" not in key and "secret" not in key
    stored = k.view.keys[key["id"]]
    assert stored.tenant_id == k.tenant and len(stored.secret_hash) == 64


def test_explicit_scopes_are_validated_and_ordered_and_leave_role_null():
    k = Keys()
    key = k.ok("key.create", actor=k.admin, key=draft(scopes=["receipts:read", "events:read"]))
    assert key["role"] is None and key["scopes"] == ["events:read", "receipts:read"]
    k.err("key.create", 400, "invalid_parameter", actor=k.admin, key=draft(scopes=["x:y"]))
    k.err("key.create", 400, "invalid_parameter", actor=k.admin, key=draft(role="root"))
    k.err("key.create", 400, "missing_parameter", actor=k.admin, key=draft())
    k.err("key.create", 400, "invalid_parameter", actor=k.admin, key={"role": "admin"})


def test_a_key_never_creates_a_key_with_scopes_it_lacks():
    k = Keys()
    narrow = k.ok("key.create", actor=k.admin, key=draft(scopes=["keys:write", "events:read"]))
    err = k.err(
        "key.create", 403, "insufficient_scope", actor=narrow["id"], key=draft(role="admin")
    )
    assert set(err.details["missing_scopes"]) == set(SCOPES) - {
        "keys:write",
        "events:read",
        "ledger:query",  # in no role preset (decisions §42)
    }
    k.err(
        "key.create",
        403,
        "insufficient_scope",
        actor=narrow["id"],
        key=draft(scopes=["events:read", "events:write"]),
    )
    sub = k.ok("key.create", actor=narrow["id"], key=draft(scopes=["events:read"]))
    assert sub["scopes"] == ["events:read"]


def test_a_key_cannot_revoke_a_wider_key_and_a_revoked_issuer_can_do_nothing():
    k = Keys()
    narrow = k.ok("key.create", actor=k.admin, key=draft(scopes=["keys:write", "keys:read"]))
    k.err("key.revoke", 403, "insufficient_scope", actor=narrow["id"], key_id=k.admin)
    assert k.view.keys[k.admin].status == "active"
    k.ok("key.revoke", actor=k.admin, key_id=narrow["id"])
    k.err("key.create", 401, "key_revoked", actor=narrow["id"], key=draft(scopes=["keys:read"]))


def test_mode_follows_the_issuer_and_other_modes_keys_are_not_found():
    k = Keys()
    live = k.ok("key.create", actor=k.live_admin, key=draft("live", role="read_only"))
    assert live["mode"] == "live" and live["livemode"] is True
    err = k.err(
        "key.create", 400, "invalid_parameter", actor=k.admin, key=draft("live", role="ingest")
    )
    assert err.details["param"] == "mode"
    k.err("key.revoke", 404, "not_found", actor=k.admin, key_id=live["id"])
    assert k.view.keys[live["id"]].status == "active"


def test_another_tenants_key_is_not_found_and_another_tenants_issuer_is_invalid():
    k = Keys()
    theirs = k.ok("key.create", tenant=k.other, key=draft(role="admin"))
    k.err("key.revoke", 404, "not_found", actor=k.admin, key_id=theirs["id"])
    # a command claiming to come from another tenant's key is refused outright
    k.err("key.create", 401, "key_invalid", actor=theirs["id"], key=draft(role="read_only"))
    assert k.view.keys[theirs["id"]].status == "active"


def test_active_names_are_unique_per_tenant_and_mode_for_api_callers():
    k = Keys()
    k.ok("key.create", actor=k.admin, key=draft(name="ci", role="ingest"))
    k.err("key.create", 409, "state_conflict", actor=k.admin, key=draft(name="ci", role="ingest"))
    # the other mode and the other tenant have their own names
    k.ok("key.create", actor=k.live_admin, key=draft("live", name="ci", role="ingest"))
    k.ok("key.create", tenant=k.other, key=draft(name="ci", role="ingest"))
    # `fibric admin` may reuse a name (re-running the demo creates "demo" again)
    k.ok("key.create", key=draft(name="ci", role="ingest"))


def test_a_reused_secret_hash_is_refused():
    k = Keys()
    d = draft(role="ingest")
    k.ok("key.create", actor=k.admin, key=d)
    k.err("key.create", 409, "state_conflict", actor=k.admin, key=dict(d))


def test_revocation_is_permanent_idempotent_and_audited():
    k = Keys()
    key = k.ok("key.create", actor=k.admin, key=draft(name="tmp", role="ingest"))
    d = k.run("key.revoke", actor=k.admin, key_id=key["id"])
    assert d.reply.ok and len(d.records) == 1
    rec = d.records[0]
    assert rec.kind == "api_key" and rec.actor == k.admin
    assert rec.note.startswith(f"key.revoke: {key['id']}")
    assert d.reply.result["status"] == "revoked" and d.reply.result["revoked_at"]
    again = k.run("key.revoke", actor=k.admin, key_id=key["id"])
    assert again.reply.ok and not again.records and again.reply.result == d.reply.result
    # a touch never brings a revoked key back
    assert not k.run(
        "key.touch", actor=key["id"], key_id=key["id"], used_at=NOW.isoformat()
    ).records
    assert k.view.keys[key["id"]].status == "revoked"


def test_create_is_audited_with_the_issuer_and_no_secret_in_the_note():
    k = Keys()
    d0 = draft(name="audited", role="read_only")
    d = k.run("key.create", actor=k.admin, key=d0)
    (rec,) = d.records
    assert rec.actor == k.admin and rec.note.startswith("key.create: ")
    assert rec.request_id is None or rec.request_id.startswith("req_")
    assert d0["secret_hash"] not in rec.note and "sk_test_" not in rec.note.replace("…", "")
    assert rec.data["secret_hash"] == d0["secret_hash"]  # the hash is the key's only stored form


def test_touch_records_last_used_at_at_most_once_per_window():
    k = Keys()
    key_id = k.admin

    def touch(at):
        return k.run("key.touch", actor=key_id, now=at, key_id=key_id, used_at=at.isoformat())

    first = touch(NOW)
    assert len(first.records) == 1 and first.records[0].note == f"key.touch: {key_id}"
    assert k.view.keys[key_id].last_used_at == NOW
    assert not touch(NOW + timedelta(seconds=LAST_USED_RESOLUTION_S - 1)).records
    later = NOW + timedelta(seconds=LAST_USED_RESOLUTION_S)
    assert len(touch(later).records) == 1 and k.view.keys[key_id].last_used_at == later
    # the rest of the key is untouched
    key = k.view.keys[key_id]
    assert key.status == "active" and key.scopes == list(ROLES["admin"])


def test_touch_is_never_an_error_and_never_dates_a_use_in_the_future():
    k = Keys()
    assert k.run("key.touch", key_id="key_nope", used_at="garbage").reply.ok
    theirs = k.ok("key.create", tenant=k.other, key=draft(role="admin"))["id"]
    assert not k.run("key.touch", key_id=theirs, used_at=NOW.isoformat()).records
    future = NOW + timedelta(hours=1)
    d = k.run("key.touch", key_id=k.admin, used_at=future.isoformat())
    assert d.reply.ok and k.view.keys[k.admin].last_used_at == NOW


def test_old_records_without_the_new_fields_still_load():
    old = {
        "id": "key_1",
        "object": "api_key",
        "tenant_id": "t_1",
        "name": None,
        "mode": "test",
        "role": "admin",
        "scopes": ["events:read"],
        "hint": "sk_test_…abcd",
        "secret_hash": "0" * 64,
        "status": "active",
        "created_at": "2026-07-01T00:00:00Z",
    }
    key = ApiKey.model_validate(old).public()
    assert key["last_used_at"] is None and key["workspace_id"] is None
    assert key["created_at"] == "2026-07-01T00:00:00Z" and "secret_hash" not in key


def test_same_commands_same_decisions():
    def script():
        global _seq
        _seq = itertools.count()
        k = Keys()
        d = draft(role="ingest")
        d["hint"], d["secret_hash"] = "sk_test_…aaaa", "a" * 64
        k.ok("key.create", actor=k.admin, key=d)
        return {
            i: key.model_dump() for i, key in k.view.keys.items() if key.secret_hash == "a" * 64
        }

    assert script() == script()
