"""The naive executor (S3's peer baseline): a Faust agent that disposes actions the obvious way,
one at a time — ``async for`` over the stream, look the idempotency key up in a Faust table and
write it (one table write per action), call the connector tool over MCP (the same in-repo
``cn-sandbox-orders`` server through the same pool), and ``topic.send`` one receipt per action.
No lanes, no batching. Run by :func:`run_naive_executor` as a child process:
``python -m benchmarks.naive_executor --bootstrap B --n N --datadir D --result R``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaProducer

from benchmarks.common import PROCS, cpu_per_item, log, spawn_module
from benchmarks.kafka import create_topics
from benchmarks.naive_worker import bench_app, cpu_window, wait_gate
from connectors.marketplace import load_catalogue
from connectors.pool import ConnectorRuntime, ConnectorSpec

APP_ID = "bench-naive-exec"
ACTIONS = "bench.naive.actions"
RECEIPTS = "bench.naive.receipts"
START_TIMEOUT_S = 90.0


def action(i: int, run: str) -> dict[str, Any]:
    return {
        "id": f"act_{run}_{i}",
        "tool": "order.notify",
        "entity_key": f"order:{i % 512}",
        "idempotency_key": f"{run}-{i}",
        "args": {"order_id": f"{run}-{i % 512}", "comment": f"n{i}"},
    }


def build(args: argparse.Namespace) -> faust.App:
    app = bench_app(APP_ID, args)
    actions = app.topic(ACTIONS, key_serializer="raw", value_serializer="raw")
    receipts = app.topic(RECEIPTS, key_serializer="raw", value_serializer="raw")
    seen = app.Table("seen", default=None, partitions=args.partitions, key_type=str, value_type=str)
    state: dict[str, Any] = {"n": 0, "first": 0.0, "runtime": None}
    result = Path(args.result)

    @app.agent(actions)
    async def naive_execute(stream: faust.StreamT) -> None:
        async for ev in stream.events():
            if state["runtime"] is None:
                rt = ConnectorRuntime(state_dir=Path(args.datadir) / "connectors")
                await rt.ensure(
                    ConnectorSpec(
                        instance_id="cn_naive",
                        listing=load_catalogue()["cn-sandbox-orders"],
                        config={},
                        credentials={"type": "api_key", "key": "k"},
                    )
                )
                state["runtime"] = rt
            if state["n"] == 0:
                await wait_gate(args.gate)
                state["first"] = time.time()
                state["cpu"] = cpu_window(args.broker_pid)
            a = orjson.loads(ev.message.value)
            if seen.get(a["idempotency_key"]) is not None:
                outcome = "deduplicated"
            else:
                seen[a["idempotency_key"]] = a["id"]  # one table write per action
                res = await state["runtime"].call(
                    "cn_naive", a["tool"], a["args"], idempotency_key=a["idempotency_key"]
                )
                outcome = "applied" if res.ok else "failed"
            rc = {"action_id": a["id"], "outcome": outcome, "at": datetime.now(UTC).isoformat()}
            await receipts.send(key=a["entity_key"].encode(), value=orjson.dumps(rc))
            state["n"] += 1
            if state["n"] == args.n:
                await app.producer.flush()
                last = time.time()
                state["cpu"].stop()
                tmp = result.with_suffix(".tmp")
                tmp.write_text(
                    json.dumps(
                        {
                            "first": state["first"],
                            "last": last,
                            "n": state["n"],
                            "cpu_s": state["cpu"].seconds,
                            "cpu_cores": state["cpu"].result,
                        }
                    )
                )
                tmp.rename(result)

    @app.on_after_configured.connect
    def _quiet(app: faust.App, /, *args: object, **kwargs: object) -> None:  # noqa: ARG001
        for name in ("faust", "aiokafka", "mode"):
            logging.getLogger(name).setLevel(logging.WARNING)

    return app


async def _preload(bootstrap: str, n: int, partitions: int, run: str) -> None:
    await create_topics(bootstrap, [ACTIONS, RECEIPTS], partitions)
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 20)
    await p.start()
    try:
        futs = [
            await p.send(ACTIONS, orjson.dumps(action(i, run)), key=f"order:{i % 512}".encode())
            for i in range(n)
        ]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


def run_naive_executor(
    bootstrap: str, workdir: Path, n: int, partitions: int, broker_pid: int | None = None
) -> dict[str, Any]:
    return finish_naive_executor(
        start_naive_executor(bootstrap, workdir, n, partitions, broker_pid=broker_pid)
    )


def start_naive_executor(
    bootstrap: str,
    workdir: Path,
    n: int,
    partitions: int,
    gate: Path | None = None,
    broker_pid: int | None = None,
) -> dict[str, Any]:
    """Pre-load N actions and start the naive executor; with ``gate``, it joins its group and
    waits, and measures only once the gate file exists (:func:`finish_naive_executor` opens it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    run = f"{os.getpid()}{int(time.time())}"
    asyncio.run(_preload(bootstrap, n, partitions, run))
    result = workdir / "naive-exec-result.json"
    log(f"naive executor: one action at a time over {n} pre-loaded actions")
    proc = spawn_module(
        "naive-executor",
        "benchmarks.naive_executor",
        workdir / "naive-exec.log",
        bootstrap=bootstrap,
        n=n,
        datadir=workdir / "faust-exec",
        result=result,
        partitions=partitions,
        gate=gate,
        broker_pid=broker_pid or 0,
    )
    return {"proc": proc, "result": result, "n": n, "workdir": workdir, "gate": gate}


def finish_naive_executor(job: dict[str, Any]) -> dict[str, Any]:
    proc, result, n, workdir = job["proc"], job["result"], job["n"], job["workdir"]
    if job["gate"] is not None:
        job["gate"].touch()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S + n / 50
        while not result.exists() and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"naive executor exited {proc.returncode}; see {workdir / 'naive-exec.log'}"
                )
            time.sleep(0.2)
    finally:
        PROCS.stop(proc, signal.SIGKILL)  # its result is written; its state is thrown away
    r = json.loads(result.read_text())
    elapsed = max(r["last"] - r["first"], 1e-9)
    return {
        "actions": n,
        "actions_per_s": round(r["n"] / elapsed),
        "elapsed_s": round(elapsed, 3),
        "cpu_cores": r.get("cpu_cores"),
        # µs of CPU per action: the executor with its connector subprocess, and the broker
        **cpu_per_item(r.get("cpu_s") or {}, r["n"]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--datadir", required=True)
    ap.add_argument("--result", required=True)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--gate", default="")
    ap.add_argument("--broker-pid", type=int, default=0)
    args = ap.parse_args(argv)
    faust.Worker(build(args), loglevel="WARNING", quiet=True).execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
