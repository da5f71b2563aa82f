"""The naive Faust pipeline (the peer baseline), run as a child process by
:mod:`benchmarks.naive`: ``python -m benchmarks.naive_worker --bootstrap B --n N --datadir D
--result R --tenant T --partitions P``.

It does the ingest agent's logical work the obvious way, one event at a time: ``async for``
over ``stream.events()``; validate and stamp with the same pure ``agents.ingest.admit``; look the
idempotency key up in a Faust table (RocksDB, changelogged) and write it (one table write per
event); one ``topic.send`` of the ledger record per event (refusals to a DLQ topic). When N
events are handled it flushes the producer and writes the first/last timestamps to R.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import faust
import orjson

from agents.ingest import Admitted, Coordinates, admit
from benchmarks.common import CpuMeter
from schemas.envelope import LedgerRecord

APP_ID = "bench-naive"
EVENTS = "bench.naive.events"
LEDGER = "bench.naive.ledger"
DLQ = "bench.naive.dlq"


def bench_app(app_id: str, args: argparse.Namespace) -> faust.App:
    """The Faust app both naive baselines run: RocksDB tables, and the fibric worker's group
    timings (Tansu holds a first join for half the session)."""
    return faust.App(
        app_id,
        broker=f"kafka://{args.bootstrap}",
        store="rocksdb://",
        datadir=args.datadir,
        topic_partitions=args.partitions,
        topic_disable_leader=True,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.5,
        producer_acks=-1,
    )


async def wait_gate(gate: str) -> None:
    """Hold the first measured record until the harness creates the gate file (if any)."""
    while gate and not Path(gate).exists():  # noqa: ASYNC110, ASYNC240 - a stat every 20 ms
        await asyncio.sleep(0.02)


def cpu_window(broker_pid: int) -> CpuMeter:
    """CPU over the measured window (first to last record), taken here where the window is
    known exactly: this process with its children (the naive executor's connector
    subprocess), the broker, and the harness (the parent; it only watches)."""
    pids = {"naive": os.getpid(), "harness": os.getppid()}
    if broker_pid:
        pids["broker"] = broker_pid
    meter = CpuMeter(pids, tree=True, own_only=("harness",))
    meter.start()
    return meter


def build(args: argparse.Namespace) -> faust.App:
    app = bench_app(APP_ID, args)
    events = app.topic(EVENTS, key_serializer="raw", value_serializer="raw")
    ledger = app.topic(LEDGER, key_serializer="raw", value_serializer="raw")
    dlq = app.topic(DLQ, key_serializer="raw", value_serializer="raw")
    seen = app.Table(
        "dedup", default=None, partitions=args.partitions, key_type=str, value_type=float
    )
    tenant = args.tenant
    result = Path(args.result)
    n_target = args.n
    state: dict[str, Any] = {"n": 0, "dedup": 0, "refused": 0, "first": 0.0}

    def tenant_exists(t: str) -> bool:
        return t == tenant

    @app.agent(events)
    async def naive_ingest(stream: faust.StreamT) -> None:
        async for ev in stream.events():
            msg = ev.message
            if state["n"] == 0:
                await wait_gate(args.gate)
                state["first"] = time.time()
                state["cpu"] = cpu_window(args.broker_pid)
            r = admit(
                msg.value,
                Coordinates(msg.topic, msg.partition, msg.offset, int(msg.timestamp * 1000)),
                tenant_exists,
            )
            if isinstance(r, Admitted):
                if r.dedup_key is not None and seen.get(r.dedup_key) is not None:
                    state["dedup"] += 1
                else:
                    if r.dedup_key is not None:
                        seen[r.dedup_key] = time.time()  # one table write per event
                    rec = LedgerRecord(kind="event", row=r.event.model_dump(mode="json"))
                    await ledger.send(
                        key=r.event.tenant_id.encode(),
                        value=orjson.dumps(rec.model_dump(mode="json")),
                    )
            else:
                state["refused"] += 1
                await dlq.send(key=b"", value=r.dead_letter.model_dump_json().encode())
            state["n"] += 1
            if state["n"] == n_target:
                await app.producer.flush()
                t_last = time.time()
                state["cpu"].stop()
                tmp = result.with_suffix(".tmp")
                tmp.write_text(
                    orjson.dumps(
                        {
                            "first": state["first"],
                            "last": t_last,
                            "n": state["n"],
                            "dedup": state["dedup"],
                            "refused": state["refused"],
                            "pid": os.getpid(),
                            "cpu_s": state["cpu"].seconds,
                            "cpu_cores": state["cpu"].result,
                        }
                    ).decode()
                )
                tmp.rename(result)

    @app.on_after_configured.connect
    def _quiet(app: faust.App, /, *args: object, **kwargs: object) -> None:  # noqa: ARG001
        logging.getLogger("faust").setLevel(logging.WARNING)

    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--datadir", required=True)
    ap.add_argument("--result", required=True)
    ap.add_argument("--tenant", required=True)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--gate", default="")
    ap.add_argument("--broker-pid", type=int, default=0)
    args = ap.parse_args(argv)
    app = build(args)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
