"""A short-lived cache of list responses read from ClickHouse (decisions §18).

Consoles and scripts poll the same pages (the newest receipts, one operator's refusals) far more
often than the ledger changes, and every ClickHouse read costs milliseconds while a cached page
costs microseconds. An entry is the final response body, keyed by tenant, mode and the
normalised query; it is served until whichever comes first:

- this process's ledger sink inserts rows of that table for that tenant (so a process that
  ingests a tenant's rows never serves a page older than them);
- ``ttl_s`` passes (rows another api process's sink inserted show within ``2 * ttl_s``: an
  entry between one and two ttl old is still served while one background read refreshes it, so
  polling clients never wait on ClickHouse together).

Concurrent misses of one page share one read (no stampede of identical queries). A read that
started before an insert never fills the cache, and a request that arrives after an insert
never joins it: each (tenant, table) has a generation, taken before the query and checked when
the result is stored. ``ttl_s = 0`` disables the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable

Key = tuple[str, ...]


class ReadCache:
    def __init__(self, ttl_s: float, max_entries: int = 4096) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._gen: dict[tuple[str, str], int] = {}
        # full key -> (fresh until, generation, body)
        self._entries: OrderedDict[Key, tuple[float, int, bytes]] = OrderedDict()
        self._inflight: dict[tuple[Key, int], asyncio.Task[bytes]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def generation(self, tenant_id: str, table: str) -> int:
        return self._gen.get((tenant_id, table), 0)

    async def read(
        self, tenant_id: str, table: str, key: Key, produce: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        """The body for ``key``: cached, or made by ``produce()`` (once, however many ask)."""
        if not self.enabled:
            return await produce()
        full = (tenant_id, table, *key)
        gen = self.generation(tenant_id, table)
        entry = self._entries.get(full)
        if entry is not None and entry[1] == gen:
            age_left = entry[0] - time.monotonic()
            if age_left > -self.ttl_s:
                self._entries.move_to_end(full)
                self.hits += 1
                if age_left <= 0 and (full, gen) not in self._inflight:
                    task = self._start(full, gen, produce)  # refresh ahead, serve this one
                    task.add_done_callback(_consume)
                return entry[2]
        self.misses += 1
        task = self._inflight.get((full, gen)) or self._start(full, gen, produce)
        return await asyncio.shield(task)

    def _start(
        self, full: Key, gen: int, produce: Callable[[], Awaitable[bytes]]
    ) -> asyncio.Task[bytes]:
        async def fill() -> bytes:
            try:
                body = await produce()
                if gen == self.generation(full[0], full[1]):  # else rows arrived meanwhile
                    self._entries[full] = (time.monotonic() + self.ttl_s, gen, body)
                    self._entries.move_to_end(full)
                    while len(self._entries) > self.max_entries:
                        self._entries.popitem(last=False)
                return body
            finally:
                self._inflight.pop((full, gen), None)

        task = asyncio.ensure_future(fill())
        self._inflight[(full, gen)] = task
        return task

    def invalidate(self, table: str, tenants: Iterable[str]) -> None:
        """Rows of ``table`` for ``tenants`` were inserted: their cached pages are stale."""
        for t in tenants:
            self._gen[(t, table)] = self._gen.get((t, table), 0) + 1


def _consume(task: asyncio.Task[bytes]) -> None:
    """A background refresh that failed is simply retried by the next request."""
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()
