"""S8 reads: ``GET /v1/receipts`` (filtered, paginated) req/s and p50/p99 with N receipts stored
(N ≥ 1,000,000 in a full run).

**Loading.** Receipts reach ClickHouse the way the executor's do: ``receipt`` ledger records on
``fibric.ledger.v1``, which the api's ledger sink validates, deduplicates and inserts. The
harness produces them itself (making a million of them through governed actions would take an
hour at S3's rate); each is a valid :class:`schemas.plan.Receipt` with a realistic mix of
operators, tools, outcomes and decisions, spread over the last 60 days (two or three monthly
partitions). Loading is done when the ``fibric-ledger`` group's committed offsets grew by N: the
sink commits only after ClickHouse took the insert. The loading rate is reported as
``load_rows_per_s`` (producer and sink together).

**Reads.** ``wrk`` (one thread, on its own core, as in S2) cycles through the queries a console
or an analyst's script issues: the newest page, one outcome, one operator, one entity, a time
window, a decision, and the *second* page of each (a cursor fetched beforehand). Every query is
run once by hand first: it must answer 200 with rows, or the numbers would measure errors.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson

from benchmarks.common import CpuMeter, Progress, log
from benchmarks.kafka import OffsetProbe, producer, quiet_aiokafka
from benchmarks.s2 import _DONE_LUA, _httpx_load, _run_wrk, ensure_wrk, loadgen_cpu
from benchmarks.stack import BenchStack
from schemas.ids import derived_id
from streams.topics import LEDGER, LEDGER_GROUP

OPERATORS = 24
ENTITIES = 200_000
SPREAD_DAYS = 60
# outcome, decision, weight: mostly applied, the rest what a governed loop refuses or replays
MIX = (
    ("applied", "ALLOW", 70),
    ("deduplicated", "DEDUP", 15),
    ("refused", "BLOCK", 8),
    ("pending_approval", "ALERT", 3),
    ("failed", "ALLOW", 3),
    ("vetoed", "ALERT", 1),
)
TOOLS = ("order.hold", "order.notify", "order.release", "ticket.comment")


def _mix_table() -> list[tuple[str, str]]:
    return [(o, d) for o, d, w in MIX for _ in range(w)]


def entity_of(i: int) -> int:
    """The entity of receipt ``i`` (about five receipts per entity in a 1M load)."""
    return (i * 7919) % ENTITIES


def receipt_record(
    i: int, tenant_id: str, now_ms: int, run: str, mix: list[tuple[str, str]]
) -> bytes:
    """One ``receipt`` ledger record, as the executor writes it (a valid Receipt row)."""
    rnd = random.Random(i)
    at_ms = now_ms - rnd.randrange(SPREAD_DAYS * 86_400_000)
    outcome, decision = mix[i % len(mix)]
    op = i % OPERATORS
    ent = entity_of(i)
    tool = TOOLS[i % len(TOOLS)]
    at = datetime.fromtimestamp(at_ms / 1000, UTC)
    applied = outcome == "applied"
    row = {
        "id": derived_id("rc", at_ms, run, i),
        "object": "receipt",
        "tenant_id": tenant_id,
        "livemode": False,
        "operator_id": f"op_bench{op:02d}",
        "operator_name": f"bench-operator-{op:02d}",
        "guardrail_version": 1 + op % 3,
        "event_id": derived_id("evt", at_ms - 40, run, i),
        "plan_id": derived_id("plan", at_ms - 30, run, i),
        "action_id": derived_id("act", at_ms - 30, run, i),
        "correlation_id": derived_id("cor", at_ms - 40, run, i),
        "connector_id": "cn_bench",
        "connector_name": "sandbox-bench",
        "tool": tool,
        "entity_key": f"order:{ent}",
        "idempotency_key": f"{tool}:{ent}:{i % 7}",
        "value": float(10 + i % 990),
        "decision": decision,
        "outcome": outcome,
        "rule": {"tool": tool, "decision": decision, "max_value": 1000},
        "reason": f"{decision.lower()} by guardrail rule for {tool}",
        "result": {"ok": True, "status": "held"} if applied else None,
        "error": {"code": "upstream_error"} if outcome == "failed" else None,
        "approver": None,
        "request_id": None,
        "latency_ms": round(5 + rnd.random() * 40, 3) if applied else None,
        "proposed_at": (at - timedelta(milliseconds=30)).isoformat(),
        "created_at": at.isoformat(),
    }
    return orjson.dumps({"kind": "receipt", "row": row})


async def load(stack: BenchStack, n: int) -> dict[str, Any]:
    """Produce N receipt records and wait until the ledger sink committed them all."""
    quiet_aiokafka()
    probe = OffsetProbe(stack.bootstrap, LEDGER_GROUP)
    await probe.start([LEDGER])
    base = await probe.committed(LEDGER)
    p = producer(stack.bootstrap)
    await p.start()
    now_ms = int(time.time() * 1000)
    run = f"s8{now_ms}"
    mix = _mix_table()
    key = stack.tenant_id.encode()
    cpu = CpuMeter({k: v for k, v in stack.pids.items() if k in ("broker", "api")})
    prog = Progress("S8 load receipts → ClickHouse", n, "receipts")
    cpu.start()
    t0 = time.monotonic()
    try:
        futs = []
        for i in range(n):
            futs.append(
                await p.send(LEDGER, receipt_record(i, stack.tenant_id, now_ms, run, mix), key=key)
            )
            if i % 20_000 == 19_999:
                await asyncio.gather(*futs)
                futs = []
                prog.update(await probe.committed(LEDGER) - base, f"(produced {i + 1})")
        await asyncio.gather(*futs)
        produced = time.monotonic() - t0
        deadline = time.monotonic() + 120 + n / 2_000
        while True:
            done = await probe.committed(LEDGER) - base
            prog.update(done)
            if done >= n:
                break
            stack.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"S8: only {done}/{n} receipts stored")
            await asyncio.sleep(0.2)
        prog.done()
    finally:
        await p.stop()
        await probe.stop()
    elapsed = time.monotonic() - t0
    return {
        "receipts_loaded": n,
        "load_s": round(elapsed, 1),
        "load_rows_per_s": round(n / elapsed),
        "load_produce_s": round(produced, 1),
        "load_cpu_cores": cpu.stop(),
    }


def queries(stack: BenchStack, loaded: int) -> list[str]:
    """The read mix, as paths (first pages and, via cursors, second pages)."""
    now = datetime.now(UTC)
    week = {
        "since": (now - timedelta(days=9)).isoformat().replace("+00:00", "Z"),
        "until": (now - timedelta(days=2)).isoformat().replace("+00:00", "Z"),
    }
    shapes: list[dict[str, Any]] = [
        {"limit": 50},
        {"outcome": "applied", "limit": 50},
        {"outcome": "refused", "limit": 50},
        {"operator_id": "op_bench07", "limit": 50},
        {"decision": "DEDUP", "limit": 25},
        {**week, "limit": 50},
        {**week, "operator_id": "op_bench03", "outcome": "applied", "limit": 20},
        {"entity_key": f"order:{entity_of(4242 % loaded)}", "limit": 20},
    ]
    paths = []
    with httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.secret}"}, timeout=60
    ) as c:
        for q in shapes:
            path = f"/v1/receipts?{urlencode(q)}"
            r = c.get(path)
            if r.status_code != 200 or not r.json()["data"]:
                raise RuntimeError(f"S8: GET {path} answered {r.status_code}: {r.text[:300]}")
            paths.append(path)
            body = r.json()
            if body.get("has_more") and body.get("next_cursor"):
                nxt = f"/v1/receipts?{urlencode({**q, 'cursor': body['next_cursor']})}"
                r2 = c.get(nxt)
                if r2.status_code != 200:
                    raise RuntimeError(f"S8: GET {nxt} answered {r2.status_code}: {r2.text[:300]}")
                paths.append(nxt)
    return paths


def _get_lua(secret: str, paths: list[str]) -> str:
    items = ",\n".join(f"  [==[{p}]==]" for p in paths)
    return (
        f'wrk.headers["Authorization"] = "Bearer {secret}"\n'
        f"local paths = {{\n{items}\n}}\n"
        "local counter = 0\n"
        "request = function()\n"
        "  counter = counter + 1\n"
        '  return wrk.format("GET", paths[(counter % #paths) + 1])\n'
        "end\n" + _DONE_LUA
    )


def _cold_lua(secret: str, entities: int) -> str:
    """Every request a different page (random entity, operator and window): no cache can help,
    so this measures ClickHouse reads themselves."""
    return (
        f'wrk.headers["Authorization"] = "Bearer {secret}"\n'
        "math.randomseed(7)\n"
        "local counter = 0\n"
        "request = function()\n"
        "  counter = counter + 1\n"
        "  if counter % 2 == 0 then\n"
        f'    return wrk.format("GET", "/v1/receipts?limit=20&entity_key=order%3A" .. '
        f"math.random(0, {entities - 1}))\n"
        "  end\n"
        "  local d = math.random(2, 55)\n"
        '  local u = os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() - d * 86400)\n'
        '  local s = os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() - (d + 7) * 86400)\n'
        '  return wrk.format("GET", string.format("/v1/receipts?limit=50&operator_id=op_bench%02d'
        '&since=%s&until=%s", math.random(0, 23), s, u))\n'
        "end\n" + _DONE_LUA
    )


def run_s8(
    stack: BenchStack,
    workdir: Path,
    receipts: int,
    *,
    warmup_s: float,
    duration_s: float,
    conns: int,
) -> dict[str, Any]:
    if not stack.tenant_id:
        stack.create_tenant()
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"S8: loading {receipts} receipts through fibric.ledger.v1 → the ledger sink → ClickHouse")
    result: dict[str, Any] = asyncio.run(load(stack, receipts))
    paths = queries(stack, receipts)
    result["query_shapes"] = len(paths)
    result["connections"] = conns
    wrk = ensure_wrk()
    pin = loadgen_cpu()
    script = workdir / "receipts.lua"
    script.write_text(_get_lua(stack.secret, paths))
    url = stack.base_url
    hdrs = {"Authorization": f"Bearer {stack.secret}"}

    def measure(dur: float, label: str) -> dict[str, Any]:
        stack.check()
        if wrk is not None:
            return _run_wrk(wrk, url + paths[0], script, conns, dur, pin, label)
        return asyncio.run(_httpx_load(url + paths[0], hdrs, None, conns, dur, label))

    # --quick starts S9's second worker during S8: its start-up must not share these windows
    result["waited_for_joining_worker_s"] = stack.wait_quiet()
    measure(warmup_s, "S8 warm-up GET /v1/receipts")
    cpu = CpuMeter({k: v for k, v in stack.pids.items() if k in ("broker", "worker", "api")})
    cpu.start()
    reads = measure(duration_s, "S8 GET /v1/receipts")
    result["cpu_cores"] = cpu.stop()
    result["loadgen"] = "wrk" if wrk else "httpx"
    result.update(reads)
    if wrk is not None:
        # the same reads with the cache out of the picture (every request a different page)
        cold = workdir / "receipts-cold.lua"
        cold.write_text(_cold_lua(stack.secret, min(ENTITIES, receipts)))
        stack.check()
        c = _run_wrk(wrk, url + "/v1/receipts", cold, conns, duration_s, pin, "S8 uncached reads")
        for k in ("req_per_s", "p50_ms", "p99_ms", "non_2xx"):
            result[f"uncached_{k}"] = c[k]
    return result
