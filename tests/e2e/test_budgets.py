"""Budgets through the running stack (issue 12 item 6, decisions §36): a tenant policy caps
order.hold at CAP per hour across every entity; a burst of orders, with the worker SIGKILLed
mid-batch, applies exactly CAP holds and refuses the rest with ``budget_exhausted`` (one outcome
per action), and still refuses after a restart that lost both the worker's disk and the broker;
the dry-run evaluate shows the budget left before and after; bad budgets are 400s
and another tenant reads 404."""

from __future__ import annotations

import shutil
import time
import uuid
from collections import Counter

import orjson
import pytest

from tests.conftest import client, create_operator, install_sandbox, make_stack, new_tenant
from tests.e2e.test_crash_uniqueness import GUARDRAILS, PLAYBOOK, kill_worker, list_all
from tests.e2e.test_events_api import assert_error
from tests.e2e.test_exec_state_durability import ready
from tests.e2e.test_governed_loop import publish
from tests.e2e.test_kafka_pipeline import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CAP = 7
EVENTS = 40
MORE = 6
CAPS = {
    "name": "blast-radius",
    "budgets": [{"tool": "order.hold", "window_seconds": 3600, "max_count": CAP}],
}


def evaluate_hold(c, op_id: str) -> dict:
    r = c.post(
        "/v1/guardrails/evaluate",
        json={"operator": op_id, "action": {"tool": "order.hold", "entity_key": "order:1"}},
    )
    assert r.status_code == 200, r.text
    return r.json()["actions"][0]


