"""S1 Kafka-native ingest: a producer writes N valid ~1 KB envelopes straight to
``fibric.events.v1`` of a fresh ``fibric up``; the worker validates, deduplicates and writes ledger
rows; the api's ledger sink inserts them into chDB and commits its offsets.

Progress is observed from outside, with no API change, through the committed offsets of the
ledger sink's consumer group ``fibric-ledger`` on ``fibric.ledger.v1``: the sink commits only
after ClickHouse took the insert, so committed offsets = rows visible in ClickHouse, exactly.
``events_per_s`` is N over the time from the first produce to the moment all N are committed.

The end offsets of ``fibric.ledger.v1`` (rows the worker has produced) are sampled too, but Tansu
0.6 answers ListOffsets(latest) with the *base offset of the last batch* rather than the high
watermark, so end offsets under-count by up to one batch per partition and may never reach N.
They are therefore used only for slopes: ``worker_steady_events_per_s`` is the ledger topic's
growth rate between 10% and 90% of N (a constant under-count does not change a slope), and the
lag figures are approximate. In --quick mode the count is confirmed by paging ``GET /v1/events``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import CpuMeter, Progress, envelope, log, message_key, rss_bytes
from benchmarks.kafka import OffsetProbe, producer, quiet_aiokafka
from benchmarks.profile import Profiler
from benchmarks.stack import BenchStack
from streams.topics import DLQ, EVENTS, LEDGER, LEDGER_GROUP

SAMPLE_S = 0.1


async def _produce(
    bootstrap: str, values: list[bytes], keys: list[bytes], stamp: dict[str, float]
) -> None:
    p = producer(bootstrap)
    await p.start()
    try:
        futs = []
        stamp["first_send"] = time.monotonic()
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            futs.append(await p.send(EVENTS, v, key=k))
            if i % 1000 == 999:
                await asyncio.sleep(0)  # let the sampler run
        await asyncio.gather(*futs)
        stamp["produced"] = time.monotonic()
    finally:
        await p.stop()


async def _wait_committed(probe: OffsetProbe, target: int, timeout_s: float, label: str) -> None:
    prog = Progress(label, target, "events")
    deadline = time.monotonic() + timeout_s
    while True:
        done = await probe.committed(LEDGER)
        prog.update(done)
        if done >= target:
            prog.done()
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{label}: only {done}/{target} events reached ClickHouse in {timeout_s:.0f}s"
            )
        await asyncio.sleep(SAMPLE_S)


async def _measure(stack: BenchStack, n: int, warmup: int, prof: Profiler | None) -> dict[str, Any]:
    quiet_aiokafka()
    tenant = stack.tenant_id
    probe = OffsetProbe(stack.bootstrap, LEDGER_GROUP)
    await probe.start([EVENTS, LEDGER, DLQ])
    try:
        # warm-up: the worker's first batches, the sink's first inserts, chDB's first parts
        # a fresh run id per call: S9 repeats S1 on one stack, and repeated idempotency keys
        # would (rightly) be dropped as replays
        run = f"s1{time.time_ns():x}"
        w_vals = [envelope(i, tenant, run=f"{run}w", source="bench-warmup") for i in range(warmup)]
        w_keys = [message_key(tenant, i) for i in range(warmup)]
        await _produce(stack.bootstrap, w_vals, w_keys, {})
        await _wait_committed(probe, warmup, 120, "S1 warm-up")
        await asyncio.sleep(1.0)  # let the sink's follow-up fetches settle

        values = [envelope(i, tenant, run=run) for i in range(n)]
        keys = [message_key(tenant, i) for i in range(n)]
        base_events, base_ledger = await probe.end(EVENTS), await probe.end(LEDGER)
        base_committed = await probe.committed(LEDGER)
        roles = {
            k: v for k, v in stack.pids.items() if k in ("broker", "api") or k.startswith("worker")
        }
        # every process of the stack, each with its children (connector subprocesses)
        cpu = CpuMeter(stack.cpu_roles(), tree=True)
        peak_rss: dict[str, int] = {}
        timeline: list[tuple[float, int, int, int]] = []
        stamp: dict[str, float] = {}
        if prof is not None:
            prof.start()
        cpu.start()
        t0 = time.monotonic()
        producer_task = asyncio.create_task(_produce(stack.bootstrap, values, keys, stamp))
        prog = Progress("S1 ingest → ClickHouse", n, "events")
        t_ch = None
        max_lag = 0
        deadline = t0 + 120 + n / 200
        while t_ch is None:
            await asyncio.sleep(SAMPLE_S)
            now = time.monotonic()
            ev = await probe.end(EVENTS) - base_events
            led = await probe.end(LEDGER) - base_ledger
            com = await probe.committed(LEDGER) - base_committed
            timeline.append((round(now - t0, 3), ev, led, com))
            max_lag = max(max_lag, ev - com)
            for role, pid in roles.items():
                rss = rss_bytes(pid)
                if rss is not None:
                    peak_rss[role] = max(peak_rss.get(role, 0), rss)
            if com >= n:
                t_ch = now
            prog.update(com, f"(ledger topic ~{led})")
            if producer_task.done() and producer_task.exception() is not None:
                raise producer_task.exception()  # type: ignore[misc]
            if stack.proc is not None and stack.proc.poll() is not None:
                stack.check()
            if now > deadline:
                raise RuntimeError(f"S1: only {com}/{n} events in ClickHouse after {now - t0:.0f}s")
        prog.done()
        usage = cpu.stop()
        profile = prof.stop() if prof is not None else None
        await producer_task
        dlq = await probe.end(DLQ)
    finally:
        await probe.stop()

    start = stamp.get("first_send", t0)
    e2e = t_ch - start
    produce_s = stamp["produced"] - start
    return {
        "events": n,
        "warmup_events": warmup,
        "events_per_s": round(n / e2e),
        "steady_events_per_s": _steady_rate(timeline, n, 3),
        "worker_steady_events_per_s": _steady_rate(timeline, n, 2),
        "elapsed_s": round(e2e, 3),
        "producer_elapsed_s": round(produce_s, 3),
        "producer_msgs_per_s": round(n / produce_s),
        "max_lag_events": max_lag,
        "dead_letters": dlq,
        "cpu_cores": usage,
        **cpu.per_item(n),  # µs of CPU per event, all processes (harness = the producer)
        "peak_rss_mib": {k: round(v / 2**20) for k, v in peak_rss.items()},
        "timeline": timeline,
        "profile": profile,
    }


def _steady_rate(timeline: list[tuple[float, int, int, int]], n: int, col: int) -> int | None:
    """Growth rate of one timeline column (2 = ledger topic, 3 = in ClickHouse) between the
    samples where it first reached 10% and 90% of N: start-up and tail excluded."""
    lo = next((r for r in timeline if r[col] >= 0.1 * n), None)
    hi = next((r for r in timeline if r[col] >= 0.9 * n), None)
    if lo is None or hi is None or hi[0] <= lo[0]:
        return None
    return round((hi[col] - lo[col]) / (hi[0] - lo[0]))


def _count_via_api(stack: BenchStack, expected: int) -> int:
    """Page ``GET /v1/events?source=bench`` (limit 100, cursors) and count."""
    count = 0
    cursor = None
    with httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.secret}"}, timeout=30
    ) as c:
        prog = Progress("S1 confirm via GET /v1/events", expected, "events")
        while True:
            params: dict[str, Any] = {"limit": 100, "source": "bench"}
            if cursor:
                params["cursor"] = cursor
            r = c.get("/v1/events", params=params)
            r.raise_for_status()
            page = r.json()
            count += len(page["data"])
            prog.update(count)
            if not page.get("has_more"):
                break
            cursor = page["next_cursor"]
        prog.done()
    return count


def run_s1(
    stack: BenchStack, workdir: Path, n: int, warmup: int, *, confirm: bool, profile: bool
) -> dict[str, Any]:
    """Run S1 against a started stack (the caller starts and stops it)."""
    if not stack.tenant_id:
        stack.create_tenant()
    prof = None
    if profile and Profiler.available():
        roles: dict[str, int] = {k: stack.pids[k] for k in ("worker", "api") if k in stack.pids}
        prof = Profiler(workdir / "profiles", roles, "S1")
    result = asyncio.run(_measure(stack, n, warmup, prof))
    result["stack_start_s"] = round(stack.started_s, 1)
    result["partitions"] = stack.partitions
    if confirm:
        result["api_count"] = _count_via_api(stack, n)
        if result["api_count"] != n:
            log(f"S1: GET /v1/events counted {result['api_count']} events, expected {n}")
    return result
