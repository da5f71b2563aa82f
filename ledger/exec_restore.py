"""Rebuilding the executor's seen-state from the receipts in ClickHouse.

Workers keep their state in RocksDB and changelog it to ``fibric.execstate.v1``; when a fresh
embedded broker (memory-only) starts with an empty changelog *and* a worker has no local copy —
a new worker, a replaced disk — the receipts are the only record of which idempotency keys were
applied. The api (the process that owns ClickHouse) republishes one ``done`` state per applied
key before the workers need it. Against a durable Apache Kafka the changelog is never empty once
written, so this is a no-op there.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.executor import KeyState, key_of
from ledger.store import LedgerStore, receipt_from_row
from ledger.tables import TABLES
from schemas.plan import Receipt
from streams.kafka import partition_for
from streams.topics import EXECSTATE, entity_key

log = logging.getLogger(__name__)

# Receipts read per query: bounded memory (~20 MB of rows) whatever the ledger's size.
PAGE_ROWS = 20_000


async def applied_receipts(store: LedgerStore) -> AsyncIterator[list[Receipt]]:
    """Every applied (or undone) receipt that names an idempotency key, oldest first, in pages.
    One key is applied at most once (the executor's invariant), so each is one key's state."""
    after: tuple[Any, str] | None = None
    cols = ", ".join(TABLES["receipt"].columns)
    while True:
        params: dict[str, Any] = {"n": PAGE_ROWS}
        cond = ""
        if after is not None:
            params["at"], params["id"] = after
            cond = "AND (created_at, id) > ({at:DateTime64(6, 'UTC')}, {id:String})"
        rows = await store.query(
            f"SELECT {cols} FROM receipts WHERE outcome IN ('applied', 'undone') "
            f"AND idempotency_key IS NOT NULL AND entity_key IS NOT NULL {cond} "
            "ORDER BY created_at, id LIMIT 1 BY id LIMIT {n:UInt32}",
            params,
        )
        if not rows:
            return
        page = [receipt_from_row(r) for r in rows]
        yield page
        last = page[-1]
        after = (last.created_at, last.id)
        if len(rows) < PAGE_ROWS:
            return


def state_of(rc: Receipt) -> tuple[str, KeyState]:
    """The ``done`` state an applied receipt proves (with the receipt, so a replayed action
    re-emits it instead of running again)."""
    key = key_of(rc.tenant_id, rc.livemode, rc.entity_key or "", rc.idempotency_key or "")
    return key, KeyState(
        action_id=rc.action_id or "",
        status="done",
        at_ms=int(rc.created_at.timestamp() * 1000),
        result=rc.result,
        receipts={rc.action_id or "": rc.model_dump(mode="json")},
    )


async def changelog_size(bootstrap: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(EXECSTATE) or set()
        tps = [TopicPartition(EXECSTATE, p) for p in parts]
        ends = await consumer.end_offsets(tps) if tps else {}
        return sum(ends.values())
    finally:
        await consumer.stop()


async def restore_exec_state(store: LedgerStore, producer: Any, bootstrap: str) -> int:
    """Republish applied keys to an empty exec-state changelog; returns how many."""
    if await changelog_size(bootstrap) > 0:
        return 0
    parts = producer.client.cluster.partitions_for_topic(EXECSTATE)
    if not parts:
        await producer.client.force_metadata_update()
        parts = producer.client.cluster.partitions_for_topic(EXECSTATE)
    n_parts = len(parts or ()) or 1
    total = 0
    async for page in applied_receipts(store):
        futures = []
        for rc in page:
            key, st = state_of(rc)
            # the partition the actions topic gives this entity (same count, same partitioner)
            p = partition_for(entity_key(rc.tenant_id, rc.entity_key or "").decode(), n_parts)
            futures.append(
                await producer.send(
                    EXECSTATE, orjson.dumps(st.to_json()), key=key.encode(), partition=p
                )
            )
        for f in futures:
            await f
        total += len(page)
    if total:
        log.info("restored %d applied idempotency keys from the ledger into %s", total, EXECSTATE)
    return total
