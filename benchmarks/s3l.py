"""S3L (S3-latency): governed actions against a store that takes 50 ms per write.

The fake Magento (``connectors/fakes/magento.py``, its own process) with ``write_delay_s`` =
50 ms on every POST, ``cn-magento`` installed against it in a tenant of its own (a test-mode
key: the egress policy lets test mode reach loopback), and an operator whose playbook holds an
order on ``order.created`` and notifies its customer on ``order.note``. Every one of N entities
gets both events, back to back: two actions per entity that must run one after the other
(single-flight per entity) while different entities' actions overlap.

Reported: actions/s against ``TARGET_SHARE × IN_FLIGHT_LIMIT / WRITE_LATENCY_S`` (what the
connector could do if it kept its in-flight limit busy), the most requests the store saw at once
(``store_max_in_flight``: lanes keeping many entities in flight) and on one order at once
(``max_in_flight_per_entity``: must be 1, from the store's own per-order gauge), the store's
write counters (one write per applied action: no duplicate side effect), and the CPU of every
process per action (the fake store reported apart: it is the upstream, not our cost).
Nothing here asserts on timing.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.common import PROCS, CpuMeter, busy_rate, free_port, log, wait_quiet
from benchmarks.loop import LedgerWatch, pct, publish
from connectors.fakes.magento import DEFAULT_TOKEN
from connectors.upstream import UPSTREAM_MAX_CONNECTIONS

# Issue 9: "the fake Magento with 50 ms per write".
WRITE_LATENCY_S = 0.05
# What can be in flight to one connector instance at once. The executor groups concurrent
# lanes' calls to an instance into one ``call_many`` (streams/executor.py CallBatcher: one
# request in flight per instance, the next batch formed meanwhile); the pool sends it as
# ``fibric.batch`` requests of up to BATCH_MAX_CALLS, each within one of ``max_in_flight``
# (16) MCP slots (connectors/pool.py); cn-magento runs a batch's calls concurrently,
# ``batch_concurrency`` = UPSTREAM_MAX_CONNECTIONS at a time, over one HTTP pool of
# UPSTREAM_MAX_CONNECTIONS connections (connectors/servers/magento.py, upstream.py). The
# tightest of these is the HTTP pool: 32 writes to the store at once.
IN_FLIGHT_LIMIT = UPSTREAM_MAX_CONNECTIONS
IN_FLIGHT_LIMIT_SOURCE = (
    "connectors.upstream.UPSTREAM_MAX_CONNECTIONS (cn-magento's HTTP pool and its "
    "batch_concurrency; one call_many per instance in flight, pool max_in_flight=16 "
    "requests of up to 256 calls)"
)
# Issue 9's bar: actions/s >= 0.8 x (in-flight limit / latency).
TARGET_SHARE = 0.8
# The fake seeds orders 1-5; the benchmark's orders start here.
FIRST_ORDER_ID = 1000
STORE_READY_S = 20.0

HOLD = {
    "tool": "order.hold",
    "args": {"order_id": "{{payload.order_id}}"},
    "value": "{{payload.total}}",
    "entity_key": "order:{{payload.ekey}}",
    "idempotency_key": "hold:{{payload.ekey}}",
}
NOTE = {
    "tool": "order.notify",
    "args": {"order_id": "{{payload.order_id}}", "comment": "{{payload.note}}"},
    "entity_key": "order:{{payload.ekey}}",
    "idempotency_key": "note:{{payload.ekey}}",
}


class FakeStore:
    """``python -m connectors.fakes.magento`` as a registered child process."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FakeStore:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self.proc = PROCS.spawn(
                "fake-magento",
                [sys.executable, "-m", "connectors.fakes.magento", "--port", str(self.port)],
                stdout=logf,
                stderr=logf,
                grace_s=5.0,
            )
        deadline = time.monotonic() + STORE_READY_S
        while True:
            try:
                httpx.get(f"{self.url}/__fake__/state", timeout=2).raise_for_status()
                return self
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the fake Magento did not start; see {self.log_path}"
                    ) from None
                time.sleep(0.1)

    def state(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/__fake__/state", timeout=10).json()

    def stop(self) -> None:
        if self.proc is not None:
            PROCS.stop(self.proc)
            self.proc = None


def _settings(stack: Any) -> Any:
    if getattr(stack, "settings", None) is not None:  # an existing deployment
        return stack.settings
    from schemas.settings import Settings

    return Settings(
        home=stack.home,
        kafka_bootstrap=stack.bootstrap,
        partitions=stack.partitions,
        api_port=stack.api_port,
    )


def _setup(stack: Any, store: FakeStore, run: str) -> tuple[str, str, str]:
    """A tenant of its own, cn-magento against the fake, the operator. (tenant, key, cn id)"""
    from benchmarks.stack import make_tenant

    tenant_id, secret = make_tenant(_settings(stack), f"bench-s3l-{run}")
    with httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {secret}"}, timeout=60
    ) as c:
        cn = c.post(
            "/v1/connectors",
            json={
                "listing": "cn-magento",
                "name": f"magento-s3l-{run}",
                "auth": {"type": "api_key", "key": DEFAULT_TOKEN},
                "config": {"base_url": store.url},
            },
        )
        if cn.status_code >= 300:
            raise RuntimeError(f"S3L: installing cn-magento answered {cn.status_code}: {cn.text}")
        op = c.post(
            "/v1/operators",
            json={
                "name": f"s3l-{run}",
                "outcome": "Benchmark governed actions against a 50 ms store.",
                "capabilities": ["order.hold", "order.notify"],
                "guardrails": [
                    {"tool": "order.hold", "decision": "ALLOW"},
                    {"tool": "order.notify", "decision": "ALLOW"},
                ],
                "playbook": [
                    {"when": "order.created", "then": [HOLD]},
                    {"when": "order.note", "then": [NOTE]},
                ],
            },
        )
        if op.status_code >= 300:
            raise RuntimeError(f"S3L: creating the operator answered {op.status_code}: {op.text}")
    return tenant_id, secret, cn.json()["id"]


