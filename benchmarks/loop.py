"""Governed-loop scenarios against a fresh ``fibric up``: S3 (governed actions with a side effect),
S4 (refusals and replays), S5 (the 657 flood), S6 (event → receipt latency at half load), S7
(recovery after ``kill -9`` of the worker), and the control-plane write round trip.

Actions run through the real pipeline: events → rules model → plan → executor → the in-repo
``cn-sandbox-orders`` MCP server (stdio). Progress is read from ``fibric.ledger.v1`` (receipt
records); latencies are receipt time minus event time (the event id embeds its ingest time).
Nothing here asserts on timing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
import uuid
from collections import Counter
from datetime import datetime
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from benchmarks.common import CpuMeter, busy_rate, log, wait_quiet
from schemas.ids import id_time
from streams.kafka import stop_consuming
from streams.topics import EVENTS, LEDGER

NOTE = {
    "tool": "order.notify",
    "args": {"order_id": "{{payload.order_id}}", "comment": "{{payload.note}}"},
    "entity_key": "order:{{payload.order_id}}",
    "idempotency_key": "note:{{payload.note_id}}",
}
HOLD = {
    "tool": "order.hold",
    "args": {"order_id": "{{payload.order_id}}"},
    "value": "{{payload.total}}",
    "entity_key": "order:{{payload.order_id}}",
    "idempotency_key": "hold:{{payload.order_id}}",
}
RELEASE = {**HOLD, "tool": "order.release", "idempotency_key": "release:{{payload.order_id}}"}
PLAYBOOK = [
    {"when": "order.note", "then": [NOTE]},
    {"when": "order.created", "then": [HOLD]},
    {"when": "order.reopened", "then": [RELEASE]},
]
GUARDRAILS = [
    {"tool": "order.notify", "decision": "ALLOW"},
    {"tool": "order.hold", "decision": "ALLOW"},
]
_RECEIPT = b'{"kind":"receipt"'


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


class LedgerWatch:
    """Counts receipt records produced from now on and keeps event → receipt latencies."""

    def __init__(self, bootstrap: str, prefix: str = "") -> None:
        self.bootstrap = bootstrap
        # only receipts of this run's entities count (earlier scenarios' stragglers do not)
        self.prefix = prefix
        self.outcomes: Counter[str] = Counter()
        self.latencies_ms: list[float] = []
        self.first_at: float | None = None
        self.last_at: float | None = None
        # S7: per worker (the ``fibric-worker`` header), its first receipt produced after `mark`
        self.mark: float | None = None
        self.first_since_mark: dict[str, float] = {}
        self.by_worker: Counter[str] = Counter()
        self.keys: set[str] = set()  # idempotency keys receipted (S7 names what never came)
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    @property
    def count(self) -> int:
        return sum(self.outcomes.values())

    async def start(self) -> None:
        c = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20
        )
        await c.start()
        tps = [TopicPartition(LEDGER, p) for p in sorted(c.partitions_for_topic(LEDGER) or {0})]
        c.assign(tps)
        await c.seek_to_end(*tps)
        for tp in tps:
            await c.position(tp)
        self._consumer = c
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=50, max_records=20000)
            now = time.time()
            for msgs in batch.values():
                for m in msgs:
                    if not m.value.startswith(_RECEIPT):
                        continue
                    row = orjson.loads(m.value)["row"]
                    if not (row.get("entity_key") or "").startswith(self.prefix):
                        continue
                    self.outcomes[row["outcome"]] += 1
                    if row.get("idempotency_key"):
                        self.keys.add(row["idempotency_key"])
                    worker = next(
                        (v.decode() for k, v in (m.headers or ()) if k == "fibric-worker"), "?"
                    )
                    self.by_worker[worker] += 1
                    made = m.timestamp / 1000  # the producing worker's clock (CreateTime)
                    if self.mark is not None and made > self.mark:
                        self.first_since_mark.setdefault(worker, made)
                    self.first_at = self.first_at or now
                    self.last_at = now
                    ev = id_time(row["event_id"]) if row.get("event_id") else None
                    if ev is not None:
                        created = datetime.fromisoformat(row["created_at"].replace("Z", "+00:00"))
                        self.latencies_ms.append((created - ev).total_seconds() * 1000)

    async def wait(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count < n and time.monotonic() < deadline:  # noqa: ASYNC110 - a poll, by design
            await asyncio.sleep(0.05)
        return self.count >= n

    async def stop(self) -> None:
        await stop_consuming(self._task, self._consumer)


class RssSampler:
    """Peak RSS of the stack's worker and api while a scenario runs (S10)."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack

    def during(self, fn: Any) -> dict[str, Any]:
        import threading

        from benchmarks.common import rss_bytes

        pids = self.stack._role_pids()  # noqa: SLF001
        peak: dict[str, int] = {}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                for role in ("worker", "api"):
                    if role in pids and (v := rss_bytes(pids[role])) is not None:
                        peak[role] = max(peak.get(role, 0), v)
                stop.wait(0.2)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            result = fn()
        finally:
            stop.set()
            t.join()
        result["worker_rss_mib"] = round(peak.get("worker", 0) / 2**20) or None
        result["api_rss_mib"] = round(peak.get("api", 0) / 2**20) or None
        return result


