"""At most once survives every kind of restart (issue: the executor's seen-set used to live on the
memory-only embedded broker). A key applied once is disposed ``deduplicated`` — the connector is
not called — after: Ctrl-C and restart of ``fibric up``; ``kill -9`` of the worker; ``kill -9`` of
the embedded broker (``fibric up`` restarts it); and a partition moving to another worker.

The decisive check is the receipt's outcome: our connectors also journal idempotency keys, so
the store would not show a second hold even if the executor called again, but a third-party MCP
server would — ``deduplicated`` proves the executor itself remembered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import Stack, client, create_operator, install_sandbox, make_stack, new_tenant
from tests.e2e.test_kafka_pipeline import _role_pid, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HOLD = {
    "tool": "order.hold",
    "args": {"order_id": "{{payload.order_id}}"},
    "entity_key": "order:{{payload.order_id}}",
    "idempotency_key": "hold:{{payload.order_id}}",
}


class Sandbox:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.tenant = new_tenant(stack, f"dur-{uuid.uuid4().hex[:8]}")
        self.c = client(stack, self.tenant.keys["admin"])
        install_sandbox(self.c)
        self.op = create_operator(
            self.c,
            "holder",
            ["order.hold"],
            [{"tool": "order.hold", "decision": "ALLOW"}],
            [{"when": "order.created", "then": [HOLD]}],
            outcome="Hold every new order once.",
        )

    def reconnect(self) -> None:
        self.c = client(self.stack, self.tenant.keys["admin"])

    def order(self, order_id: str) -> str:
        r = self.c.post(
            "/v1/events",
            json={
                "source": "shop",
                "event_type": "order.created",
                "payload": {"order_id": order_id},
            },
        )
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def outcome_of(self, event_id: str, timeout: float = 90) -> str:
        def terminal():
            page = self.c.get(
                "/v1/receipts", params={"operator_id": self.op["id"], "limit": 100}
            ).json()
            mine = [r for r in page.get("data", []) if r["event_id"] == event_id]
            return mine[0]["outcome"] if mine else None

        return wait_for(terminal, timeout=timeout, interval=0.3)

    def applied_and_dedup(self, order_id: str) -> tuple[int, int]:
        page = self.c.get(
            "/v1/receipts", params={"operator_id": self.op["id"], "limit": 100}
        ).json()
        mine = [r for r in page["data"] if r["idempotency_key"] == f"hold:{order_id}"]
        return (
            sum(r["outcome"] == "applied" for r in mine),
            sum(r["outcome"] == "deduplicated" for r in mine),
        )


def broker_pid(stack: Stack) -> int:
    """The embedded broker child of ``fibric up`` (``<tansu> broker --cluster-id …``)."""
    for pid in stack.pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(cmd) > 2 and cmd[1] == b"broker" and b"--cluster-id" in cmd:
            return pid
    return 0


def ready(stack: Stack, timeout: float = 120) -> None:
    wait_for(
        lambda: httpx.get(f"{stack.base_url}/readyz", timeout=5).status_code == 200,
        timeout=timeout,
        interval=0.5,
    )


@pytest.fixture(scope="module")
def durable(tmp_path_factory):
    s = make_stack(tmp_path_factory.mktemp("durable"))
    s.start()
    yield s
    s.stop()


def test_dedup_survives_ctrl_c_and_restart(durable):
    sb = Sandbox(durable)
    assert sb.outcome_of(sb.order("SO-1")) == "applied"
    assert durable.stop() == 0
    durable.start()
    ready(durable)
    sb.reconnect()
    assert sb.outcome_of(sb.order("SO-1")) == "deduplicated"
    assert sb.applied_and_dedup("SO-1") == (1, 1)


def test_dedup_survives_kill_9_of_the_worker(durable):
    sb = Sandbox(durable)
    assert sb.outcome_of(sb.order("SO-2")) == "applied"
    pid = _role_pid(durable, "worker")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _role_pid(durable, "worker") not in (0, pid), timeout=60)
    ready(durable)
    assert sb.outcome_of(sb.order("SO-2")) == "deduplicated"
    assert sb.applied_and_dedup("SO-2") == (1, 1)


def test_dedup_survives_kill_9_of_the_broker(durable):
    sb = Sandbox(durable)
    assert sb.outcome_of(sb.order("SO-3")) == "applied"
    pid = broker_pid(durable)
    assert pid, "the embedded broker runs as a child of fibric up"
    os.kill(pid, signal.SIGKILL)
    # fibric up restarts the broker, recreates topics, restores config; worker and api reconnect
    wait_for(lambda: broker_pid(durable) not in (0, pid), timeout=60)
    ready(durable, timeout=180)
    sb.reconnect()
    event_id = wait_for(lambda: _try_order(sb, "SO-3"), timeout=60, interval=1)
    assert sb.outcome_of(event_id, timeout=120) == "deduplicated"
    assert sb.applied_and_dedup("SO-3") == (1, 1)


def _try_order(sb: Sandbox, order_id: str) -> str | None:
    r = sb.c.post(
        "/v1/events",
        json={"source": "shop", "event_type": "order.created", "payload": {"order_id": order_id}},
    )
    return r.json()["id"] if r.status_code == 201 else None


def test_dedup_survives_a_partition_moving_to_another_worker(durable):
    """A second worker joins, the first is killed for good: the survivor owns every partition
    and knows the keys the first one applied (from the exec-state changelog)."""
    sb = Sandbox(durable)
    orders = [f"SO-M{i}" for i in range(8)]
    for o in orders:
        assert sb.outcome_of(sb.order(o)) == "applied"
    first = _role_pid(durable, "worker")  # before the second worker exists
    env = dict(durable.env, FIBRIC_WORKER_ID=f"second-{uuid.uuid4().hex[:6]}")
    log = open(durable.home / "second-worker.log", "ab")
    second = subprocess.Popen(
        [sys.executable, "-m", "fibric", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        # wait until both workers hold partitions, then stop the first one's supervisor restarts
        # by pausing it (SIGSTOP): its partitions move to the second worker after the session
        wait_for(
            lambda: len(httpx.get(f"{durable.base_url}/readyz", timeout=5).json()["workers"]) >= 2,
            timeout=90,
            interval=0.5,
        )
        os.kill(first, signal.SIGSTOP)
        try:
            wait_for(
                lambda: [
                    w
                    for w in httpx.get(f"{durable.base_url}/readyz", timeout=5).json()["workers"]
                    if w["worker_id"] == env["FIBRIC_WORKER_ID"] and len(w["partitions"]) == 4
                ],
                timeout=90,
                interval=0.5,
            )
            for o in orders:
                assert sb.outcome_of(sb.order(o)) == "deduplicated", o
                assert sb.applied_and_dedup(o) == (1, 1)
        finally:
            os.kill(first, signal.SIGCONT)
    finally:
        second.terminate()
        second.wait(30)
        log.close()
