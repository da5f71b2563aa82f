"""The deterministic executor (ARCHITECTURE §6) as the worker runs it: the I/O around the pure
core in ``agents/executor.py``.

Actions arrive on ``fibric.actions.v1`` keyed by ``tenant:entity_key``, so one entity's actions
share a partition and arrive in order. Per batch:

1. the partitions' state is current (:meth:`Executor.ensure_loaded`: RocksDB plus whatever
   other workers wrote to the changelog since);
2. the seen-state of every key in the batch is read with one RocksDB multi-get;
3. actions are grouped into lanes by entity; lanes run concurrently (a slow connector call on one
   entity never stalls another), each lane runs its actions one at a time (single-flight);
4. per action the core decides (:func:`agents.executor.decide`); an invocation first writes its
   *intent* durably (RocksDB + changelog, acknowledged — group-committed across lanes by
   :class:`IntentWriter`), then calls the tool over MCP with the idempotency key (concurrent
   lanes' calls to one connector share one request, :class:`CallBatcher`), then the core
   concludes (:func:`agents.executor.conclude`);
5. the batch's receipts and terminal states are committed by :class:`streams.checkpoint.Checkpoint`
   (state → produce → acknowledge), then the agent returns and Faust commits the offsets.

Idempotency keys are scoped per tenant, mode and entity (the partition that serialises them);
see docs/decisions.md §11.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError

from agents import budget
from agents.executor import (
    CallResult,
    Dispose,
    Invoke,
    KeyState,
    Reemit,
    StateRecord,
    conclude,
    crashed,
    decide,
    lane_of,
    over_budget,
    state_key,
)
from agents.secrets import SecretBox
from schemas import tracing
from schemas.plan import ActionRecord, Verdict
from streams.checkpoint import Checkpoint, acknowledged
from streams.execstate import REEMIT_WINDOW_MS, ExecStateStore, restored_for
from streams.kafka import probe
from streams.metrics import ExecutorMetrics
from streams.oauth_refresh import Failed, Revoked, Superseded, TokenRenewer
from streams.topics import EXECSTATE, LEDGER, ledger_key, ledger_value_of_row

log = logging.getLogger(__name__)

# Reading another worker's changelog for a partition must finish, or the partition's actions
# would run without their keys' history; a minute covers millions of records.
STATE_LOAD_TIMEOUT_S = 60.0
RESTORE_POLL_S = 0.1
CHANGELOG_FETCH_RECORDS = 20_000
# Catch-up fetches: a short broker wait, and a partition counts as read to its end after one
# empty fetch of this long (Tansu does not complete a waiting fetch early; decisions §16).
CHANGELOG_FETCH_WAIT_MS = 50
CHANGELOG_IDLE_MS = 300
# Budget states kept in memory between batches (a few hundred bytes each); past this the cache
# is dropped at a batch end, when everything in it is on disk.
BUDGET_CACHE_KEYS = 50_000


class IntentWriter:
    """Group commit of intents: every lane that is about to call a tool waits here until its
    intent (and the budget reservations that go with it, agents/budget.py) is in RocksDB and
    acknowledged on the changelog. Intents submitted while a write is in flight share the next
    write, so N concurrent lanes cost one round trip, not N."""

    def __init__(self, store: ExecStateStore, producer: Any) -> None:
        self._store = store
        self._producer = producer
        self._queue: list[tuple[list[tuple[int, str, StateRecord]], asyncio.Future[None]]] = []
        self._running: asyncio.Task[None] | None = None

    async def write(
        self,
        partition: int,
        key: str,
        intent: KeyState,
        with_: Sequence[tuple[int, str, StateRecord]] = (),
    ) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(([*with_, (partition, key, intent)], fut))
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._drain())
        await fut

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            records = [r for rs, _ in batch for r in rs]
            try:
                self._store.write(records)
                sends = [
                    await self._producer.send(
                        EXECSTATE, orjson.dumps(s.to_json()), key=k.encode(), partition=p
                    )
                    for p, k, s in records
                ]
                metas = await acknowledged(sends)
                for (p, _, _), meta in zip(records, metas, strict=True):
                    off = getattr(meta, "offset", None)
                    if isinstance(off, int):
                        self._store.set_offset(p, off)
            except BaseException as exc:  # noqa: BLE001 - handed to every waiter, even a cancel
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)


class CallBatcher:
    """Concurrent lanes' tool calls to one connector instance, grouped into one MCP request
    (``ConnectorRuntime.call_many``: one round trip and one journal transaction for the lot,
    ~15x the calls/s of single calls, connectors/pool.py). Calls submitted while a request is in
    flight share the next one, so a lone call still goes at once. Single-flight is unaffected:
    a lane submits an entity's next action only after its previous call returned."""

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime
        self._queues: dict[
            str, list[tuple[str, dict, str | None, str | None, asyncio.Future[Any]]]
        ] = {}
        self._running: dict[str, asyncio.Task[None]] = {}

    async def call(
        self,
        instance_id: str,
        tool: str,
        args: dict,
        key: str | None,
        traceparent: str | None = None,
    ) -> Any:
        """``traceparent``: the call's client span when traced; it travels in the call's own
        ``_meta`` (each call of a batch request has its own trace)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(instance_id, []).append((tool, args, key, traceparent, fut))
        task = self._running.get(instance_id)
        if task is None or task.done():
            self._running[instance_id] = asyncio.ensure_future(self._drain(instance_id))
        return await fut

    async def _drain(self, instance_id: str) -> None:
        await asyncio.sleep(0)  # the other lanes of this turn of the loop submit theirs too
        while batch := self._queues.pop(instance_id, []):
            calls = [(tool, args, key) for tool, args, key, _, _ in batch]
            traces = [tp for _, _, _, tp, _ in batch]
            try:
                if any(traces):
                    results = await self._runtime.call_many(instance_id, calls, traces=traces)
                else:
                    results = await self._runtime.call_many(instance_id, calls)
            except BaseException as exc:  # noqa: BLE001 - handed to every waiter
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (*_, fut), res in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(res)


class Executor:
    def __init__(
        self,
        bootstrap: str,
        producer: Any,
        runtime: Any,
        view: Any,
        box: SecretBox,
        store: ExecStateStore,
        worker_id: str = "",
        metrics: ExecutorMetrics | None = None,
        partitions: int = 1,
        restore_mark: Path | None = None,
        tokens: TokenRenewer | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._restore_mark = restore_mark
        self.metrics = metrics
        # Every receipt record names the worker that wrote it (a Kafka header, not a column):
        # operators can trace a receipt to a replica, and S7 times one worker's recovery.
        self._headers = [("fibric-worker", worker_id.encode())] if worker_id else None
        self.producer = producer
        self.runtime = runtime
        self.view = view
        self.box = box
        self.store = store
        self.intents = IntentWriter(store, producer)
        self.calls = CallBatcher(runtime)
        self.loaded: set[int] = set()
        self._load_lock = asyncio.Lock()
        self._ensured: dict[str, int] = {}
        # oauth2 (decisions §47): the sealed credentials each connector's session runs with,
        # the renewal this worker made that the view may not show yet (replaced -> renewed),
        # and one renewal at a time per connector
        self.tokens = tokens
        self._session_creds: dict[str, tuple[str | None, dict[str, Any]]] = {}
        self._renewed: dict[str, tuple[str, str, dict[str, Any]]] = {}
        self._renewing: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.counts: dict[str, int] = defaultdict(int)
        self.applied_by_operator: dict[str, int] = defaultdict(int)
        # Budget spend (agents/budget.py), per (partition, budget key): read through from
        # RocksDB and always at least as new as it (every change lands here first, then on
        # disk with the intent or the checkpoint), so a reservation is one check-and-set with no
        # await between check and set. Cleared when the disk may know more (a catch-up applied
        # another worker's changelog) and when it grows past BUDGET_CACHE_KEYS with no batch
        # in flight.
        self.partitions = partitions
        self.budgets: dict[tuple[int, str], budget.BudgetState] = {}
        self._batches = 0  # execute_batch calls in flight (orphans run inside one)

    # ---- state -----------------------------------------------------------------------------
    def forget_partitions(self) -> None:
        """On a rebalance: partitions we own again are brought up to date on next use."""
        self.loaded.clear()
        self.budgets.clear()

    async def ensure_loaded(self, partitions: Sequence[int]) -> None:
        if not set(partitions) - self.loaded:
            return
        orphans: list[tuple[ActionRecord, int]] = []
        async with self._load_lock:
            missing = sorted(set(partitions) - self.loaded)
            if missing:
                orphans = await self._catch_up(missing)
                self.loaded.update(missing)
                # their budget records may have changed on disk (another worker's changelog)
                gone = set(missing)
                self.budgets = {k: v for k, v in self.budgets.items() if k[0] not in gone}
        if orphans:
            # intents whose actions the lost broker took with it: conclude them now (the core
            # re-invokes with the same key where the connector journals keys, else disposes
            # them outcome_unknown), so no side effect is left without its receipt
            log.warning("concluding %d interrupted actions the broker lost", len(orphans))
            if self.metrics is not None:
                self.metrics.recovered.inc(len(orphans))
            await self.execute_batch(orphans)

    async def _catch_up(self, partitions: list[int]) -> list[tuple[ActionRecord, int]]:
        """Bring RocksDB up to date with the changelog for ``partitions``:

        * changelog ahead of us (another worker owned the partition): apply its records;
        * changelog behind us (the broker lost the topic — the embedded broker is memory-only):
          republish our state so another worker could take over, and re-emit recent receipts,
          which the broker may have lost before the ledger stored them.

        The true end of a partition is found by reading to exhaustion: Tansu answers
        ListOffsets(latest) with the base offset of the last batch, not the high watermark
        (benchmarks/RESULTS.md), so ``end_offsets`` alone would misjudge both cases.
        """
        cluster = await probe(self._bootstrap)
        if cluster is None:
            raise KafkaConnectionError(f"no broker answers at {self._bootstrap}")
        self.store.cluster_id = cluster
        await self._await_restore(cluster)
        # partitions whose state this disk holds for another cluster: the broker was replaced
        moved = {
            p
            for p in partitions
            if self.store.position(p)[0] not in ("", cluster) and self.store.has_state(p)
        }
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=CHANGELOG_FETCH_WAIT_MS,
        )
        await consumer.start()
        behind: list[int] = []
        applied = 0
        try:
            tps = [TopicPartition(EXECSTATE, p) for p in partitions]
            consumer.assign(tps)
            reported = await consumer.end_offsets(tps)
            have = {tp: self.store.offset(tp.partition) for tp in tps}
            last_seen = {tp: reported[tp] - 1 for tp in tps}
            for tp in tps:
                consumer.seek(tp, max(0, min(have[tp] + 1, reported[tp])))
            todo = set(tps)
            deadline = time.monotonic() + STATE_LOAD_TIMEOUT_S
            while todo:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"exec state not loaded for {sorted(t.partition for t in todo)}"
                    )
                got = await consumer.getmany(
                    *todo, timeout_ms=CHANGELOG_IDLE_MS, max_records=CHANGELOG_FETCH_RECORDS
                )
                for tp in list(todo):
                    msgs = got.get(tp) or []
                    if not msgs:
                        todo.discard(tp)  # nothing more: this is the true end
                        continue
                    last_seen[tp] = msgs[-1].offset
                    fresh = [m for m in msgs if m.offset > have[tp]]
                    applied += self.store.apply_changelog(
                        tp.partition, ((m.offset, m.key or b"", m.value or b"") for m in fresh)
                    )
            behind = [
                tp.partition for tp in tps if last_seen[tp] < have[tp] or tp.partition in moved
            ]
        finally:
            await consumer.stop()
        orphans: list[tuple[ActionRecord, int]] = []
        for p in behind:
            await self._republish(p)
            orphans += [
                (ActionRecord.model_validate(st.action), p)
                for _, st in self.store.entries(p)
                if st.status == "intent" and st.action is not None
            ]
        if applied or behind:
            log.info(
                "executor state: %d changelog records applied; republished partitions %s",
                applied,
                behind,
            )
        return orphans

    async def _await_restore(self, cluster: str) -> None:
        """On the memory-only broker, wait (bounded) until the api has republished this
        cluster's changelog from the ledger, so the catch-up reads it (decisions §49)."""
        mark = self._restore_mark
        if mark is None or restored_for(mark, cluster):
            return
        deadline = time.monotonic() + STATE_LOAD_TIMEOUT_S
        while not restored_for(mark, cluster):
            if time.monotonic() > deadline:
                log.warning(
                    "the api has not restored the exec-state changelog of cluster %s from the "
                    "ledger after %.0f s; loading state without it",
                    cluster,
                    STATE_LOAD_TIMEOUT_S,
                )
                return
            await asyncio.sleep(RESTORE_POLL_S)

    async def _republish(self, partition: int) -> None:
        sends, receipts = [], []
        since = int(time.time() * 1000) - REEMIT_WINDOW_MS
        for key, st in self.store.entries(partition):
            sends.append(
                await self.producer.send(
                    EXECSTATE, orjson.dumps(st.to_json()), key=key.encode(), partition=partition
                )
            )
            if st.at_ms >= since and st.receipt:
                receipts.append(st.receipt)
        for key, bs in self.store.budget_entries(partition):
            sends.append(
                await self.producer.send(
                    EXECSTATE, orjson.dumps(bs.to_json()), key=key.encode(), partition=partition
                )
            )
        for row in receipts:
            sends.append(
                await self.producer.send(
                    LEDGER,
                    ledger_value_of_row("receipt", row),
                    key=ledger_key(row["tenant_id"]),
                    headers=self._headers,
                )
            )
        metas = await acknowledged(sends)
        last = max((m.offset for m in metas[: len(metas) - len(receipts)]), default=-1)
        self.store.reset_offset(partition, last)
        log.warning(
            "exec-state changelog of partition %d was behind this worker's disk (broker lost it): "
            "republished %d keys, re-emitted %d recent receipts",
            partition,
            len(metas) - len(receipts),
            len(receipts),
        )

    # ---- connectors ------------------------------------------------------------------------
    async def ensure_connector(self, connector_id: str) -> str | None:
        """Start (or refresh) the connector's MCP session; None when it can be used, else why not."""
        cn = self.view.connectors.get(connector_id)
        if cn is None:
            return "the connector is no longer installed"
        refused = cn.refused_because()  # pending authorization, revoked grant (decisions §43)
        if refused:
            return refused
        if self._ensured.get(connector_id) == cn.version:
            return None
        entry = self.view.vault.get(connector_id)
        sealed = entry.ciphertext if entry and entry.ciphertext else None
        renewed = self._renewed.get(connector_id)
        if renewed is not None and sealed == renewed[0]:
            # our renewal's write is not in the view yet: keep the fresh tokens
            sealed, creds = renewed[1], renewed[2]
        else:
            self._renewed.pop(connector_id, None)
            creds = self.box.open(sealed) if sealed else {}
        await self._start_session(cn, sealed, creds)
        self._ensured[connector_id] = cn.version
        return None

    async def _start_session(self, cn: Any, sealed: str | None, creds: dict[str, Any]) -> None:
        from connectors.marketplace import load_catalogue
        from connectors.pool import ConnectorSpec

        listing = load_catalogue()[cn.listing]
        await self.runtime.ensure(ConnectorSpec.of(cn, listing, creds))
        self._session_creds[cn.id] = (sealed, creds)

    def _renewable(self, a: ActionRecord, res: Any) -> bool:
        """A 401 from the upstream of one of our bundled oauth2 servers: the upstream did not
        act (the request was refused before it was read: our stand-ins check the token before
        anything else, and every tool of cn-amazon-connect makes one upstream request), and the
        server's journal freed the key (a 401 is never an unknown outcome), so one call again
        with a renewed token cannot apply the effect twice. A remote MCP server may have done
        other work before its 401: never retried."""
        if self.tokens is None or res.ok or res.upstream_status != 401:
            return False
        cn = self.view.connectors.get(a.connector_id or "")
        return cn is not None and cn.auth.get("type") == "oauth2" and not cn.remote_url

    async def _renew(self, connector_id: str, used: str | None) -> str | None:
        """After a 401 on a session whose tokens were sealed as ``used``: give the session
        renewed tokens. None: call again; else why the connector cannot be used
        (``connector_unavailable``), or ``""``: the token endpoint failed for now (the 401
        answer stands)."""
        assert self.tokens is not None
        async with self._renewing[connector_id]:
            cn = self.view.connectors.get(connector_id)
            if cn is None:
                return "the connector is no longer installed"
            refused = cn.refused_because()
            if refused:
                return refused
            current = self._session_creds.get(connector_id)
            if current is None:
                return ""
            if current[0] != used:
                return None  # another lane of this worker renewed it meanwhile
            entry = self.view.vault.get(connector_id)
            vault = entry.ciphertext if entry and entry.ciphertext else None
            renewed = self._renewed.get(connector_id)
            if vault and vault != used and (renewed is None or vault != renewed[0]):
                # the api's monitor or another worker renewed it: take theirs
                await self._start_session(cn, vault, self.box.open(vault))
                return None
            got = await self.tokens.renew(cn, current[1], used)
            if isinstance(got, Superseded):
                await self._start_session(cn, got.ciphertext, self.box.open(got.ciphertext))
                return None
            if isinstance(got, Revoked):
                return got.reason
            if isinstance(got, Failed):
                log.info("token renewal of %s failed: %s", connector_id, got.message)
                return ""
            if used is not None:
                self._renewed[connector_id] = (used, got.ciphertext, got.credentials)
            await self._start_session(cn, got.ciphertext, got.credentials)
            return None

    def reinvoke_safe(self, connector_id: str | None) -> bool:
        """Our bundled servers journal every idempotency key (connectors/journal.py), so an
        interrupted call may be re-invoked with the same key; a remote MCP server may not."""
        cn = self.view.connectors.get(connector_id or "")
        return cn is not None and not cn.remote_url

    # ---- execution -------------------------------------------------------------------------
    async def execute_batch(self, items: Sequence[tuple[ActionRecord, int]]) -> None:
        self._batches += 1
        try:
            await self._execute_batch(items)
        finally:
            self._batches -= 1
        if self._batches == 0 and len(self.budgets) > BUDGET_CACHE_KEYS:
            self.budgets.clear()  # no batch in flight: all of it is on disk

    async def _execute_batch(self, items: Sequence[tuple[ActionRecord, int]]) -> None:
        # 1. state current for the batch's partitions
        await self.ensure_loaded(sorted({p for _, p in items}))
        # 2. seen-state of every side-effecting key, one multi-get
        seen = self.store.get_many((p, state_key(a)) for a, p in items if a.side_effect)
        out = Checkpoint(self.producer, execstate=self.store, headers=self._headers)
        # 3. lanes: concurrent across entities, one at a time within one
        lanes: dict[tuple[str, bool, str], list[tuple[ActionRecord, int]]] = defaultdict(list)
        for a, p in items:
            lanes[lane_of(a)].append((a, p))
        if self.metrics is None:
            await asyncio.gather(*(self._run_lane(lane, seen, out) for lane in lanes.values()))
        else:
            self.metrics.lanes.inc(len(lanes))
            try:
                await asyncio.gather(*(self._run_lane(lane, seen, out) for lane in lanes.values()))
            finally:
                self.metrics.lanes.dec(len(lanes))
        # 5. commit: terminal states → receipts and changelog → acknowledgements
        await out.commit()

    async def _run_lane(
        self,
        lane: list[tuple[ActionRecord, int]],
        seen: dict[str, KeyState],
        out: Checkpoint,
    ) -> None:
        traced = tracing.ENABLED
        for a, p in lane:
            key = state_key(a)
            prior = seen.get(key) if a.side_effect else None
            span = trace = None
            if traced:
                # the execution span, under the action's traceparent (schemas/tracing.py); the
                # action then names this span, so its receipts and its MCP call follow it
                span = _execute_span(a)
                a = a.model_copy(update={"traceparent": tracing.traceparent_of(span)})
                trace = tracing.headers_of(span)
            try:
                d = await self._dispose(a, p, key, prior, out, span)
            except asyncio.CancelledError:
                if span is not None:
                    span.end()
                raise
            except Exception as exc:  # noqa: BLE001 - one action's bug must not sink the lane
                if _is_transient(exc):
                    if span is not None:
                        span.end()
                    raise  # the broker is unavailable: the whole batch is retried
                log.exception("disposing %s failed", a.id)
                d = crashed(a, exc, datetime.now(UTC), seen.get(key))
            if span is not None:
                _end_execute_span(span, d)
            if isinstance(d, Reemit):
                if d.receipt is not None:
                    out.ledger_row("receipt", d.receipt, trace)
                continue
            self._count(d)
            out.ledger("receipt", d.receipt, trace)
            if d.state is not None:
                seen[key] = d.state
                out.state(p, key, d.state)

    async def _dispose(
        self,
        a: ActionRecord,
        partition: int,
        key: str,
        prior: KeyState | None,
        out: Checkpoint | None = None,
        span: Any = None,
    ) -> Dispose | Reemit:
        now = datetime.now(UTC)
        d = decide(a, prior, now, reinvoke_safe=self.reinvoke_safe(a.connector_id))
        if not isinstance(d, Invoke):
            return d
        problem = await self.ensure_connector(a.connector_id or "")
        if problem:
            refused = decide(a, prior, now, connector_problem=problem)
            assert not isinstance(refused, Invoke)  # a connector problem never invokes
            return refused
        # budgets: reserved now, in this partition's state, durable with the intent
        counted = self._counted(a) if d.intent is not None else []
        reserved: dict[str, budget.BudgetState] = {}
        if counted:
            charge = self._charge(a, partition, counted, now)
            if charge.refused is not None:
                c = charge.refused
                return over_budget(
                    a,
                    Verdict(
                        decision="BLOCK",
                        rule=c.rule(),
                        reason=budget.exhausted_reason(c, a.tool, a.value),
                    ),
                    now,
                    prior,
                )
            if charge.over:
                c = charge.over[0]
                a = a.model_copy(
                    update={
                        "verdict": Verdict(
                            decision="ALERT",
                            rule=c.rule(),
                            reason=budget.exhausted_reason(c, a.tool, a.value),
                        )
                    }
                )
            reserved = charge.updates
        # 4. intent durable before the tool is called
        if d.intent is not None:
            await self.intents.write(
                partition, key, d.intent, [(partition, k, s) for k, s in reserved.items()]
            )
        used = self._session_creds.get(a.connector_id or "", (None, {}))[0]
        res = await self._call(a, span)
        unavailable = ""
        if self._renewable(a, res):
            # an expired or invalidated access token: renew it, then call once more with the
            # same idempotency key (decisions §47)
            why = await self._renew(a.connector_id or "", used)
            if why is None:
                res = await self._call(a, span)  # once: a 401 applied nothing
            unavailable = why or ""
        if unavailable:
            done = decide(a, prior, datetime.now(UTC), connector_problem=unavailable)
            assert isinstance(done, Dispose)  # a connector problem never invokes
        else:
            done = conclude(
                a,
                CallResult(
                    ok=res.ok,
                    content=res.content,
                    error_code=res.error_code,
                    error_message=res.error_message,
                    upstream_status=res.upstream_status,
                    latency_ms=res.latency_ms,
                ),
                datetime.now(UTC),
                d.intent,
            )
        if counted and out is not None:
            self._settle(a, partition, counted, done, out)
        return done

    # ---- budgets (agents/budget.py, decisions §36) ------------------------------------------
    def _counted(self, a: ActionRecord) -> list[budget.Counted]:
        policies = self.view.guardrails_of(a.tenant_id, a.livemode)
        if not any(p.budgets for p in policies):
            return []
        cn = self.view.connectors.get(a.connector_id or "")
        names = (cn.id, cn.name, cn.listing) if cn is not None else (a.connector_id,)
        return budget.counting(
            policies,
            tenant_id=a.tenant_id,
            livemode=a.livemode,
            operator_id=a.operator_id,
            operator_name=a.operator_name,
            connector_id=a.connector_id or "",
            connector_names=[n for n in names if n],
            tool=a.tool,
            entity_key=a.entity_key,
        )

    def _budget(self, partition: int, key: str) -> budget.BudgetState:
        hit = self.budgets.get((partition, key))
        if hit is None:
            hit = self.store.get_budgets([(partition, key)]).get((partition, key), budget.EMPTY)
            self.budgets[(partition, key)] = hit
        return hit

    def _charge(
        self, a: ActionRecord, partition: int, counted: list[budget.Counted], now: datetime
    ) -> budget.Charge:
        """One check-and-set, no await inside: concurrent lanes of this worker never both take
        the last unit. A budget that spans entities is summed over every state partition's
        record of it (decisions §36: exact when one worker owns them all)."""
        own = {c.key: self._budget(partition, c.key) for c in counted}
        others = {
            c.key: [self._budget(q, c.key) for q in range(self.partitions) if q != partition]
            for c in counted
            if c.spans_entities
        }
        charge = budget.charge(a.id, a.value, counted, own, others, int(now.timestamp() * 1000))
        for k, s in charge.updates.items():
            self.budgets[(partition, k)] = s
        return charge

    def _settle(
        self,
        a: ActionRecord,
        partition: int,
        counted: list[budget.Counted],
        done: Dispose,
        out: Checkpoint,
    ) -> None:
        """Commit or release the reservation with the receipt (the checkpoint writes both)."""
        rc = done.receipt
        how = budget.settlement(rc.outcome, (rc.error or {}).get("code"))
        for c in counted:
            s = self._budget(partition, c.key)
            s = budget.commit(s, a.id, c.limits) if how == "commit" else budget.release(s, a.id)
            self.budgets[(partition, c.key)] = s
            out.state(partition, c.key, s)

    async def _call(self, a: ActionRecord, span: Any = None) -> Any:
        if span is not None:
            return await self._traced_call(a, span)
        if self.metrics is None:
            return await self.calls.call(
                a.connector_id or "",
                a.tool,
                a.args,
                a.idempotency_key if a.side_effect else None,
            )
        return await self._timed_call(a)

    async def _traced_call(self, a: ActionRecord, parent: Any) -> Any:
        """The tool call in its own client span (a child of the execution span), whose
        traceparent goes to the server in the call's MCP ``_meta`` (connectors/pool.py)."""
        span = tracing.start(
            f"mcp tools/call {a.tool}",
            context=tracing.child_context(parent),
            kind="client",
            attributes={
                "mcp.method.name": "tools/call",
                "gen_ai.tool.name": a.tool,
                "fibric.connector_id": a.connector_id or "",
            },
        )
        try:
            if self.metrics is None:
                res = await self.calls.call(
                    a.connector_id or "",
                    a.tool,
                    a.args,
                    a.idempotency_key if a.side_effect else None,
                    tracing.traceparent_of(span),
                )
            else:
                res = await self._timed_call(a, tracing.traceparent_of(span))
            if not res.ok:
                tracing.fail(span, res.error_code or "tool error")
            return res
        finally:
            span.end()

    async def _timed_call(self, a: ActionRecord, traceparent: str | None = None) -> Any:
        """The tool call with its latency, error and in-flight metrics (labels: the connector's
        catalogue listing and the tool, never the tenant's connector instance)."""
        assert self.metrics is not None
        cn = self.view.connectors.get(a.connector_id or "")
        connector, tool = self.metrics.labels_of(
            cn.listing if cn else None, bool(cn and cn.remote_url), a.tool
        )
        latency, errors, in_flight = self.metrics.call(connector, tool)
        in_flight.inc()
        started = time.perf_counter()
        try:
            res = await self.calls.call(
                a.connector_id or "",
                a.tool,
                a.args,
                a.idempotency_key if a.side_effect else None,
                traceparent,
            )
        except BaseException:
            errors.inc()
            raise
        finally:
            latency.observe(time.perf_counter() - started)
            in_flight.dec()
        if not res.ok:
            errors.inc()
        return res

    def _count(self, d: Dispose) -> None:
        rc = d.receipt
        self.counts[rc.outcome] += 1
        if self.metrics is not None:
            self.metrics.disposed(rc.decision, rc.outcome)
        if rc.outcome == "applied":
            self.applied_by_operator[rc.operator_id] += 1


def _execute_span(a: ActionRecord) -> Any:
    return tracing.start(
        "execute",
        a.traceparent,
        kind="consumer",
        attributes={
            "fibric.action_id": a.id,
            "fibric.plan_id": a.plan_id,
            "fibric.tool": a.tool,
            "fibric.decision": a.verdict.decision,
        },
    )


def _end_execute_span(span: Any, d: Dispose | Reemit) -> None:
    if isinstance(d, Reemit):
        span.set_attribute("fibric.reemitted", True)
    else:
        span.set_attribute("fibric.decision", d.receipt.decision)
        span.set_attribute("fibric.outcome", d.receipt.outcome)
        if d.receipt.outcome == "failed":
            tracing.fail(span, (d.receipt.error or {}).get("code") or "failed")
    span.end()


def _is_transient(exc: BaseException) -> bool:
    from streams.guard import TRANSIENT

    return isinstance(exc, TRANSIENT)
