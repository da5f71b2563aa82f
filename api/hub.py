"""The fan-out hub behind the live streams (decisions §33): the ledger sink hands it every row it
has just stored (``LedgerSink.on_rows``), the hub numbers them in the order they became readable
and offers each to the subscribers of the row's tenant and mode.

What it must never do: block or slow the sink. ``publish`` is synchronous, does no I/O and never
waits for a subscriber; a subscriber whose bounded queue is full is dropped on the spot (its
stream then ends with a clear reason) and costs nothing more.

Positions: every published row gets the next ``seq`` of this process (``epoch`` names the
process, so a position from another process or an earlier run is recognised as foreign). The
last ``ring_size`` rows stay in a ring, so a stream that reconnects with a recent position gets
exactly what it missed from memory (``covers`` / ``tail``); older positions fall back to the
ledger (api/controllers/streams.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ledger.store import Scope
from schemas.errors import ErrorCode, FibricError

log = logging.getLogger(__name__)

# The ledger tables whose rows are streamed (the sink's table names).
STREAMED_TABLES = frozenset({"events", "plans", "actions", "receipts"})
# Why a subscription ended, as the stream reports it.
SLOW_CONSUMER = "slow_consumer"
SHUTDOWN = "shutdown"
# A subscriber with this many times its queue bound waiting is dropped whatever its lag.
HARD_FACTOR = 10


@dataclass(frozen=True, slots=True)
class Item:
    seq: int
    table: str
    obj: Any
    # frames built from this row, keyed by what they depend on (the stream's filters): streams
    # with the same filters serialise a row once, not once each
    frames: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def id(self) -> str:
        return self.obj.id


def _order(obj: Any) -> tuple[Any, str, int]:
    # rows of one insert are published in their list order (time, then id; a plan's versions
    # by version): the order GET lists and cursors use, so a batch never reads out of order
    ts = getattr(obj, "created_at", None) or getattr(obj, "proposed_at", None)
    return (ts, obj.id, getattr(obj, "version", 0))


class Subscription:
    """One stream's view of the hub: a bounded queue of the rows of its tenant and mode, in
    ``seq`` order. The hub hands over whole batches (one append per batch, whatever its size);
    the stream's own task filters them in ``next`` — so a thousand streams cost the sink a
    thousand appends per batch, never a filter per row per stream."""

    def __init__(
        self,
        hub: StreamHub,
        scope: Scope,
        tables: frozenset[str],
        wants: Callable[[Item], bool],
        maxsize: int,
        max_lag_s: float,
    ) -> None:
        self.hub = hub
        self.scope = scope
        self.tables = tables
        self.wants = wants
        self.maxsize = maxsize
        self.max_lag_s = max_lag_s
        self.start_seq = hub.seq  # everything after this reaches the queue
        # [enqueued at, rows, index of the next row to look at]
        self._queue: deque[list[Any]] = deque()
        self._count = 0  # rows waiting (not yet looked at)
        self._wake = asyncio.Event()
        self.ended: str | None = None

    def offer(self, items: list[Item], now: float) -> None:
        """Called by the hub (synchronously, from the sink's task): never waits.

        The sink stores in batches (up to thousands of rows at once), so a consumer that keeps
        up still sees bursts: it is slow when more than ``maxsize`` rows wait *and* the oldest
        has waited over ``max_lag_s``, or when ``HARD_FACTOR`` times ``maxsize`` wait at all
        (the memory bound)."""
        if self.ended is not None or not items:
            return
        n = self._count
        if n + len(items) > self.maxsize * HARD_FACTOR or (n and self.lagging(now)):
            self.end(SLOW_CONSUMER)
            return
        self._queue.append([now, items, 0])
        self._count += len(items)
        self._wake.set()

    def lagging(self, now: float) -> bool:
        return self._count >= self.maxsize and now - self._queue[0][0] > self.max_lag_s

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            self._queue.clear()
            self._count = 0
            self.hub._remove(self)
            self._wake.set()

    def close(self) -> None:
        """The stream is done (client gone or finished): leave the hub."""
        if self.ended is None:
            self.ended = "closed"
            self._queue.clear()
            self._count = 0
            self.hub._remove(self)

    def _pop_wanted(self) -> Item | None:
        while self._queue:
            head = self._queue[0]
            items, i = head[1], head[2]
            while i < len(items):
                item = items[i]
                i += 1
                self._count -= 1
                try:
                    wanted = item.table in self.tables and self.wants(item)
                except Exception:  # noqa: BLE001 - this stream's fault ends this stream only
                    log.exception("stream hub: a subscription's filter failed; ending it")
                    self.end("error")
                    return None
                if wanted:
                    head[2] = i
                    if i == len(items):
                        self._queue.popleft()
                    return item
            self._queue.popleft()
        return None

    async def next(self, timeout: float) -> Item | None:
        """The next row it wants, or None when ``timeout`` passed without one (time for a
        keep-alive) or the subscription ended (check ``ended``)."""
        item = self._pop_wanted()
        if item is not None or self.ended is not None:
            return item
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            return None
        return self._pop_wanted()

    def __len__(self) -> int:
        return self._count


class StreamHub:
    def __init__(
        self, ring_size: int, queue_max: int, max_per_tenant: int, max_lag_s: float = 2.0
    ) -> None:
        self.epoch = secrets.token_hex(4)
        self.seq = 0
        self.queue_max = queue_max
        self.max_lag_s = max_lag_s
        self.max_per_tenant = max_per_tenant
        self._ring: deque[Item] = deque(maxlen=max(1, ring_size))
        self._ring_seqs: deque[int] = deque(maxlen=max(1, ring_size))
        self._event_seq: dict[str, tuple[int, Scope]] = {}
        self._subs: dict[Scope, set[Subscription]] = {}
        self._per_tenant: Counter[str] = Counter()
        self.dropped = 0  # subscriptions ended as slow consumers (for tests and metrics)

    # ---- the sink's side -------------------------------------------------------------------
    def publish(self, table: str, rows: Iterable[Any]) -> None:
        """Rows just stored in ``table`` (each once: the sink passes only rows it inserted)."""
        if table not in STREAMED_TABLES:
            return
        try:
            self._publish(table, sorted(rows, key=_order))
        except Exception:  # noqa: BLE001 - a stream fault must never fail the ledger's insert
            log.exception("stream hub: publishing %s rows failed", table)

    def _publish(self, table: str, rows: list[Any]) -> None:
        by_scope: dict[Scope, list[Item]] = {}
        for obj in rows:
            self.seq += 1
            item = Item(self.seq, table, obj)
            if len(self._ring) == self._ring.maxlen:
                old = self._ring[0]
                if old.table == "events" and self._event_seq.get(old.id, (0,))[0] == old.seq:
                    del self._event_seq[old.id]
            self._ring.append(item)
            self._ring_seqs.append(item.seq)
            scope = Scope(obj.tenant_id, obj.livemode)
            if table == "events":
                self._event_seq[obj.id] = (item.seq, scope)
            if scope in self._subs:
                by_scope.setdefault(scope, []).append(item)
        now = time.monotonic()
        for scope, items in by_scope.items():
            for sub in tuple(self._subs.get(scope, ())):
                if table in sub.tables:
                    sub.offer(items, now)

    # ---- the streams' side -----------------------------------------------------------------
    def subscribe(
        self, scope: Scope, tables: Iterable[str], wants: Callable[[Item], bool]
    ) -> Subscription:
        """A new subscription from the current position on; a tenant already holding
        ``max_per_tenant`` streams in this process is refused (429)."""
        if self._per_tenant[scope.tenant_id] >= self.max_per_tenant:
            raise FibricError(
                ErrorCode.RATE_LIMITED,
                f"This tenant already holds {self.max_per_tenant} live streams on this server; "
                "close one or retry after Retry-After seconds.",
                headers={"Retry-After": "5"},
            )
        sub = Subscription(
            self, scope, frozenset(tables), wants, self.queue_max, self.max_lag_s
        )
        self._subs.setdefault(scope, set()).add(sub)
        self._per_tenant[scope.tenant_id] += 1
        return sub

    def _remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.scope)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.scope]
        self._per_tenant[sub.scope.tenant_id] -= 1
        if self._per_tenant[sub.scope.tenant_id] <= 0:
            del self._per_tenant[sub.scope.tenant_id]
        if sub.ended == SLOW_CONSUMER:
            self.dropped += 1

    def covers(self, seq: int) -> bool:
        """Whether every row published after ``seq`` is still in the ring."""
        if seq < 0 or seq > self.seq:
            return False
        return seq == self.seq or self._ring_seqs[0] <= seq + 1

    def tail(self, seq: int, sub: Subscription) -> list[Item]:
        """The rows after ``seq`` up to the subscription's start that ``sub`` wants (call in
        the same step as ``subscribe``, before any await, so nothing falls between)."""
        start = bisect_right(self._ring_seqs, seq)
        out = []
        for i in range(start, len(self._ring)):
            item = self._ring[i]
            if item.seq > sub.start_seq:
                break
            obj = item.obj
            if (
                obj.tenant_id == sub.scope.tenant_id
                and obj.livemode == sub.scope.livemode
                and item.table in sub.tables
                and sub.wants(item)
            ):
                out.append(item)
        return out

    def event_seq(self, scope: Scope, event_id: str) -> int | None:
        """The position of a recent event of ``scope`` (None if unknown or another tenant's)."""
        found = self._event_seq.get(event_id)
        return found[0] if found and found[1] == scope else None

    def event(self, scope: Scope, event_id: str) -> Any | None:
        seq = self.event_seq(scope, event_id)
        if seq is None:
            return None
        i = bisect_right(self._ring_seqs, seq) - 1
        return self._ring[i].obj if i >= 0 and self._ring[i].seq == seq else None

    def streams(self, tenant_id: str | None = None) -> int:
        if tenant_id is None:
            return sum(self._per_tenant.values())
        return self._per_tenant.get(tenant_id, 0)

    def sweep(self) -> int:
        """Drop the subscriptions that lag now (``offer`` only checks when a row arrives, and
        a stalled client's backlog must not wait for the next row); returns how many."""
        now = time.monotonic()
        lagging = [
            sub for subs in self._subs.values() for sub in subs if sub._queue and sub.lagging(now)
        ]
        for sub in lagging:
            sub.end(SLOW_CONSUMER)
        return len(lagging)

    async def run_sweeps(self) -> None:
        """``sweep`` every half lag bound, until cancelled (the api's lifespan runs it)."""
        while True:
            await asyncio.sleep(self.max_lag_s / 2)
            self.sweep()

    def close_all(self, reason: str = SHUTDOWN) -> None:
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.end(reason)