def test_budget_caps_a_burst_across_entities_and_a_worker_kill(tmp_path):
    stack = make_stack(tmp_path)
    stack.start()
    try:
        tenant = new_tenant(stack, f"bdg-{uuid.uuid4().hex[:8]}")
        other = new_tenant(stack, f"bdg-{uuid.uuid4().hex[:8]}")
        c = client(stack, tenant.keys["admin"])
        install_sandbox(c)
        op_id = create_operator(
            c, "crash-holds", ["order.hold", "order.notify"], GUARDRAILS, PLAYBOOK
        )["id"]

        for bad in (
            {"tool": "order.hold", "window_seconds": 3600},  # no cap
            {"tool": "order.hold", "window_seconds": 5, "max_count": 1},  # window too short
            {"tool": "order.hold", "window_seconds": 60, "max_count": 1, "per": ["nope"]},
            {"window_seconds": 60, "max_count": 1, "on_exhausted": "ALLOW"},
        ):
            resp = c.post("/v1/guardrails", json={"name": "bad-budget", "budgets": [bad]})
            assert_error(resp, 400, "invalid_parameter")
        assert_error(c.post("/v1/guardrails", json={"name": "empty"}), 400, "invalid_parameter")
        r = c.post("/v1/guardrails", json=CAPS)
        assert r.status_code == 201, r.text
        g = r.json()
        assert g["rules"] == [] and g["budgets"] == [
            {
                "tool": "order.hold",
                "per": [],
                "window_seconds": 3600,
                "max_count": CAP,
                "max_value": None,
                "on_exhausted": "BLOCK",
            }
        ]

        # the dry run: the operator's own rule allows the hold; the budget is untouched
        before = evaluate_hold(c, op_id)
        assert before["decision"] == "ALLOW"
        (b,) = before["budget"]
        assert (b["guardrail_id"], b["index"], b["spent_count"], b["count_left"]) == (
            g["id"],
            0,
            0,
            CAP,
        )
        assert b["exhausted"] is False

        # a burst of orders on as many entities (so on every partition); the worker is killed
        # while the first half executes, and its replacement replays what was in flight
        source = f"bdg-{uuid.uuid4().hex[:6]}"
        envs = [
            orjson.dumps(
                {
                    "tenant_id": tenant.id,
                    "source": source,
                    "event_type": "order.created",
                    "entity_key": f"order:{80_000 + i}",
                    "payload": {"order_id": str(80_000 + i)},
                }
            )
            for i in range(EVENTS)
        ]
        publish(stack, envs[: EVENTS // 2])
        time.sleep(0.5)
        kill_worker(stack)
        publish(stack, envs[EVENTS // 2 :])

        def all_settled() -> list[dict] | None:
            rs = list_all(c, "/v1/receipts", operator_id=op_id)
            return rs if len({x["action_id"] for x in rs}) >= 2 * EVENTS else None

        rs = wait_for(all_settled, timeout=240, interval=2)
        holds = [x for x in rs if x["tool"] == "order.hold"]
        by_action: dict[str, set[str]] = {}
        for x in holds:
            by_action.setdefault(x["action_id"], set()).add(x["outcome"])
        assert len(by_action) == EVENTS
        assert all(len(v) == 1 for v in by_action.values()), by_action  # one outcome each
        outcomes = Counter(next(iter(v)) for v in by_action.values())
        assert outcomes == {"applied": CAP, "refused": EVENTS - CAP}, outcomes
        refused = {x["action_id"]: x for x in holds if x["outcome"] == "refused"}.values()
        for x in refused:
            assert x["verdict"]["decision"] == "BLOCK"
            assert x["reason"].startswith("budget_exhausted"), x["reason"]
            assert x["rule"]["rule"] == "budget_exhausted"
            assert (x["rule"]["guardrail_id"], x["rule"]["budget"]) == (g["id"], 0)
        # the notifications are not counted by the budget: every one applied
        notes = {x["action_id"]: x["outcome"] for x in rs if x["tool"] == "order.notify"}
        assert set(notes.values()) == {"applied"} and len(notes) == EVENTS

        # the dry run now sees the budget spent (from the ledger) and says BLOCK
        after = wait_for(lambda: (lambda a: a if a["budget"][0]["spent_count"] == CAP else None)(
            evaluate_hold(c, op_id)
        ))
        assert after["decision"] == "BLOCK" and after["rule"]["rule"] == "budget_exhausted"
        assert after["budget"][0]["count_left"] == 0 and after["budget"][0]["exhausted"] is True

        # Disk and broker both lost (decisions §49): a restart of `fibric up` (fresh memory-only
        # broker: empty changelog) with the worker's exec state deleted. The api rebuilds the
        # budget's spend from the stored receipts, so the next orders' holds are all refused.
        assert stack.stop() == 0
        wiped = [d for d in (stack.home / "workers").glob("*/execstate") if d.is_dir()]
        assert wiped, "no worker exec state on disk"
        for d in wiped:
            shutil.rmtree(d)
        stack.start()
        ready(stack)
        c = client(stack, tenant.keys["admin"])
        more = [
            orjson.dumps(
                {
                    "tenant_id": tenant.id,
                    "source": source,
                    "event_type": "order.created",
                    "entity_key": f"order:{90_000 + i}",
                    "payload": {"order_id": str(90_000 + i)},
                }
            )
            for i in range(MORE)
        ]
        publish(stack, more)

        def more_settled() -> list[dict] | None:
            rs = list_all(c, "/v1/receipts", operator_id=op_id)
            return rs if len({x["action_id"] for x in rs}) >= 2 * (EVENTS + MORE) else None

        rs = wait_for(more_settled, timeout=240, interval=2)
        new_holds = {
            x["action_id"]: x
            for x in rs
            if x["tool"] == "order.hold" and x["entity_key"] >= "order:90000"
        }
        assert len(new_holds) == MORE
        assert {x["outcome"] for x in new_holds.values()} == {"refused"}, new_holds
        assert all(x["reason"].startswith("budget_exhausted") for x in new_holds.values())
        old_holds = [x for x in rs if x["tool"] == "order.hold" and x["outcome"] == "applied"]
        assert len({x["action_id"] for x in old_holds}) == CAP

        # tenancy: another tenant neither sees the policy nor evaluates this operator
        o = client(stack, other.keys["admin"])
        assert_error(o.get(f"/v1/guardrails/{g['id']}"), 404, "not_found")
        assert_error(
            o.post(
                "/v1/guardrails/evaluate",
                json={"operator": op_id, "action": {"tool": "order.hold"}},
            ),
            404,
            "not_found",
        )
    finally:
        assert stack.stop() == 0
