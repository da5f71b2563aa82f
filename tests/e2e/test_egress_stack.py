"""Issue 15 item 3 over HTTP through a real `fibric up`: a live-mode install aimed at a
listener on 127.0.0.1 is refused with the error envelope before anything connects to it (so
the tenant's credential is never forwarded); a test-mode install against the fake Magento on
loopback still works."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import client, new_tenant
from tests.e2e.test_events_api import assert_error
from tests.integration.connectors.test_egress import SECRET, Listener, closed_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tenant(stack):
    return new_tenant(stack, f"eg-{uuid.uuid4().hex[:6]}")


def _install(c, name: str, **body):
    return c.post(
        "/v1/connectors",
        json={"listing": "cn-magento", "name": name, **body},
        headers={"Idempotency-Key": f"egress-{name}-{uuid.uuid4().hex}"},
    )


def test_live_install_to_loopback_is_refused_and_never_connects(stack, tenant):
    listener = Listener()
    try:
        auth = {"type": "api_key", "key": SECRET}
        with client(stack, tenant.keys["live"]) as c:
            messages = []
            for port in (listener.port, closed_port()):
                err = assert_error(
                    _install(
                        c,
                        f"live-{port}",
                        auth=auth,
                        config={"base_url": f"http://127.0.0.1:{port}"},
                    ),
                    400,
                    "invalid_parameter",
                )
                assert err["param"] == "config.base_url"
                messages.append(err["message"])
            assert messages[0] == messages[1]  # open or closed port: the same answer
            err = assert_error(
                _install(
                    c,
                    "live-remote",
                    auth=auth,
                    config={"base_url": "https://93.184.216.34"},
                    remote_url=f"http://localhost:{listener.port}/mcp",
                ),
                400,
                "invalid_parameter",
            )
            assert err["param"] == "remote_url"
            assert c.get("/v1/connectors").json()["data"] == []
        assert listener.connections == 0 and not listener.requests
    finally:
        listener.stop()


def test_test_mode_install_against_the_loopback_fake_still_works(stack, tenant, magento):
    with client(stack, tenant.keys["admin"]) as c:
        r = _install(
            c,
            "test-store",
            auth={"type": "api_key", "key": "mg_live_9f4c2e8b1a41"},
            config={"base_url": magento.url},
        )
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "connected"
