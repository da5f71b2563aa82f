"""Budgets in the worker's executor (decisions §36): reserved in the partitioned on-disk state
with the intent, settled with the receipt; a batch killed at any step of its commit and replayed
never spends more than the budget, and every action still gets exactly one outcome. Real
RocksDB; the broker and the connector are the in-process doubles of test_checkpoint.py."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from agents.budget import BUDGET_PREFIX
from schemas.guardrail import GuardrailBudget, GuardrailPolicy
from schemas.plan import ActionRecord
from streams.execstate import ExecStateStore
from streams.executor import Executor
from tests.unit.streams.test_checkpoint import (
    CRASHES,
    Crash,
    FailingStore,
    FakeBroker,
    JournalingConnector,
)
from tests.unit.streams.test_checkpoint import action as entity_action

CAP = 3
PARTITIONS = 3


def _policy(**budget) -> GuardrailPolicy:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return GuardrailPolicy(
        id="grd_01J0000000000000000000000A",
        tenant_id="t_1",
        livemode=False,
        name="blast-radius",
        rules=[],
        budgets=[GuardrailBudget.model_validate(budget)],
        created_at=at,
        updated_at=at,
    )


HOLDS = _policy(tool="order.hold", window_seconds=3600, max_count=CAP)


def make_executor(broker, connector, store, policy=HOLDS) -> Executor:
    cn = SimpleNamespace(
        id="cn_1", name="shop", listing="magento", status="connected", version=1, remote_url=None,
        refused_because=lambda: None,
    )
    view = SimpleNamespace(
        connectors={"cn_1": cn},
        guardrails_of=lambda tenant, livemode: [policy] if tenant == "t_1" else [],
    )
    ex = Executor("unused:0", broker, connector, view, box=None, store=store, partitions=3)
    ex._ensured["cn_1"] = 1
    ex.loaded = set(range(PARTITIONS))
    return ex


def holds(n: int) -> list[tuple[ActionRecord, int]]:
    """``n`` holds on ``n`` entities spread over the partitions: the budget spans them all."""
    return [(entity_action(i, f"order:{i}", f"hold:{i}"), i % PARTITIONS) for i in range(n)]


def outcomes(broker: FakeBroker) -> dict[str, set[tuple[str, str]]]:
    out: dict[str, set[tuple[str, str]]] = {}
    for r in broker.receipts():
        out.setdefault(r["action_id"], set()).add((r["id"], r["outcome"]))
    return out


class DyingConnector(JournalingConnector):
    """Applies the calls of its first request, then the worker dies before the answer."""

    dead = False

    async def call_many(self, connector_id, calls):
        results = await super().call_many(connector_id, calls)
        if not self.dead:
            self.dead = True
            raise Crash("killed mid-call")
        return results


@pytest.mark.parametrize("where", [*CRASHES, "during a tool call"])
async def test_budget_never_over_spent_when_a_batch_is_killed_and_replayed(tmp_path, where):
    store = FailingStore(ExecStateStore(tmp_path / "exec"))
    broker = FakeBroker()
    connector = DyingConnector() if where == "during a tool call" else JournalingConnector()
    crash = CRASHES.get(where, {})
    store.fail_write = crash.get("fail_write", False)
    store.fail_offset = crash.get("fail_offset", False)
    broker.fail_send_at = crash.get("fail_send_at")
    broker.fail_ack_at = crash.get("fail_ack_at")
    items = holds(9)
    try:
        await make_executor(broker, connector, store).execute_batch(items)
    except Crash:
        pass
    store.fail_write = store.fail_offset = False
    broker.fail_send_at = broker.fail_ack_at = None
    # a new process over the same disk (nothing in memory) replays the batch, twice, and in
    # another order (after a restart batches are cut differently): the actions that were
    # reserved before the kill still hold their reservations
    await make_executor(broker, connector, store).execute_batch(items[::-1])
    await make_executor(broker, connector, store).execute_batch(items)

    assert sum(connector.applied.values()) == CAP  # the side effects the upstream saw
    by_action = outcomes(broker)
    assert set(by_action) == {a.id for a, _ in items}
    assert all(len(v) == 1 for v in by_action.values()), by_action  # one outcome each
    final = Counter(next(iter(v))[1] for v in by_action.values())
    assert final == {"applied": CAP, "refused": len(items) - CAP}
    refused = [r for r in broker.receipts() if r["outcome"] == "refused"]
    assert {r["rule"]["rule"] for r in refused} == {"budget_exhausted"}
    assert all(r["reason"].startswith("budget_exhausted") for r in refused)
    assert all(r["decision"] == "BLOCK" for r in refused)
    # the spend is on disk, split over the partitions the actions ran on
    on_disk = [s for p in range(PARTITIONS) for _, s in store.budget_entries(p)]
    assert sum(n for s in on_disk for n, _ in s.buckets.values()) == CAP
    assert not any(s.reserved for s in on_disk)  # every reservation settled


async def test_a_failed_call_releases_and_alert_budgets_let_through(tmp_path):
    class Refusing(JournalingConnector):
        async def call_many(self, instance_id, calls):
            return [
                SimpleNamespace(
                    ok=False,
                    content=None,
                    error_code="upstream_error",
                    error_message="no",
                    upstream_status=409,
                    latency_ms=1.0,
                )
                for _ in calls
            ]

    broker, store = FakeBroker(), ExecStateStore(tmp_path / "exec")
    await make_executor(broker, Refusing(), store).execute_batch(holds(5))
    # five definite errors gave every reservation back: the next batch still has the budget
    connector = JournalingConnector()
    later = [(entity_action(10 + i, f"order:{10 + i}", f"h:{i}"), i % 3) for i in range(4)]
    await make_executor(broker, connector, store).execute_batch(later)
    assert sum(connector.applied.values()) == CAP

    soft = _policy(tool="order.hold", window_seconds=60, max_count=1, on_exhausted="ALERT")
    broker2, connector2 = FakeBroker(), JournalingConnector()
    store2 = ExecStateStore(tmp_path / "exec2")
    await make_executor(broker2, connector2, store2, soft).execute_batch(holds(3))
    assert sum(connector2.applied.values()) == 3  # an ALERT budget flags, it does not stop
    decisions = Counter((r["decision"], (r["rule"] or {}).get("rule")) for r in broker2.receipts())
    assert decisions == {("ALLOW", None): 1, ("ALERT", "budget_exhausted"): 2}


async def test_budget_per_entity_lives_in_the_entity_partition(tmp_path):
    per = _policy(tool="order.hold", per=["entity"], window_seconds=3600, max_count=1)
    broker, connector = FakeBroker(), JournalingConnector()
    store = ExecStateStore(tmp_path / "exec")
    # two keys on each of three entities: one hold per entity gets through
    items = [(entity_action(i, f"order:{i % 3}", f"hold:{i}"), i % 3) for i in range(6)]
    await make_executor(broker, connector, store, per).execute_batch(items)
    assert sum(connector.applied.values()) == 3
    for p in range(PARTITIONS):
        keys = [k for k, _ in store.budget_entries(p)]
        assert len(keys) == 1 and keys[0].startswith(BUDGET_PREFIX)
        assert keys[0].endswith(f"entity=order:{p}")


def test_restored_budget_records_merge_into_the_disk_copy(tmp_path) -> None:
    """The api's ledger rebuild of a budget (decisions §49) is taken as it is by a disk that has
    no record of the key, merged into the record of one that has (its reservations kept), and
    an executor-written record still replaces the disk's copy."""
    import orjson

    from agents import budget

    lim = budget.Limits(window_ms=3_600_000, max_count=5)
    now = int(datetime.now(UTC).timestamp() * 1000)
    key = BUDGET_PREFIX + "t\x1f0\x1fgrd_x\x1f0"
    store = ExecStateStore(tmp_path / "es")
    try:
        rebuilt = budget.rebuilt([(now - 1000, 0.0), (now - 500, 0.0)], now, lim)
        raw = orjson.dumps(rebuilt.to_json())
        assert b'"restored":true' in raw
        store.apply_changelog(0, [(0, key.encode(), raw)])
        (got,) = store.get_budgets([(0, key)]).values()
        assert budget.spent(got, now, lim)[0] == 2

        # partition 1's disk has one commit and one reservation in flight
        own, _ = budget.reserve(budget.EMPTY, [], "a1", None, now - 1000, lim)
        own = budget.commit(own, "a1", lim)
        own, _ = budget.reserve(own, [], "a2", None, now - 200, lim)
        store.write([(1, key, own)])
        store.apply_changelog(1, [(5, key.encode(), raw)])
        (merged,) = store.get_budgets([(1, key)]).values()
        assert merged.reserved.keys() == {"a2"} and not merged.restored
        assert budget.spent(merged, now, lim)[0] == 3  # max(1, 2) committed + 1 reserved

        # a record an executor wrote (no restored flag) is the changelog's truth: replaced
        store.apply_changelog(1, [(6, key.encode(), orjson.dumps(own.to_json()))])
        (back,) = store.get_budgets([(1, key)]).values()
        assert back == own
    finally:
        store.close()
