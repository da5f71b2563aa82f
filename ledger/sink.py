"""The ledger sink: consumes ledger rows, refusal records and config changes and batch-inserts
them into ClickHouse. Runs inside the api role (the one process that owns chDB).

Order per batch, written down because exactly-once rows depend on it:

1. fetch whatever is available (at most MAX_BATCH records);
2. decode and drop ids repeated inside the batch;
3. ask ClickHouse which ids it already holds (a replay after a crash between 4 and 5, or a
   worker that re-derived rows after a crash) and drop those — within a time range that holds
   every stored copy, see ``_id_check_range``;
4. insert each table's rows (retrying with backoff until ClickHouse takes them);
   4b. run the before-commit hooks (webhook deliveries are derived and stored here);
5. commit the consumer offsets;
6. tell listeners which events are now readable (the read-your-writes overlay).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import ValidationError

from ledger.metrics import SinkMetrics
from ledger.store import VAULT_COLUMNS, LedgerStore
from ledger.tables import TABLES
from schemas import tracing
from schemas.config import ConfigRecord
from schemas.envelope import DeadLetter, LedgerRecord
from schemas.ids import id_time
from streams.kafka import REQUEST_TIMEOUT_MS, stop_consuming
from streams.topics import ACTIONS, COMMANDS, EVENTS, INGEST_GROUP, OFFERS

log = logging.getLogger(__name__)

# Upper bound on rows per insert: ClickHouse prefers few large inserts; 20k rows of ~1 KB keep
# each insert well under a second on chDB.
MAX_BATCH = 20_000
# How long a fetch waits when nothing is available; data that is available returns at once.
FETCH_WAIT_MS = 50
RETRY_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
# A batch refused this many times while ClickHouse answers a ping is split to find the row it
# refuses (a refusal that survives three attempts is about the data, not the server).
SPLIT_AFTER_ATTEMPTS = 3
# Clocks of the roles that write ledger rows (api, workers) may disagree by this much; the id
# check's time range is widened by it (NTP keeps hosts within milliseconds; 5 min is ample and
# costs a few more granules of the primary key per check).
CLOCK_SKEW = timedelta(minutes=5)
# Under load a batch grows for up to this long, or to this many records, before it is stored.
ACCUMULATE_S = 0.25
MIN_BATCH = 5_000
# Shutdown drain (see ``drain``): the embedded broker keeps nothing, so whatever is not in
# ClickHouse when it stops is lost. 60 s covers a backlog of ~100k events at the loop's measured
# rate on two cores, yet a dead or stuck worker cannot hang Ctrl-C for longer than a minute.
DRAIN_TIMEOUT_S = 60.0
# How often the drain re-reads offsets: a round trip is ~1 ms locally; the workers commit every
# second, so polling faster would not finish sooner.
DRAIN_POLL_S = 0.1
# The workers' input topics, in pipeline order: events and config commands make offers and
# actions, offers make actions, actions make receipts. Each stage is drained before the next
# one's end offsets are read, so the drain covers what the earlier stages produced.
UPSTREAM_STAGES: tuple[tuple[str, ...], ...] = ((EVENTS, COMMANDS), (OFFERS,), (ACTIONS,))


class LedgerSink:
    def __init__(
        self,
        bootstrap: str,
        store: LedgerStore,
        *,
        ledger_topic: str,
        dlq_topic: str,
        config_topic: str,
        group_id: str,
        session_timeout_s: float = 6.0,
        metrics: SinkMetrics | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._store = store
        self._topics = {"ledger": ledger_topic, "dlq": dlq_topic, "config": config_topic}
        self._group = group_id
        self._session_ms = int(session_timeout_s * 1000)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.listeners: list[Callable[[list[str]], None]] = []
        # Called after each insert with the table and the tenants whose rows it held (read caches
        # drop what those rows make stale).
        self.on_insert: list[Callable[[str, set[str]], None]] = []
        # Called after each insert with the table and the rows it just stored (each row once:
        # not those a replay found already stored) — the live streams' hub (api/hub.py). Must
        # be synchronous and never wait.
        self.on_rows: list[Callable[[str, list[Any]], None]] = []
        # Awaited after a batch is stored and before its offsets are committed (step 4b), with
        # every decoded row by kind — stored now or already (a replay) — so what they derive
        # (webhook deliveries) survives a crash between insert and commit. Must be idempotent;
        # a hook that fails is logged and skipped, never allowed to stall the ledger.
        self.before_commit: list[Callable[[dict[str, dict[str, Any]]], Awaitable[None]]] = []
        self.inserted = {"events": 0, "dead_letters": 0, "config_log": 0, "duplicates": 0}
        # dead letters stored, by reason (read by the api's /metrics collector)
        self.dead_letter_reasons: Counter[str] = Counter()
        self.metrics = metrics
        self.healthy = True
        # next offset per partition whose records are inserted *and* committed (for ``drain``)
        self._stored_upto: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            *self._topics.values(),
            bootstrap_servers=self._bootstrap,
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_wait_ms=FETCH_WAIT_MS,
            session_timeout_ms=self._session_ms,
            heartbeat_interval_ms=self._session_ms // 4,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="ledger-sink")

    async def stop(self) -> None:
        await stop_consuming(self._task, self._consumer)

    async def drain(
        self,
        upstream_group: str = INGEST_GROUP,
        stages: Sequence[Sequence[str]] = UPSTREAM_STAGES,
        timeout_s: float = DRAIN_TIMEOUT_S,
        workers_alive: Callable[[], bool] | None = None,
    ) -> bool:
        """Keep storing until everything accepted before this call is in ClickHouse; call it at
        shutdown, after the api stopped accepting and flushed its producer, while the workers
        still run. The sink keeps consuming in the background; this only waits, in order:

        1. for each stage of ``stages``: read its topics' end offsets, then wait until the
           workers' group (``upstream_group``) has committed up to them — the workers
           processed that input and their outputs (ledger rows, next-stage records) are acked,
           since a worker commits only after its batch's sends;
        2. read the end offsets of this sink's own partitions, then wait until this sink has
           inserted and committed up to them.

        Returns False when ``timeout_s`` passed first (what was left is logged): a dead worker
        must not hang shutdown forever. ``workers_alive`` (the api: a fresh worker heartbeat)
        ends the wait for the workers at once when it says none is left to do the work.

        Only the embedded memory-only broker needs this (the api calls it only then): a durable
        Kafka keeps what is not stored yet, and the next sink stores it."""
        if self._consumer is None or self._task is None or self._task.done():
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        offsets = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            request_timeout_ms=REQUEST_TIMEOUT_MS,
        )
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._bootstrap, request_timeout_ms=REQUEST_TIMEOUT_MS
        )
        await offsets.start()
        await admin.start()
        try:
            for topics in stages:
                tps = await _partitions(admin, topics)
                targets = await offsets.end_offsets(tps) if tps else {}

                async def behind(targets: dict[TopicPartition, int] = targets) -> int:
                    done = await admin.list_consumer_group_offsets(
                        upstream_group, partitions=list(targets)
                    )
                    return sum(
                        max(0, end - max(0, done[tp].offset if tp in done else 0))
                        for tp, end in targets.items()
                    )

                what = f"workers' input {topics}"
                if not await _wait_until_zero(behind, deadline, what, workers_alive):
                    return False
            consumer = self._consumer
            own = sorted(consumer.assignment())
            targets = await offsets.end_offsets(own) if own else {}

            async def unstored() -> int:
                left = 0
                for tp, end in targets.items():
                    if tp not in self._stored_upto:
                        # nothing stored from it in this process: start from its commit
                        self._stored_upto[tp] = (await consumer.committed(tp)) or 0
                    left += max(0, end - self._stored_upto[tp])
                return left

            drained = await _wait_until_zero(unstored, deadline, "ledger records")
            if drained:
                log.info("ledger drained in %.1fs", timeout_s - (deadline - loop.time()))
            return drained
        except Exception:  # noqa: BLE001 - a broker gone mid-drain: nothing more can be stored
            log.exception("ledger drain failed")
            return False
        finally:
            await offsets.stop()
            await admin.close()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.getmany(
                    timeout_ms=FETCH_WAIT_MS, max_records=MAX_BATCH
                )
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - broker hiccup: keep the sink alive
                log.exception("ledger fetch failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if not batch:
                continue
            batch = await self._accumulate(batch)
            started = time.perf_counter()
            started_ns = tracing.now_ns() if tracing.ENABLED else 0
            stored = await self._store_batch(batch)
            if self.metrics is not None:
                self._observe(batch, time.perf_counter() - started)
            if started_ns:
                _trace_insert(batch, started_ns)
            while True:
                try:
                    await self._consumer.commit()
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - a failed commit only means a later replay
                    log.exception("ledger offset commit failed; retrying")
                    await asyncio.sleep(0.5)
            for tp, msgs in batch.items():
                if msgs:
                    self._stored_upto[tp] = msgs[-1].offset + 1
            for listener in self.listeners:
                listener(stored)

    def _observe(self, batch: dict[Any, list[Any]], seconds: float) -> None:
        assert self.metrics is not None
        oldest = min((msgs[0].timestamp for msgs in batch.values() if msgs), default=None)
        rows = sum(len(msgs) for msgs in batch.values())
        self.metrics.batch(rows, seconds, oldest, int(time.time() * 1000))

    def lag_records(self) -> int | None:
        """Records on this sink's partitions not stored yet: the broker's high watermark (as of
        the last fetch) minus what is stored, summed; None before the first fetch."""
        consumer = self._consumer
        if consumer is None:
            return None
        left, known = 0, False
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            known = True
            left += max(0, high - self._stored_upto.get(tp, high))
        return left if known else None

    async def _accumulate(self, batch: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
        """Under load, keep fetching for up to ACCUMULATE_S (or MIN_BATCH records) so that
        ClickHouse gets a few large inserts instead of many small ones: each insert and each
        dedup query has a fixed cost that dominated the sink's time (decisions §20). A lone
        record (an idle system) is stored at once."""
        assert self._consumer is not None
        n = sum(len(v) for v in batch.values())
        if n < 2:
            return batch
        deadline = asyncio.get_running_loop().time() + ACCUMULATE_S
        while n < MIN_BATCH:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            more = await self._consumer.getmany(
                timeout_ms=max(1, int(left * 1000)), max_records=MAX_BATCH - n
            )
            if not more:
                break
            for tp, msgs in more.items():
                batch.setdefault(tp, []).extend(msgs)
                n += len(msgs)
        return batch

    def _decode(self, batch: dict[Any, list[Any]]) -> dict[str, dict[str, Any]]:
        """Records by kind, keyed by their dedup identity (repeats inside a batch dropped)."""
        out: dict[str, dict[str, Any]] = {k: {} for k in TABLES}
        for tp, messages in batch.items():
            for msg in messages:
                try:
                    if tp.topic == self._topics["ledger"]:
                        rec = LedgerRecord.model_validate_json(msg.value)
                        obj, kind = TABLES[rec.kind].model.model_validate(rec.row), rec.kind
                    elif tp.topic == self._topics["dlq"]:
                        obj, kind = DeadLetter.model_validate_json(msg.value), "dead_letter"
                    else:
                        obj, kind = ConfigRecord.model_validate_json(msg.value), "config"
                except (ValidationError, ValueError, KeyError):
                    # Only Fibric's own roles write these topics; a bad record is a bug, logged
                    # with its coordinates so it can be inspected, and skipped.
                    log.error("undecodable record on %s[%d]@%d", tp.topic, tp.partition, msg.offset)
                    continue
                out[kind].setdefault(TABLES[kind].identity(obj), obj)
        return out

    async def _store_batch(self, batch: dict[Any, list[Any]]) -> list[str]:
        # Decoding (pydantic, ~15-30 µs a record, up to MAX_BATCH records) runs in a thread: on
        # the loop it stalled every request of the api for the whole batch (tens of ms under
        # S2); in a thread the loop gets the GIL back every switch interval (decisions §46).
        by_kind = await asyncio.to_thread(self._decode, batch)
        # Vault records (encrypted credentials) never enter the append-only config_log: they are
        # upserted into `vault`, and a purge (ciphertext null) deletes the row.
        vault = [c for c in by_kind["config"].values() if c.kind == "vault"]
        by_kind["config"] = {k: c for k, c in by_kind["config"].items() if c.kind != "vault"}
        if vault:
            await self._with_retry(lambda: self._store_vault(vault), "vault")
        stored_events: list[str] = []
        for kind, objs in by_kind.items():
            if not objs:
                continue
            spec = TABLES[kind]
            table, time_attr, time_col = spec.table, spec.time_attr, spec.time_col
            columns, to_row, id_expr = spec.columns, spec.to_row, spec.id_expr
            lo, hi = _id_check_range(objs.values(), time_attr)

            async def insert_new(
                table=table,
                time_col=time_col,
                columns=columns,
                objs=objs,
                to_row=to_row,
                lo=lo,
                hi=hi,
                id_expr=id_expr,
            ) -> None:
                have = await self._store.existing_ids(table, time_col, objs.keys(), lo, hi, id_expr)
                new = [o for k, o in objs.items() if k not in have]
                await self._store.insert(table, [to_row(o) for o in new], columns)
                if new:
                    if table == "dead_letters":
                        self.dead_letter_reasons.update(o.reason for o in new)
                    tenants = {o.tenant_id for o in new}
                    for hook in self.on_insert:
                        hook(table, tenants)
                    for rows_hook in self.on_rows:
                        rows_hook(table, new)
                self.inserted["duplicates"] += len(have)
                self.inserted[table] = self.inserted.get(table, 0) + len(new)

            await self._insert_isolating(insert_new, objs, table)
            if kind == "event":
                stored_events = list(objs.keys())
        for hook in self.before_commit:  # 4b.
            try:
                await hook(by_kind)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a derived output must not stop the ledger
                log.exception("ledger before-commit hook failed")
        return stored_events

    async def _store_vault(self, records: list[ConfigRecord]) -> None:
        keep = [r for r in records if r.data.get("ciphertext")]
        purge = [str(r.data["connector_id"]) for r in records if not r.data.get("ciphertext")]
        await self._store.insert(
            "vault",
            [[r.tenant_id, r.data["connector_id"], r.at, r.id, r.model_dump_json()] for r in keep],
            VAULT_COLUMNS,
        )
        await self._store.purge_vault(purge)

    async def _insert_isolating(
        self, insert: Callable[..., Any], objs: dict[str, Any], table: str
    ) -> None:
        """Insert ``objs``; a batch ClickHouse keeps refusing while it answers is split, and a
        single row it refuses on its own is set aside (logged with its id, counted in
        ``inserted["rejected"]``; its record stays on the ledger topic), so one bad row can never
        stall the ledger for every tenant. While ClickHouse does not answer, nothing is ever
        skipped: the batch is retried until it does."""
        attempt = 0
        while True:
            try:
                await insert(objs=objs)
                self.healthy = True
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - classified below
                self.healthy = False
                delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                log.exception("insert into %s failed; retrying in %.1fs", table, delay)
                attempt += 1
                if attempt >= SPLIT_AFTER_ATTEMPTS and await self._store.ping():
                    break
                await asyncio.sleep(delay)
        items = list(objs.items())
        if len(items) == 1:
            self.inserted["rejected"] = self.inserted.get("rejected", 0) + 1
            log.error("ClickHouse refuses the %s row %s; set aside", table, items[0][0])
            return
        mid = len(items) // 2
        for half in (items[:mid], items[mid:]):
            await self._insert_isolating(insert, dict(half), table)

    async def _with_retry(self, fn: Callable[[], Any], what: str) -> Any:
        attempt = 0
        while True:
            try:
                result = await fn()
                self.healthy = True
                return result
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - ClickHouse down: hold the batch, retry, never skip
                self.healthy = False
                delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                log.exception("insert into %s failed; retrying in %.1fs", what, delay)
                await asyncio.sleep(delay)
                attempt += 1


def _trace_insert(batch: dict[Any, list[Any]], started_ns: int) -> None:
    """The insert's span in the trace of every record it stored (schemas/tracing.py): one span
    per distinct ``traceparent`` (an event's rows share one), all timed as the batch's insert."""
    traced = [
        tp for msgs in batch.values() for m in msgs if (tp := tracing.header_value(m.headers))
    ]
    if traced:
        rows = sum(len(msgs) for msgs in batch.values())
        tracing.record_spans(
            "ledger.insert",
            traced,
            started_ns,
            tracing.now_ns(),
            {"db.system.name": "clickhouse", "fibric.ledger.batch_records": rows},
        )


async def _partitions(admin: AIOKafkaAdminClient, topics: Sequence[str]) -> list[TopicPartition]:
    return [
        TopicPartition(t["topic"], p["partition"])
        for t in await admin.describe_topics(list(topics))
        if not t.get("error_code")
        for p in t["partitions"]
    ]


async def _wait_until_zero(
    left: Callable[[], Awaitable[int]],
    deadline: float,
    what: str,
    alive: Callable[[], bool] | None = None,
) -> bool:
    loop = asyncio.get_running_loop()
    while True:
        n = await left()
        if n == 0:
            return True
        if alive is not None and not alive():
            log.warning("ledger drain stopped: no worker alive, %d records of %s left", n, what)
            return False
        if loop.time() >= deadline:
            log.warning("ledger drain timed out with %d records of %s left", n, what)
            return False
        await asyncio.sleep(DRAIN_POLL_S)


def _id_check_range(objs: Iterable[Any], time_attr: str) -> tuple[datetime, datetime]:
    """The time range in which a stored copy of any of ``objs`` must lie.

    A replayed row keeps its id but not necessarily its time column: a receipt's ``created_at``
    is when the (re-)disposition happened. Every id embeds a time no later than the row's own
    (the event's time for plans and actions, the action's for receipts, the record's for events
    and dead letters), and a stored copy was written before its replay. So the range starts at
    the earliest embedded id time (or row time, whichever is earlier) and ends at the latest row
    time, widened by CLOCK_SKEW on both sides for roles whose clocks disagree a little. It stays
    narrow in the steady state (the primary key still prunes) and is never too narrow."""
    times, id_times = [], []
    for o in objs:
        times.append(getattr(o, time_attr))
        t = id_time(o.id)
        if t is not None:
            id_times.append(t)
    return min([*times, *id_times]) - CLOCK_SKEW, max(times) + CLOCK_SKEW
