"""Hostile input at both edges, against the real stack (`fibric up`: embedded broker, Faust
worker, chDB): a record the pipeline cannot process becomes a dead letter and the records behind
it, on the same partition and of another tenant, are processed; over HTTP the same inputs get
the error envelope, never a 201 the worker would later dead-letter and never a 500."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.limits import MAX_PAYLOAD_BYTES
from streams.topics import DLQ, EVENTS
from tests.conftest import Stack, client
from tests.e2e.test_kafka_pipeline import all_events, wait_for

pytestmark = pytest.mark.e2e

# Records and requests here are few; anything slower than this is a stuck pipeline, not load.
SETTLE_S = 45.0


def publish_in_order(stack: Stack, values: list[bytes]) -> None:
    """One key, so every record lands on one partition in this order: a poison record that
    stalled its batch would stall everything published after it."""

    async def run() -> None:
        p = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
        await p.start()
        try:
            for v in values:
                await p.send_and_wait(EVENTS, v, key=b"hostile:one-partition")
        finally:
            await p.stop()

    asyncio.run(run())


def dlq_raws_containing(stack: Stack, marker: str) -> list[dict]:
    """Refusal records on the DLQ topic whose raw value holds ``marker`` — including those that
    name no tenant, which no tenant's API key can read."""

    async def run() -> list[dict]:
        c = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, enable_auto_commit=False)
        await c.start()
        try:
            await c.topics()  # fetches the metadata partitions_for_topic reads
            parts = [TopicPartition(DLQ, p) for p in sorted(c.partitions_for_topic(DLQ) or ())]
            assert parts, "the DLQ topic has no partitions"
            c.assign(parts)
            await c.seek_to_beginning(*parts)
            end = await c.end_offsets(parts)
            found: list[dict] = []

            async def behind() -> bool:
                return any([await c.position(tp) < end[tp] for tp in parts])

            while await behind():
                batch = await c.getmany(timeout_ms=500)
                for records in batch.values():
                    for r in records:
                        dl = orjson.loads(r.value)
                        if marker in dl.get("raw", ""):
                            found.append(dl)
            return found
        finally:
            await c.stop()

    return asyncio.run(run())


def test_poison_records_are_dead_lettered_and_the_next_record_is_processed(stack, acme, globex):
    marker = f"hostile-{uuid.uuid4().hex[:8]}"

    def head(tenant: str, event_type: str) -> str:
        return f'{{"tenant_id":"{tenant}","source":"{marker}","event_type":"{event_type}",'

    deep = head(acme.id, "poison.deep") + '"payload":' + '{"a":' * 300 + "1" + "}" * 300 + "}"
    huge_int = head(acme.id, "poison.int") + f'"payload":{{"amount":{2**64}}}}}'
    bad_utf8 = (head(acme.id, "poison.utf8") + '"payload":{"name":"\u00ff"}}').encode()
    bad_utf8 = bad_utf8.replace("\u00ff".encode(), b"\xff")
    after = head(globex.id, "order.created") + '"payload":{"after":true}}'
    publish_in_order(stack, [deep.encode(), huge_int.encode(), bad_utf8, after.encode()])

    # the other tenant's record behind the poison is processed
    with client(stack, globex.keys["admin"]) as g:
        events = wait_for(lambda: all_events(g, source=marker), timeout=SETTLE_S)
        assert [e["payload"] for e in events] == [{"after": True}]

    # each bad record became exactly one dead letter; the tenant sees the ones that name it
    with client(stack, acme.keys["admin"]) as c:

        def acme_dead_letters() -> list[dict] | None:
            page = c.get("/v1/dead_letters", params={"limit": 100}).json()["data"]
            mine = [d for d in page if marker in d["raw"]]
            return mine if len(mine) >= 2 else None

        mine = wait_for(acme_dead_letters, timeout=SETTLE_S)
        by_limit = {d["errors"][0]["type"]: d for d in mine}
        assert set(by_limit) == {"MAX_PAYLOAD_DEPTH", "MAX_PAYLOAD_INT"}, mine
        assert {d["reason"] for d in mine} == {"invalid_envelope"}
        assert not all_events(c, source=marker)  # none of the poison was admitted
    # undecodable bytes name no tenant: the refusal is on the DLQ topic for operators
    on_topic = wait_for(lambda: dlq_raws_containing(stack, marker) or None, timeout=SETTLE_S)
    deadline = time.monotonic() + SETTLE_S
    while len(on_topic) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
        on_topic = dlq_raws_containing(stack, marker)
    assert sorted(d["reason"] for d in on_topic) == [
        "invalid_envelope",
        "invalid_envelope",
        "invalid_json",
    ], on_topic
    assert next(d for d in on_topic if d["reason"] == "invalid_json")["tenant_id"] == ""


def _post(c, body: bytes):
    return c.post("/v1/events", content=body, headers={"Content-Type": "application/json"})


def test_http_refuses_what_the_worker_would_dead_letter_with_the_error_envelope(stack, acme):
    marker = f"hostile-http-{uuid.uuid4().hex[:8]}"
    head = f'{{"source":"{marker}","event_type":"order.created","payload":'
    with client(stack, acme.keys["ingest"]) as c:
        deep = _post(c, (head + '{"a":' * 300 + "1" + "}" * 300 + "}").encode())
        assert deep.status_code == 400, deep.text
        err = deep.json()["error"]
        assert err["code"] == "invalid_parameter" and err["param"].startswith("payload.a.a")
        assert err["request_id"] == deep.headers["Request-Id"]

        # over the event limit, under the 1 MiB body limit
        blob = "x" * 60_000
        big = {f"k{i}": blob for i in range(10)}  # ~600 KB of payload
        assert MAX_PAYLOAD_BYTES < len(orjson.dumps(big)) < 1_048_576
        large = _post(c, (head + orjson.dumps(big).decode() + "}").encode())
        assert large.status_code == 413, large.text
        err = large.json()["error"]
        assert err["code"] == "request_too_large" and err["param"] == "payload"

        wide = _post(c, (head + f'{{"amount":{2**64}}}}}').encode())
        assert wide.status_code == 400 and wide.json()["error"]["code"] == "invalid_parameter"

        lone = _post(c, (head + '{"a":"\\ud800"}}').encode())
        assert lone.status_code == 400 and lone.json()["error"]["code"] == "invalid_json"

        ok = _post(c, (head + '{"amount":9223372036854775807}}').encode())
        assert ok.status_code == 201, ok.text
        assert ok.json()["payload"] == {"amount": 2**63 - 1}
        # the one accepted event is stored exactly; none of the refused ones appears
        events = wait_for(lambda: all_events(c, source=marker), timeout=SETTLE_S)
        assert [e["payload"] for e in events] == [{"amount": 2**63 - 1}]
