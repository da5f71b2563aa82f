"""Tenant guardrail policies through the running stack (issue 12 parts 1–2): a tenant BLOCK
refuses an operator's allowed action with a receipt citing the policy and its version; PATCH makes
a new version; evaluate answers without a receipt; other tenants read 404; the policy survives a
restart of ``fibric up`` (config restored from ClickHouse)."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import client, create_operator, install_sandbox, make_stack, new_tenant
from tests.e2e.test_crash_uniqueness import GUARDRAILS, PLAYBOOK
from tests.e2e.test_events_api import assert_error
from tests.e2e.test_kafka_pipeline import wait_for

pytestmark = pytest.mark.e2e

BLOCK_HOLDS = {
    "name": "no-holds",
    "description": "holds need the new process",
    "rules": [{"tool": "order.hold", "operator": "crash-*", "decision": "BLOCK"}],
}


def receipts_of(c, op_id: str) -> list[dict]:
    r = c.get("/v1/receipts", params={"operator_id": op_id, "limit": 100})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def order(c, order_id: str) -> None:
    r = c.post(
        "/v1/events",
        json={
            "source": "shop",
            "event_type": "order.created",
            "entity_key": f"order:{order_id}",
            "payload": {"order_id": order_id},
        },
    )
    assert r.status_code == 201, r.text


def settled(c, op_id: str, n: int) -> list[dict]:
    return wait_for(lambda: (lambda rs: rs if len(rs) >= n else None)(receipts_of(c, op_id)))


def test_tenant_guardrails_block_version_evaluate_tenancy_and_survive_a_restart(tmp_path):
    stack = make_stack(tmp_path)
    stack.start()
    try:
        tenant = new_tenant(stack, f"grd-{uuid.uuid4().hex[:8]}")
        other = new_tenant(stack, f"grd-{uuid.uuid4().hex[:8]}")
        c = client(stack, tenant.keys["admin"])
        install_sandbox(c)
        op = create_operator(c, "crash-holds", ["order.hold", "order.notify"], GUARDRAILS, PLAYBOOK)

        r = c.post("/v1/guardrails", json=BLOCK_HOLDS)
        assert r.status_code == 201, r.text
        g = r.json()
        assert g["id"].startswith("grd_") and g["object"] == "guardrail_policy"
        assert (g["version"], g["status"], g["name"]) == (1, "active", "no-holds")
        assert g["rules"] == BLOCK_HOLDS["rules"] and "tenant_id" not in g
        assert_error(c.post("/v1/guardrails", json=BLOCK_HOLDS), 409, "state_conflict")
        bad = {**BLOCK_HOLDS, "name": "bad-glob", "rules": [{"tool": "a..b", "decision": "BLOCK"}]}
        assert_error(c.post("/v1/guardrails", json=bad), 400, "invalid_parameter")

        # the dry run: hold BLOCKed by the tenant policy, notify ALLOWed by the operator
        ev = c.post(
            "/v1/guardrails/evaluate",
            json={
                "operator": "crash-holds",
                "plan": {"actions": [{"tool": "order.hold"}, {"tool": "order.notify"}]},
                "envelope": {"event_type": "order.created"},
            },
        )
        assert ev.status_code == 200, ev.text
        e = ev.json()
        assert e["object"] == "guardrail_evaluation" and e["decision"] == "BLOCK"
        assert e["policies"] == [{"id": g["id"], "name": "no-holds", "version": 1}]
        hold, note = e["actions"]
        assert hold["decision"] == "BLOCK" and hold["budget"] is None
        assert (hold["rule"]["guardrail_id"], hold["rule"]["guardrail_version"]) == (g["id"], 1)
        assert note["decision"] == "ALLOW" and note["rule"]["tool"] == "order.notify"
        one = c.post(
            "/v1/guardrails/evaluate",
            json={"operator": op["id"], "action": {"tool": "order.release"}},
        ).json()
        assert one["actions"][0]["decision"] == "BLOCK"  # outside the operator's capabilities

        # the real loop: the hold is refused with a receipt citing the policy and version 1
        order(c, "71001")
        rs = settled(c, op["id"], 2)
        by_tool = {x["tool"]: x for x in rs}
        assert by_tool["order.hold"]["outcome"] == "refused"
        assert by_tool["order.hold"]["verdict"]["decision"] == "BLOCK"
        assert by_tool["order.hold"]["rule"]["guardrail_id"] == g["id"]
        assert by_tool["order.hold"]["rule"]["guardrail_version"] == 1
        assert by_tool["order.notify"]["outcome"] == "applied"
        # evaluate wrote nothing: only the event's two actions have receipts
        assert len(rs) == 2

        # PATCH: a new version, judged from the next plan on
        r = c.patch(
            f"/v1/guardrails/{g['id']}",
            json={"rules": [{"decision": "ALERT", "tool": "order.hold"}]},
        )
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 2
        vs = c.get(f"/v1/guardrails/{g['id']}/versions").json()["data"]
        assert [v["version"] for v in vs] == [2, 1]
        assert vs[1]["rules"] == BLOCK_HOLDS["rules"]
        order(c, "71002")
        rs = settled(c, op["id"], 3)
        held = [x for x in rs if x["outcome"] == "pending_approval"]
        assert len(held) == 1 and held[0]["rule"]["guardrail_version"] == 2

        # tenancy: another tenant's key reads 404 everywhere; a read-only key cannot write
        o = client(stack, other.keys["admin"])
        for resp in (
            o.get(f"/v1/guardrails/{g['id']}"),
            o.get(f"/v1/guardrails/{g['id']}/versions"),
            o.patch(f"/v1/guardrails/{g['id']}", json={"status": "disabled"}),
            o.delete(f"/v1/guardrails/{g['id']}"),
            o.post(
                "/v1/guardrails/evaluate",
                json={"operator": op["id"], "action": {"tool": "order.hold"}},
            ),
        ):
            assert_error(resp, 404, "not_found")
        assert o.get("/v1/guardrails").json()["data"] == []
        ro = client(stack, tenant.keys["read_only"])
        assert ro.get(f"/v1/guardrails/{g['id']}").status_code == 200
        assert_error(
            ro.post("/v1/guardrails", json={**BLOCK_HOLDS, "name": "x-y-z"}),
            403,
            "insufficient_scope",
        )
        # back to BLOCK before the restart (version 3)
        r = c.patch(f"/v1/guardrails/{g['id']}", json={"rules": BLOCK_HOLDS["rules"]})
        assert r.json()["version"] == 3
    finally:
        assert stack.stop() == 0

    stack.start()  # same FIBRIC_HOME, fresh embedded broker: config comes back from ClickHouse
    try:
        c = client(stack, tenant.keys["admin"])
        got = c.get(f"/v1/guardrails/{g['id']}").json()
        assert (got["version"], got["rules"]) == (3, BLOCK_HOLDS["rules"])
        vs = c.get(f"/v1/guardrails/{g['id']}/versions").json()["data"]
        assert [v["version"] for v in vs] == [3, 2, 1]
        order(c, "71003")  # the restored worker judges with it too
        rs = wait_for(
            lambda: [
                x
                for x in receipts_of(c, op["id"])
                if x["entity_key"] == "order:71003" and x["tool"] == "order.hold"
            ],
            timeout=120,
        )
        assert rs[0]["outcome"] == "refused" and rs[0]["rule"]["guardrail_version"] == 3
        gone = c.delete(f"/v1/guardrails/{g['id']}")
        assert gone.status_code == 200 and gone.json()["deleted"] is True
        assert_error(c.get(f"/v1/guardrails/{g['id']}"), 404, "not_found")
    finally:
        assert stack.stop() == 0
