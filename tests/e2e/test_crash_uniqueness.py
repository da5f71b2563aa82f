"""Ids stay unique in every ledger table and every list after a worker is killed mid-burst
(issue 15 item 7): a replayed event re-derives the same plan, actions and receipts, and the
ledger stores each of them once — checked over the list API, in SQL, and again after a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter

import httpx
import orjson
import pytest

from ledger.store import LedgerStore
from schemas.settings import Settings
from tests.conftest import Stack, client, create_operator, install_sandbox, make_stack, new_tenant
from tests.e2e.test_governed_loop import publish
from tests.e2e.test_kafka_pipeline import _role_pid, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EVENTS = 1200
# Two kills: the first lands while the reason stage replans, the second while actions execute.
KILL_AFTER_CHUNKS = (1, 3)
CHUNKS = 6
PLAYBOOK = [
    {
        "when": "order.created",
        "then": [
            {
                "tool": "order.hold",
                "args": {"order_id": "{{payload.order_id}}"},
                "entity_key": "order:{{payload.order_id}}",
                "idempotency_key": "hold:{{payload.order_id}}",
            },
            {
                "tool": "order.notify",
                "args": {"order_id": "{{payload.order_id}}", "comment": "held for review"},
                "entity_key": "order:{{payload.order_id}}",
                "idempotency_key": "note:{{payload.order_id}}",
            },
        ],
    }
]
GUARDRAILS = [
    {"tool": "order.hold", "decision": "ALLOW"},
    {"tool": "order.notify", "decision": "ALLOW"},
]


def list_all(c: httpx.Client, path: str, **params) -> list[dict]:
    out, cursor = [], None
    while True:
        q = {"limit": 100, **params, **({"cursor": cursor} if cursor else {})}
        r = c.get(path, params=q)
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["data"]
        if not page["has_more"]:
            return out
        cursor = page["next_cursor"]


def repeated(items: list[dict]) -> dict[str, int]:
    return {k: n for k, n in Counter(x["id"] for x in items).items() if n > 1}


def listed(c: httpx.Client, op_id: str, source: str) -> dict[str, list[dict]]:
    return {
        "events": list_all(c, "/v1/events", source=source),
        "plans": list_all(c, "/v1/plans", operator_id=op_id),
        "actions": list_all(c, "/v1/actions", operator_id=op_id),
        "receipts": list_all(c, "/v1/receipts", operator_id=op_id),
    }


def kill_worker(stack: Stack) -> None:
    pid = wait_for(lambda: _role_pid(stack, "worker"))
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _role_pid(stack, "worker") not in (0, pid), timeout=30)


def sql_repeats(stack: Stack, tenant_id: str) -> dict[str, list[tuple]]:
    """Rows stored more than once, straight from ClickHouse (the stack is stopped: one process
    may open a chDB path). Plans are versioned rows, so their identity is (id, version)."""
    store = LedgerStore(Settings(home=stack.home).effective_clickhouse_dsn)
    store.open()
    identity = {"events": "id", "plans": "id, version", "actions": "id", "receipts": "id"}

    async def run() -> dict[str, list[tuple]]:
        return {
            table: await store.query(
                f"SELECT {key}, count() AS n FROM {table} WHERE tenant_id = {{t:String}} "
                f"GROUP BY {key} HAVING n > 1",
                {"t": tenant_id},
            )
            for table, key in identity.items()
        }

    try:
        return asyncio.run(run())
    finally:
        store.close()


def test_worker_kill_9_mid_burst_stores_and_lists_every_id_once(tmp_path):
    stack = make_stack(tmp_path)
    stack.start()
    try:
        tenant = new_tenant(stack, f"crash-{uuid.uuid4().hex[:8]}")
        c = client(stack, tenant.keys["admin"])
        install_sandbox(c)
        op_id = create_operator(
            c,
            "crash-holds",
            ["order.hold", "order.notify"],
            GUARDRAILS,
            PLAYBOOK,
            outcome="Hold every order.",
        )["id"]
        source = f"burst-{uuid.uuid4().hex[:6]}"
        envs = [
            orjson.dumps(
                {
                    "tenant_id": tenant.id,
                    "source": source,
                    "event_type": "order.created",
                    "entity_key": f"order:{50_000 + i}",
                    "payload": {"order_id": str(50_000 + i)},
                }
            )
            for i in range(EVENTS)
        ]
        size = EVENTS // CHUNKS
        for chunk in range(CHUNKS):
            publish(stack, envs[chunk * size : (chunk + 1) * size])
            if chunk in KILL_AFTER_CHUNKS:
                time.sleep(0.5)
                kill_worker(stack)

        # every action ends with a receipt (2 per event), whatever the kills interrupted
        wait_for(
            lambda: (
                len({x["action_id"] for x in list_all(c, "/v1/receipts", operator_id=op_id)})
                >= 2 * EVENTS
            ),
            timeout=300,
            interval=3,
        )
        before = listed(c, op_id, source)
        assert len({x["id"] for x in before["events"]}) == EVENTS
        assert len({x["id"] for x in before["plans"]}) == EVENTS
        assert len({x["id"] for x in before["actions"]}) == 2 * EVENTS
        assert {k: repeated(v) for k, v in before.items()} == {k: {} for k in before}
    finally:
        assert stack.stop() == 0

    assert sql_repeats(stack, tenant.id) == {
        t: [] for t in ("events", "plans", "actions", "receipts")
    }

    stack.start()  # same FIBRIC_HOME: the lists come from ClickHouse alone now
    try:
        after = listed(client(stack, tenant.keys["admin"]), op_id, source)
        assert {k: repeated(v) for k, v in after.items()} == {k: {} for k in after}
        assert {k: len(v) for k, v in after.items()} == {k: len(v) for k, v in before.items()}
    finally:
        assert stack.stop() == 0
