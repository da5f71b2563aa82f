"""Ctrl-C during a burst loses no accepted event (issue 15 item 6): `fibric up` stops the api
first (it stops accepting, flushes its producer and drains the ledger sink while the worker
finishes), then the worker, then the memory-only broker. Every POST that got a 201 before the
stop is readable after a restart on the same FIBRIC_HOME, with its plan and its receipt."""

from __future__ import annotations

import asyncio
import signal
import threading
import uuid

import httpx
import pytest

from tests.conftest import client, make_stack, new_tenant
from tests.e2e.test_kafka_pipeline import wait_for

pytestmark = pytest.mark.e2e

BURST = 200
# Requests in flight at once: enough that the stop lands among accepted, in-flight and refused
# requests, few enough not to starve the two cores the stack shares with the test.
CONCURRENCY = 16
# Ctrl-C once this many events have been accepted: the rest of the burst is still in flight.
STOP_AFTER_ACCEPTED = 60


def test_ctrl_c_during_a_burst_keeps_every_accepted_event(tmp_path):
    stack = make_stack(tmp_path)
    stack.start()
    try:
        tenant = new_tenant(stack, f"drain-{uuid.uuid4().hex[:8]}")
        secret = tenant.keys["admin"]
        with client(stack, secret) as c:
            r = c.post(
                "/v1/connectors",
                json={
                    "listing": "cn-sandbox-orders",
                    "name": "sandbox",
                    "auth": {"type": "api_key", "key": "sandbox"},
                },
            )
            assert r.status_code == 201, r.text
            r = c.post(
                "/v1/operators",
                json={
                    "name": "drain-holds",
                    "outcome": "Hold every order.",
                    "capabilities": ["order.hold"],
                    "guardrails": [{"tool": "order.hold", "decision": "ALLOW"}],
                    "playbook": [
                        {
                            "when": "order.created",
                            "then": [
                                {
                                    "tool": "order.hold",
                                    "args": {"order_id": "{{payload.order_id}}"},
                                    "entity_key": "order:{{payload.order_id}}",
                                    "idempotency_key": "hold:{{payload.order_id}}",
                                }
                            ],
                        }
                    ],
                },
            )
            assert r.status_code == 201, r.text
            op_id = r.json()["id"]

        accepted: list[str] = []
        enough = threading.Event()

        async def burst() -> None:
            gate = asyncio.Semaphore(CONCURRENCY)
            async with httpx.AsyncClient(
                base_url=stack.base_url,
                headers={"Authorization": f"Bearer {secret}"},
                timeout=httpx.Timeout(90.0, connect=5.0),
            ) as ac:

                async def one(i: int) -> None:
                    async with gate:
                        try:
                            r = await ac.post(
                                "/v1/events",
                                json={
                                    "source": "drain",
                                    "event_type": "order.created",
                                    "entity_key": f"order:{70_000 + i}",
                                    "payload": {"order_id": str(70_000 + i)},
                                },
                            )
                        except httpx.HTTPError:
                            return  # refused or cut off by the stop: never accepted
                    if r.status_code == 201:
                        accepted.append(r.json()["id"])
                        if len(accepted) >= STOP_AFTER_ACCEPTED:
                            enough.set()

                await asyncio.gather(*(one(i) for i in range(BURST)))

        sender = threading.Thread(target=lambda: asyncio.run(burst()))
        sender.start()
        assert enough.wait(120), f"only {len(accepted)} events accepted"
        assert stack.proc is not None
        stack.proc.send_signal(signal.SIGINT)  # Ctrl-C while the burst is in flight
        sender.join(120)
        assert not sender.is_alive()
        assert stack.proc.wait(120) == 0
    finally:
        stack.stop()
    assert STOP_AFTER_ACCEPTED <= len(accepted), accepted
    assert len(set(accepted)) == len(accepted)

    stack.start()  # a fresh, empty broker: only ClickHouse remembers
    try:
        with client(stack, secret) as c:
            missing, unplanned = [], []
            for ev_id in accepted:
                r = c.get(f"/v1/events/{ev_id}")
                if r.status_code != 200:
                    missing.append((ev_id, r.status_code))
                elif not r.json().get("plan_ids"):
                    unplanned.append(ev_id)
            assert missing == [] and unplanned == []
            # every accepted event's action has its receipt (the actions stage drained too)
            receipts = wait_for(
                lambda: c.get("/v1/receipts", params={"operator_id": op_id, "limit": 100}).json(),
                timeout=30,
            )
            held = set()
            while True:
                held |= {x["event_id"] for x in receipts["data"]}
                if not receipts["has_more"]:
                    break
                receipts = c.get(
                    "/v1/receipts",
                    params={"operator_id": op_id, "limit": 100, "cursor": receipts["next_cursor"]},
                ).json()
            assert set(accepted) <= held
    finally:
        assert stack.stop() == 0