def setup(stack: Any, name: str = "bench-loop") -> dict[str, Any]:
    """Install the sandbox connector and an operator with the benchmark playbook."""
    with httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.secret}"}, timeout=60
    ) as c:
        cn = c.post(
            "/v1/connectors",
            json={
                "listing": "cn-sandbox-orders",
                "name": f"sandbox-{name}",
                "auth": {"type": "api_key", "key": "sandbox"},
            },
        )
        cn.raise_for_status()
        op = c.post(
            "/v1/operators",
            json={
                "name": name,
                "outcome": "Benchmark the governed loop.",
                "capabilities": ["order.notify", "order.hold", "order.release"],
                "guardrails": GUARDRAILS,
                "playbook": PLAYBOOK,
            },
        )
        op.raise_for_status()
        return {"connector": cn.json()["id"], "operator": op.json()["id"]}


def ensure_setup(stack: Any) -> None:
    """:func:`setup` once per stack (scenarios sharing a stack share its operator)."""
    if getattr(stack, "loop_operator", None) is None:
        ids = setup(stack)
        stack.loop_operator, stack.loop_connector = ids["operator"], ids["connector"]


def envelope(tenant_id: str, event_type: str, **payload: Any) -> bytes:
    return orjson.dumps(
        {
            "tenant_id": tenant_id,
            "source": "bench",
            "event_type": event_type,
            "entity_key": f"order:{payload.get('order_id')}",
            "payload": payload,
        }
    )


