"""The control agent's decisions, applied in order to a config view (no broker needed)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from agents.control import decide
from schemas.commands import Command
from streams.config_view import ConfigView

NOW = datetime(2026, 7, 2, 15, 0, tzinfo=UTC)
_seq = itertools.count()


def new_id(prefix: str) -> str:
    return f"{prefix}_{next(_seq):026d}"


class Harness:
    def __init__(self) -> None:
        self.view = ConfigView("unused:9092")
        self.tenant = self.ok("tenant.create", None, slug="acme")["id"]

    def run(self, type_, tenant_id="__default__", livemode=False, **args):
        tenant = self.tenant if tenant_id == "__default__" else tenant_id
        cmd = Command(
            id=new_id("cmd"),
            reply_to="test",
            type=type_,
            tenant_id=tenant,
            livemode=livemode,
            actor="key_test",
            args=args,
            at=NOW,
        )
        d = decide(self.view, cmd, NOW, new_id)
        for rec in d.records:
            self.view.apply_record(rec)
        return d

    def ok(self, type_, tenant_id="__default__", **args):
        d = self.run(type_, tenant_id, **args)
        assert d.reply.ok, d.reply.error
        return d.reply.result

    def err(self, type_, **args):
        d = self.run(type_, **args)
        assert not d.reply.ok and not d.records
        return d.reply.error

    def install(self, name="magento-us-store", caps=("order.read", "order.hold", "order.notify")):
        return self.ok(
            "connector.install",
            connector={
                "id": new_id("cn"),
                "listing": "cn-magento",
                "name": name,
                "kind": "saas",
                "capabilities": list(caps),
                "tools": [{"name": c, "side_effect": c != "order.read"} for c in caps],
                "auth": {"type": "api_key", "hint": "mg_****41"},
                "config": {},
                "status": "connected",
            },
            ciphertext="sealed",
        )

    def operator(self, name="order-risk", caps=("order.read", "order.hold"), **extra):
        body = {
            "name": name,
            "outcome": "No late orders.",
            "capabilities": list(caps),
            "guardrails": [{"tool": "order.hold", "decision": "ALLOW", "max_value": 500}],
            **extra,
        }
        return self.run("operator.create", operator=body)


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_operator_create_requires_bound_capabilities(h):
    err = h.operator().reply.error
    assert (err.status, err.code) == (422, "capability_unbound") and err.details[
        "capability"
    ] == "order.read"
    h.install()
    op = h.operator().reply.result
    assert op["name"] == "order-risk" and op["version"] == 1 and op["triggers"] == ["order.**"]
    assert op["model"] == "router:default" and op["last_run"] is None


def test_second_create_with_the_same_name_is_a_conflict(h):
    h.install()
    assert h.operator().reply.ok
    err = h.operator().reply.error
    assert (err.status, err.code) == (409, "state_conflict")
    # the same name in live mode is another scope
    body = {"name": "order-risk", "outcome": "x", "capabilities": ["order.read"]}
    assert (
        h.run("operator.create", livemode=True, operator=body).reply.error.code
        == "capability_unbound"
    )


def test_update_bumps_version_replaces_guardrails_and_keeps_name(h):
    h.install()
    op = h.operator().reply.result
    new = [
        {"tool": "order.hold", "decision": "ALLOW", "max_value": 1000},
        {"tool": "order.notify", "decision": "ALERT"},
    ]
    updated = h.ok("operator.update", operator_id=op["id"], changes={"guardrails": new})
    assert updated["version"] == 2 and updated["guardrails"] == new
    assert h.err("operator.update", operator_id=op["id"], changes={"name": "other"}).status == 400
    assert (
        h.ok("operator.update", operator_id=op["id"], changes={"name": "order-risk"})["version"]
        == 2
    )
    err = h.err(
        "operator.update", operator_id=op["id"], changes={"capabilities": ["ticket.create"]}
    )
    assert err.code == "capability_unbound"


def test_pause_is_idempotent_and_resume_rules(h):
    h.install()
    op = h.operator().reply.result
    first = h.run("operator.pause", operator_id=op["id"], reason="inventory count")
    assert first.reply.result["status"] == "paused" and len(first.records) == 1
    assert first.records[0].note == "operator.pause: inventory count"
    again = h.run("operator.pause", operator_id=op["id"])
    assert again.reply.ok and again.records == []  # no-op, still 200
    resumed = h.ok("operator.resume", operator_id=op["id"], catch_up=True, catch_up_events=17)
    assert resumed["status"] == "active" and resumed["catch_up_events"] == 17
    draft = h.operator(name="drafty", status="draft").reply.result
    assert h.err("operator.resume", operator_id=draft["id"]).status == 409
    assert h.err("operator.pause", operator_id=draft["id"]).status == 409
    assert h.err("operator.resume", operator_id="op_missing").status == 404


def test_other_tenants_objects_are_not_found(h):
    h.install()
    op = h.operator().reply.result
    other = h.ok("tenant.create", None, slug="globex")["id"]
    d = h.run("operator.pause", tenant_id=other, operator_id=op["id"])
    assert d.reply.error.status == 404


def test_uninstall_refuses_while_an_active_operator_depends_on_it(h):
    cn = h.install()
    op = h.operator().reply.result
    err = h.err("connector.uninstall", connector_id=cn["id"])
    assert (err.status, err.code) == (409, "connector_in_use")
    assert err.details["operators"] == [{"id": op["id"], "name": "order-risk"}]
    assert op["id"] in err.message and "order.hold" in err.message
    # a second connector fulfilling the same capabilities frees the first
    h.install(name="magento-eu-store")
    d = h.run("connector.uninstall", connector_id=cn["id"])
    assert d.reply.result == {"id": cn["id"], "object": "connector", "deleted": True}
    assert cn["id"] not in h.view.connectors and cn["id"] not in h.view.vault  # credentials purged


def test_paused_operators_do_not_block_uninstall(h):
    cn = h.install()
    op = h.operator().reply.result
    h.ok("operator.pause", operator_id=op["id"])
    assert h.run("connector.uninstall", connector_id=cn["id"]).reply.ok


def test_duplicate_connector_name_and_tenant_slug(h):
    h.install()
    assert (
        h.install.__self__.run(
            "connector.install",
            connector={
                "id": new_id("cn"),
                "listing": "cn-magento",
                "name": "magento-us-store",
                "kind": "saas",
                "capabilities": [],
                "tools": [],
                "auth": {"type": "api_key"},
                "config": {},
                "status": "connected",
            },
        ).reply.error.code
        == "state_conflict"
    )
    assert h.run("tenant.create", None, slug="acme").reply.error.status == 409
    assert h.run("tenant.create", None, slug="Bad Slug").reply.error.status == 400


def test_decisions_are_deterministic():
    a, b = Harness(), Harness()
    global _seq
    for h in (a, b):
        _seq = itertools.count(1000)
        h.install()
        d = h.operator()
        assert d.reply.ok
    assert a.view.operators.keys() == b.view.operators.keys()


def test_timestamps_come_from_the_command_clock(h):
    h.install()
    op = h.operator().reply.result
    assert op["created_at"].startswith("2026-07-02T15:00:00")
