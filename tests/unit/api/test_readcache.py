"""The receipts read cache: one read per page however many ask, dropped by this process's own
inserts, never filled by a read that raced an insert, bounded staleness otherwise."""

from __future__ import annotations

import asyncio

import pytest

from api.readcache import ReadCache


class Source:
    """A slow ClickHouse stand-in that counts reads and returns its current contents."""

    def __init__(self) -> None:
        self.rows = [b"r1"]
        self.reads = 0
        self.gate: asyncio.Event | None = None

    async def read(self) -> bytes:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        return b",".join(self.rows)


async def test_concurrent_misses_share_one_read() -> None:
    cache, src = ReadCache(ttl_s=60), Source()
    src.gate = asyncio.Event()
    waiters = [
        asyncio.ensure_future(cache.read("t1", "receipts", ("q",), src.read)) for _ in range(50)
    ]
    await asyncio.sleep(0.01)
    src.gate.set()
    assert set(await asyncio.gather(*waiters)) == {b"r1"}
    assert src.reads == 1
    assert await cache.read("t1", "receipts", ("q",), src.read) == b"r1" and src.reads == 1


async def test_an_insert_for_the_tenant_drops_its_pages_only() -> None:
    cache, src = ReadCache(ttl_s=60), Source()
    await cache.read("t1", "receipts", ("q",), src.read)
    await cache.read("t2", "receipts", ("q",), src.read)
    src.rows.append(b"r2")
    cache.invalidate("receipts", {"t1"})
    assert await cache.read("t1", "receipts", ("q",), src.read) == b"r1,r2"
    assert await cache.read("t2", "receipts", ("q",), src.read) == b"r1"  # still cached
    assert src.reads == 3


async def test_a_read_that_raced_an_insert_is_not_cached_nor_joined() -> None:
    cache, src = ReadCache(ttl_s=60), Source()
    src.gate = asyncio.Event()
    first = asyncio.ensure_future(cache.read("t1", "receipts", ("q",), src.read))
    await asyncio.sleep(0.01)
    src.rows.append(b"r2")
    cache.invalidate("receipts", {"t1"})  # the insert lands while the first read runs
    second = asyncio.ensure_future(cache.read("t1", "receipts", ("q",), src.read))
    await asyncio.sleep(0.01)
    src.gate.set()
    await first
    assert await second == b"r1,r2"  # it did not join the older read
    assert src.reads == 2
    assert await cache.read("t1", "receipts", ("q",), src.read) == b"r1,r2"


async def test_expired_pages_are_served_once_more_while_one_refresh_runs() -> None:
    cache, src = ReadCache(ttl_s=0.05), Source()
    await cache.read("t1", "receipts", ("q",), src.read)
    src.rows.append(b"r2")  # written by another api process: no local invalidation
    await asyncio.sleep(0.06)
    assert await cache.read("t1", "receipts", ("q",), src.read) == b"r1"  # stale, refreshing
    await asyncio.sleep(0.01)
    assert await cache.read("t1", "receipts", ("q",), src.read) == b"r1,r2"
    assert src.reads == 2
    await asyncio.sleep(0.12)  # beyond twice the ttl: never served
    src.rows.append(b"r3")
    assert await cache.read("t1", "receipts", ("q",), src.read) == b"r1,r2,r3"


async def test_errors_reach_every_waiter_and_are_not_cached() -> None:
    cache = ReadCache(ttl_s=60)
    calls = 0

    async def boom() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise RuntimeError("clickhouse down")

    results = await asyncio.gather(
        *(cache.read("t1", "receipts", ("q",), boom) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results) and calls == 1
    with pytest.raises(RuntimeError):
        await cache.read("t1", "receipts", ("q",), boom)
    assert calls == 2


async def test_ttl_zero_disables_it() -> None:
    cache, src = ReadCache(ttl_s=0), Source()
    for _ in range(3):
        await cache.read("t1", "receipts", ("q",), src.read)
    assert src.reads == 3
