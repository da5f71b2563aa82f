"""The governed loop's acceptance criteria, through the running stack: events → rules model →
plans → executor → cn-magento (a real MCP server) → the fake Magento, and receipts in ClickHouse."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.topics import EVENTS
from tests.conftest import FakeMagento, Stack, client, new_tenant, start_fake_magento
from tests.e2e.test_events_api import assert_error
from tests.e2e.test_kafka_pipeline import _role_pid, wait_for

pytestmark = pytest.mark.e2e

TOKEN = "mg_live_9f4c2e8b1a41"
# actions in the worker-SIGKILL test: bounded for the suite's time, raise it for a longer soak
N_KILL_ACTIONS = int(os.environ.get("FIBRIC_KILL_TEST_ACTIONS", "5000"))
HOLD = {
    "tool": "order.hold",
    "args": {"order_id": "{{payload.order_id}}"},
    "value": "{{payload.total}}",
    "entity_key": "order:{{payload.order_id}}",
    "idempotency_key": "hold:{{payload.order_id}}",
}
NOTIFY = {
    "tool": "order.notify",
    "args": {"order_id": "{{payload.order_id}}", "comment": "{{payload.note}}"},
    "entity_key": "order:{{payload.order_id}}",
    "idempotency_key": "note:{{payload.note_id}}",
}


class Loop:
    def __init__(
        self,
        stack: Stack,
        fake: FakeMagento,
        playbook: list,
        guardrails: list,
        capabilities=("order.read", "order.hold", "order.release", "order.notify"),
    ) -> None:
        self.stack, self.fake = stack, fake
        self.tenant = new_tenant(stack, f"loop-{uuid.uuid4().hex[:8]}")
        self.c = client(stack, self.tenant.keys["admin"])
        r = self.c.post(
            "/v1/connectors",
            json={
                "listing": "cn-magento",
                "name": "store",
                "config": {"base_url": fake.url},
                "auth": {"type": "api_key", "key": TOKEN},
            },
        )
        assert r.status_code == 201, r.text
        self.cn = r.json()
        r = self.c.post(
            "/v1/operators",
            json={
                "name": "order-risk",
                "outcome": "Hold risky orders.",
                "capabilities": list(capabilities),
                "guardrails": guardrails,
                "playbook": playbook,
            },
        )
        assert r.status_code == 201, r.text
        self.op = r.json()

    def post(self, event_type: str, **payload) -> dict:
        r = self.c.post(
            "/v1/events", json={"source": "magento", "event_type": event_type, "payload": payload}
        )
        assert r.status_code == 201, r.text
        return r.json()

    def receipts(self, **params) -> list[dict]:
        out, cursor = [], None
        while True:
            q = {"operator_id": self.op["id"], "limit": 100, **params}
            if cursor:
                q["cursor"] = cursor
            page = self.c.get("/v1/receipts", params=q).json()
            out += page["data"]
            if not page["has_more"]:
                return out
            cursor = page["next_cursor"]

    def wait_receipts(self, n: int, timeout=60.0, **params) -> list[dict]:
        return wait_for(
            lambda: (r := self.receipts(**params)) and len(r) >= n and r,
            timeout=timeout,
            interval=0.3,
        )

    def plan_for(self, event_id: str, until=None) -> dict:
        """The event's plan, once ``until(plan)`` holds (plan rows and the receipts
        that give actions their outcome are separate ledger records: they may land
        in different sink batches)."""

        def read():
            plans = self.c.get("/v1/plans", params={"event_id": event_id}).json()["data"]
            return plans[0] if plans and (until is None or until(plans[0])) else None

        return wait_for(read, timeout=30)


def publish(stack: Stack, values: list[bytes]) -> None:
    async def run() -> None:
        p = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, linger_ms=5, max_batch_size=1 << 20)
        await p.start()
        try:
            futs = [await p.send(EVENTS, v, key=b"flood") for v in values]
            await asyncio.gather(*futs)
        finally:
            await p.stop()

    asyncio.run(run())


@pytest.fixture
def fake():
    f = start_fake_magento()
    yield f
    f.proc.terminate()
    f.proc.wait(10)


def test_the_657_flood_executes_once(stack, fake):
    loop = Loop(
        stack,
        fake,
        [{"when": "order.created", "then": [HOLD]}],
        [{"tool": "order.hold", "decision": "ALLOW", "max_value": 500}],
    )
    fake.add_order(1001)
    env = orjson.dumps(
        {
            "tenant_id": loop.tenant.id,
            "source": "magento",
            "event_type": "order.created",
            "payload": {"order_id": "1001", "total": 129},
        }
    )
    publish(stack, [env] * 657)
    receipts = loop.wait_receipts(657, timeout=90, entity_key="order:1001")
    outcomes = sorted(r["outcome"] for r in receipts)
    assert (
        outcomes.count("applied") == 1
        and outcomes.count("deduplicated") == 656
        and len(receipts) == 657
    )
    assert fake.count("order.hold") == 1  # the connector was invoked exactly once
    dedup = next(r for r in receipts if r["outcome"] == "deduplicated")
    assert dedup["decision"] == "DEDUP" and dedup["result"] is not None


def test_single_flight_per_entity_and_concurrency_across_entities(stack, fake):
    loop = Loop(
        stack,
        fake,
        [{"when": "order.note", "then": [NOTIFY]}],
        [{"tool": "order.notify", "decision": "ALLOW"}],
    )
    for i in range(1, 101):
        fake.add_order(2000 + i)
    fake.mode(delay_s=0.05)
    for i in range(12):
        loop.post("order.note", order_id="2001", note=f"one entity {i}", note_id=f"a{i}")
    loop.wait_receipts(12, timeout=60)
    assert fake.state()["max_in_flight"] == 1  # never two calls on one entity at once
    envs = [
        orjson.dumps(
            {
                "tenant_id": loop.tenant.id,
                "source": "m",
                "event_type": "order.note",
                "payload": {"order_id": str(2000 + i), "note": f"many {i}", "note_id": f"b{i}"},
            }
        )
        for i in range(1, 101)
    ]
    publish(stack, envs)
    loop.wait_receipts(112, timeout=90)
    assert fake.state()["max_in_flight"] > 1  # different entities do overlap
    fake.mode(delay_s=0.0)


def test_policy_outcomes(stack, fake):
    playbook = [
        {"when": "order.created", "then": [HOLD]},
        {
            "when": "order.reopened",
            "then": [
                {**HOLD, "tool": "order.release", "idempotency_key": "rel:{{payload.order_id}}"}
            ],
        },
    ]
    loop = Loop(
        stack, fake, playbook, [{"tool": "order.hold", "decision": "ALLOW", "max_value": 500}]
    )
    over = loop.post("order.created", order_id="1", total=900)
    norule = loop.post("order.reopened", order_id="2", total=10)
    rcs = loop.wait_receipts(2)
    by_event = {r["event_id"]: r for r in rcs}
    assert (by_event[over["id"]]["decision"], by_event[over["id"]]["outcome"]) == (
        "BLOCK",
        "refused",
    )
    assert (
        "exceeds max_value" in by_event[over["id"]]["reason"]
        and by_event[over["id"]]["rule"]["index"] == 0
    )
    assert (by_event[norule["id"]]["decision"], by_event[norule["id"]]["outcome"]) == (
        "BLOCK",
        "refused",
    )
    assert by_event[norule["id"]]["rule"] is None
    assert fake.count("order.hold") == 0 and fake.count("order.unhold") == 0
    plan = loop.plan_for(over["id"])
    assert (plan["status"], plan["status_detail"]) == ("executed", "refused")
    assert plan["actions"][0]["outcome"] == "refused"
    ev = loop.c.get(f"/v1/events/{over['id']}").json()
    assert ev["plan_ids"] == [plan["id"]]  # the chain walks both ways
    rc = loop.c.get(f"/v1/receipts/{by_event[over['id']]['id']}").json()
    assert rc["plan_id"] == plan["id"] and rc["guardrail_version"] == loop.op["version"]


def test_alert_holds_then_approve_veto_expire(stack, fake):
    notify = {
        **NOTIFY,
        "args": {"order_id": "{{payload.order_id}}", "comment": "held"},
        "idempotency_key": "notify-hold:{{payload.order_id}}:{{payload.total}}",
    }
    loop = Loop(
        stack,
        fake,
        [{"when": "order.created", "then": [HOLD, notify]}],
        [
            {"tool": "order.hold", "decision": "ALLOW", "max_value": 500},
            {"tool": "order.notify", "decision": "ALERT"},
        ],
    )
    # approve
    ev = loop.post("order.created", order_id="1", total=100)
    plan = loop.plan_for(ev["id"], until=lambda p: p["actions"][1]["outcome"])
    assert plan["status"] == "proposed" and plan["expires_at"]
    assert [a["outcome"] for a in plan["actions"]] == [None, "pending_approval"]
    assert fake.count("order.hold") == 0  # nothing in a held plan runs
    with client(stack, loop.tenant.keys["read_only"]) as ro:
        assert_error(ro.post(f"/v1/plans/{plan['id']}/approve", json={}), 403, "insufficient_scope")
    ok = loop.c.post(
        f"/v1/plans/{plan['id']}/approve",
        json={"approver": "l.ops@example.com"},
        headers={"Idempotency-Key": f"approve-{plan['id']}"},
    )
    assert ok.status_code == 200, ok.text
    assert (ok.json()["status"], ok.json()["status_detail"]) == ("executed", "approved")
    done = wait_for(
        lambda: (
            [r for r in loop.receipts(plan_id=plan["id"]) if r["outcome"] == "applied"]
            if len([r for r in loop.receipts(plan_id=plan["id"]) if r["outcome"] == "applied"]) == 2
            else None
        )
    )
    assert {r["approver"] for r in done} == {"l.ops@example.com"}
    assert {r["tool"]: r["decision"] for r in done} == {
        "order.hold": "ALLOW",
        "order.notify": "ALERT",
    }
    assert fake.count("order.hold") == 1
    assert_error(loop.c.post(f"/v1/plans/{plan['id']}/approve", json={}), 409, "state_conflict")
    # veto
    ev2 = loop.post("order.created", order_id="2", total=100)
    plan2 = loop.plan_for(ev2["id"])
    assert (
        loop.c.post(f"/v1/plans/{plan2['id']}/veto", json={"approver": "boss"}).json()["status"]
        == "vetoed"
    )
    vetoed = loop.wait_receipts(2, plan_id=plan2["id"], outcome="vetoed")
    assert {r["approver"] for r in vetoed} == {"boss"}
    assert fake.count("order.hold") == 1  # veto runs nothing
    # approving after the rule was removed still blocks
    ev3 = loop.post("order.created", order_id="1", total=100)
    plan3 = loop.plan_for(ev3["id"])
    loop.c.patch(
        f"/v1/operators/{loop.op['id']}",
        json={"guardrails": [{"tool": "order.hold", "decision": "ALLOW", "max_value": 500}]},
    )
    loop.c.post(f"/v1/plans/{plan3['id']}/approve", json={})
    refused = loop.wait_receipts(1, plan_id=plan3["id"], outcome="refused")
    assert refused[0]["tool"] == "order.notify" and refused[0]["decision"] == "BLOCK"
    assert "blocked at approval" in refused[0]["reason"]
    # expiry (FIBRIC_APPROVAL_TTL_S=20 in the test stack)
    loop.c.patch(
        f"/v1/operators/{loop.op['id']}",
        json={
            "guardrails": [
                {"tool": "order.hold", "decision": "ALLOW", "max_value": 500},
                {"tool": "order.notify", "decision": "ALERT"},
            ]
        },
    )
    ev4 = loop.post("order.created", order_id="3", total=50)
    plan4 = loop.plan_for(ev4["id"])
    assert plan4["status"] == "proposed"
    expired = loop.wait_receipts(2, timeout=90, plan_id=plan4["id"], outcome="expired")
    assert {r["tool"] for r in expired} == {"order.hold", "order.notify"}
    assert loop.c.get(f"/v1/plans/{plan4['id']}").json()["status"] == "expired"


def test_undo_is_a_governed_compensation(stack, fake):
    loop = Loop(
        stack,
        fake,
        [{"when": "order.created", "then": [HOLD]}],
        [
            {"tool": "order.hold", "decision": "ALLOW"},
            {"tool": "order.release", "decision": "ALLOW"},
        ],
    )
    ev = loop.post("order.created", order_id="1", total=10)
    applied = loop.wait_receipts(1, outcome="applied")[0]
    assert fake.state()["orders"]["1"]["state"] == "holded"
    r = loop.c.post(f"/v1/actions/{applied['action_id']}/undo", json={})
    assert r.status_code == 202, r.text
    undo = r.json()
    assert undo["undo_of"] == applied["action_id"] and undo["tool"] == "order.release"
    assert undo["idempotency_key"] == "hold:1:undo"
    undone = loop.wait_receipts(1, outcome="undone")[0]
    assert (
        undone["action_id"] == undo["id"] and fake.state()["orders"]["1"]["state"] == "processing"
    )
    again = loop.c.post(f"/v1/actions/{applied['action_id']}/undo", json={}).json()
    assert loop.wait_receipts(1, action_id=again["id"])[0]["outcome"] == "deduplicated"
    assert fake.count("order.unhold") == 1
    assert_error(loop.c.post(f"/v1/actions/{undo['id']}/undo", json={}), 409, "state_conflict")

    # the operator's last_run summarises what it sensed, proposed and applied
    def last_run():
        run = loop.c.get(f"/v1/operators/{loop.op['id']}").json()["last_run"]
        return run if run and run["sensed"] >= 1 and run["proposed"] >= 1 else None

    run = wait_for(last_run, timeout=30)
    assert run["run_id"].startswith("run_") and run["sensed"] >= 1 and run["proposed"] >= 1
    assert ev["id"]


def test_cross_tenant_loop_ids_are_404(stack, fake, globex):
    loop = Loop(
        stack,
        fake,
        [{"when": "order.created", "then": [HOLD]}],
        [{"tool": "order.hold", "decision": "ALLOW"}],
    )
    loop.post("order.created", order_id="1", total=10)
    rc = loop.wait_receipts(1)[0]
    with client(stack, globex.keys["admin"]) as g:
        assert_error(g.get(f"/v1/plans/{rc['plan_id']}"), 404, "not_found")
        assert_error(g.get(f"/v1/actions/{rc['action_id']}"), 404, "not_found")
        assert_error(g.get(f"/v1/receipts/{rc['id']}"), 404, "not_found")
        assert_error(g.post(f"/v1/plans/{rc['plan_id']}/approve", json={}), 404, "not_found")
        assert_error(g.post(f"/v1/actions/{rc['action_id']}/undo", json={}), 404, "not_found")
        assert all(r["tenant_id"] == globex.id for r in g.get("/v1/receipts").json()["data"])


def test_receipt_export_jsonl_and_csv(stack, fake):
    loop = Loop(
        stack,
        fake,
        [{"when": "order.created", "then": [HOLD]}],
        [{"tool": "order.hold", "decision": "ALLOW"}],
    )
    loop.post("order.created", order_id="1", total=10)
    loop.post("order.created", order_id="1", total=10)
    loop.wait_receipts(2)
    for fmt, check in (
        ("jsonl", lambda b: len(b.strip().splitlines()) == 2),
        ("csv", lambda b: len(b.strip().splitlines()) == 3),
        ("parquet", lambda b: b[:4] == b"PAR1"),
    ):
        job = loop.c.post(
            "/v1/receipts/exports", json={"format": fmt, "operator_id": loop.op["id"]}
        ).json()
        assert job["id"].startswith("exp_") and job["object"] == "receipt_export"
        done = wait_for(
            lambda: (
                (j := loop.c.get(f"/v1/exports/{job['id']}").json())["status"] == "complete" and j
            )
        )
        body = loop.c.get(done["url"].replace(stack.base_url, "")).content
        assert check(body), (fmt, body[:200])


@pytest.mark.slow
def test_worker_sigkills_during_thousands_of_actions(stack, fake):
    """At least 5 SIGKILLs of the worker while N_KILL_ACTIONS actions flow (5,000 by default,
    ``FIBRIC_KILL_TEST_ACTIONS`` for more): every action ends with exactly one terminal receipt
    and the store applied each idempotency key at most once."""
    n = N_KILL_ACTIONS
    per_chunk = n // 10
    loop = Loop(
        stack,
        fake,
        [{"when": "order.note", "then": [NOTIFY]}],
        [{"tool": "order.notify", "decision": "ALLOW"}],
    )
    orders = [3000 + i for i in range(200)]
    for o in orders:
        fake.add_order(o)
    envs = [
        orjson.dumps(
            {
                "tenant_id": loop.tenant.id,
                "source": "m",
                "event_type": "order.note",
                "payload": {"order_id": str(orders[i % 200]), "note": f"n{i}", "note_id": f"k{i}"},
            }
        )
        for i in range(n)
    ]
    rng = random.Random(7)
    kills = 0
    for chunk in range(10):
        publish(stack, envs[chunk * per_chunk : (chunk + 1) * per_chunk])
        if chunk % 2 == 0:
            time.sleep(rng.uniform(0.2, 1.5))
            pid = wait_for(lambda: _role_pid(stack, "worker"))
            os.kill(pid, signal.SIGKILL)
            kills += 1
            wait_for(lambda: _role_pid(stack, "worker") not in (0, pid), timeout=30)
    assert kills >= 5
    wait_for(
        lambda: httpx.get(f"{stack.base_url}/readyz", timeout=5).status_code == 200, timeout=120
    )

    def terminal() -> list[dict]:
        job = loop.c.post(
            "/v1/receipts/exports", json={"format": "jsonl", "operator_id": loop.op["id"]}
        ).json()
        done = wait_for(
            lambda: (
                (j := loop.c.get(f"/v1/exports/{job['id']}").json())["status"] == "complete" and j
            )
        )
        body = loop.c.get(done["url"].replace(stack.base_url, "")).content
        return [orjson.loads(line) for line in body.splitlines() if line]

    receipts = wait_for(
        lambda: (r := terminal()) and len({x["action_id"] for x in r}) >= n and r,
        timeout=600,
        interval=5,
    )
    per_action: dict[str, int] = {}
    for r in receipts:
        per_action[r["action_id"]] = per_action.get(r["action_id"], 0) + 1
    assert len(per_action) == n and set(per_action.values()) == {1}
    failed = [(r["reason"], r.get("error")) for r in receipts if r["outcome"] != "applied"]
    assert not failed, f"{len(failed)} not applied, e.g. {failed[:3]}"
    comments = 0
    for o in orders:
        order = httpx.get(f"{fake.url}/__fake__/orders/{o}", timeout=10).json()
        texts = [h["comment"] for h in order["status_histories"]]
        assert len(texts) == len(set(texts)), f"order {o} has a duplicated notification"
        comments += len(texts)
    assert comments == n


def test_resume_with_catch_up_replays_missed_events_oldest_first(stack, fake):
    loop = Loop(
        stack,
        fake,
        [{"when": "order.created", "then": [HOLD]}],
        [{"tool": "order.hold", "decision": "ALLOW"}],
    )
    assert (
        loop.c.post(
            f"/v1/operators/{loop.op['id']}/pause", json={"reason": "maintenance"}
        ).status_code
        == 200
    )
    missed = [loop.post("order.created", order_id=str(i), total=10) for i in (1, 2)]
    time.sleep(2)  # the paused operator proposes nothing
    assert loop.receipts() == [] and fake.count("order.hold") == 0
    resumed = loop.c.post(f"/v1/operators/{loop.op['id']}/resume", json={"catch_up": True}).json()
    assert resumed["catch_up_events"] == 2
    rcs = loop.wait_receipts(2, outcome="applied")
    assert {r["event_id"] for r in rcs} == {e["id"] for e in missed}
    assert fake.count("order.hold") == 2
    # the replay stored no second copy of the events
    listed = loop.c.get("/v1/events", params={"source": "magento", "limit": 100}).json()["data"]
    assert [e["id"] for e in listed].count(missed[0]["id"]) == 1
