"""cn-magento end to end: the real MCP server (stdio subprocess, through the pool) against the
fake Magento over HTTP. No mocks: every assertion about Magento reads the fake's state."""

from __future__ import annotations

import asyncio
import time

import pytest

from connectors.pool import ConnectorRuntime
from tests.fakes.magento import FakeMagento, make_order

pytestmark = pytest.mark.integration

CN = "cn_test1"


async def test_check_validates_the_token(magento: ConnectorRuntime, fake: FakeMagento):
    r = await magento.call(CN, "connector.check", {})
    assert r.ok, r
    assert r.content["total_count"] == 5
    assert fake.count("order.search") == 1


async def test_check_with_a_bad_token_is_auth_failed(
    runtime: ConnectorRuntime, fake: FakeMagento, magento_spec
):
    await runtime.ensure(magento_spec(fake, token="mg_wrong"))
    r = await runtime.call(CN, "connector.check", {})
    assert not r.ok
    assert r.error_code == "auth_failed"
    assert r.upstream_status == 401
    assert "isn't authorized to access Magento_Sales::actions_view" in r.error_message
    assert r.content == {
        "error": {"code": "auth_failed", "message": r.error_message, "status": 401}
    }


async def test_read_by_entity_id(magento: ConnectorRuntime, fake: FakeMagento):
    r = await magento.call(CN, "order.read", {"order_id": "1"})
    assert r.ok, r
    order = r.content["order"]
    assert order["entity_id"] == 1 and order["increment_id"] == "000000001"
    assert order["state"] == "processing" and order["holdable"] and not order["on_hold"]
    assert fake.count("order.get") == 1


async def test_search_by_increment_id(magento: ConnectorRuntime, fake: FakeMagento):
    fake.add_order(make_order(42, increment_id="US-1042", state="new"))
    r = await magento.call(CN, "order.read", {"increment_id": "US-1042"})
    assert r.ok, r
    assert r.content["order"]["entity_id"] == 42
    assert r.content["order"]["status"] == "pending"
    assert fake.count("order.search") == 1 and fake.count("order.get") == 0


async def test_unknown_order_is_not_found(magento: ConnectorRuntime):
    r = await magento.call(CN, "order.read", {"order_id": "999"})
    assert (r.ok, r.error_code, r.upstream_status) == (False, "not_found", 404)
    r = await magento.call(CN, "order.read", {"increment_id": "NOPE"})
    assert (r.ok, r.error_code) == (False, "not_found")


async def test_hold_then_release_changes_the_store(magento: ConnectorRuntime, fake):
    r = await magento.call(CN, "order.hold", {"order_id": "1"}, idempotency_key="act_1")
    assert r.ok, r
    assert r.content == {"action": "hold", "order_id": "1", "increment_id": None, "result": True}
    assert fake.order(1)["state"] == "holded"
    assert fake.order(1)["hold_before_state"] == "processing"
    r = await magento.call(CN, "order.release", {"order_id": "1"}, idempotency_key="act_1:undo")
    assert r.ok, r
    assert fake.order(1)["state"] == "processing"
    assert (fake.count("order.hold"), fake.count("order.unhold")) == (1, 1)


async def test_hold_by_increment_id(magento: ConnectorRuntime, fake: FakeMagento):
    r = await magento.call(CN, "order.hold", {"increment_id": "000000002"}, idempotency_key="k")
    assert r.ok, r
    assert r.content["order_id"] == "2"
    assert fake.order(2)["state"] == "holded"


async def test_hold_refused_by_magento_is_invalid_args(magento: ConnectorRuntime, fake):
    r = await magento.call(CN, "order.hold", {"order_id": "3"}, idempotency_key="k-complete")
    assert (r.ok, r.error_code, r.upstream_status) == (False, "invalid_args", 400)
    assert r.error_message == "A hold action is not available."
    r = await magento.call(CN, "order.release", {"order_id": "1"}, idempotency_key="k-rel")
    assert r.error_message == "You cannot remove the hold."
    # A refused attempt applied nothing, so its key is free for a retry once the state allows.
    fake.add_order(make_order(3, state="processing"))
    r = await magento.call(CN, "order.hold", {"order_id": "3"}, idempotency_key="k-complete")
    assert r.ok, r


async def test_notify_adds_a_customer_notified_comment(magento: ConnectorRuntime, fake):
    text = "Your order is on hold while we verify the address."
    r = await magento.call(
        CN, "order.notify", {"order_id": "1", "comment": text}, idempotency_key="n1"
    )
    assert r.ok, r
    history = fake.order(1)["status_histories"]
    assert len(history) == 1
    assert history[0]["comment"] == text
    assert history[0]["is_customer_notified"] == 1 and history[0]["is_visible_on_front"] == 1
    r = await magento.call(CN, "order.read", {"order_id": "1"})
    assert r.content["order"]["status_histories"][0]["comment"] == text


async def test_repeated_idempotency_key_calls_magento_once(magento: ConnectorRuntime, fake):
    first = await magento.call(CN, "order.hold", {"order_id": "1"}, idempotency_key="dup")
    again = [
        await magento.call(CN, "order.hold", {"order_id": "1"}, idempotency_key="dup")
        for _ in range(3)
    ]
    assert first.ok and all(r.ok for r in again)
    assert all(r.content == first.content for r in again)
    assert fake.count("order.hold") == 1


