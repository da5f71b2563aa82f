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
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from agents import budget
from agents.executor import KeyState, key_of
from ledger.store import LedgerStore, receipt_from_row
from ledger.tables import TABLES
from schemas.connector import Connector
from schemas.guardrail import GuardrailPolicy
from schemas.plan import Receipt
from streams.kafka import partition_for
from streams.topics import EXECSTATE, entity_key

log = logging.getLogger(__name__)


class PolicyView(Protocol):
    """What the restore reads of the config view (streams/config_view.py ``ConfigView``)."""

    guardrails: dict[str, GuardrailPolicy]
    connectors: dict[str, Connector]

    def guardrails_of(self, tenant_id: str, livemode: bool) -> list[GuardrailPolicy]: ...

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


async def restore_exec_state(
    store: LedgerStore, producer: Any, bootstrap: str, view: PolicyView | None = None
) -> int:
    """Republish applied keys to an empty exec-state changelog — and, with the config ``view``,
    the spend of every tenant budget (:func:`restore_budgets`); returns how many keys."""
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
    if view is not None:
        n = await restore_budgets(store, producer, view, n_parts)
        if n:
            log.info("restored %d budget records from the ledger into %s", n, EXECSTATE)
    return total


# The receipts whose executions a budget counted: side effects (the action's ``side_effect``;
# read-only calls are never reserved) that ran or may have run — ``budget.settlement`` decides
# from outcome and error code, as the executor did — one (the first) per action.
_SPENT_SQL = (
    "SELECT r.created_at, r.operator_id, r.operator_name, "
    "ifNull(r.connector_id, ''), r.tool, ifNull(r.entity_key, ''), ifNull(r.value, 0), "
    "r.outcome, ifNull(JSONExtractString(ifNull(r.error, ''), 'code'), '') "
    "FROM receipts AS r WHERE r.tenant_id = {t:String} AND r.livemode = {m:Bool} "
    "AND r.created_at > {s:DateTime64(6, 'UTC')} AND r.action_id IS NOT NULL "
    "AND r.tool IS NOT NULL AND r.decision IN ('ALLOW', 'ALERT') "
    "AND r.outcome IN ('applied', 'undone', 'failed') "
    "AND r.action_id IN (SELECT id FROM actions WHERE tenant_id = {t:String} "
    "AND livemode = {m:Bool} AND JSONExtractBool(doc, 'side_effect')) "
    "ORDER BY r.created_at, r.id LIMIT 1 BY r.action_id"
)


async def restore_budgets(
    store: LedgerStore, producer: Any, view: PolicyView, n_parts: int, now: datetime | None = None
) -> int:
    """Rebuild each budget's committed spend from the receipts of its window (decisions §36):
    every side effect the ledger holds is counted by the budgets of the tenant's *current*
    policies that match it (as ``Executor._counted`` does), in the partition of its entity, and
    published as a ``restored`` record the workers take (or merge into their own disk's record:
    streams/execstate.py). Returns how many budget records were published."""
    now = now or datetime.now(UTC)
    published = 0
    for tenant_id, livemode in sorted({(g.tenant_id, g.livemode) for g in view.guardrails.values()}):
        policies = view.guardrails_of(tenant_id, livemode)
        windows = [
            b.window_seconds
            for p in policies
            if p.status == "active" and not p.deleted
            for b in p.budgets
        ]
        if not windows:
            continue
        rows = await store.query(
            _SPENT_SQL,
            {"t": tenant_id, "m": livemode, "s": now - timedelta(seconds=max(windows))},
        )
        spends: dict[tuple[int, str], list[tuple[int, float]]] = {}
        limits: dict[str, budget.Limits] = {}
        for at, op_id, op_name, cn_id, tool, entity, value, outcome, code in rows:
            if budget.settlement(outcome, code or None) != "commit":
                continue
            cn = view.connectors.get(cn_id)
            names = (cn.id, cn.name, cn.listing) if cn is not None else (cn_id,)
            at_ms = int(_utc(at).timestamp() * 1000)
            p = partition_for(entity_key(tenant_id, entity).decode(), n_parts)
            for c in budget.counting(
                policies,
                tenant_id=tenant_id,
                livemode=livemode,
                operator_id=op_id,
                operator_name=op_name,
                connector_id=cn_id,
                connector_names=[n for n in names if n],
                tool=tool,
                entity_key=entity,
            ):
                if now.timestamp() * 1000 - at_ms < c.limits.window_ms:
                    spends.setdefault((p, c.key), []).append((at_ms, float(value)))
                    limits[c.key] = c.limits
        now_ms = int(now.timestamp() * 1000)
        futures = []
        for (p, key), items in spends.items():
            state = budget.rebuilt(items, now_ms, limits[key])
            futures.append(
                await producer.send(
                    EXECSTATE, orjson.dumps(state.to_json()), key=key.encode(), partition=p
                )
            )
        for f in futures:
            await f
        published += len(futures)
    return published


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
