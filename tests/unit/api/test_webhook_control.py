"""Webhook endpoint commands (agents/webhook_control.py) and the pure signing/backoff pieces."""

from __future__ import annotations

import hashlib
import hmac
import random
from datetime import UTC, datetime
from itertools import count

from agents.webhook_control import decide
from schemas.commands import Command
from schemas.config import Tenant
from schemas.webhook import (
    DELIVERY_TYPES,
    WebhookEndpoint,
    backoff_s,
    signature_header,
    verify_signature,
)

NOW = datetime(2026, 6, 14, 9, 2, 11, tzinfo=UTC)
_n = count()


def new_id(prefix: str) -> str:
    return f"{prefix}_{next(_n):026d}"


class State:
    def __init__(self) -> None:
        self.tenants = {"t_1": Tenant(id="t_1", slug="acme", name="Acme", created_at=NOW)}
        self.webhooks: dict[str, WebhookEndpoint] = {}
        self.vault: dict = {}
        self.keys: dict = {}

    def apply(self, decision) -> None:
        for rec in decision.records:
            if rec.kind == "webhook_endpoint":
                ep = WebhookEndpoint.model_validate(rec.data)
                if ep.deleted:
                    self.webhooks.pop(ep.id, None)
                else:
                    self.webhooks[ep.id] = ep
            elif rec.kind == "vault":
                self.vault[rec.data["connector_id"]] = rec.data["ciphertext"]


def cmd(type_: str, tenant: str = "t_1", livemode: bool = False, **args) -> Command:
    return Command(
        id=new_id("cmd"),
        reply_to="test",
        type=type_,
        tenant_id=tenant,
        livemode=livemode,
        actor="key_x",
        args=args,
        at=NOW,
    )


def create(state: State, **over) -> dict:
    webhook = {
        "url": "https://hooks.example.com/fibric",
        "types": ["receipt.written", "plan.proposed"],
        "secret_hint": "whsec_…abcd",
        **over,
    }
    d = decide(state, cmd("webhook.create", webhook=webhook, ciphertext="sealed"), NOW, new_id)
    state.apply(d)
    return d.reply.model_dump()


def test_create_writes_the_endpoint_and_a_sealed_vault_record_never_the_secret():
    state = State()
    reply = create(state)
    assert reply["ok"], reply
    ep = reply["result"]
    assert ep["object"] == "webhook_endpoint" and ep["status"] == "active"
    assert ep["id"].startswith("whk_") and ep["secret"] is None
    assert state.vault[ep["id"]] == "sealed"
    assert "sealed" not in str(state.webhooks[ep["id"]].model_dump())


def test_unknown_types_and_other_tenants_are_refused():
    state = State()
    bad = create(state, types=["order.created"])
    assert not bad["ok"] and bad["error"]["code"] == "invalid_parameter"
    ep = create(state)["result"]
    other = decide(state, cmd("webhook.update", tenant="t_2", webhook_id=ep["id"]), NOW, new_id)
    assert other.reply.error.status == 404
    other_mode = decide(
        state, cmd("webhook.delete", livemode=True, webhook_id=ep["id"]), NOW, new_id
    )
    assert other_mode.reply.error.status == 404


def test_suspension_never_overrides_the_owners_disable_and_enable_clears_it():
    state = State()
    ep = create(state)["result"]
    d = decide(
        state,
        cmd("webhook.set_status", webhook_id=ep["id"], status="suspended", reason="410"),
        NOW,
        new_id,
    )
    state.apply(d)
    assert state.webhooks[ep["id"]].status == "suspended"
    d = decide(
        state, cmd("webhook.update", webhook_id=ep["id"], changes={"status": "active"}), NOW, new_id
    )
    state.apply(d)
    assert state.webhooks[ep["id"]].status == "active"
    assert state.webhooks[ep["id"]].status_reason is None
    state.apply(
        decide(
            state,
            cmd("webhook.update", webhook_id=ep["id"], changes={"status": "disabled"}),
            NOW,
            new_id,
        )
    )
    d = decide(
        state, cmd("webhook.set_status", webhook_id=ep["id"], status="suspended"), NOW, new_id
    )
    assert d.records == [] and state.webhooks[ep["id"]].status == "disabled"


def test_delete_purges_the_secret():
    state = State()
    ep = create(state)["result"]
    state.apply(decide(state, cmd("webhook.delete", webhook_id=ep["id"]), NOW, new_id))
    assert ep["id"] not in state.webhooks and state.vault[ep["id"]] is None


def test_other_commands_still_reach_the_config_decider():
    c = cmd("key.revoke", key_id="key_nope").model_copy(update={"actor": "admin-cli"})
    d = decide(State(), c, NOW, new_id)
    assert not d.reply.ok and d.reply.error.status == 404


def test_signature_is_stripes_scheme_and_verifies_with_every_secret_during_rotation():
    body = b'{"id":"whd_1","type":"receipt.written"}'
    header = signature_header(["new", "old"], body, 1_750_000_000)
    t, v1a, v1b = header.split(",")
    assert t == "t=1750000000"
    expected = hmac.new(b"new", b"1750000000." + body, hashlib.sha256).hexdigest()
    assert v1a == f"v1={expected}"
    assert verify_signature("old", body, header, now=1_750_000_100)
    assert not verify_signature("other", body, header, now=1_750_000_100)
    assert not verify_signature("new", body + b" ", header, now=1_750_000_100)
    assert not verify_signature("new", body, header, now=1_750_000_000 + 301)  # too old


def test_backoff_doubles_with_jitter_and_is_capped():
    rng = random.Random(7)
    delays = [backoff_s(n, 60, 3600, rng) for n in range(1, 12)]
    for n, d in enumerate(delays, start=1):
        full = min(3600, 60 * 2 ** (n - 1))
        assert full / 2 <= d <= full
    assert max(delays) <= 3600


def test_the_documented_types_are_the_v1_set_plus_the_alias():
    assert set(DELIVERY_TYPES) == {
        "plan.proposed",
        "plan.disposed",
        "action.disposed",
        "action.needs_approval",
        "connector.status_changed",
        "receipt.written",
        "plan.awaiting_approval",
    }
