"""Crash between each pair of commit steps (streams/checkpoint.py) and prove, after the batch is
replayed, that nothing is lost or doubled: one receipt id per action, one applied side effect
per idempotency key, dedup keys remembered only once their events are on the broker.

The executor here is the real one (streams/executor.py around agents/executor.py) with its real
RocksDB state; the broker and the MCP connector are in-memory stand-ins that can fail at a
chosen step (this is a unit test of the commit order; the integration and chaos tests run the
real broker and connectors)."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from types import SimpleNamespace

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError

from agents.executor import state_key
from schemas.plan import ActionRecord
from streams.checkpoint import Checkpoint
from streams.dedup import DedupStore
from streams.execstate import ExecStateStore
from streams.executor import Executor
from streams.topics import EXECSTATE, LEDGER
from tests.unit.agents.test_executor_core import action as core_action


class Crash(BaseException):
    """The process dies here: not an Exception, so no handler in the executor can catch it and
    carry on (as with a kill -9); the batch is then replayed."""


class FakeBroker:
    """Keeps acknowledged records; can fail the Nth send or the Nth acknowledgement."""

    def __init__(self) -> None:
        self.acked: list[tuple[str, bytes | None, bytes]] = []
        self.fail_send_at: int | None = None
        self.fail_ack_at: int | None = None
        self.sends = 0
        self.acks = 0
        self.offsets: Counter[tuple[str, int]] = Counter()

    async def send(self, topic, value, key=None, partition=None, headers=None):
        self.sends += 1
        if self.fail_send_at is not None and self.sends >= self.fail_send_at:
            raise Crash(f"send {self.sends}")
        fut = asyncio.get_running_loop().create_future()
        self.acks += 1
        if self.fail_ack_at is not None and self.acks >= self.fail_ack_at:
            fut.set_exception(Crash(f"ack {self.acks}"))
            return fut
        p = partition or 0
        off = self.offsets[(topic, p)]
        self.offsets[(topic, p)] += 1
        self.acked.append((topic, key, value))
        fut.set_result(SimpleNamespace(offset=off, partition=p))
        return fut

    def receipts(self) -> list[dict]:
        return [orjson.loads(v)["row"] for t, _, v in self.acked if t == LEDGER]


class JournalingConnector:
    """Like our MCP servers: applies an idempotency key once, answers repeats from its journal."""

    def __init__(self) -> None:
        self.journal: dict[str, dict] = {}
        self.applied: Counter[str] = Counter()
        self.calls = 0

    async def call_many(self, connector_id, calls):
        self.batches = getattr(self, "batches", 0) + 1
        return [await self.call(connector_id, t, a, k) for t, a, k in calls]

    async def call(self, connector_id, tool, args, idempotency_key=None):
        self.calls += 1
        if idempotency_key not in self.journal:
            self.applied[idempotency_key] += 1
            self.journal[idempotency_key] = {"held": args["order_id"]}
        return SimpleNamespace(
            ok=True,
            content=self.journal[idempotency_key],
            error_code=None,
            error_message=None,
            upstream_status=None,
            latency_ms=1.0,
        )


@dataclass
class FailingStore:
    inner: ExecStateStore
    fail_write: bool = False
    fail_offset: bool = False

    def write(self, changes):
        if self.fail_write:
            raise Crash("state write")
        self.inner.write(changes)

    def set_offset(self, p, off):
        if self.fail_offset:
            raise Crash("offset")
        self.inner.set_offset(p, off)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def action(i: int, entity: str, key: str) -> ActionRecord:
    return core_action(i, entity=entity, key=key, args={"order_id": entity})


def batch() -> list[tuple[ActionRecord, int]]:
    # three entities, a repeated key on each (the second is DEDUP), one fresh key
    items = []
    for i in range(9):
        entity = f"order:{i % 3}"
        key = f"hold:{i % 3}" if i < 6 else f"notify:{i % 3}"
        items.append((action(i, entity, key), i % 3))
    return items


def make_executor(tmp_path, broker, connector, store):
    cn = SimpleNamespace(
        id="cn_1", status="connected", version=1, remote_url=None, refused_because=lambda: None
    )
    view = SimpleNamespace(connectors={"cn_1": cn}, guardrails_of=lambda tenant, livemode: [])
    ex = Executor("unused:0", broker, connector, view, box=None, store=store)
    ex._ensured["cn_1"] = 1
    ex.loaded = {0, 1, 2}  # no changelog to catch up from in this test
    return ex


CRASHES = {
    "none": {},
    "before state write (step 1)": {"fail_write": True},
    "during produce (step 2)": {"fail_send_at": 14},
    "first produce (step 2)": {"fail_send_at": 7},
    "at an acknowledgement (step 3)": {"fail_ack_at": 12},
    "recording offsets (step 4)": {"fail_offset": True},
}


@pytest.mark.parametrize("where", list(CRASHES))
async def test_executor_batch_crash_then_replay(tmp_path, where):
    store = FailingStore(ExecStateStore(tmp_path / "exec"))
    broker, connector = FakeBroker(), JournalingConnector()
    crash = CRASHES[where]
    store.fail_write = crash.get("fail_write", False)
    store.fail_offset = crash.get("fail_offset", False)
    broker.fail_send_at = crash.get("fail_send_at")
    broker.fail_ack_at = crash.get("fail_ack_at")
    ex = make_executor(tmp_path, broker, connector, store)
    items = batch()
    try:
        await ex.execute_batch(items)
        crashed = False
    except Crash:
        crashed = True
    assert crashed == (where != "none")
    # restart: a new executor over the same disk, a healthy broker; the batch is replayed
    store.fail_write = store.fail_offset = False
    broker.fail_send_at = broker.fail_ack_at = None
    ex2 = make_executor(tmp_path, broker, connector, store)
    await ex2.execute_batch(items)

    receipts = broker.receipts()
    by_action: dict[str, set[str]] = {}
    for r in receipts:
        by_action.setdefault(r["action_id"], set()).add(r["id"])
    # every action has exactly one receipt id (repeats of it are stored once by the ledger)
    assert set(by_action) == {a.id for a, _ in items}
    assert all(len(ids) == 1 for ids in by_action.values()), by_action
    # never two applied receipts for one key; the connector applied each key once
    applied = Counter(
        r["idempotency_key"]
        for r in {r["id"]: r for r in receipts}.values()
        if r["outcome"] == "applied"
    )
    assert set(applied.values()) == {1}
    assert set(connector.applied.values()) == {1}
    assert sorted(applied) == sorted(connector.applied)
    # the state on disk says done for every key, with the receipt that proves it
    seen = store.get_many((p, state_key(a)) for a, p in items)
    assert {s.status for s in seen.values()} == {"done"}
    # a third pass (another replay) changes nothing and calls nothing
    calls = connector.calls
    await make_executor(tmp_path, broker, connector, store).execute_batch(items)
    assert connector.calls == calls


async def test_executor_writes_the_changelog_it_would_be_restored_from(tmp_path):
    broker, connector = FakeBroker(), JournalingConnector()
    store = ExecStateStore(tmp_path / "exec")
    await make_executor(tmp_path, broker, connector, store).execute_batch(batch())
    changelog = [(k, orjson.loads(v)) for t, k, v in broker.acked if t == EXECSTATE]
    final = {k: v for k, v in changelog}
    assert {v["state"] for v in final.values()} == {"done"}
    # intents were acknowledged on the changelog before the tool was called
    assert sum(1 for _, v in changelog if v["state"] == "intent") == len(connector.applied)
    # the lanes' concurrent calls shared requests: fewer requests than calls
    assert connector.batches < connector.calls
    # RocksDB knows how far the changelog got, per partition
    assert {p: store.offset(p) for p in range(3)} == {
        p: broker.offsets[(EXECSTATE, p)] - 1 for p in range(3)
    }


@pytest.mark.parametrize("fail", ["send", "ack", "none"])
async def test_ingest_dedup_keys_are_remembered_only_after_the_acks(tmp_path, fail):
    broker = FakeBroker()
    dedup = DedupStore(tmp_path / "dedup")
    out = Checkpoint(broker, dedup=dedup)
    out.send("fibric.ledger.v1", b"t", b"{}")
    out.send("fibric.ledger.v1", b"t", b"{}")
    out.dedup_keys = ["k1", "k2"]
    if fail == "send":
        broker.fail_send_at = 2
    elif fail == "ack":
        broker.fail_ack_at = 2
    if fail == "none":
        await out.commit()
        assert dedup.seen(["k1", "k2"]) == {"k1", "k2"}
    else:
        with pytest.raises(Crash):
            await out.commit()
        # not remembered: the replayed batch stores these events instead of dropping them
        assert dedup.seen(["k1", "k2"]) == set()


async def test_transient_broker_error_propagates_for_a_retry(tmp_path):
    class Down(FakeBroker):
        async def send(self, *a, **kw):
            raise KafkaConnectionError("down")

    ex = make_executor(tmp_path, Down(), JournalingConnector(), ExecStateStore(tmp_path / "e"))
    with pytest.raises(KafkaConnectionError):
        await ex.execute_batch(batch())
