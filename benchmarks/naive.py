"""The naive Faust baseline: pre-load N envelopes, start :mod:`benchmarks.naive_worker` and time
it from its first event to its N-th (producer flushed). Faust's start-up and rebalance are not
counted, which flatters the baseline a little."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    PROCS,
    CpuMeter,
    Progress,
    cpu_per_item,
    envelope,
    log,
    message_key,
    spawn_module,
)
from benchmarks.kafka import OffsetProbe, create_topics, producer, quiet_aiokafka
from benchmarks.naive_worker import DLQ, EVENTS, LEDGER

TENANT = "t_BENCHNAIVE000000000000000"
START_TIMEOUT_S = 90.0


async def _preload(bootstrap: str, n: int, partitions: int) -> None:
    quiet_aiokafka()
    await create_topics(bootstrap, [EVENTS, LEDGER, DLQ], partitions)
    p = producer(bootstrap)
    await p.start()
    try:
        prog = Progress("naive pre-load", n, "events")
        futs = []
        for i in range(n):
            futs.append(
                await p.send(EVENTS, envelope(i, TENANT, run="naive"), key=message_key(TENANT, i))
            )
            if i % 5000 == 4999:
                prog.update(i + 1)
        await asyncio.gather(*futs)
        prog.done()
    finally:
        await p.stop()


async def _watch(bootstrap: str, n: int, result: Path, proc: Any, timeout_s: float) -> None:
    probe = OffsetProbe(bootstrap)
    await probe.start([LEDGER])
    try:
        prog = Progress("naive Faust pipeline", n, "events")
        deadline = time.monotonic() + timeout_s
        while not result.exists():  # noqa: ASYNC240 - a stat every 0.25 s
            if proc.poll() is not None:
                raise RuntimeError(f"the naive Faust worker exited ({proc.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the naive Faust worker did not finish {n} events in {timeout_s:.0f}s"
                )
            prog.update(await probe.end(LEDGER))
            await asyncio.sleep(0.25)
        prog.done()
    finally:
        await probe.stop()


def run_naive(
    bootstrap: str, workdir: Path, n: int, partitions: int, broker_pid: int | None = None
) -> dict[str, Any]:
    return finish_naive(start_naive(bootstrap, workdir, n, partitions, broker_pid))


def start_naive(
    bootstrap: str,
    workdir: Path,
    n: int,
    partitions: int,
    broker_pid: int | None = None,
    gate: Path | None = None,
) -> dict[str, Any]:
    """Pre-load N envelopes and start the naive worker; with ``gate`` it joins its group and
    waits, and measures only once the gate file exists (:func:`finish_naive` opens it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    asyncio.run(_preload(bootstrap, n, partitions))
    result = workdir / "naive-result.json"
    log(f"naive baseline: starting a Faust worker over {n} pre-loaded events")
    proc = spawn_module(
        "naive-worker",
        "benchmarks.naive_worker",
        workdir / "naive-worker.log",
        bootstrap=bootstrap,
        n=n,
        datadir=workdir / "faust",
        result=result,
        tenant=TENANT,
        partitions=partitions,
        gate=gate,
        broker_pid=broker_pid or 0,
    )
    return {
        "proc": proc,
        "result": result,
        "n": n,
        "gate": gate,
        "bootstrap": bootstrap,
        "broker_pid": broker_pid,
        "partitions": partitions,
    }


def finish_naive(job: dict[str, Any]) -> dict[str, Any]:
    proc, result, n, bootstrap = job["proc"], job["result"], job["n"], job["bootstrap"]
    broker_pid, partitions = job["broker_pid"], job["partitions"]
    if job["gate"] is not None:
        job["gate"].touch()
    try:
        cpu = CpuMeter({"naive_worker": proc.pid, **({"broker": broker_pid} if broker_pid else {})})
        cpu.start()
        # generous: start-up, rebalance, then ~3-4k events/s on a good day
        asyncio.run(_watch(bootstrap, n, result, proc, START_TIMEOUT_S + n / 500))
        usage = cpu.stop()
    finally:
        PROCS.stop(proc, signal.SIGKILL)  # its result is written; its state is thrown away
    r = json.loads(result.read_text())
    elapsed = max(r["last"] - r["first"], 1e-9)
    return {
        "events": n,
        "events_per_s": round(r["n"] / elapsed),
        "elapsed_s": round(elapsed, 3),
        "deduplicated": r["dedup"],
        "refused": r["refused"],
        "partitions": partitions,
        "cpu_cores_incl_startup": usage,
        "cpu_cores": r.get("cpu_cores"),  # the measured window only (taken by the worker)
        # µs of CPU per event: the naive worker and the broker
        **cpu_per_item(r.get("cpu_s") or {}, r["n"]),
    }
