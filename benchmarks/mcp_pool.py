"""MCP tool calls/s through ``ConnectorRuntime``, two scenarios in one run.

``magento`` (read calls to cn-magento against the fake Magento): the pool vs a bare ``mcp``
``ClientSession`` to the same kind of server, same concurrency -> the pool's own overhead.
``sandbox`` (governed side effects, ``order.hold`` with a fresh idempotency key each, against the
real cn-sandbox-orders server over stdio): sequential ``call``, 64 concurrent ``call``s, and
``call_many`` with batches of 1, 16 and 128 -> what batching buys (ratios to sequential); plus
the journal alone (no MCP) at both durability settings (decisions.md §25).

``python -m benchmarks.mcp_pool [--quick] [--scenario magento|sandbox|all]`` prints one line per
scenario (``MCP pool_calls_per_s=…`` / ``MCP_SANDBOX sequential=… …``); ``run(quick)`` and
``run_sandbox(quick)`` return the numbers.
The fake store runs in its own process so it does not share a GIL with the client under test.
Rounds alternate bare/pool and the best round of each counts (noise on a 2-core box is one-sided).
The result also carries the client process's CPU per call on each side: the pool's own cost,
nearly immune to neighbours' load, which wall-clock rates on a shared box are not.
This module measures; it never asserts a threshold (CONVENTIONS.md §9).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from connectors.journal import Finish, IdempotencyJournal, args_fingerprint
from connectors.marketplace import load_catalogue
from connectors.pool import ConnectorRuntime, ConnectorSpec
from connectors.server import ENV_CONFIG, ENV_CREDENTIALS, ENV_LIVEMODE, ENV_STATE_DIR

TOOL = "order.read"
ARGS = {"order_id": "1"}
CONCURRENCY = 16  # the pool's default per-connector in-flight bound
TOKEN = "mg_live_9f4c2e8b1a41"  # the fake's default token
# Many short interleaved rounds: on a shared 2-core box a neighbour's burst hits one round, not
# one side, and the best round of each side is compared.
FULL = {"calls": 1500, "rounds": 8, "warmup": 300}
QUICK = {"calls": 500, "rounds": 4, "warmup": 100}
FAKE_READY_TIMEOUT_S = 15.0
REPO = Path(__file__).resolve().parent.parent


def _start_fake() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "connectors.fakes.magento", "--port", "0", "--token", TOKEN],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + FAKE_READY_TIMEOUT_S
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "ready at" in line:
            return proc, line.rsplit(" ", 1)[-1].strip()
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("fake magento did not start")


async def _drive(call: Any, n: int, concurrency: int) -> tuple[float, float]:
    """Run ``n`` calls with ``concurrency`` workers: (calls/s, client CPU µs per call)."""
    remaining = n
    failures = 0

    async def worker() -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            if not await call():
                failures += 1

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if failures:
        raise RuntimeError(f"{failures} of {n} calls failed")
    return n / elapsed, cpu / n * 1e6


async def _bench(base_url: str, quick: bool) -> dict[str, Any]:
    p = QUICK if quick else FULL
    listing = load_catalogue()["cn-magento"]
    config = {"base_url": base_url}
    creds = {"type": "api_key", "key": TOKEN}
    with tempfile.TemporaryDirectory(prefix="fibric-bench-mcp-") as tmp:
        env = {
            ENV_CONFIG: json.dumps(config),
            ENV_CREDENTIALS: json.dumps(creds),
            ENV_STATE_DIR: str(Path(tmp) / "bare"),
            # test mode, as the pool's spec below: the fake store listens on loopback, which
            # live mode's egress policy refuses (decisions §22)
            ENV_LIVEMODE: "false",
        }
        if "PYTHONPATH" in os.environ:
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "connectors.servers.magento"], env=env, cwd=REPO
        )
        runtime = ConnectorRuntime(state_dir=Path(tmp) / "pool", max_in_flight=CONCURRENCY)
        await runtime.ensure(ConnectorSpec("cn_bench", listing, config, creds))
        try:
            async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
                await s.initialize()

                async def bare() -> bool:
                    r = await s.call_tool(TOOL, ARGS)
                    return not r.is_error

                async def pool() -> bool:
                    return (await runtime.call("cn_bench", TOOL, ARGS)).ok

                await _drive(bare, p["warmup"], CONCURRENCY)
                await _drive(pool, p["warmup"], CONCURRENCY)
                bare_runs: list[tuple[float, float]] = []
                pool_runs: list[tuple[float, float]] = []
                for i in range(p["rounds"]):
                    # alternate which side goes first so drift does not favour one
                    order = ((bare, bare_runs), (pool, pool_runs))
                    for fn, runs in order if i % 2 == 0 else reversed(order):
                        runs.append(await _drive(fn, p["calls"], CONCURRENCY))
        finally:
            await runtime.close()
    bare_rates, pool_rates = [r for r, _ in bare_runs], [r for r, _ in pool_runs]
    bare_best, pool_best = max(bare_rates), max(pool_rates)
    # Client-process CPU per call is far less sensitive to neighbours than wall time: the
    # pool's own cost is the difference (the server side is the same code in both).
    bare_cpu = min(c for _, c in bare_runs)
    pool_cpu = min(c for _, c in pool_runs)
    return {
        "tool": TOOL,
        "concurrency": CONCURRENCY,
        "calls_per_round": p["calls"],
        "rounds": p["rounds"],
        "bare_calls_per_s": round(bare_best, 1),
        "pool_calls_per_s": round(pool_best, 1),
        "bare_rounds": [round(x, 1) for x in bare_rates],
        "pool_rounds": [round(x, 1) for x in pool_rates],
        "overhead_pct": round((bare_best / pool_best - 1.0) * 100.0, 1),
        "bare_client_cpu_us_per_call": round(bare_cpu, 1),
        "pool_client_cpu_us_per_call": round(pool_cpu, 1),
        "pool_added_cpu_us_per_call": round(pool_cpu - bare_cpu, 1),
    }


# ---- sandbox: governed side effects, call vs call_many ----------------------------------------
SANDBOX_TOOL = "order.hold"
# The executor keeps many entities' actions in flight at once; 64 is what its lanes reach in S3.
SANDBOX_CONCURRENCY = 64
SANDBOX_BATCHES = (1, 16, 128)
# Calls per measured round and rounds per mode (best round counts, as above); a mode's rounds
# are interleaved with the other modes' so a neighbour's burst hits one round, not one mode.
SANDBOX_FULL = {"calls": 3072, "rounds": 3, "warmup": 256}
SANDBOX_QUICK = {"calls": 768, "rounds": 2, "warmup": 128}
# The journal alone: batches of these sizes, at each durability setting.
JOURNAL_BATCHES = (1, 128)
JOURNAL_CALLS = {"full": 1024, "quick": 256}


async def _sandbox_modes(runtime: ConnectorRuntime, iid: str) -> dict[str, Any]:
    counter = 0

    def next_call() -> tuple[str, dict, str]:
        nonlocal counter
        counter += 1
        # a few hundred orders, each key fresh: every call is applied (no replays)
        return SANDBOX_TOOL, {"order_id": f"B{counter % 512}"}, f"bench:{os.getpid()}:{counter}"

    async def single() -> bool:
        tool, args, key = next_call()
        return (await runtime.call(iid, tool, args, idempotency_key=key)).ok

    def batched(size: int) -> Any:
        async def go(n: int) -> float:
            failures = 0
            t0 = time.perf_counter()
            left = n
            while left > 0:
                k = min(size, left)
                left -= k
                rs = await runtime.call_many(iid, [next_call() for _ in range(k)])
                failures += sum(not r.ok for r in rs)
            if failures:
                raise RuntimeError(f"{failures} of {n} batched calls failed")
            return n / (time.perf_counter() - t0)

        return go

    async def sequential(n: int) -> float:
        return (await _drive(single, n, 1))[0]

    async def concurrent(n: int) -> float:
        return (await _drive(single, n, SANDBOX_CONCURRENCY))[0]

    modes: dict[str, Any] = {"sequential": sequential, "concurrent_64": concurrent}
    for size in SANDBOX_BATCHES:
        modes[f"call_many_{size}"] = batched(size)
    return modes


async def _bench_sandbox(quick: bool) -> dict[str, Any]:
    p = SANDBOX_QUICK if quick else SANDBOX_FULL
    listing = load_catalogue()["cn-sandbox-orders"]
    with tempfile.TemporaryDirectory(prefix="fibric-bench-sandbox-") as tmp:
        runtime = ConnectorRuntime(state_dir=Path(tmp), max_in_flight=SANDBOX_CONCURRENCY)
        await runtime.ensure(ConnectorSpec("cn_bench_sandbox", listing, {}, {"key": "x"}))
        try:
            modes = await _sandbox_modes(runtime, "cn_bench_sandbox")
            for fn in modes.values():
                await fn(p["warmup"])
            runs: dict[str, list[float]] = {m: [] for m in modes}
            for _ in range(p["rounds"]):
                for name, fn in modes.items():
                    # sequential is slow: a quarter of the calls gives a stable rate
                    n = p["calls"] // 4 if name == "sequential" else p["calls"]
                    runs[name].append(await fn(n))
        finally:
            await runtime.close()
    best = {m: round(max(r), 1) for m, r in runs.items()}
    return {
        "tool": SANDBOX_TOOL,
        "calls_per_round": p["calls"],
        "rounds": p["rounds"],
        "calls_per_s": best,
        "ratio_to_sequential": {m: round(v / best["sequential"], 2) for m, v in best.items()},
        "all_rounds": {m: [round(x, 1) for x in r] for m, r in runs.items()},
        "journal_us_per_call": await _bench_journal(quick),
    }


async def _bench_journal(quick: bool) -> dict[str, float]:
    """Claim + finish of fresh keys through ``IdempotencyJournal`` (no MCP, no upstream), with
    results fsynced (FULL, as before §25) and not (NORMAL, what the journal does now)."""
    n = JOURNAL_CALLS["quick" if quick else "full"]
    out: dict[str, float] = {}
    for results_sync in ("FULL", "NORMAL"):
        for size in JOURNAL_BATCHES:
            with tempfile.TemporaryDirectory(prefix="fibric-bench-journal-") as tmp:
                journal = IdempotencyJournal(Path(tmp))
                # The benchmark's one reach inside: the results connection's durability.
                journal._result_conn.execute(f"PRAGMA synchronous={results_sync}")
                try:
                    t0 = time.perf_counter()
                    for start in range(0, n, size):
                        keys = [f"k{i}" for i in range(start, min(start + size, n))]
                        fp = args_fingerprint(SANDBOX_TOOL, {"order_id": "1"})
                        await journal.claim_many([(k, SANDBOX_TOOL, fp) for k in keys])
                        await journal.finish_many([(k, Finish.DONE, {"ok": True}) for k in keys])
                    us = (time.perf_counter() - t0) / n * 1e6
                finally:
                    journal.close()
            out[f"results_{results_sync.lower()}_batch_{size}"] = round(us, 1)
    return out


def run_sandbox(quick: bool) -> dict[str, Any]:
    return asyncio.run(_bench_sandbox(quick))


def run(quick: bool) -> dict[str, Any]:
    proc, url = _start_fake()
    try:
        return asyncio.run(_bench(url, quick))
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (CI smoke)")
    parser.add_argument("--scenario", choices=("magento", "sandbox", "all"), default="all")
    parser.add_argument(
        "--json", action="store_true", help="also print the full result (rounds, client CPU)"
    )
    args = parser.parse_args(argv)
    if args.scenario in ("magento", "all"):
        r = run(args.quick)
        print(
            f"MCP pool_calls_per_s={r['pool_calls_per_s']} "
            f"bare_calls_per_s={r['bare_calls_per_s']} overhead={r['overhead_pct']}%"
        )
        if args.json:
            print(json.dumps(r))
    if args.scenario in ("sandbox", "all"):
        r = run_sandbox(args.quick)
        rates = " ".join(f"{m}={v}" for m, v in r["calls_per_s"].items())
        ratios = " ".join(f"{m}={v}x" for m, v in r["ratio_to_sequential"].items())
        journal = " ".join(f"{m}={v}us" for m, v in r["journal_us_per_call"].items())
        print(f"MCP_SANDBOX calls_per_s {rates}")
        print(f"MCP_SANDBOX ratio_to_sequential {ratios}")
        print(f"MCP_SANDBOX journal_per_call {journal}")
        if args.json:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
