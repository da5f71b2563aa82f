"""While the broker is stalled, writes that need it fail fast with the 503 envelope and
Retry-After (issue 15 item 4), reads from the ledger keep working, and writes succeed again once
it answers. A dedicated `fibric up` whose embedded broker is paused with SIGSTOP: the launcher
sees it alive, the api's connections stay open and nothing answers, the worst case for a client."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest

from tests.conftest import client, make_stack, new_tenant
from tests.e2e.test_control_plane import OPERATOR
from tests.e2e.test_events_api import assert_error, event

pytestmark = pytest.mark.e2e

# Bounds each request of this test; a stalled write must answer well before (api.broker:
# BROKER_WAIT_S), and aiokafka's own 15 s timeout would surface as a 500, not a 503.
CLIENT_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def paused(tmp_path_factory):
    stack = make_stack(tmp_path_factory.mktemp("broker-down"))
    stack.start()
    tenant = new_tenant(stack, "down")
    (broker,) = [p for p in stack.pids() if _argv(p)[1:2] == [b"broker"]]
    try:
        yield stack, tenant, broker
    finally:
        os.kill(broker, signal.SIGCONT)
        stack.stop()


def _argv(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def test_writes_fail_fast_with_503_and_recover(paused):
    stack, tenant, broker = paused
    key = f"down-{uuid.uuid4().hex}"
    with client(stack, tenant.keys["admin"]) as c:
        c.timeout = CLIENT_TIMEOUT_S
        assert c.post("/v1/events", json=event()).status_code == 201
        os.kill(broker, signal.SIGSTOP)
        try:
            for method, path, body in (
                ("POST", "/v1/events", event()),
                ("POST", "/v1/operators", {**OPERATOR, "name": "down-op"}),
            ):
                r = c.request(method, path, json=body, headers={"Idempotency-Key": key})
                err = assert_error(r, 503, "service_unavailable")
                assert err["type"] == "api_error" and int(r.headers["retry-after"]) > 0
            # reads come from ClickHouse and the config view: unaffected
            assert c.get("/v1/events").status_code == 200
            assert c.get("/v1/operators").status_code == 200
        finally:
            os.kill(broker, signal.SIGCONT)
        # the 503 stored nothing under the key: the retry is a fresh, successful write
        r = c.post("/v1/events", json=event(), headers={"Idempotency-Key": key})
        assert r.status_code == 201, r.text