async def test_concurrent_calls_with_one_key_apply_once(magento: ConnectorRuntime, fake):
    fake.set_mode(delay_s=0.2)
    results = await asyncio.gather(
        *(
            magento.call(
                CN, "order.notify", {"order_id": "2", "comment": "hi"}, idempotency_key="same"
            )
            for _ in range(5)
        )
    )
    assert all(r.ok for r in results), results
    assert fake.count("order.comment") == 1
    assert len(fake.order(2)["status_histories"]) == 1


async def test_key_reused_with_other_arguments_is_refused(magento: ConnectorRuntime, fake):
    assert (await magento.call(CN, "order.hold", {"order_id": "1"}, idempotency_key="x")).ok
    r = await magento.call(CN, "order.hold", {"order_id": "2"}, idempotency_key="x")
    assert (r.ok, r.error_code) == (False, "invalid_args")
    assert fake.count("order.hold") == 1 and fake.order(2)["state"] == "new"


async def test_dry_run_writes_nothing(magento: ConnectorRuntime, fake: FakeMagento):
    for tool, args in (
        ("order.hold", {"order_id": "1"}),
        ("order.release", {"order_id": "4"}),
        ("order.notify", {"order_id": "1", "comment": "x"}),
        ("order.hold", {}),  # no target: validates auth and reachability only
    ):
        r = await magento.call(CN, tool, args, dry_run=True)
        assert r.ok, (tool, r)
        assert r.content["dry_run"] is True
    r = await magento.call(CN, "order.hold", {"order_id": "3"}, dry_run=True)
    assert r.ok and r.content["would_apply"] is False  # complete orders cannot be held
    writes = sum(fake.count(n) for n in ("order.hold", "order.unhold", "order.comment"))
    assert writes == 0
    assert fake.order(1)["state"] == "processing" and fake.order(1)["status_histories"] == []
    assert fake.order(4)["state"] == "holded"


async def test_dry_run_with_a_bad_token_is_auth_failed(
    runtime: ConnectorRuntime, fake: FakeMagento, magento_spec
):
    await runtime.ensure(magento_spec(fake, token="nope"))
    r = await runtime.call(CN, "order.hold", {"order_id": "1"}, dry_run=True)
    assert (r.ok, r.error_code) == (False, "auth_failed")
    assert fake.order(1)["state"] == "processing"


async def test_upstream_503_is_upstream_error(magento: ConnectorRuntime, fake: FakeMagento):
    fake.set_mode(fail_status=503)
    r = await magento.call(CN, "order.read", {"order_id": "1"})
    assert (r.ok, r.error_code, r.upstream_status) == (False, "upstream_error", 503)
    r = await magento.call(CN, "order.hold", {"order_id": "1"}, idempotency_key="k503")
    assert (r.ok, r.error_code) == (False, "upstream_error")
    # 503 means "not applied": the same key works once the store is back.
    fake.set_mode()
    r = await magento.call(CN, "order.hold", {"order_id": "1"}, idempotency_key="k503")
    assert r.ok, r
    assert fake.order(1)["state"] == "holded"


async def test_unreachable_store_is_upstream_error(
    runtime: ConnectorRuntime, fake: FakeMagento, magento_spec
):
    spec = magento_spec(fake)
    spec.config = {"base_url": "http://127.0.0.1:9"}  # discard port: connection refused
    await runtime.ensure(spec)
    r = await runtime.call(CN, "connector.check", {})
    assert (r.ok, r.error_code, r.upstream_status) == (False, "upstream_error", None)


async def test_hanging_store_times_out(magento: ConnectorRuntime, fake: FakeMagento):
    fake.set_mode(hang_s=30)
    t0 = time.monotonic()
    r = await magento.call(CN, "order.read", {"order_id": "1"}, timeout_s=1.0)
    assert (r.ok, r.error_code) == (False, "timeout")
    assert time.monotonic() - t0 < 3.0
    fake.set_mode()
    assert (await magento.call(CN, "order.read", {"order_id": "1"})).ok  # session still fine


async def test_timed_out_hold_is_reconciled_not_reapplied(magento: ConnectorRuntime, fake):
    # The store is slow: the call times out, but Magento applies the hold afterwards anyway.
    fake.set_mode(hang_s=1.5)
    r = await magento.call(
        CN, "order.hold", {"order_id": "1"}, idempotency_key="slow", timeout_s=0.5
    )
    assert r.error_code == "timeout"
    deadline = time.monotonic() + 5
    while fake.order(1)["state"] != "holded":  # Magento finishes the late request
        assert time.monotonic() < deadline, "the late hold never reached the store"
        await asyncio.sleep(0.05)
    fake.set_mode()
    # The executor retries with the same key: the server sees an unknown earlier outcome,
    # reads the order, finds it held, and records success without a second hold.
    r = await magento.call(CN, "order.hold", {"order_id": "1"}, idempotency_key="slow")
    assert r.ok, r
    assert r.content["result"] is True
    assert fake.count("order.hold") == 1


async def test_invalid_arguments(magento: ConnectorRuntime, fake: FakeMagento):
    r = await magento.call(CN, "order.notify", {"order_id": "1"}, idempotency_key="k")
    assert (r.ok, r.error_code) == (False, "invalid_args")
    assert "comment" in r.error_message
    r = await magento.call(CN, "order.read", {"order_id": "../1"})
    assert (r.ok, r.error_code) == (False, "invalid_args")
    assert fake.count("total") == 0
