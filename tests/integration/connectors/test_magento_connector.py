"""cn-magento end to end: the real MCP server (stdio subprocess, through the pool) against the
fake Magento over HTTP. No mocks: every assertion about Magento reads the fake's state."""

from __future__ import annotations

import asyncio
import time

import httpx
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


# ---- order numbers (increment ids) as order_id -----------------------------------------------
# Events carry the store's order number and models propose it (spec Appendix B: order_id
# "SO-10884"); Magento's order routes want the numeric entity id. The connector resolves one to
# the other with the search Magento documents. Entity ids here differ from every number on
# purpose, so using one for the other would hit another order (or none).

DOCUMENTED_SEARCH = [
    ["searchCriteria[filter_groups][0][filters][0][field]", "increment_id"],
    ["searchCriteria[filter_groups][0][filters][0][value]", "SO-10884"],
    ["searchCriteria[filter_groups][0][filters][0][condition_type]", "eq"],
]


def _searches(fake: FakeMagento) -> list[list[list[str]]]:
    return [r["query"] for r in fake.requests() if r["path"].endswith("/V1/orders")]


async def test_order_number_resolves_to_the_entity_id(magento: ConnectorRuntime, fake):
    fake.add_order(make_order(57, increment_id="SO-10884"))
    r = await magento.call(
        CN,
        "order.hold",
        {"order_id": "SO-10884", "reason": "promise_risk"},
        idempotency_key="order-risk:SO-10884:hold",
    )
    assert r.ok, r
    assert r.content == {
        "action": "hold",
        "order_id": "57",
        "increment_id": "SO-10884",
        "result": True,
        "reason": "promise_risk",
    }
    assert fake.order(57)["state"] == "holded"
    # one search, spelled as Magento documents it, then the hold on the entity id's path
    (search,) = _searches(fake)
    assert search[:3] == DOCUMENTED_SEARCH
    posts = [r["path"] for r in fake.requests() if r["method"] == "POST"]
    assert posts == ["/rest/V1/orders/57/hold"]
    # the resolution is cached: the other order tools find the order without searching again
    r = await magento.call(CN, "order.read", {"order_id": "SO-10884"})
    assert r.ok and r.content["order"]["entity_id"] == 57 and r.content["order"]["on_hold"]
    r = await magento.call(
        CN,
        "order.notify",
        {"order_id": "SO-10884", "comment": "On hold: ship date at risk."},
        idempotency_key="order-risk:SO-10884:notify",
    )
    assert r.ok and r.content["order_id"] == "57", r
    r = await magento.call(CN, "order.release", {"order_id": "SO-10884"}, idempotency_key="rel")
    assert r.ok and r.content["increment_id"] == "SO-10884", r
    assert fake.order(57)["state"] == "processing"
    assert fake.order(57)["status_histories"][0]["comment"] == "On hold: ship date at risk."
    assert fake.count("order.search") == 1
    assert (fake.count("order.get"), fake.count("order.hold"), fake.count("order.unhold")) == (
        1,
        1,
        1,
    )


async def test_order_number_dry_run_names_the_entity(magento: ConnectorRuntime, fake):
    fake.add_order(make_order(58, increment_id="SO-10885"))
    r = await magento.call(CN, "order.hold", {"order_id": "SO-10885"}, dry_run=True)
    assert r.ok, r
    assert (r.content["order_id"], r.content["increment_id"]) == ("58", "SO-10885")
    assert r.content["would_apply"] is True and fake.order(58)["state"] == "processing"


async def test_numeric_entity_ids_still_work(magento: ConnectorRuntime, fake):
    # a canonical integer is tried as the entity id first: no search, no extra request
    r = await magento.call(CN, "order.read", {"order_id": "1"})
    assert r.ok and r.content["order"]["increment_id"] == "000000001", r
    r = await magento.call(CN, "order.hold", {"order_id": 2}, idempotency_key="int-id")
    assert r.ok and r.content["order_id"] == "2", r  # an integer, as webhook payloads carry it
    assert fake.order(2)["state"] == "holded"
    r = await magento.call(CN, "order.release", {"entity_id": "2"}, idempotency_key="rel-2")
    assert r.ok and fake.order(2)["state"] == "new", r
    assert fake.count("order.search") == 0
    assert [q["path"] for q in fake.requests()] == [
        "/rest/V1/orders/1",
        "/rest/V1/orders/2/hold",
        "/rest/V1/orders/2/unhold",
    ]


