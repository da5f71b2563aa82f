"""`fibric up` as a user runs it: clear one-line errors, a clean Ctrl-C, and a restart on the same
FIBRIC_HOME that keeps tenants, keys and stored events (ClickHouse) although the embedded broker
starts empty."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import client, make_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_busy_api_port_is_a_one_line_error(tmp_path):
    stack = make_stack(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", int(stack.env["FIBRIC_API_PORT"])))
        s.listen()
        r = subprocess.run(
            [sys.executable, "-m", "fibric", "up"],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "busy" in lines[0] and "Traceback" not in r.stderr


def test_busy_broker_port_that_is_not_kafka_is_a_one_line_error(tmp_path):
    stack = make_stack(tmp_path)
    host, port = stack.bootstrap.split(":")
    with socket.socket() as s:
        s.bind((host, int(port)))
        s.listen()
        r = subprocess.run(
            [sys.executable, "-m", "fibric", "up"],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 1
    assert "no Kafka broker answers" in r.stderr and "Traceback" not in r.stderr


def test_admin_without_a_broker_is_a_one_line_error(tmp_path):
    stack = make_stack(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "fibric", "admin", "tenant", "create", "acme", "--json"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        r.returncode == 1 and "no Kafka broker answers" in r.stderr and "Traceback" not in r.stderr
    )


def test_ctrl_c_stops_everything_and_a_restart_keeps_config_and_events(tmp_path):
    stack = make_stack(tmp_path)
    stack.start()
    try:
        t = stack.cli("admin", "tenant", "create", "durable", "--name", "Durable Co", "--json")
        assert t["slug"] == "durable" and t["name"] == "Durable Co" and t["id"].startswith("t_")
        key = stack.cli("admin", "key", "create", "--tenant", "durable", "--json")
        assert set(key) >= {"id", "secret", "scopes", "tenant_id"} and key["secret"].startswith(
            "sk_test_"
        )
        assert key["tenant_id"] == t["id"] and key["id"].startswith("key_")
        with client(stack, key["secret"]) as c:
            ev = c.post(
                "/v1/events",
                json={"source": "s", "event_type": "order.created", "payload": {"a": 1}},
            ).json()
            # wait until the ledger has it (not just the in-memory overlay): the api restart below
            # starts with an empty overlay, so only ClickHouse can answer afterwards
            time.sleep(2)
        assert len(stack.pids()) >= 4  # up, broker, worker, api
    finally:
        assert stack.stop() == 0
    deadline = time.monotonic() + 10
    while stack.pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stack.pids() == [], "processes left behind after Ctrl-C"
    assert "stopped" in stack.up_output()

    # Restart on the same home: fresh embedded broker, config restored from the ledger.
    stack.start()
    try:
        with client(stack, key["secret"]) as c:
            r = c.get(f"/v1/events/{ev['id']}")
            assert r.status_code == 200 and r.json() == ev
        dup = subprocess.run(
            [sys.executable, "-m", "fibric", "admin", "tenant", "create", "durable", "--json"],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert dup.returncode == 1 and "already exists" in dup.stderr
        assert httpx.get(f"{stack.base_url}/readyz").status_code == 200
    finally:
        assert stack.stop() == 0


def test_demo_populates_a_tenant_and_stops_cleanly(tmp_path):
    stack = make_stack(tmp_path)
    stack.start()  # plain start first so the readiness wait is shared with the other tests
    assert stack.stop() == 0
    out_path = stack.home / "up.out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fibric", "up", "--demo"],
        env=stack.env,
        stdout=open(out_path, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stack.proc = proc
    try:
        deadline = time.monotonic() + 300  # the summary waits for the pipeline (bounded)
        while time.monotonic() < deadline and "receipts so far" not in out_path.read_text():
            assert proc.poll() is None, out_path.read_text()
            time.sleep(0.5)
        text = out_path.read_text()
        line = next(ln for ln in text.splitlines() if "receipts so far" in ln)
        for outcome in ("applied", "deduplicated", "pending_approval", "refused"):
            assert outcome in line, line
        key = (
            next(ln for ln in text.splitlines() if "FIBRIC_KEY=" in ln)
            .split("FIBRIC_KEY=")[1]
            .strip()
        )
        # all three live marketplace connectors, each against its stand-in, are connected; Amazon
        # Connect's OAuth dance was completed by the demo against the local authorization server
        shown = next(ln for ln in text.splitlines() if ln.startswith("fibric: connectors: "))
        for listing in ("cn-magento", "cn-kustomer", "cn-amazon-connect"):
            assert f"{listing} " in shown, shown
        with client(stack, key) as c:
            assert c.get("/v1/plans", params={"status": "proposed"}).json()["data"]
            assert c.get("/v1/operators").json()["data"][0]["name"] == "order-risk"
            cns = {cn["listing"]: cn for cn in c.get("/v1/connectors").json()["data"]}
            assert {k: v["status"] for k, v in cns.items()} == {
                "cn-magento": "connected",
                "cn-kustomer": "connected",
                "cn-amazon-connect": "connected",
            }, cns
            # their tools run: a live read and a dry run against each stand-in (the Amazon Connect
            # stand-in accepts the token the dance obtained: it asks the authorization server)
            for listing in ("cn-kustomer", "cn-amazon-connect"):
                t = c.post(f"/v1/connectors/{cns[listing]['id']}/test", json={})
                assert t.status_code == 200 and t.json()["status"] == "passed", (listing, t.text)
        # the demo's receiver prints the held plans' signed webhook deliveries
        while time.monotonic() < deadline and "fibric: webhook plan.awaiting_approval" not in (
            out_path.read_text()
        ):
            time.sleep(0.5)
        hooks = [
            ln for ln in out_path.read_text().splitlines() if ln.startswith("fibric: webhook ")
        ]
        assert any("plan.awaiting_approval" in ln for ln in hooks), hooks
        assert all(ln.endswith("signature ok") for ln in hooks), hooks
    finally:
        code = stack.stop()  # also when an assertion failed: no stack is left behind
    assert code == 0
    deadline = time.monotonic() + 10
    while stack.pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stack.pids() == []  # the demo's stand-ins stopped too
