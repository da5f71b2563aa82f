"""The stream hub (api/hub.py): positions, the ring, fan-out by tenant and mode, the slow-consumer
rule, the per-tenant cap. Pure: no broker, no ClickHouse."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from api.hub import HARD_FACTOR, SLOW_CONSUMER, StreamHub
from ledger.store import Scope
from schemas.envelope import Event
from schemas.errors import ErrorCode, FibricError

T0 = datetime(2026, 6, 14, 9, 0, tzinfo=UTC)
A, B, A_LIVE = Scope("t_a", False), Scope("t_b", False), Scope("t_a", True)


def ev(i: int, scope: Scope = A, dt: float | None = None) -> Event:
    return Event(
        id=f"ev_{i:026d}",
        tenant_id=scope.tenant_id,
        livemode=scope.livemode,
        source="s",
        event_type="order.created",
        correlation_id="co",
        payload={"i": i},
        created_at=T0 + timedelta(seconds=i if dt is None else dt),
    )


def everything(_item) -> bool:
    return True


def test_positions_and_ring_tail():
    hub = StreamHub(ring_size=5, queue_max=100, max_per_tenant=10)
    hub.publish("events", [ev(1), ev(2), ev(3)])
    assert hub.seq == 3 and hub.event_seq(A, ev(2).id) == 2
    assert hub.event_seq(B, ev(2).id) is None  # another tenant's id is unknown
    sub = hub.subscribe(A, ["events"], everything)
    assert [i.seq for i in hub.tail(1, sub)] == [2, 3]
    assert hub.covers(0) and hub.covers(3)
    hub.publish("events", [ev(i) for i in range(4, 9)])  # the ring keeps 5: seqs 4..8
    assert not hub.covers(2) and hub.covers(3) and hub.covers(8) and not hub.covers(9)
    assert hub.event_seq(A, ev(1).id) is None  # evicted with its ring entry
    assert hub.event(A, ev(8).id) == ev(8)


def test_a_batch_is_published_in_list_order():
    hub = StreamHub(10, 100, 10)
    sub = hub.subscribe(A, ["events"], everything)
    hub.publish("events", [ev(3), ev(1), ev(2)])
    got = [sub._pop_wanted().obj.payload["i"] for _ in range(3)]
    assert got == [1, 2, 3]


async def test_fan_out_respects_tenant_mode_table_and_filter():
    hub = StreamHub(100, 100, 10)
    a = hub.subscribe(A, ["events"], lambda item: item.obj.payload["i"] % 2 == 0)
    b = hub.subscribe(B, ["events"], everything)
    live = hub.subscribe(A_LIVE, ["events"], everything)
    receipts_only = hub.subscribe(A, ["receipts"], everything)
    hub.publish("events", [ev(1), ev(2), ev(3, B), ev(4, A_LIVE)])
    hub.publish("dead_letters", [ev(9)])  # not a streamed table
    assert [(await a.next(0.1)).obj.payload["i"]] == [2] and len(a) == 0
    assert (await b.next(0.1)).obj.tenant_id == "t_b" and len(b) == 0
    assert (await live.next(0.1)).obj.livemode is True
    assert await receipts_only.next(0.01) is None and receipts_only.ended is None


async def test_next_waits_then_times_out_for_a_keepalive():
    hub = StreamHub(10, 10, 10)
    sub = hub.subscribe(A, ["events"], everything)
    assert await sub.next(0.01) is None and sub.ended is None

    async def later():
        await asyncio.sleep(0)
        hub.publish("events", [ev(1)])

    task = asyncio.create_task(later())
    assert (await sub.next(5)).seq == 1
    await task


def test_bursts_are_absorbed_but_a_lagging_consumer_is_dropped():
    hub = StreamHub(1000, queue_max=3, max_per_tenant=10, max_lag_s=60)
    sub = hub.subscribe(A, ["events"], everything)
    hub.publish("events", [ev(i) for i in range(10)])  # a burst above the bound, but fresh
    assert sub.ended is None and len(sub) == 10
    sub.max_lag_s = 0.0  # the oldest waiting row is now "too old"
    time.sleep(0.001)
    hub.publish("events", [ev(11)])
    assert sub.ended == SLOW_CONSUMER and len(sub) == 0
    assert hub.dropped == 1 and hub.streams("t_a") == 0
    hub.publish("events", [ev(12)])  # a dropped subscription takes nothing more
    assert len(sub) == 0


def test_a_stalled_backlog_is_swept_without_new_rows():
    hub = StreamHub(1000, queue_max=3, max_per_tenant=10, max_lag_s=60)
    sub = hub.subscribe(A, ["events"], everything)
    keeps_up = hub.subscribe(A, ["events"], everything)
    hub.publish("events", [ev(i) for i in range(5)])
    while keeps_up._pop_wanted() is not None:
        pass
    assert hub.sweep() == 0  # fresh
    sub.max_lag_s = keeps_up.max_lag_s = 0.0
    time.sleep(0.001)
    assert hub.sweep() == 1 and sub.ended == SLOW_CONSUMER and keeps_up.ended is None


def test_the_hard_bound_drops_whatever_the_lag():
    hub = StreamHub(10_000, queue_max=2, max_per_tenant=10, max_lag_s=3600)
    sub = hub.subscribe(A, ["events"], everything)
    other = hub.subscribe(B, ["events"], everything)
    hub.publish("events", [ev(i) for i in range(2 * HARD_FACTOR + 1)])
    assert sub.ended == SLOW_CONSUMER
    assert other.ended is None  # another tenant's stream is untouched


def test_cap_per_tenant_and_release():
    hub = StreamHub(10, 10, max_per_tenant=2)
    s1 = hub.subscribe(A, ["events"], everything)
    hub.subscribe(A_LIVE, ["events"], everything)  # the cap counts the tenant, both modes
    with pytest.raises(FibricError) as exc:
        hub.subscribe(A, ["events"], everything)
    assert exc.value.code == ErrorCode.RATE_LIMITED and exc.value.status == 429
    assert exc.value.headers["Retry-After"]
    hub.subscribe(B, ["events"], everything)  # other tenants unaffected
    s1.close()
    s1.close()  # idempotent
    hub.subscribe(A, ["events"], everything)
    assert hub.streams("t_a") == 2 and hub.streams() == 3


async def test_close_all_ends_every_stream():
    hub = StreamHub(10, 10, 10)
    subs = [hub.subscribe(s, ["events"], everything) for s in (A, B)]
    hub.close_all()
    for s in subs:
        assert s.ended == "shutdown" and await s.next(1) is None
    assert hub.streams() == 0


def test_publish_costs_the_sink_one_append_per_stream_per_batch():
    hub = StreamHub(10_000, 10_000, 10_000)
    subs = [hub.subscribe(A, ["events"], lambda item: 1 / 0) for _ in range(100)]
    hub.publish("events", [ev(i) for i in range(1000)])  # no filter ran (they would raise)
    assert all(len(s._queue) == 1 and len(s) == 1000 and s.ended is None for s in subs)


def test_a_failing_filter_never_fails_the_sink():
    hub = StreamHub(10, 10, 10)
    bad = hub.subscribe(A, ["events"], lambda item: 1 / 0)
    good = hub.subscribe(A, ["events"], everything)
    hub.publish("events", [ev(1), ev(2)])  # the sink never runs a stream's filter
    assert bad._pop_wanted() is None and bad.ended == "error"  # logged; that stream ends
    assert good.ended is None and len(good) == 2
