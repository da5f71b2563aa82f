"""Producers publishing straight to Kafka: refusals land in the DLQ (visible to the tenant), the
agent keeps going, idempotency keys collapse repeats, and worker/api crashes lose and duplicate
nothing. Real broker, real Faust worker, real chDB, all behind `fibric up`."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.topics import EVENTS
from tests.conftest import Stack, client

pytestmark = pytest.mark.e2e


def publish(stack: Stack, values: list[bytes], pace_s: float = 0.0) -> None:
    async def run() -> None:
        p = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, linger_ms=5)
        await p.start()
        try:
            futs = []
            for i, v in enumerate(values):
                futs.append(await p.send(EVENTS, v, key=f"k{i % 16}".encode()))
                if pace_s and i % 100 == 99:
                    await p.flush()
                    await asyncio.sleep(pace_s)
            await asyncio.gather(*futs)
        finally:
            await p.stop()

    asyncio.run(run())


def envelope(tenant_id: str, source: str, **kw) -> bytes:
    doc = {
        "tenant_id": tenant_id,
        "source": source,
        "event_type": "order.created",
        "payload": {"n": 1},
    }
    doc.update(kw)
    return orjson.dumps(doc)


def wait_for(fn, timeout=60.0, interval=0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout}s (last={last!r})")


def all_events(c: httpx.Client, **params) -> list[dict]:
    out, cursor = [], None
    while True:
        q = {"limit": 100, **params}
        if cursor:
            q["cursor"] = cursor
        r = c.get("/v1/events", params=q)
        r.raise_for_status()
        page = r.json()
        out += page["data"]
        if not page["has_more"]:
            return out
        cursor = page["next_cursor"]


def test_bad_envelopes_go_to_the_dlq_and_the_next_one_is_processed(stack, acme, globex):
    source = f"dlq-{uuid.uuid4().hex[:8]}"
    publish(
        stack,
        [
            b"{this is not json",
            envelope(acme.id, source, event_type="bad-type-no-dot"),
            envelope("t_nobody", source),
            envelope(acme.id, source, payload=[1, 2]),
            envelope(acme.id, source, payload={"ok": True}),
        ],
    )
    with client(stack, acme.keys["admin"]) as c:
        good = wait_for(lambda: all_events(c, source=source))
        assert [e["payload"] for e in good] == [{"ok": True}]
        def both_dead_letters() -> list[dict] | None:
            # the two may land in different sink batches: wait for both
            found = [
                d
                for d in c.get("/v1/dead_letters", params={"limit": 100}).json()["data"]
                if source in d["raw"]
            ]
            return found if len(found) >= 2 else None

        dls = wait_for(both_dead_letters)
        reasons = sorted(d["reason"] for d in dls)
        assert reasons == ["invalid_envelope", "invalid_envelope"], dls
        one = dls[0]
        assert one["object"] == "dead_letter" and one["errors"] and one["source_topic"] == EVENTS
        assert c.get(f"/v1/dead_letters/{one['id']}").json() == one
        assert c.get("/v1/dead_letters", params={"reason": "invalid_envelope"}).status_code == 200
    # the other tenant sees none of them; the unknown-tenant and non-JSON ones belong to nobody
    with client(stack, globex.keys["admin"]) as g:
        assert not [
            d
            for d in g.get("/v1/dead_letters", params={"limit": 100}).json()["data"]
            if source in d["raw"]
        ]
        assert g.get(f"/v1/dead_letters/{one['id']}").status_code == 404


def test_repeated_idempotency_keys_from_producers_are_stored_once(stack, acme):
    source = f"dedup-{uuid.uuid4().hex[:8]}"
    vals = [
        envelope(acme.id, source, idempotency_key=f"magento:SO-{i % 3}", payload={"i": i})
        for i in range(9)
    ]
    publish(stack, vals)
    publish(stack, vals[:3])  # a producer retry much later
    with client(stack, acme.keys["admin"]) as c:
        wait_for(lambda: len(all_events(c, source=source)) >= 3)
        time.sleep(1.5)  # give any duplicate the time to (wrongly) show up
        events = all_events(c, source=source)
        assert sorted(e["idempotency_key"] for e in events) == [f"magento:SO-{i}" for i in range(3)]


def _role_pid(stack: Stack, role: str) -> int:
    for pid in stack.pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd[-2:] == [role.encode(), b""] or cmd[-1:] == [role.encode()]:
            return pid
    return 0  # not running (e.g. between a kill and the supervisor's restart)


@pytest.mark.slow
def test_sigkill_of_worker_and_api_loses_and_duplicates_nothing(stack, acme):
    source = f"crash-{uuid.uuid4().hex[:8]}"
    n = 3000
    values = [envelope(acme.id, source, payload={"i": i}) for i in range(n)]
    worker_before = _role_pid(stack, "worker")
    api_before = _role_pid(stack, "api")
    assert worker_before and api_before

    publish(stack, values[:1000], pace_s=0.02)
    os.kill(worker_before, signal.SIGKILL)
    publish(stack, values[1000:2000], pace_s=0.02)
    os.kill(api_before, signal.SIGKILL)
    publish(stack, values[2000:], pace_s=0.02)

    # `fibric up` restarts both; the stack becomes ready again
    wait_for(
        lambda: (
            _role_pid(stack, "worker") != worker_before and _role_pid(stack, "api") != api_before
        )
    )
    wait_for(
        lambda: httpx.get(f"{stack.base_url}/readyz", timeout=5).status_code == 200, timeout=90
    )
    with client(stack, acme.keys["admin"]) as c:
        wait_for(lambda: len(all_events(c, source=source)) >= n, timeout=120, interval=1.0)
        time.sleep(2)
        events = all_events(c, source=source)
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)) == n
    assert sorted(e["payload"]["i"] for e in events) == list(range(n))
    assert "restarting" in stack.up_output()