def _event(tenant_id: str, event_type: str, ekey: str, order_id: int) -> tuple[bytes, bytes]:
    payload = {"order_id": str(order_id), "ekey": ekey, "total": 10, "note": f"note {ekey}"}
    value = orjson.dumps(
        {
            "tenant_id": tenant_id,
            "source": "bench",
            "event_type": event_type,
            "entity_key": f"order:{ekey}",
            "payload": payload,
        }
    )
    return f"{tenant_id}:order:{ekey}".encode(), value


async def _warm(stack: Any, tenant_id: str, run: str) -> float:
    """One hold until its receipt comes back: the worker has the operator and connector,
    cn-magento's subprocess is started. Seconds it took."""
    t0 = time.monotonic()
    watch = LedgerWatch(stack.bootstrap, f"order:{run}-w")
    await watch.start()
    try:
        for attempt in range(30):
            ekey = f"{run}-w{attempt}"
            await publish(stack.bootstrap, [_event(tenant_id, "order.created", ekey, 1)])
            if await watch.wait(1, 3.0):
                return round(time.monotonic() - t0, 1)
        raise RuntimeError("S3L: no receipt for the warm-up action in 90 s")
    finally:
        await watch.stop()


async def _measure(
    stack: Any, store: FakeStore, values: list[tuple[bytes, bytes]], run: str, expect: int
) -> dict[str, Any]:
    watch = LedgerWatch(stack.bootstrap, f"order:{run}-e")
    await watch.start()
    assert store.proc is not None
    meter = CpuMeter({**stack.cpu_roles(), "store": store.proc.pid}, tree=True)
    roles = {k: v for k, v in meter.pids.items() if k not in ("harness", "store")}
    try:
        idle = await asyncio.to_thread(busy_rate, roles)
        meter.start()
        t0 = await publish(stack.bootstrap, values)
        done = await watch.wait(expect, 60.0 + expect / 20)
        elapsed = (watch.last_at or time.time()) - t0
        settle = await asyncio.to_thread(wait_quiet, roles, idle)
        cores = meter.stop()
        return {
            "receipts": watch.count,
            "complete": done,
            "elapsed_s": round(elapsed, 3),
            "actions_per_s": watch.count / elapsed if elapsed > 0 else None,
            "outcomes": dict(watch.outcomes),
            "p50_ms": pct(watch.latencies_ms, 0.5),
            "p99_ms": pct(watch.latencies_ms, 0.99),
            "cpu_cores": cores,
            "cpu_settle_s": settle,
            "stack_idle_cores": round(idle, 3),
            **meter.per_item(watch.count, apart=("store",)),
        }
    finally:
        await watch.stop()


