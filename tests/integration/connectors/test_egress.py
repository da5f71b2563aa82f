"""The egress policy end to end with real sockets: a listener on 127.0.0.1 stands for an
internal service. A live-mode install or connector aimed at it is refused before any
connection, so it never sees a request (and never a credential); test mode still reaches the
fake Magento; redirects are never followed and requests never leave the configured host."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from api.controllers.connectors import _check_egress
from connectors.egress import EgressRefused, egress_client
from connectors.marketplace import CHECK_TOOL, load_catalogue
from connectors.pool import ConnectorRuntime, ConnectorSpec, ConnectorUnavailable
from schemas.errors import ErrorCode, FibricError
from tests.fakes.listener import Listener, closed_port
from tests.fakes.magento import DEFAULT_TOKEN, FakeMagento

pytestmark = pytest.mark.integration

SECRET = "mg_live_EGRESS_5b0d7f2c91"  # distinctive, so a leak is unmistakable


def saw_secret(listener: Listener) -> bool:
    return any(SECRET in json.dumps(r) for r in listener.requests)


@pytest.fixture
def listener() -> Iterator[Listener]:
    srv = Listener()
    yield srv
    srv.stop()


# ---- install-time validation (the api's check, before any probe) ----------------------------
@pytest.mark.parametrize(
    ("listing_id", "param"),
    [
        ("cn-magento", "config.base_url"),
        ("cn-kustomer", "config.base_url"),
        ("cn-magento", "remote_url"),
    ],
)
async def test_live_install_aimed_at_loopback_is_refused_without_connecting(
    listener: Listener, listing_id: str, param: str
) -> None:
    listing = load_catalogue()[listing_id]
    other = "https://93.184.216.34"  # a public address for whichever URL is not under test

    for url in (f"{listener.url}/rest", f"http://localhost:{listener.port}/mcp"):
        config = {"base_url": url if param == "config.base_url" else other}
        remote = url if param == "remote_url" else None
        with pytest.raises(FibricError) as info:
            await _check_egress(listing, config, remote, livemode=True)
        err = info.value
        assert (err.code, err.status, err.param) == (ErrorCode.INVALID_PARAMETER, 400, param)
        body = err.envelope("req_test")["error"]
        assert body["code"] == "invalid_parameter" and body["param"] == param
        assert body["type"] == "invalid_request_error"
        assert SECRET not in body["message"]
    assert listener.connections == 0 and not listener.requests


async def test_install_refusal_reads_the_same_for_an_open_and_a_closed_port(
    listener: Listener,
) -> None:
    """No port-scan oracle: the answer cannot depend on whether something listens."""
    listing = load_catalogue()["cn-magento"]
    messages = []
    for port in (listener.port, closed_port()):
        with pytest.raises(FibricError) as info:
            await _check_egress(
                listing, {"base_url": f"http://127.0.0.1:{port}"}, None, livemode=True
            )
        messages.append(info.value.message)
    assert messages[0] == messages[1]
    assert listener.connections == 0


async def test_test_mode_install_may_name_loopback_but_nothing_else_private() -> None:
    listing = load_catalogue()["cn-magento"]
    await _check_egress(listing, {"base_url": "http://127.0.0.1:8080"}, None, livemode=False)
    for url in ("http://169.254.169.254/", "http://10.0.0.1/", "http://2130706433/"):
        with pytest.raises(FibricError) as info:
            await _check_egress(listing, {"base_url": url}, None, livemode=False)
        assert info.value.param == "config.base_url"


# ---- the connectors themselves (real MCP servers, real pool) --------------------------------
async def test_live_mode_connector_never_reaches_loopback(
    runtime: ConnectorRuntime, listener: Listener
) -> None:
    """Even a live instance whose URL got past install (stored earlier, or DNS that changed)
    is refused at connect time by the server's own client."""
    for listing_id in ("cn-magento", "cn-kustomer"):
        spec = ConnectorSpec(
            f"cn_live_{listing_id[3:]}",
            load_catalogue()[listing_id],
            {"base_url": listener.url},
            {"type": "api_key", "key": SECRET},
            livemode=True,
        )
        await runtime.ensure(spec)
        r = await runtime.call(spec.instance_id, CHECK_TOOL, {})
        assert (r.ok, r.error_code) == (False, "upstream_error"), r
        assert "egress policy" in (r.error_message or "")
        assert SECRET not in json.dumps(r.content)
    assert listener.connections == 0 and not saw_secret(listener)


