"""Idempotency.run_recorded: the attempt is recorded before it is delivered, so a retry after a
failed delivery (a 503 whose record may still reach the broker) re-delivers the same attempt
instead of minting a new one. The e2e twin is tests/e2e/test_broker_down.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from api.broker import BrokerUnavailable
from api.idempotency import Idempotency
from ledger.store import Scope
from schemas.errors import ErrorCode, FibricError

SCOPE = Scope("t_acme", False)


class RowStore:
    """The two LedgerStore calls Idempotency makes (insert, and the grouped lookup's query),
    over a list of rows, oldest first as the query's ORDER BY created_at."""

    def __init__(self) -> None:
        self.rows: list[list[Any]] = []

    async def insert(self, table: str, rows: list[list[Any]], columns: Any) -> None:
        assert table == "idempotency_keys"
        self.rows.extend(rows)

    async def query(self, sql: str, params: dict[str, Any]) -> list[tuple]:
        assert "FROM idempotency_keys" in sql
        rows = [
            r
            for r in self.rows
            if r[0] in params["t"] and r[3] in params["k"] and r[8] >= params["nb"]
        ]
        return [tuple(r[:8]) for r in sorted(rows, key=lambda r: r[8])]


def request(key: str | None, rid: str) -> Any:
    headers = {"idempotency-key": key} if key is not None else {}
    return SimpleNamespace(
        headers=headers,
        method="POST",
        url=SimpleNamespace(path="/v1/events"),
        scope={"state": {"request_id": rid}},
    )


class Attempts:
    """prepare mints a new id per call; deliver fails while ``down``."""

    def __init__(self) -> None:
        self.minted = 0
        self.delivered: list[str] = []
        self.down = False

    def prepare(self) -> tuple[int, bytes, str]:
        self.minted += 1
        ev = f"ev_{self.minted}"
        return 201, b'{"id":"%s"}' % ev.encode(), ev

    async def deliver(self, ev: str) -> None:
        if self.down:
            raise BrokerUnavailable("stalled")
        self.delivered.append(ev)

    async def replay(self, recorded: bytes) -> None:
        await self.deliver(recorded.decode().split('"')[3])


def run(idem: Idempotency, a: Attempts, key: str | None, rid: str, body: bytes = b'{"n":1}'):
    return idem.run_recorded(request(key, rid), SCOPE, body, a.prepare, a.deliver, a.replay)


def test_a_retry_after_a_failed_delivery_redelivers_the_same_attempt():
    async def main() -> None:
        store, a = RowStore(), Attempts()
        idem = Idempotency(store)  # type: ignore[arg-type]
        a.down = True
        with pytest.raises(BrokerUnavailable):
            await run(idem, a, "k1", "req_1")
        assert len(store.rows) == 1  # recorded before the delivery was tried
        a.down = False
        r = await run(idem, a, "k1", "req_2")
        assert r.status_code == 200 and r.content == b'{"id":"ev_1"}'
        assert r.headers["Idempotent-Replayed"] == "true"
        assert r.headers["Original-Request-Id"] == "req_1"
        assert a.minted == 1 and a.delivered == ["ev_1"]
        # a second api process (empty cache, same ClickHouse) answers the same attempt
        other = Idempotency(store)  # type: ignore[arg-type]
        r = await run(other, a, "k1", "req_3")
        assert r.content == b'{"id":"ev_1"}' and a.minted == 1
        assert a.delivered == ["ev_1", "ev_1"]  # delivered again: the worker's dedup keeps one

    asyncio.run(main())


def test_fresh_attempts_conflicts_and_no_key():
    async def main() -> None:
        store, a = RowStore(), Attempts()
        idem = Idempotency(store)  # type: ignore[arg-type]
        r = await run(idem, a, "k1", "req_1")
        assert r.status_code == 201 and a.delivered == ["ev_1"]
        with pytest.raises(FibricError) as exc:
            await run(idem, a, "k1", "req_2", body=b'{"n":2}')
        assert exc.value.code == ErrorCode.IDEMPOTENCY_CONFLICT
        assert a.minted == 1
        # without a key nothing is recorded and every request is a new attempt
        await run(idem, a, None, "req_3")
        await run(idem, a, None, "req_4")
        assert a.minted == 3 and len(store.rows) == 1

    asyncio.run(main())


def test_a_refused_request_records_nothing():
    async def main() -> None:
        store = RowStore()
        idem = Idempotency(store)  # type: ignore[arg-type]

        def refuse() -> tuple[int, bytes, str]:
            raise FibricError(ErrorCode.INVALID_PARAMETER, "no")

        async def never(_: Any) -> None:
            raise AssertionError("a refused request is never delivered")

        with pytest.raises(FibricError):
            await idem.run_recorded(request("k1", "req_1"), SCOPE, b"{}", refuse, never, never)
        assert store.rows == []

    asyncio.run(main())


def test_concurrent_new_keys_share_one_lookup_query():
    async def main() -> None:
        store, a = RowStore(), Attempts()
        queries = 0
        inner = store.query

        async def counting(sql: str, params: dict[str, Any]) -> list[tuple]:
            nonlocal queries
            queries += 1
            await asyncio.sleep(0)  # a query takes a while: others queue behind it
            return await inner(sql, params)

        store.query = counting  # type: ignore[method-assign]
        idem = Idempotency(store)  # type: ignore[arg-type]
        await asyncio.gather(*(run(idem, a, f"k{i}", f"req_{i}") for i in range(50)))
        assert a.minted == 50 and len(store.rows) == 50
        assert queries <= 2  # the first key alone, then the 49 that queued behind it
        # and every one is found again by a fresh process
        other = Idempotency(store)  # type: ignore[arg-type]
        r = await run(other, a, "k7", "req_x")
        assert r.status_code == 200 and a.minted == 50

    asyncio.run(main())