def run_s3l(stack: Any, entities: int) -> dict[str, Any]:
    run = uuid.uuid4().hex[:6]
    store = FakeStore(Path(getattr(stack, "home", ".")) / "logs" / f"fake-magento-{run}.log")
    store.start()
    cn_id = secret = None
    try:
        with httpx.Client(base_url=store.url, timeout=10) as c:
            for i in range(entities):
                c.post(
                    "/__fake__/orders", json={"entity_id": FIRST_ORDER_ID + i}
                ).raise_for_status()
        tenant_id, secret, cn_id = _setup(stack, store, run)
        warm_s = asyncio.run(_warm(stack, tenant_id, run))
        httpx.post(
            f"{store.url}/__fake__/mode", json={"write_delay_s": WRITE_LATENCY_S}, timeout=10
        ).raise_for_status()
        before = store.state()["counters"]
        values = []
        for i in range(entities):
            ekey = f"{run}-e{i}"
            values.append(_event(tenant_id, "order.created", ekey, FIRST_ORDER_ID + i))
            values.append(_event(tenant_id, "order.note", ekey, FIRST_ORDER_ID + i))
        actions = len(values)
        log(
            f"S3L: {actions} governed actions over {entities} entities, "
            f"{WRITE_LATENCY_S * 1000:.0f} ms per store write"
        )
        r = asyncio.run(_measure(stack, store, values, run, actions))
        st = store.state()
        writes = {
            k: st["counters"].get(k, 0) - before.get(k, 0) for k in ("order.hold", "order.comment")
        }
        ceiling = IN_FLIGHT_LIMIT / WRITE_LATENCY_S
        per_s = r["actions_per_s"]
        applied = r["outcomes"].get("applied", 0)
        return {
            **r,
            "actions": actions,
            "entities": entities,
            "write_latency_ms": WRITE_LATENCY_S * 1000,
            "in_flight_limit": IN_FLIGHT_LIMIT,
            "in_flight_limit_source": IN_FLIGHT_LIMIT_SOURCE,
            "limit_actions_per_s": ceiling,
            "target_actions_per_s": TARGET_SHARE * ceiling,
            "limit_ratio": round(per_s / ceiling, 3) if per_s else None,
            "store_max_in_flight": st["max_in_flight"],
            "max_in_flight_per_entity": st["max_in_flight_per_order"],
            "store_writes": sum(writes.values()),
            "store_writes_by_route": writes,
            # a side effect the store saw more often than it was receipted as applied
            "duplicate_writes": max(0, sum(writes.values()) - applied),
            "warmup_s": warm_s,
        }
    finally:
        store.stop()
        if cn_id is not None and secret is not None:
            # the worker stops its cn-magento subprocess: later scenarios see no extra process
            try:
                httpx.delete(
                    f"{stack.base_url}/v1/connectors/{cn_id}",
                    headers={"Authorization": f"Bearer {secret}"},
                    timeout=30,
                )
            except httpx.HTTPError as exc:
                log(f"S3L: could not remove its connector: {exc}")
