"""MCP tool calls/s to cn-magento (against the fake Magento): through ``ConnectorRuntime`` vs a
bare ``mcp`` ``ClientSession`` to the same kind of server, in the same run, same concurrency.

``python -m benchmarks.mcp_pool [--quick]`` prints one line
``MCP pool_calls_per_s=… bare_calls_per_s=… overhead=…%``; ``run(quick)`` returns the numbers.
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

from connectors.marketplace import load_catalogue
from connectors.pool import ConnectorRuntime, ConnectorSpec
from connectors.server import ENV_CONFIG, ENV_CREDENTIALS, ENV_STATE_DIR

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
    parser.add_argument(
        "--json", action="store_true", help="also print the full result (rounds, client CPU)"
    )
    args = parser.parse_args(argv)
    r = run(args.quick)
    print(
        f"MCP pool_calls_per_s={r['pool_calls_per_s']} bare_calls_per_s={r['bare_calls_per_s']} "
        f"overhead={r['overhead_pct']}%"
    )
    if args.json:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
