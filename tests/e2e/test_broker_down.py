"""While the broker is stalled, writes that need it fail fast with the 503 envelope and
Retry-After (issue 15 item 4), reads from the ledger keep working, and writes succeed again once
it answers. A dedicated `fibric up` whose embedded broker is paused with SIGSTOP: the launcher
sees it alive, the api's connections stay open and nothing answers, the worst case for a client."""

from __future__ import annotations

import os
import signal
import time
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
# A 401 while the broker is stalled answers within api.auth.UNKNOWN_KEY_SYNC_TIMEOUT_S; this
# client gives up far sooner than the old hang (aiokafka's 40 s request timeout).
UNKNOWN_KEY_CLIENT_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def paused(tmp_path_factory):
    # no read-your-writes overlay: a GET answers from ClickHouse only, so "the event exists"
    # below means the worker admitted it and the ledger stored it
    stack = make_stack(tmp_path_factory.mktemp("broker-down"), FIBRIC_READ_YOUR_WRITES_TTL_S="0")
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
        # the 503'd attempt may still reach the broker (its record was queued): the retry with
        # the same key names that attempt's event id, delivered again (the worker keeps one)
        r = c.post("/v1/events", json=event(), headers={"Idempotency-Key": key})
        assert r.status_code == 200 and r.headers["idempotent-replayed"] == "true", r.text
        event_id = r.json()["id"]
        again = c.post("/v1/events", json=event(), headers={"Idempotency-Key": key})
        assert again.status_code == 200 and again.json()["id"] == event_id
        # the id the client was given exists (before the fix: a fresh id the ingest dedup dropped)
        assert wait_for_event(c, event_id)["idempotency_key"] == key
        listed = c.get("/v1/events", params={"limit": 100}).json()["data"]
        assert [e["id"] for e in listed if e.get("idempotency_key") == key] == [event_id]


def test_unknown_key_is_401_at_once_while_the_broker_is_stalled(paused):
    stack, tenant, broker = paused
    with client(stack, "sk_test_" + "x" * 40) as c:
        # an unknown key asks the broker once whether the config view is behind; a stalled
        # broker must not hold the 401 back (before: aiokafka's 40 s end-offsets request)
        c.timeout = UNKNOWN_KEY_CLIENT_TIMEOUT_S
        os.kill(broker, signal.SIGSTOP)
        try:
            for _ in range(3):
                r = c.get("/v1/events")
                assert_error(r, 401, "key_invalid")
                assert int(r.headers["x-ratelimit-limit"]) > 0
                assert "x-ratelimit-remaining" in r.headers and "x-ratelimit-reset" in r.headers
        finally:
            os.kill(broker, signal.SIGCONT)
    with client(stack, tenant.keys["admin"]) as c:
        assert c.get("/v1/events").status_code == 200


def wait_for_event(c, event_id: str, attempts: int = 300) -> dict:
    """Poll GET /v1/events/{id} until the ledger has it (at most ``attempts`` tries)."""
    for _ in range(attempts):
        r = c.get(f"/v1/events/{event_id}")
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 404, r.text
        time.sleep(0.2)
    raise AssertionError(f"{event_id} never became readable")