async def test_unknown_order_number_is_not_found(magento: ConnectorRuntime, fake):
    r = await magento.call(
        CN, "order.hold", {"order_id": "SO-99999", "reason": "promise_risk"}, idempotency_key="u"
    )
    assert (r.ok, r.error_code) == (False, "not_found")
    assert r.error_message == "no order with order number or entity id SO-99999"
    r = await magento.call(CN, "order.read", {"increment_id": "SO-99999"})
    assert (r.ok, r.error_code, r.error_message) == (
        False,
        "not_found",
        "no order with order number SO-99999",
    )
    # neither entity 999 nor order number 999: the store's 404 is kept
    r = await magento.call(CN, "order.hold", {"order_id": "999"}, idempotency_key="u1")
    assert (r.ok, r.error_code, r.upstream_status) == (False, "not_found", 404)
    assert r.error_message == "no order with order number or entity id 999"
    # a zero-padded number is an order number, never entity 999 in disguise
    r = await magento.call(
        CN, "order.notify", {"order_id": "000000999", "comment": "x"}, idempotency_key="u2"
    )
    assert (r.ok, r.error_code) == (False, "not_found")
    r = await magento.call(CN, "order.read", {"entity_id": "999"})
    assert (r.ok, r.error_code, r.upstream_status) == (False, "not_found", 404)
    assert r.error_message == "no order with entity id 999"
    assert fake.count("order.comment") == 0 and fake.count("order.get") == 1
    assert fake.count("order.hold") == 1  # the 404 on /orders/999/hold: nothing held
    # nothing was applied, so the keys stay free: once the order exists, the hold goes through
    fake.add_order(make_order(60, increment_id="SO-99999"))
    r = await magento.call(
        CN, "order.hold", {"order_id": "SO-99999", "reason": "promise_risk"}, idempotency_key="u"
    )
    assert r.ok and r.content["order_id"] == "60", r
    assert fake.order(60)["state"] == "holded"


async def test_an_order_number_that_looks_numeric(magento: ConnectorRuntime, fake):
    # Magento's default numbers: "000000123" (zero-padded) for the default store view, a
    # store-id prefix for the others ("2000000008", far above any entity id).
    fake.add_order(make_order(123))  # numbered 000000123
    second_store = make_order(8, increment_id="2000000008")
    second_store["store_id"] = 2
    fake.add_order(second_store)
    r = await magento.call(CN, "order.hold", {"order_id": "000000123"}, idempotency_key="z")
    assert r.ok and (r.content["order_id"], r.content["increment_id"]) == ("123", "000000123")
    assert fake.order(123)["state"] == "holded"
    assert [q["path"] for q in fake.requests()][-1] == "/rest/V1/orders/123/hold"
    assert fake.count("order.get") == 0  # never tried as entity 123: searched as a number
    r = await magento.call(CN, "order.hold", {"order_id": "2000000008"}, idempotency_key="s2")
    assert r.ok and (r.content["order_id"], r.content["increment_id"]) == ("8", "2000000008")
    assert fake.order(8)["state"] == "holded"
    # no entity 2000000008 (404, nothing applied), so the number was searched, then order 8 held
    assert [q["path"] for q in fake.requests()][-3:] == [
        "/rest/V1/orders/2000000008/hold",
        "/rest/V1/orders",
        "/rest/V1/orders/8/hold",
    ]
    # the resolution is cached: the next call goes straight to order 8
    r = await magento.call(CN, "order.read", {"order_id": "2000000008"})
    assert r.ok and r.content["order"]["entity_id"] == 8, r
    assert [q["path"] for q in fake.requests()][-1] == "/rest/V1/orders/8"
    assert fake.count("order.search") == 2


