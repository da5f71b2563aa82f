"""``ConnectorRuntime.call_many`` against real connector servers (stdio subprocesses): the
sandbox's ``fibric.batch`` path (same answers as single calls, one application per key, replays
from the journal, independent items, a kill -9 mid-batch then a retry of the same keys), and the
fallback to one request per call against a server without the batch tool."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from connectors.marketplace import Listing, load_catalogue
from connectors.pool import ConnectorRuntime, ConnectorSpec, ToolResult

pytestmark = pytest.mark.integration

CN = "cn_sandbox"
# Longer than the test could ever wait: the killed batch is still sleeping in the sandbox.
STUCK_LATENCY_MS = 60_000
WAIT_S = 15.0


def _sandbox(instance_id: str = CN, **config: Any) -> ConnectorSpec:
    return ConnectorSpec(
        instance_id, load_catalogue()["cn-sandbox-orders"], config, {"key": "anything"}
    )


@pytest.fixture
async def rt(tmp_path: Path):
    runtime = ConnectorRuntime(state_dir=tmp_path)
    yield runtime
    await runtime.close()


def _shape(r: ToolResult) -> tuple:
    return (r.ok, r.error_code, r.error_message, r.content)


async def _order(rt: ConnectorRuntime, order_id: str, instance_id: str = CN) -> dict:
    r = await rt.call(instance_id, "order.read", {"order_id": order_id})
    assert r.ok, r
    return r.content["order"]


async def _wait_for(predicate, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


CALLS: list[tuple[str, dict, str | None]] = [
    ("order.hold", {"order_id": "A1"}, "k-hold-A1"),
    ("order.notify", {"order_id": "A2", "comment": "on its way"}, "k-notify-A2"),
    ("order.read", {"order_id": "A3"}, None),
    ("order.release", {"order_id": "A4"}, "k-release-A4"),
    ("connector.check", {}, None),
    ("order.cancel", {"order_id": "A5"}, "k-cancel"),  # no such tool
    ("order.hold", {"order_id": "A6"}, None),  # side effect without a key
    ("order.hold", {"order_id": 6}, "k-bad-type"),  # refused by argument validation
    ("order.notify", {"order_id": "A7", "comment": " "}, "k-blank"),  # refused by the tool
]


async def test_call_many_answers_like_individual_calls(rt: ConnectorRuntime):
    await rt.ensure(_sandbox("cn_single"))
    await rt.ensure(_sandbox("cn_batch"))
    single = [await rt.call("cn_single", t, a, idempotency_key=k) for t, a, k in CALLS]
    batch = await rt.call_many("cn_batch", CALLS)
    assert len(batch) == len(CALLS)
    assert [_shape(r) for r in batch] == [_shape(r) for r in single]
    assert [r.error_code for r in batch] == [
        None,
        None,
        None,
        None,
        None,
        "unknown_tool",
        "invalid_args",
        "invalid_args",
        "invalid_args",
    ]
    # the effects happened on the batch's instance too
    assert (await _order(rt, "A1", "cn_batch"))["holds"] == 1
    assert (await _order(rt, "A2", "cn_batch"))["notes"] == 1
    # the reserved tool is neither offered nor callable as a tool
    assert "fibric.batch" not in {t.name for t in await rt.tools("cn_batch")}
    r = await rt.call("cn_batch", "fibric.batch", {"calls": []})
    assert r.error_code == "unknown_tool"
    assert await rt.call_many("cn_batch", []) == []


async def test_a_key_repeated_in_one_batch_applies_once(rt: ConnectorRuntime):
    await rt.ensure(_sandbox())
    hold = ("order.hold", {"order_id": "B1"}, "k-B1")
    other_args = ("order.hold", {"order_id": "B9"}, "k-B1")  # same key, other arguments
    results = await rt.call_many(
        CN, [hold, ("order.hold", {"order_id": "B2"}, "k-B2"), hold, hold, other_args]
    )
    assert [r.ok for r in results] == [True, True, True, True, False]
    assert results[0].content == results[2].content == results[3].content
    assert results[0].content["order"]["holds"] == 1
    assert results[4].error_code == "invalid_args"
    assert "already used with other arguments" in results[4].error_message
    assert (await _order(rt, "B1"))["holds"] == 1
    assert (await _order(rt, "B9"))["holds"] == 0


async def test_a_journaled_key_returns_the_journaled_result(rt: ConnectorRuntime):
    await rt.ensure(_sandbox())
    first = await rt.call(CN, "order.hold", {"order_id": "C1"}, idempotency_key="k-C1")
    assert first.ok
    results = await rt.call_many(
        CN,
        [("order.hold", {"order_id": "C1"}, "k-C1"), ("order.hold", {"order_id": "C2"}, "k-C2")],
    )
    assert all(r.ok for r in results), results
    assert results[0].content == first.content  # the recorded answer, not a second hold
    again = await rt.call(CN, "order.hold", {"order_id": "C2"}, idempotency_key="k-C2")
    assert again.content == results[1].content  # a batch's result replays to a single call
    assert (await _order(rt, "C1"))["holds"] == 1
    assert (await _order(rt, "C2"))["holds"] == 1


async def test_one_bad_item_does_not_fail_the_others(rt: ConnectorRuntime):
    await rt.ensure(_sandbox())
    results = await rt.call_many(
        CN,
        [
            ("order.hold", {"order_id": "D1"}, "k-D1"),
            ("order.hold", {"order_id": "x" * 65}, "k-too-long"),  # the sandbox refuses it
            ("order.hold", {"order_id": "D2", "colour": "red"}, "k-extra"),
            ("order.notify", {"order_id": "D3", "comment": "c" * 2001}, "k-long-comment"),
            ("order.hold", {"order_id": "D4"}, "k-D4"),
        ],
    )
    # an unknown extra argument is ignored by the SDK's validation, in a batch as in a call
    assert [r.ok for r in results] == [True, False, True, False, True], results
    assert results[1].error_code == results[3].error_code == "invalid_args"
    assert (await _order(rt, "D1"))["holds"] == (await _order(rt, "D4"))["holds"] == 1
    # a refused item applied nothing, so its key is free: the same call is refused again
    # (not replayed as a success) and nothing was held
    retry = await rt.call(CN, "order.hold", {"order_id": "x" * 65}, idempotency_key="k-too-long")
    assert (retry.ok, retry.error_code) == (False, "invalid_args")


def _effects(state_dir: Path) -> int:
    # Read the sandbox's own store directly: what the simulated upstream has applied.
    path = state_dir / CN / "sandbox.sqlite3"
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM effects").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


async def test_kill_9_mid_batch_then_the_same_keys_apply_at_most_once(
    rt: ConnectorRuntime, tmp_path: Path
):
    # Every effect is applied at once, then its answer hangs: the server dies with eight applied
    # effects whose results the journal never recorded.
    await rt.ensure(_sandbox(latency_ms=STUCK_LATENCY_MS))
    calls = [("order.hold", {"order_id": f"E{i}"}, f"k-E{i}") for i in range(8)]
    pid = rt.health()[CN]["pids"][0]
    batch = asyncio.create_task(rt.call_many(CN, calls, timeout_s=WAIT_S * 2))
    await _wait_for(lambda: _effects(tmp_path) == len(calls))
    os.kill(pid, signal.SIGKILL)
    killed = await batch
    assert {r.error_code for r in killed} == {"connector_crashed"}, killed
    # A fast sandbox on the same state (config change -> new process, same journal and store).
    await rt.ensure(_sandbox())
    retried = await rt.call_many(CN, calls + [("order.hold", {"order_id": "E8"}, "k-E8")])
    assert all(r.ok for r in retried), retried
    for i in range(9):  # reconciled from the store, never held a second time
        assert retried[i].content["order"]["holds"] == 1
        assert (await _order(rt, f"E{i}"))["holds"] == 1
    # and now the journal has every result: a third attempt replays
    third = await rt.call_many(CN, calls)
    assert [r.content for r in third] == [r.content for r in retried[:8]]
    assert _effects(tmp_path) == 9


async def test_a_batch_that_times_out_is_reconciled_on_retry(rt: ConnectorRuntime, tmp_path):
    await rt.ensure(_sandbox(latency_ms=STUCK_LATENCY_MS))
    calls = [("order.notify", {"order_id": f"F{i}", "comment": "hi"}, f"k-F{i}") for i in range(4)]
    timed_out = await rt.call_many(CN, calls, timeout_s=1.0)
    assert {r.error_code for r in timed_out} == {"timeout"}, timed_out
    await rt.ensure(_sandbox())  # the stuck server is replaced
    retried = await rt.call_many(CN, calls)
    assert all(r.ok for r in retried), retried
    for i in range(4):
        assert (await _order(rt, f"F{i}"))["notes"] == 1


def _plain_listing() -> Listing:
    base = load_catalogue()["cn-sandbox-orders"]
    assert base.server is not None
    server = base.server.model_copy(
        update={"module": "tests.integration.connectors.plain_mcp_server"}
    )
    return base.model_copy(update={"id": "cn-plain-test", "server": server})


async def test_fallback_without_a_batch_tool_is_bounded_and_keeps_keys_apart(tmp_path: Path):
    rt = ConnectorRuntime(state_dir=tmp_path, max_in_flight=4)
    try:
        await rt.ensure(ConnectorSpec("cn_plain", _plain_listing(), {}, {}))
        assert "fibric.batch" not in {t.name for t in await rt.tools("cn_plain")}
        calls = [("thing.poke", {"thing_id": f"t{i}"}, f"k{i}") for i in range(12)]
        calls += [("thing.poke", {"thing_id": "t0"}, "k0")] * 3  # one key, three more times
        calls += [("thing.nope", {}, None)]
        results = await rt.call_many("cn_plain", calls)
        assert [r.ok for r in results] == [True] * 15 + [False]
        assert results[15].error_code == "unknown_tool"
        assert results[12].content == results[13].content == results[0].content
        assert [r.content["thing_id"] for r in results[:12]] == [f"t{i}" for i in range(12)]
        stats = (await rt.call("cn_plain", "stats", {})).content
        assert stats["applied"] == 12
        assert 1 < stats["max_in_flight"] <= 4  # concurrent, within the pool's bound
        assert stats["same_key_overlaps"] == 0  # one key's calls never overlapped
    finally:
        await rt.close()