async def test_live_mode_remote_mcp_url_is_refused_before_connecting(
    runtime: ConnectorRuntime, listener: Listener
) -> None:
    spec = ConnectorSpec(
        "cn_remote_live",
        load_catalogue()["cn-magento"],
        {},
        {"type": "api_key", "key": SECRET},
        remote_url=f"{listener.url}/mcp",
        livemode=True,
    )
    with pytest.raises(ConnectorUnavailable) as info:
        await runtime.ensure(spec)
    assert "loopback" in str(info.value) and SECRET not in str(info.value)
    assert listener.connections == 0


async def test_test_mode_still_reaches_the_fake_magento(
    runtime: ConnectorRuntime, fake: FakeMagento
) -> None:
    spec = ConnectorSpec(
        "cn_test_mode",
        load_catalogue()["cn-magento"],
        {"base_url": fake.url},
        {"type": "api_key", "key": DEFAULT_TOKEN},
        livemode=False,
    )
    await runtime.ensure(spec)
    r = await runtime.call(spec.instance_id, CHECK_TOOL, {})
    assert r.ok, r
    r = await runtime.call(spec.instance_id, "order.hold", {"order_id": "1"}, idempotency_key="k1")
    assert r.ok, r
    assert fake.count("order.hold") == 1


async def test_redirects_are_never_followed(runtime: ConnectorRuntime) -> None:
    """Test mode reaches the loopback store, which redirects elsewhere: the token stays put."""
    target = Listener()
    redirector = Listener(redirect_to=f"{target.url}/steal")
    try:
        spec = ConnectorSpec(
            "cn_redirect",
            load_catalogue()["cn-kustomer"],
            {"base_url": redirector.url},
            {"type": "api_key", "key": SECRET},
            livemode=False,
        )
        await runtime.ensure(spec)
        r = await runtime.call(spec.instance_id, CHECK_TOOL, {})
        assert (r.ok, r.error_code) == (False, "upstream_error"), r
        assert "redirect" in (r.error_message or "")
        assert len(redirector.requests) == 1 and saw_secret(redirector)  # the configured host
        assert target.connections == 0  # ...and nowhere else
    finally:
        target.stop()
        redirector.stop()


# ---- the client: checked address, configured host only --------------------------------------
async def test_client_connects_to_the_checked_address_not_a_new_lookup(
    listener: Listener,
) -> None:
    """DNS rebinding: the name is resolved once per check and the connection goes to that
    address; a live-mode answer that turns to loopback is refused before connecting."""
    answers = {"store.test": ["127.0.0.1"]}
    url = f"http://store.test:{listener.port}"
    async with egress_client(
        url,
        livemode=False,
        resolve=lambda host, port: answers[host],
        headers={"Authorization": f"Bearer {SECRET}"},
    ) as c:
        r = await c.get("/rest/V1/orders")
        assert r.status_code == 200
        # the system resolver knows no store.test: the request went to the checked address,
        # still naming the configured host
        assert listener.requests[-1]["Host"] == f"store.test:{listener.port}"
        with pytest.raises(EgressRefused, match="configured host"):
            await c.get(f"http://127.0.0.1:{listener.port}/elsewhere")
    assert len(listener.requests) == 1

    seen = listener.connections
    async with egress_client(url, livemode=True, resolve=lambda host, port: answers[host]) as c:
        with pytest.raises(EgressRefused, match="loopback"):
            await c.get("/rest/V1/orders")
    assert listener.connections == seen


async def test_client_refuses_bad_urls_at_once() -> None:
    for url in ("ftp://93.184.216.34/", "http://u:p@93.184.216.34/", "http://2130706433/"):
        with pytest.raises(EgressRefused):
            egress_client(url, livemode=True)
    # a well-formed public URL builds a client (nothing connects until a request)
    async with egress_client("https://93.184.216.34", livemode=True) as c:
        assert isinstance(c, httpx.AsyncClient)