async def test_a_bare_integer_that_is_both_an_entity_and_a_number(magento: ConnectorRuntime, fake):
    # The documented ambiguity: order 7 is numbered "123" and order 123 exists. order_id "123"
    # is the entity (no request more for numeric entity ids); increment_id names the number.
    fake.add_order(make_order(7, increment_id="123"))
    fake.add_order(make_order(123))
    r = await magento.call(CN, "order.read", {"order_id": "123"})
    assert r.ok and r.content["order"]["increment_id"] == "000000123", r
    r = await magento.call(CN, "order.hold", {"increment_id": "123"}, idempotency_key="n123")
    assert r.ok and (r.content["order_id"], r.content["increment_id"]) == ("7", "123")
    assert fake.order(7)["state"] == "holded" and fake.order(123)["state"] == "processing"
    r = await magento.call(CN, "order.read", {"entity_id": 123})
    assert r.ok and r.content["order"]["increment_id"] == "000000123", r


async def test_an_order_number_two_stores_share_is_refused(magento: ConnectorRuntime, fake):
    fake.add_order(make_order(70, increment_id="100000070"))
    twin = make_order(71, increment_id="100000070")
    twin["store_id"] = 2  # another store view whose sequence overlaps
    fake.add_order(twin)
    r = await magento.call(CN, "order.hold", {"order_id": "100000070"}, idempotency_key="twin")
    assert (r.ok, r.error_code) == (False, "invalid_args")
    assert "matches 2 orders" in r.error_message and "entity_id" in r.error_message
    # only the 404 of /orders/100000070/hold (no such entity) reached the hold route
    assert fake.order(70)["state"] == fake.order(71)["state"] == "processing"
    r = await magento.call(CN, "order.read", {"increment_id": "100000070"})
    assert (r.ok, r.error_code) == (False, "invalid_args")
    r = await magento.call(CN, "order.hold", {"entity_id": "71"}, idempotency_key="twin-71")
    assert r.ok and fake.order(71)["state"] == "holded" and fake.order(70)["state"] == "processing"


async def test_hold_reason_must_be_a_documented_value(magento: ConnectorRuntime, fake):
    fake.add_order(make_order(57, increment_id="SO-10884"))
    for reason in ("because", "PROMISE_RISK", ""):
        r = await magento.call(
            CN, "order.hold", {"order_id": "SO-10884", "reason": reason}, idempotency_key="r"
        )
        assert (r.ok, r.error_code) == (False, "invalid_args"), reason
        assert "reason" in r.error_message
    for reason in ("promise_risk", "payment_review", "address_mismatch"):
        r = await magento.call(
            CN, "order.hold", {"order_id": "SO-10884", "reason": reason}, dry_run=True
        )
        assert r.ok, (reason, r)
    assert fake.count("order.hold") == 0 and fake.order(57)["state"] == "processing"


async def test_one_identifier_per_call(magento: ConnectorRuntime, fake):
    for args in (
        {"order_id": "SO-10884", "entity_id": "57"},
        {"order_id": "1", "increment_id": "000000001"},
        {"entity_id": "SO-10884"},
        {"order_id": "SO 10884"},
        {"order_id": True},
    ):
        r = await magento.call(CN, "order.read", args)
        assert (r.ok, r.error_code) == (False, "invalid_args"), args
    r = await magento.call(CN, "order.hold", {}, idempotency_key="none")
    assert (r.ok, r.error_code) == (False, "invalid_args")
    assert "order_id" in r.error_message
    assert fake.count("total") == 0


async def test_the_fake_refuses_an_order_number_in_the_path(fake: FakeMagento):
    # What cn-magento used to send for order_id "SO-10884"; Magento's route wants an int.
    fake.add_order(make_order(57, increment_id="SO-10884"))
    async with httpx.AsyncClient(base_url=fake.url) as c:
        headers = {"Authorization": "Bearer mg_live_9f4c2e8b1a41"}
        r = await c.post("/rest/V1/orders/SO-10884/hold", headers=headers)
        assert r.status_code == 400
        assert r.json()["message"] == (
            'The "SO-10884" value\'s type is invalid. The "int" type was expected. '
            "Verify and try again."
        )
        r = await c.get("/rest/default/V1/orders/57", headers=headers)
        assert r.status_code == 200 and r.json()["increment_id"] == "SO-10884"
        r = await c.post("/__fake__/orders", json={"entity_id": 58, "increment_id": "SO-10884"})
        assert r.status_code == 409  # order numbers are unique within a store
    assert fake.order(57)["state"] == "processing"
