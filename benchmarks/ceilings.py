"""Reference ceilings, measured in the same run as the scenarios:

- raw aiokafka produce msgs/s (one ``await producer.send`` per message, all acks awaited);
- raw aiokafka consume msgs/s (``getmany`` over the pre-loaded messages);
- raw aiokafka consume→produce msgs/s: one process consuming the pre-loaded topic and producing
  every message to a second topic (what the ingest worker's Kafka part is, with no work);
- ClickHouse bulk insert rows/s through clickhouse-connect on a chDB DSN in a temp dir, events
  row shape (run in a child process: only one process may open a chDB path, and the harness
  must stay free of chDB's threads).

All messages are the same ~1 KB event envelope the scenarios send.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.common import PROCS, CpuMeter, Progress, envelope, log, message_key
from benchmarks.kafka import (
    CEILING_CONSUMER,
    CEILING_PRODUCER,
    FETCH_RECORDS,
    create_topics,
    producer,
    quiet_aiokafka,
)

TOPIC_IN = "bench.ceiling.in"
TOPIC_OUT = "bench.ceiling.out"
TENANT = "t_BENCHCEILING0000000000000"


async def _produce(
    bootstrap: str, topic: str, values: list[bytes], keys: list[bytes], label: str
) -> float:
    p = producer(bootstrap)
    await p.start()
    try:
        prog = Progress(label, len(values), "msgs")
        t0 = time.perf_counter()
        futs = []
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            futs.append(await p.send(topic, v, key=k))
            if i % 5000 == 4999:
                prog.update(i + 1)
        await asyncio.gather(*futs)
        dt = time.perf_counter() - t0
        prog.done()
        return dt
    finally:
        await p.stop()


async def _consumer(bootstrap: str, topic: str) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    c = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **CEILING_CONSUMER,
    )
    await c.start()
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
    c.assign(tps)
    await c.seek_to_beginning(*tps)
    return c, tps


async def _consume(bootstrap: str, topic: str, n: int) -> float:
    c, _ = await _consumer(bootstrap, topic)
    try:
        prog = Progress("ceiling consume", n, "msgs")
        got = 0
        # the seek is done; the clock includes the first fetch (starting it after the first
        # fetch would count that fetch's records for free: absurd rates on small N)
        t0 = time.perf_counter()
        while got < n:
            batch = await c.getmany(timeout_ms=1000, max_records=FETCH_RECORDS)
            for msgs in batch.values():
                got += len(msgs)
            prog.update(got)
        dt = time.perf_counter() - t0
        prog.done()
        return dt
    finally:
        await c.stop()


async def _pipe(bootstrap: str, src: str, dst: str, n: int) -> float:
    """Consume ``src`` and produce every record to ``dst``: the Kafka-only part of ingest."""
    c, _ = await _consumer(bootstrap, src)
    p = producer(bootstrap)
    await p.start()
    try:
        prog = Progress("ceiling consume→produce", n, "msgs")
        got = 0
        t0 = time.perf_counter()
        while got < n:
            batch = await c.getmany(timeout_ms=1000, max_records=FETCH_RECORDS)
            futs = []
            for msgs in batch.values():
                for m in msgs:
                    futs.append(await p.send(dst, m.value, key=m.key))
                got += len(msgs)
            if futs:
                await asyncio.gather(*futs)
            prog.update(got)
        dt = time.perf_counter() - t0
        prog.done()
        return dt
    finally:
        await p.stop()
        await c.stop()


async def kafka_ceilings(
    bootstrap: str, n: int, partitions: int, broker_pid: int | None = None
) -> dict[str, Any]:
    quiet_aiokafka()
    await create_topics(bootstrap, [TOPIC_IN, TOPIC_OUT], partitions)
    values = [envelope(i, TENANT, run="ceil") for i in range(n)]
    keys = [message_key(TENANT, i) for i in range(n)]
    size = sum(map(len, values)) / n
    # warm-up: connections, metadata, the broker's first segment
    await _produce(bootstrap, TOPIC_OUT, values[:2000], keys[:2000], "ceiling warm-up")
    cpu: dict[str, dict[str, float]] = {}
    per_msg: dict[str, dict[str, float | None]] = {}
    pids = {"broker": broker_pid} if broker_pid else {}
    # the harness is the raw client here: its own CPU only (its children are other scenarios')
    meter = CpuMeter(pids, tree=True, own_only=("harness",))

    def floor(phase: str) -> None:
        """µs of CPU per message of one phase: the client, the broker, both (the floor the
        scenarios' per-item CPU is compared with, measured in the same run)."""
        s = meter.seconds
        per_msg[phase] = {
            "client": round(s.get("harness", 0.0) / n * 1e6, 1),
            "broker": round(s["broker"] / n * 1e6, 1) if "broker" in s else None,
            "total": round(sum(s.values()) / n * 1e6, 1),
        }

    meter.start()
    t_prod = await _produce(bootstrap, TOPIC_IN, values, keys, "ceiling produce")
    cpu["produce"] = meter.stop()
    floor("produce")
    meter.start()
    t_cons = await _consume(bootstrap, TOPIC_IN, n)
    cpu["consume"] = meter.stop()
    floor("consume")
    meter.start()
    t_pipe = await _pipe(bootstrap, TOPIC_IN, TOPIC_OUT, n)
    cpu["consume_produce"] = meter.stop()
    floor("consume_produce")
    produce, consume, pipe = n / t_prod, n / t_cons, n / t_pipe
    return {
        "messages": n,
        "message_bytes": round(size),
        "partitions": partitions,
        "produce_msgs_per_s": round(produce),
        "consume_msgs_per_s": round(consume),
        # measured: one process consuming and producing each message (the ratio's denominator)
        "consume_produce_msgs_per_s": round(pipe),
        # derived: per-message time of one consume plus one produce, for comparison
        "consume_plus_produce_derived_msgs_per_s": round(1 / (1 / produce + 1 / consume)),
        "produce_mb_per_s": round(produce * size / 1e6, 1),
        "producer_settings": CEILING_PRODUCER,
        "cpu_cores": cpu,
        # µs of CPU per message (client, broker, total) per phase; consume_produce's total is
        # the raw-client floor of every scenario's cpu_us_per_item
        "cpu_us_per_msg": per_msg,
        "floor_cpu_us_per_msg": per_msg["consume_produce"]["total"],
        "floor_client_cpu_us_per_msg": per_msg["consume_produce"]["client"],
    }


def clickhouse_ceiling(workdir: Path, rows: int, batch: int) -> dict[str, Any]:
    """Run :mod:`benchmarks.chinsert` in a child process and return its JSON result."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "clickhouse.json"
    log(f"ClickHouse bulk insert: {rows} rows in batches of {batch} (chDB in a child process)")
    with open(workdir / "clickhouse.log", "ab") as logf:
        proc = PROCS.spawn(
            "chinsert",
            [
                sys.executable,
                "-m",
                "benchmarks.chinsert",
                "--dir",
                str(workdir / "chdb"),
                "--rows",
                str(rows),
                "--batch",
                str(batch),
                "--out",
                str(out),
            ],
            stdout=logf,
            stderr=logf,
        )
        try:
            proc.wait(600)
        except subprocess.TimeoutExpired:
            pass
        finally:
            code = PROCS.stop(proc)
    if code != 0 or not out.exists():
        raise RuntimeError(
            f"the ClickHouse insert benchmark failed ({code}); see {workdir / 'clickhouse.log'}"
        )
    return json.loads(out.read_text())
