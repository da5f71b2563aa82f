"""One row ClickHouse refuses must never stall the ledger (issue 15: a bad record never stops
the pipeline): the sink splits a refused batch, sets the one bad row aside and stores the rest.
Against real chDB; the refusal is a real ClickHouse error (a value the column cannot hold)."""

from __future__ import annotations

import pytest

from ledger.sink import LedgerSink
from ledger.store import LedgerStore

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path):
    s = LedgerStore(f"chdb://{tmp_path / 'ch'}")
    s.open()
    yield s
    s.close()


async def test_a_refused_row_is_set_aside_and_the_rest_stored(store):
    await store.query("CREATE TABLE t (id String, n UInt8) ENGINE = MergeTree ORDER BY id")
    sink = LedgerSink(
        "127.0.0.1:1", store, ledger_topic="l", dlq_topic="d", config_topic="c", group_id="g"
    )
    rows = {f"r{i}": i for i in range(40)}
    rows["bad"] = "not a number"

    async def insert(objs: dict) -> None:
        await store.insert("t", [[k, v] for k, v in objs.items()], ["id", "n"])

    await sink._insert_isolating(insert, rows, "t")
    stored = {r[0] for r in await store.query("SELECT id FROM t")}
    assert stored == {f"r{i}" for i in range(40)}
    assert sink.inserted["rejected"] == 1


async def test_nothing_is_set_aside_while_clickhouse_does_not_answer(store):
    sink = LedgerSink(
        "127.0.0.1:1", store, ledger_topic="l", dlq_topic="d", config_topic="c", group_id="g"
    )
    calls = {"n": 0, "ping": 0}

    async def down() -> bool:
        calls["ping"] += 1
        return calls["ping"] > 3  # "back up" after three failed pings

    store.ping = down  # the server is unreachable: ping fails

    async def insert(objs: dict) -> None:
        calls["n"] += 1
        if calls["ping"] <= 3:
            raise ConnectionError("clickhouse unreachable")

    await sink._insert_isolating(insert, {"a": 1, "b": 2}, "t")
    assert sink.inserted.get("rejected", 0) == 0
    assert calls["n"] >= 4  # retried the whole batch until it went in
