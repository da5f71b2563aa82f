"""cn-magento's pure order-naming pieces: which identifier a call gave, the documented
order-number search, picking the one order a search found, the resolution cache; and the fake
store's reading of both searchCriteria spellings."""

from __future__ import annotations

import pytest

from connectors.errors import ConnectorError
from connectors.servers.magento import (
    CANONICAL_ENTITY_RE,
    HOLD_REASONS,
    OrderRef,
    Resolutions,
    order_number_params,
    order_ref,
    pick_order,
    validate_reason,
)
from tests.fakes.magento import make_order, parse_search_criteria, search_orders, seed_orders


def test_the_order_number_search_is_spelled_as_magento_documents_it():
    assert order_number_params("SO-10884") == [
        ("searchCriteria[filter_groups][0][filters][0][field]", "increment_id"),
        ("searchCriteria[filter_groups][0][filters][0][value]", "SO-10884"),
        ("searchCriteria[filter_groups][0][filters][0][condition_type]", "eq"),
        ("searchCriteria[pageSize]", "2"),
    ]


def test_the_fake_reads_both_spellings_alike():
    orders = list(seed_orders().values()) + [make_order(57, increment_id="SO-10884")]
    snake = parse_search_criteria(order_number_params("SO-10884"))
    camel = parse_search_criteria(
        [
            ("searchCriteria[filterGroups][0][filters][0][field]", "increment_id"),
            ("searchCriteria[filterGroups][0][filters][0][value]", "SO-10884"),
            ("searchCriteria[filterGroups][0][filters][0][conditionType]", "eq"),
            ("searchCriteria[page_size]", "2"),
        ]
    )
    assert snake == camel
    assert snake is not None
    assert [o["entity_id"] for o in search_orders(orders, snake)["items"]] == [57]


@pytest.mark.parametrize(
    ("args", "ref"),
    [
        ({"order_id": "SO-10884"}, OrderRef(order_id="SO-10884")),
        ({"order_id": "000000123"}, OrderRef(order_id="000000123")),
        ({"order_id": 42}, OrderRef(order_id="42")),
        ({"increment_id": "123"}, OrderRef(increment_id="123")),
        ({"entity_id": 7}, OrderRef(entity_id="7")),
    ],
)
def test_order_ref_accepts_one_identifier(args, ref):
    assert order_ref(**args) == ref


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"order_id": "SO-10884", "entity_id": "57"},
        {"order_id": "1", "increment_id": "1"},
        {"order_id": "SO 10884"},
        {"order_id": "../1"},
        {"order_id": "x" * 51},
        {"entity_id": "SO-10884"},
        {"order_id": True},
    ],
)
def test_order_ref_refuses(args):
    with pytest.raises(ConnectorError) as e:
        order_ref(**args)
    assert e.value.code == "invalid_args"


def test_no_identifier_is_fine_when_none_is_required():
    assert order_ref(required=False) is None


def test_only_canonical_integers_are_tried_as_entity_ids():
    assert all(CANONICAL_ENTITY_RE.match(v) for v in ("1", "42", "2000000008"))
    assert not any(CANONICAL_ENTITY_RE.match(v) for v in ("0", "000000123", "SO-1", "1.0", "-1"))


def test_hold_reasons_are_the_documented_ones():
    assert HOLD_REASONS == ("promise_risk", "payment_review", "address_mismatch")
    for reason in (*HOLD_REASONS, None):
        validate_reason(reason)
    for bad in ("because", "PROMISE_RISK", ""):
        with pytest.raises(ConnectorError) as e:
            validate_reason(bad)
        assert e.value.code == "invalid_args" and "promise_risk" in e.value.message


def test_pick_order_takes_exactly_one():
    one = make_order(57, increment_id="SO-10884")
    assert pick_order([one], 1, "SO-10884") is one
    assert pick_order([], 0, "SO-10884") is None
    twin = {**make_order(58, increment_id="SO-10884"), "store_id": 2}
    for items, total in (([one, twin], 2), ([one], 2)):  # page of one, but two matched
        with pytest.raises(ConnectorError) as e:
            pick_order(items, total, "SO-10884")
        assert e.value.code == "invalid_args" and "entity_id" in e.value.message


def test_resolutions_expire_and_stay_bounded():
    now = [0.0]
    cache = Resolutions(max_entries=2, clock=lambda: now[0])
    cache.put("SO-1", "1", ttl_s=10)
    assert cache.get("SO-1") == "1"
    now[0] = 10.0
    assert cache.get("SO-1") is None and len(cache) == 0  # expired entries are dropped
    cache.put("SO-1", "1", ttl_s=100)
    cache.put("SO-2", "2", ttl_s=100)
    assert cache.get("SO-1") == "1"  # SO-1 is now the most recently used
    cache.put("SO-3", "3", ttl_s=100)
    assert (cache.get("SO-1"), cache.get("SO-2"), cache.get("SO-3")) == ("1", None, "3")
    cache.forget("SO-3")
    assert cache.get("SO-3") is None and len(cache) == 1
