"""cn-sandbox-orders through the real MCP pool: simulated side effects, applied once per key."""

from __future__ import annotations

import pytest

from connectors.marketplace import load_catalogue
from connectors.pool import ConnectorRuntime, ConnectorSpec

pytestmark = pytest.mark.integration


async def test_sandbox_simulates_and_honours_idempotency_keys(tmp_path):
    rt = ConnectorRuntime(state_dir=tmp_path)
    spec = ConnectorSpec(
        instance_id="cn_sandbox",
        listing=load_catalogue()["cn-sandbox-orders"],
        config={},
        credentials={"type": "api_key", "key": "anything"},
    )
    try:
        await rt.ensure(spec)
        tools = {t.name: t for t in await rt.tools("cn_sandbox")}
        assert (
            tools["order.hold"].side_effect
            and tools["order.hold"].compensating_tool == "order.release"
        )
        assert (await rt.call("cn_sandbox", "connector.check", {})).ok
        first = await rt.call(
            "cn_sandbox", "order.hold", {"order_id": "A1"}, idempotency_key="hold:A1"
        )
        again = await rt.call(
            "cn_sandbox", "order.hold", {"order_id": "A1"}, idempotency_key="hold:A1"
        )
        assert first.ok and again.ok and first.content == again.content
        read = await rt.call("cn_sandbox", "order.read", {"order_id": "A1"})
        assert read.content["order"]["state"] == "holded" and read.content["order"]["holds"] == 1
        dry = await rt.call("cn_sandbox", "order.release", {"order_id": "A1"}, dry_run=True)
        assert (
            dry.ok
            and (await rt.call("cn_sandbox", "order.read", {"order_id": "A1"})).content["order"][
                "releases"
            ]
            == 0
        )
    finally:
        await rt.close()