async def publish(
    bootstrap: str, values: list[tuple[bytes, bytes]], rate: float | None = None
) -> float:
    """Send (key, value) pairs, as fast as possible or paced to ``rate``/s; returns the start time."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 20, acks=1)
    await p.start()
    t0 = time.time()
    try:
        futs = []
        for i, (k, v) in enumerate(values):
            futs.append(await p.send(EVENTS, v, key=k))
            if rate and i % 50 == 49:
                ahead = t0 + (i + 1) / rate - time.time()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await asyncio.gather(*futs)
    finally:
        await p.stop()
    return t0


async def _flow(
    stack: Any,
    values: list[tuple[bytes, bytes]],
    expect: int,
    timeout: float,
    rate: float | None = None,
    cpu: bool = False,
) -> dict[str, Any]:
    """Publish ``values`` and wait for ``expect`` receipts. With ``cpu``, the CPU of every
    process of the stack (connector subprocesses with the worker) from the first publish until
    the stack is quiet after the last receipt: ``cpu_us_per_item`` per receipt."""
    watch = LedgerWatch(stack.bootstrap, run_prefix(values))
    await watch.start()
    meter = CpuMeter(stack.cpu_roles(), tree=True) if cpu else None
    extra: dict[str, Any] = {}
    try:
        if meter is not None:
            stack_pids = {k: v for k, v in meter.pids.items() if k != "harness"}
            idle = await asyncio.to_thread(busy_rate, stack_pids)
            extra["stack_idle_cores"] = round(idle, 3)
            meter.start()
        t0 = await publish(stack.bootstrap, values, rate)
        done = await watch.wait(expect, timeout)
        elapsed = (watch.last_at or time.time()) - t0
        if meter is not None:
            extra["cpu_settle_s"] = await asyncio.to_thread(wait_quiet, stack_pids, idle)
            extra["cpu_cores"] = meter.stop()
            extra.update(meter.per_item(watch.count))
        return {
            **extra,
            "receipts": watch.count,
            "complete": done,
            "elapsed_s": elapsed,
            "per_s": watch.count / elapsed if elapsed > 0 else None,
            "outcomes": dict(watch.outcomes),
            "p50_ms": pct(watch.latencies_ms, 0.5),
            "p95_ms": pct(watch.latencies_ms, 0.95),
            "p99_ms": pct(watch.latencies_ms, 0.99),
        }
    finally:
        await watch.stop()


def run_prefix(values: list[tuple[bytes, bytes]]) -> str:
    """The entity-key prefix every event of one scenario run shares (``order:<run>-``)."""
    return "order:" + orjson.loads(values[0][1])["payload"]["order_id"].split("-")[0] + "-"


def notes(tenant_id: str, n: int, entities: int) -> list[tuple[bytes, bytes]]:
    """N ``order.note`` events over ``entities`` orders, each proposing one ALLOWed
    ``order.notify`` with its own idempotency key (a fresh run id per call)."""
    run = uuid.uuid4().hex[:6]
    return [
        (
            f"{tenant_id}:order:{i % entities}".encode(),
            envelope(
                tenant_id,
                "order.note",
                order_id=f"{run}-{i % entities}",
                note=f"n{i}",
                note_id=f"{run}-{i}",
            ),
        )
        for i in range(n)
    ]


def run_s3(stack: Any, actions: int, entities: int = 512) -> dict[str, Any]:
    """Governed actions with a side effect: every event proposes one ALLOWed order.notify."""
    values = notes(stack.tenant_id, actions, entities)
    log(f"S3: {actions} governed actions over {entities} entities")
    r = asyncio.run(_flow(stack, values, actions, timeout=max(120.0, actions / 50), cpu=True))
    return {"actions_per_s": r["per_s"], **r}


def run_s4(stack: Any, dispositions: int) -> dict[str, Any]:
    """Refusals and replays: half BLOCK (no rule for order.release), half DEDUP (one hold key)."""
    run = uuid.uuid4().hex[:6]
    values = []
    for i in range(dispositions):
        if i % 2:
            values.append(
                (
                    f"{stack.tenant_id}:order:{run}-b{i % 256}".encode(),
                    envelope(
                        stack.tenant_id, "order.reopened", order_id=f"{run}-b{i % 256}", total=1
                    ),
                )
            )
        else:
            values.append(
                (
                    f"{stack.tenant_id}:order:{run}-dedup".encode(),
                    envelope(stack.tenant_id, "order.created", order_id=f"{run}-dedup", total=1),
                )
            )
    log(f"S4: {dispositions} BLOCK/DEDUP dispositions")
    r = asyncio.run(
        _flow(stack, values, dispositions, timeout=max(120.0, dispositions / 200), cpu=True)
    )
    calls = r["outcomes"].get("applied", 0) + r["outcomes"].get("failed", 0)
    return {"dispositions_per_s": r["per_s"], "connector_calls": calls, **r}


def run_s5(stack: Any, n: int = 657) -> dict[str, Any]:
    """The 657 flood: identical proposals (one idempotency key) as fast as possible."""
    run = uuid.uuid4().hex[:6]
    value = envelope(stack.tenant_id, "order.created", order_id=f"{run}-flood", total=10)
    key = f"{stack.tenant_id}:order:{run}-flood".encode()
    log(f"S5: the {n} flood")
    r = asyncio.run(_flow(stack, [(key, value)] * n, n, timeout=120.0))
    calls = r["outcomes"].get("applied", 0) + r["outcomes"].get("failed", 0)
    return {"dispose_s": r["elapsed_s"], "connector_calls": calls, **r}


def run_s6(stack: Any, rate: float, seconds: float, entities: int = 512) -> dict[str, Any]:
    """Event → receipt latency with actions arriving at ``rate``/s (half of S3's peak)."""
    n = max(50, int(rate * seconds))
    values = notes(stack.tenant_id, n, entities)
    log(f"S6: latency at {rate:.0f} actions/s for {seconds:.0f}s")
    r = asyncio.run(_flow(stack, values, n, timeout=seconds + 120, rate=rate))
    return {"rate": rate, **r}


def run_s7(
    stack: Any, rate: float = 200.0, before_s: float = 3.0, after_s: float = 20.0
) -> dict[str, Any]:
    """``kill -9`` worker-1 under a steady stream (``fibric up`` restarts it, as a supervisor
    would): time from the kill to the first receipt that worker produces again, and to caught up
    (every event sent so far has its receipt). Receipts name their worker in a Kafka header,
    so this holds with any number of workers; with two, the other keeps serving its partitions
    meanwhile (``other_workers_receipts_during``)."""
    n = int(rate * (before_s + after_s))
    values = notes(stack.tenant_id, n, 256)
    workers = stack.worker_pids

    async def go() -> dict[str, Any]:
        watch = LedgerWatch(stack.bootstrap, run_prefix(values))
        await watch.start()
        sender = asyncio.create_task(publish(stack.bootstrap, values, rate))
        await asyncio.sleep(before_s)
        victim = workers.get("worker")
        assert victim, "no worker to kill"
        killed = time.time()
        watch.mark = killed
        before = Counter(watch.by_worker)
        os.kill(victim, signal.SIGKILL)
        log(f"S7: worker-1 killed ({len(workers)} worker(s) running)")
        first = None
        others_during = 0
        while time.time() - killed < 120:
            await asyncio.sleep(0.05)
            if first is None and "worker-1" in watch.first_since_mark:
                first = watch.first_since_mark["worker-1"] - killed
                others_during = sum(
                    c - before.get(w, 0) for w, c in watch.by_worker.items() if w != "worker-1"
                )
            if sender.done() and watch.count >= n:
                break
        await sender
        caught = (watch.last_at or time.time()) - killed if watch.count >= n else None
        await watch.stop()
        run = orjson.loads(values[0][1])["payload"]["note_id"].rsplit("-", 1)[0]
        missing = [i for i in range(n) if f"note:{run}-{i}" not in watch.keys]
        return {
            "missing_receipts": len(missing),
            "missing_first": missing[:20],
            "first_event_s": first,
            "caught_up_s": caught,
            "workers": len(workers),
            "other_workers_receipts_during": others_during,
            "receipts": watch.count,
            "sent": n,
            "outcomes": dict(watch.outcomes),
        }

    return asyncio.run(go())


def config_rtt(stack: Any, n: int) -> dict[str, Any]:
    """Control-plane round trip: create an operator (through the control agent) until readable."""
    lat = []
    with httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.secret}"}, timeout=60
    ) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            r = c.post(
                "/v1/operators",
                json={
                    "name": f"rtt-{uuid.uuid4().hex[:10]}",
                    "outcome": "x",
                    "capabilities": ["order.notify"],
                    "status": "draft",
                },
            )
            r.raise_for_status()
            g = c.get(f"/v1/operators/{r.json()['id']}")
            g.raise_for_status()
            lat.append((time.perf_counter() - t0) * 1000)
    return {
        "writes": n,
        "p50_ms": statistics.median(lat),
        "p99_ms": pct(lat, 0.99),
        "max_ms": max(lat),
    }
