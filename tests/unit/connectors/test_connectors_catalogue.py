"""The marketplace catalogue: it loads, it is consistent, and every live listing's server
exposes exactly the listed tools with the listed flags."""

from __future__ import annotations

import asyncio
import importlib
import json
from pathlib import Path

import pytest

from connectors.marketplace import (
    CHECK_TOOL,
    NOUN_VERB_RE,
    Listing,
    listing_problems,
    load_catalogue,
    parse_catalogue,
)
from connectors.pool import is_reserved, supports_batch, tool_info
from connectors.server import RESERVED_TOOLS, read_env

CATALOGUE = Path(__file__).resolve().parents[3] / "connectors" / "catalogue.json"


def test_catalogue_loads_and_is_cached():
    cat = load_catalogue()
    assert load_catalogue() is cat
    assert {"cn-magento", "cn-kustomer", "cn-amazon-connect"} <= set(cat)
    assert all(isinstance(v, Listing) and v.id == k for k, v in cat.items())


def test_live_and_early_access_listings():
    cat = load_catalogue()
    live = {k for k, v in cat.items() if v.status == "live"}
    # the seed's three live listings, plus the additive sandbox (spec §1.3)
    assert live == {"cn-magento", "cn-kustomer", "cn-amazon-connect", "cn-sandbox-orders"}
    early = [v for v in cat.values() if v.status == "early_access"]
    assert len(early) >= 2
    assert all(v.server is None for v in early)
    assert any(v.kind == "hardware" for v in early)
    assert all(v.server is not None and v.server.module for v in cat.values() if v.status == "live")


@pytest.mark.parametrize("listing", list(load_catalogue().values()), ids=lambda v: v.id)
def test_every_listing_is_consistent(listing: Listing):
    assert listing_problems(listing) == []
    tools = {t.name for t in listing.tools}
    assert {t.capability for t in listing.tools} <= set(listing.capabilities)
    for t in listing.tools:
        assert NOUN_VERB_RE.match(t.name)
        if t.compensating_tool:
            assert t.compensating_tool in tools and t.side_effect
    if listing.auth_type == "oauth2":
        assert listing.authorize_url


def test_magento_listing_matches_the_spec():
    mg = load_catalogue()["cn-magento"]
    assert (mg.kind, mg.status, mg.auth_type) == ("saas", "live", "api_key")
    assert [k.name for k in mg.config_keys] == ["base_url"]
    flags = {t.name: (t.side_effect, t.capability, t.compensating_tool) for t in mg.tools}
    assert flags == {
        "order.read": (False, "order.read", None),
        "order.hold": (True, "order.hold", "order.release"),
        "order.release": (True, "order.release", None),
        "order.notify": (True, "order.notify", None),
    }
    assert mg.price is not None
    assert (mg.price.amount, mg.price.currency, mg.price.interval, mg.price.unit) == (
        "29.00",
        "USD",
        "month",
        "source",
    )
    ac = load_catalogue()["cn-amazon-connect"]
    assert ac.auth_type == "oauth2" and [k.name for k in ac.config_keys][0] == "instance_id"


@pytest.mark.parametrize(
    "listing",
    [v for v in load_catalogue().values() if v.server is not None],
    ids=lambda v: v.id,
)
def test_server_tool_list_equals_the_catalogue(listing: Listing):
    assert listing.server is not None and listing.server.module
    module = importlib.import_module(listing.server.module)
    server = module.build(read_env(listing.id, {})).build()
    tools = asyncio.run(server.list_tools())
    # The toolkit's reserved tools are listed (so the pool can use them) but are no listing's.
    assert {t.name for t in tools if is_reserved(t)} == RESERVED_TOOLS
    assert supports_batch(tools)
    listed = {t.name: tool_info(t) for t in tools if not is_reserved(t)}
    assert set(listed) == {t.name for t in listing.tools} | {CHECK_TOOL}
    for t in listing.tools:
        info = listed[t.name]
        assert (info.side_effect, info.capability, info.compensating_tool) == (
            t.side_effect,
            t.capability,
            t.compensating_tool,
        )
        if t.side_effect:
            assert "idempotency_key" in info.input_schema["required"]
            assert info.input_schema["properties"]["dry_run"]["default"] is False
    assert listed[CHECK_TOOL].side_effect is False


def _doc(**overrides):
    doc = json.loads(CATALOGUE.read_text())
    listing = next(x for x in doc["listings"] if x["id"] == "cn-magento")
    listing.update(overrides)
    return json.dumps({"listings": [listing]})


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"capabilities": ["order.read", "order.hold", "order.release"]}, "undeclared capability"),
        ({"status": "early_access"}, "ship no server"),
        ({"server": None}, "needs a server"),
        ({"auth_type": "oauth2"}, "authorize_url"),
        (
            {
                "capabilities": [
                    "order.read",
                    "order.hold",
                    "order.release",
                    "order.notify",
                    "Order.Refund",
                ]
            },
            "not noun.verb",
        ),
    ],
)
def test_inconsistent_listings_are_rejected(overrides, problem):
    with pytest.raises(ValueError, match=problem):
        parse_catalogue(_doc(**overrides))


def test_dangling_compensating_tool_is_rejected():
    doc = json.loads(_doc())
    doc["listings"][0]["tools"][1]["compensating_tool"] = "order.unhold"
    with pytest.raises(ValueError, match="compensating tool 'order.unhold'"):
        parse_catalogue(json.dumps(doc))


def test_duplicate_listing_ids_are_rejected():
    one = json.loads(_doc())["listings"][0]
    with pytest.raises(ValueError, match="duplicate listing id"):
        parse_catalogue(json.dumps({"listings": [one, one]}))
