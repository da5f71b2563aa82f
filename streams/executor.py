"""The deterministic executor (ARCHITECTURE §6) as the worker runs it.

Actions arrive on ``fibric.actions.v1`` keyed by ``tenant:entity_key``, so one entity's actions
share a partition and arrive in order. Per batch, actions are grouped into lanes by entity: lanes
run concurrently (a slow connector call on one entity never stalls another), each lane runs its
actions strictly one at a time (single-flight). For each side-effecting action:

1. idempotency: a key already ``done`` is disposed DEDUP with the original result — the
   connector is never called; the same action replayed after a crash is skipped (its receipt
   exists);
2. intent: record ``intent`` for the key on ``fibric.execstate.v1`` and wait for the broker;
3. invoke the connector tool over MCP with the idempotency key (our connectors apply a key at
   most once, so re-invoking an intent without a result after a crash is safe);
4. result: emit the receipt; once the batch's receipts are acked, record ``done``/``failed``
   (awaited before the batch is acked) — never a ``done`` without its receipt;
5. release: the lane moves to the entity's next action.

The exec-state topic is partitioned like the actions topic; a worker loads a partition's state
before executing its first action after an assignment. Idempotency keys are scoped per tenant,
mode and entity (the partition that serialises them); see docs/decisions.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.planning import receipt
from agents.secrets import SecretBox
from schemas.envelope import LedgerRecord
from schemas.plan import ActionRecord, Receipt
from streams.topics import EXECSTATE, LEDGER

log = logging.getLogger(__name__)

# Errors after which the side effect may or may not have happened upstream.
UNKNOWN_OUTCOME = {"timeout", "connector_crashed"}
STATE_LOAD_TIMEOUT_S = 60.0


def state_key(a: ActionRecord) -> str:
    return f"{a.tenant_id}\x1f{int(a.livemode)}\x1f{a.entity_key}\x1f{a.idempotency_key}"


class Executor:
    def __init__(
        self,
        bootstrap: str,
        producer: Any,
        runtime: Any,
        view: Any,
        box: SecretBox,
        worker_id: str = "",
    ) -> None:
        self._bootstrap = bootstrap
        # Every receipt record names the worker that wrote it (a Kafka header, not a column):
        # operators can trace a receipt to a replica, and S7 times one worker's recovery.
        self._headers = [("fibric-worker", worker_id.encode())] if worker_id else None
        self.producer = producer
        self.runtime = runtime
        self.view = view
        self.box = box
        self.seen: dict[str, dict[str, Any]] = {}
        self.loaded: set[int] = set()
        self._load_lock = asyncio.Lock()
        self._ensured: dict[str, int] = {}
        self.counts: dict[str, int] = defaultdict(int)
        self.applied_by_operator: dict[str, int] = defaultdict(int)
        self.pending: list[asyncio.Future[Any]] = []
        self.deferred: list[tuple[dict[str, Any], int]] = []

    # ---- state -----------------------------------------------------------------------------
    def forget_partitions(self) -> None:
        """On a rebalance: state of partitions we may no longer own is reloaded on next use."""
        self.loaded.clear()

    async def load_partitions(self, partitions: Sequence[int]) -> None:
        missing = sorted(set(partitions) - self.loaded)
        if not missing:
            return
        async with self._load_lock:
            missing = sorted(set(partitions) - self.loaded)
            if not missing:
                return
            consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False)
            await consumer.start()
            try:
                tps = [TopicPartition(EXECSTATE, p) for p in missing]
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                ends = await consumer.end_offsets(tps)
                todo = {tp for tp in tps if ends[tp] > 0}
                deadline = time.monotonic() + STATE_LOAD_TIMEOUT_S
                while todo and time.monotonic() < deadline:
                    batch = await consumer.getmany(*todo, timeout_ms=200, max_records=20000)
                    for msgs in batch.values():
                        for m in msgs:
                            rec = orjson.loads(m.value)
                            self.seen[rec["key"]] = rec
                    for tp in list(todo):
                        if await consumer.position(tp) >= ends[tp]:
                            todo.discard(tp)
                if todo:
                    raise RuntimeError(
                        f"exec state not loaded for {sorted(t.partition for t in todo)}"
                    )
            finally:
                await consumer.stop()
            self.loaded.update(missing)
            log.info("executor state loaded for partitions %s (%d keys)", missing, len(self.seen))

    async def _state(
        self, a: ActionRecord, partition: int, state: str, wait: bool, **extra: Any
    ) -> None:
        """Record a key's state. ``intent`` is written and awaited at once (before the tool is
        called); ``done``/``failed`` are only written after the batch's receipts are acked, so a
        crash can never leave a key ``done`` without its receipt (the replay re-invokes, the
        connector's journal answers, and the same receipt id is written again)."""
        rec = {"key": state_key(a), "action_id": a.id, "state": state, **extra}
        self.seen[rec["key"]] = rec
        if not wait:
            self.deferred.append((rec, partition))
            return
        fut = await self.producer.send(
            EXECSTATE, orjson.dumps(rec), key=rec["key"].encode(), partition=partition
        )
        await fut

    async def _emit(self, rc: Receipt) -> None:
        self.counts[rc.outcome] += 1
        if rc.outcome == "applied":
            self.applied_by_operator[rc.operator_id] += 1
        rec = LedgerRecord(kind="receipt", row=rc.model_dump(mode="json"))
        fut = await self.producer.send(
            LEDGER,
            orjson.dumps(rec.model_dump(mode="json")),
            key=rc.tenant_id.encode(),
            headers=self._headers,
        )
        self.pending.append(fut)

    # ---- connectors ------------------------------------------------------------------------
    async def ensure_connector(self, connector_id: str) -> str | None:
        """Start (or refresh) the connector's MCP session; None when it can be used, else why not."""
        cn = self.view.connectors.get(connector_id)
        if cn is None:
            return "the connector is no longer installed"
        if cn.status == "pending_auth":
            return "the connector is pending authorization"
        if self._ensured.get(connector_id) == cn.version:
            return None
        from connectors.marketplace import load_catalogue
        from connectors.pool import ConnectorSpec

        entry = self.view.vault.get(connector_id)
        creds = self.box.open(entry.ciphertext) if entry and entry.ciphertext else {}
        listing = load_catalogue()[cn.listing]
        await self.runtime.ensure(
            ConnectorSpec(
                instance_id=cn.id,
                listing=listing,
                config=cn.config,
                credentials=creds,
                remote_url=cn.remote_url,
            )
        )
        self._ensured[connector_id] = cn.version
        return None

    # ---- execution -------------------------------------------------------------------------
    async def execute_batch(self, items: Sequence[tuple[ActionRecord, int]]) -> None:
        await self.load_partitions(sorted({p for _, p in items}))
        lanes: dict[tuple[str, bool, str], list[tuple[ActionRecord, int]]] = defaultdict(list)
        for a, p in items:
            lanes[(a.tenant_id, a.livemode, a.entity_key)].append((a, p))

        async def run_lane(lane: list[tuple[ActionRecord, int]]) -> None:
            for a, p in lane:
                try:
                    await self.dispose(a, p)
                except Exception as exc:  # noqa: BLE001 - one action's bug must not sink the lane
                    log.exception("disposing %s failed", a.id)
                    await self._emit(
                        receipt(
                            a,
                            a.verdict.decision,
                            "failed",
                            f"executor error: {type(exc).__name__}",
                            datetime.now(UTC),
                            error={"code": "executor_error"},
                        )
                    )

        await asyncio.gather(*(run_lane(lane) for lane in lanes.values()))
        # receipts first, then the results they prove (see _state)
        pending, self.pending = self.pending, []
        if pending:
            await asyncio.gather(*pending)
        deferred, self.deferred = self.deferred, []
        futures = [
            await self.producer.send(
                EXECSTATE, orjson.dumps(rec), key=rec["key"].encode(), partition=p
            )
            for rec, p in deferred
        ]
        if futures:
            await asyncio.gather(*futures)

    async def dispose(self, a: ActionRecord, partition: int) -> None:
        now = datetime.now(UTC)
        if a.verdict.decision == "BLOCK":
            await self._emit(receipt(a, "BLOCK", "refused", a.verdict.reason, now))
            return
        seen = self.seen.get(state_key(a)) if a.side_effect else None
        if seen is not None:
            if seen["action_id"] == a.id and seen["state"] in ("done", "failed"):
                return  # this very action was disposed before a crash; its receipt exists
            if seen["state"] == "done":
                await self._emit(
                    receipt(
                        a,
                        "DEDUP",
                        "deduplicated",
                        f"idempotency_key {a.idempotency_key!r} already applied by {seen['action_id']}",
                        now,
                        result=seen.get("result"),
                    )
                )
                return
        problem = await self.ensure_connector(a.connector_id or "")
        if problem:
            await self._emit(
                receipt(
                    a,
                    a.verdict.decision,
                    "failed",
                    problem,
                    now,
                    error={"code": "connector_unavailable"},
                )
            )
            if a.side_effect:
                await self._state(a, partition, "failed", wait=False)
            return
        if a.side_effect:
            await self._state(a, partition, "intent", wait=True)
        started = time.perf_counter()
        res = await self.runtime.call(
            a.connector_id,
            a.tool,
            a.args,
            idempotency_key=a.idempotency_key if a.side_effect else None,
        )
        latency = (time.perf_counter() - started) * 1000
        done = datetime.now(UTC)
        if res.ok:
            if a.side_effect:
                await self._state(a, partition, "done", wait=False, result=res.content)
            await self._emit(
                receipt(
                    a,
                    a.verdict.decision,
                    "undone" if a.undo_of else "applied",
                    a.verdict.reason,
                    done,
                    result=res.content,
                    latency_ms=latency,
                )
            )
            return
        reason = (
            "outcome_unknown"
            if res.error_code in UNKNOWN_OUTCOME
            else f"connector error: {res.error_code}"
        )
        if a.side_effect:
            await self._state(a, partition, "failed", wait=False, error=res.error_code)
        await self._emit(
            receipt(
                a,
                a.verdict.decision,
                "failed",
                reason,
                done,
                latency_ms=latency,
                error={
                    "code": res.error_code,
                    "message": res.error_message,
                    "upstream_status": res.upstream_status,
                },
            )
        )
