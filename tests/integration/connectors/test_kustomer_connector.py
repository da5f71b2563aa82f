"""cn-kustomer end to end: the real MCP server (stdio subprocess, through the pool) against the
fake Kustomer (connectors/fakes/kustomer.py, a real HTTP server written from Kustomer's API
docs). Every tool: the read, the side effect, its dry run, and the reconcile after an unknown
outcome; Kustomer's errors (401, 404, 400 with a source pointer, 429 with Retry-After, an HTML
error page). Every assertion about Kustomer reads the fake's state."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from connectors.fakes.kustomer import (
    DEFAULT_TOKEN,
    NOTES_PER_MINUTE_PER_CUSTOMER,
    SEED_CONVERSATIONS,
    SEED_CUSTOMERS,
    FakeKustomer,
)
from connectors.marketplace import load_catalogue
from connectors.pool import ConnectorRuntime, ConnectorSpec

pytestmark = pytest.mark.integration

CN = "cn_kus1"
ADA = next(iter(SEED_CUSTOMERS))
CONV = next(iter(SEED_CONVERSATIONS))


@pytest.fixture(scope="module")
def kustomer_server() -> Iterator[FakeKustomer]:
    fake = FakeKustomer().start()
    yield fake
    fake.stop()


@pytest.fixture
def kfake(kustomer_server: FakeKustomer) -> Iterator[FakeKustomer]:
    kustomer_server.reset()
    yield kustomer_server
    kustomer_server.reset()  # releases anything a test left hanging


def spec(fake: FakeKustomer, token: str = DEFAULT_TOKEN) -> ConnectorSpec:
    return ConnectorSpec(
        instance_id=CN,
        listing=load_catalogue()["cn-kustomer"],
        config={"base_url": fake.url},
        credentials={"type": "api_key", "key": token},
    )


@pytest.fixture
async def rt(tmp_path: Path) -> AsyncIterator[ConnectorRuntime]:
    runtime = ConnectorRuntime(state_dir=tmp_path / "connectors")
    yield runtime
    await runtime.close()


@pytest.fixture
async def kus(rt: ConnectorRuntime, kfake: FakeKustomer) -> ConnectorRuntime:
    await rt.ensure(spec(kfake))
    return rt


# ---- the fake itself: Kustomer's documented shapes -----------------------------------------
def test_the_fake_speaks_kustomers_shapes(kfake: FakeKustomer):
    auth = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
    r = httpx.get(f"{kfake.url}/v1/customers", params={"pageSize": 1}, headers=auth)
    assert r.status_code == 200
    doc = r.json()
    assert doc["meta"] == {"pageSize": 1, "page": 1} and doc["links"]["next"]
    assert doc["data"][0]["type"] == "customer" and len(doc["data"][0]["id"]) == 24
    for h in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
        assert r.headers[h].isdigit()
    assert int(r.headers["x-ratelimit-remaining"]) == int(r.headers["x-ratelimit-limit"]) - 1
    # x-ratelimit-reset is the UTC epoch second the org's 60 s window resets (Kustomer's docs)
    assert time.time() - 1 <= int(r.headers["x-ratelimit-reset"]) <= time.time() + 61
    r = httpx.get(f"{kfake.url}/v1/customers/{ADA}")
    # the common error shape: {code, message, meta}
    assert r.status_code == 401 and r.json()["errors"] == [
        {"code": "unauthorized", "message": "Invalid or missing API token.", "meta": {}}
    ]
    r = httpx.post(f"{kfake.url}/v1/conversations/{CONV}/notes", json={"body": ""}, headers=auth)
    err = r.json()["errors"][0]  # the JSON:API form, for an invalid attribute
    assert r.status_code == 400 and err["source"]["pointer"] == "/data/attributes/body"
    assert err["status"] == "400" and err["code"] == "invalid_attribute" and err["detail"]
    r = httpx.post(f"{kfake.url}/v1/notes", json={"conversation": CONV, "body": "x"}, headers=auth)
    assert r.status_code == 201 and r.json()["data"]["type"] == "note"
    big = {"body": "x" * (101 * 1024)}
    r = httpx.post(f"{kfake.url}/v1/conversations/{CONV}/notes", json=big, headers=auth)
    assert r.status_code == 413
    kfake.set_mode(rate_limit=2, retry_after_s=7)
    httpx.get(f"{kfake.url}/v1/customers/{ADA}", headers=auth)
    httpx.get(f"{kfake.url}/v1/customers/{ADA}", headers=auth)
    r = httpx.get(f"{kfake.url}/v1/customers/{ADA}", headers=auth)
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    assert r.headers["x-ratelimit-remaining"] == "0"
    assert r.json()["errors"][0]["code"] == "rate_limit_exceeded"
    kfake.set_mode(rate_limit=0)  # as Kustomer documents it: no Retry-After, the reset time
    r = httpx.get(f"{kfake.url}/v1/customers/{ADA}", headers=auth)
    assert r.status_code == 429 and "Retry-After" not in r.headers


# ---- connector.check and customer.read -----------------------------------------------------
async def test_check_validates_the_key(kus: ConnectorRuntime, kfake: FakeKustomer):
    r = await kus.call(CN, "connector.check", {})
    assert r.ok, r
    assert r.content == {"ok": True, "listing": "cn-kustomer"}
    assert kfake.count("customer.list") == 1


async def test_a_wrong_key_is_auth_failed_and_never_echoed(rt, kfake: FakeKustomer):
    await rt.ensure(spec(kfake, token="kus_wrong_key_123"))
    for tool, args, kw in (
        ("connector.check", {}, {}),
        ("customer.read", {"customer_id": ADA}, {}),
        ("conversation.note", {"conversation_id": CONV, "body": "x"}, {"idempotency_key": "k"}),
    ):
        r = await rt.call(CN, tool, args, **kw)
        assert (r.ok, r.error_code, r.upstream_status) == (False, "auth_failed", 401)
        assert "Invalid or missing API token" in r.error_message
        assert "kus_wrong_key_123" not in str(r.content)
    assert kfake.count("note.create") == 0


async def test_read_a_customer(kus: ConnectorRuntime, kfake: FakeKustomer):
    r = await kus.call(CN, "customer.read", {"customer_id": ADA})
    assert r.ok, r
    c = r.content["customer"]
    assert c["id"] == ADA and c["name"] == "Ada Lovelace" and c["externalId"] == "SO-10884"
    assert c["emails"] == [{"type": "home", "email": "ada@example.com"}]
    assert set(c) <= {"id", "name", "displayName", "emails", "phones", "externalId", "tags"} | {
        "createdAt",
        "updatedAt",
    }
    # no id: the first customer of a one-row listing (the connection test's cheap read)
    r = await kus.call(CN, "customer.read", {})
    assert r.ok and r.content["customer"]["id"] in SEED_CUSTOMERS
    assert (kfake.count("customer.get"), kfake.count("customer.list")) == (1, 1)


async def test_unknown_and_malformed_customers(kus: ConnectorRuntime, kfake: FakeKustomer):
    r = await kus.call(CN, "customer.read", {"customer_id": "0" * 24})
    assert (r.ok, r.error_code, r.upstream_status) == (False, "not_found", 404)
    r = await kus.call(CN, "customer.read", {"customer_id": "../v1/notes"})
    assert (r.ok, r.error_code) == (False, "invalid_args")
    assert kfake.count("customer.get") == 1  # the malformed id never left the server


# ---- conversation.note: the side effect, its dry run, idempotency --------------------------
async def test_note_is_added_once_per_key(kus: ConnectorRuntime, kfake: FakeKustomer):
    args = {"conversation_id": CONV, "body": "Order SO-10884 held: address mismatch."}
    r = await kus.call(CN, "conversation.note", args, idempotency_key="act_1")
    assert r.ok, r
    (note,) = kfake.notes_of(CONV)
    assert r.content == {"note_id": note["id"], "conversation_id": CONV}
    assert note["attributes"]["body"] == args["body"]
    assert note["relationships"]["customer"]["data"]["id"] == ADA
    again = await kus.call(CN, "conversation.note", args, idempotency_key="act_1")
    assert again.ok and again.content == r.content
    assert kfake.count("note.create") == 1  # the journal answered the repeat


async def test_dry_run_reads_and_writes_nothing(kus: ConnectorRuntime, kfake: FakeKustomer):
    args = {"conversation_id": CONV, "body": "would be added"}
    r = await kus.call(CN, "conversation.note", args, idempotency_key="d1", dry_run=True)
    assert r.ok, r
    assert r.content == {"dry_run": True, "conversation_id": CONV}
    assert kfake.count("conversation.get") == 1 and kfake.notes_of(CONV) == []
    r = await kus.call(CN, "conversation.note", {}, dry_run=True)  # the connection test
    assert r.ok and r.content == {"dry_run": True, "reachable": True}
    r = await kus.call(
        CN,
        "conversation.note",
        {"conversation_id": "6" * 24, "body": "x"},
        idempotency_key="d2",
        dry_run=True,
    )
    assert (r.ok, r.error_code) == (False, "not_found")
    assert kfake.count("note.create") == 0


async def test_bad_note_arguments(kus: ConnectorRuntime, kfake: FakeKustomer):
    for args in (
        {"body": "no conversation"},
        {"conversation_id": CONV, "body": "   "},
        {"conversation_id": CONV, "body": "x" * 10_001},
        {"conversation_id": "a/b", "body": "x"},
    ):
        r = await kus.call(CN, "conversation.note", args, idempotency_key=f"bad-{len(str(args))}")
        assert (r.ok, r.error_code) == (False, "invalid_args"), args
    r = await kus.call(
        CN, "conversation.note", {"conversation_id": "6" * 24, "body": "x"}, idempotency_key="nf"
    )
    assert (r.ok, r.error_code, r.upstream_status) == (False, "not_found", 404)
    assert kfake.count("note.create") == 0


async def test_an_unknown_outcome_is_reconciled_not_written_twice(kus, kfake: FakeKustomer):
    """Kustomer stores the note but the answer never arrives in time: the retry with the same
    key finds the note on the conversation and records it, without a second note."""
    kfake.set_mode(apply_then_hang_s=3)
    args = {"conversation_id": CONV, "body": "Refund approved by ops (ticket 4411)."}
    r = await kus.call(CN, "conversation.note", args, idempotency_key="slow", timeout_s=1.0)
    assert r.error_code == "timeout"
    assert len(kfake.notes_of(CONV)) == 1  # applied upstream all the same
    kfake.set_mode()
    r = await kus.call(CN, "conversation.note", args, idempotency_key="slow")
    assert r.ok, r
    (note,) = kfake.notes_of(CONV)
    assert r.content == {"note_id": note["id"], "conversation_id": CONV}
    # exactly one note either way: the retry reconciles by listing the conversation's notes, or
    # (on a loaded machine, when the held first call has finished by then) the connector's
    # journal answers it with the first call's result
    assert kfake.count("note.create") == 1


async def test_an_unknown_outcome_that_was_not_applied_is_sent(kus, kfake: FakeKustomer):
    kfake.set_mode(hang_s=3)  # held before anything is stored
    args = {"conversation_id": CONV, "body": "Second attempt needed."}
    r = await kus.call(CN, "conversation.note", args, idempotency_key="lost", timeout_s=1.0)
    assert r.error_code == "timeout"
    kfake.set_mode()
    await asyncio.sleep(0.2)  # the held request is released; it stored nothing
    deadline = time.monotonic() + 10
    while True:
        r = await kus.call(CN, "conversation.note", args, idempotency_key="lost")
        if r.ok or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert r.ok, r
    notes = [n for n in kfake.notes_of(CONV) if n["attributes"]["body"] == args["body"]]
    assert len(notes) == 1  # reconcile found nothing, so the note was written once, now


# ---- Kustomer's throttling and failures ----------------------------------------------------
async def test_a_short_retry_after_is_waited_out(kus: ConnectorRuntime, kfake: FakeKustomer):
    await kus.call(CN, "customer.read", {"customer_id": ADA})  # the server is up
    kfake.set_mode(rate_limit=0, retry_after_s=1)
    task = asyncio.create_task(kus.call(CN, "customer.read", {"customer_id": ADA}))
    await asyncio.sleep(0.5)
    kfake.set_mode()  # the window resets before the wait ends
    r = await task
    assert r.ok, r
    assert kfake.count("rate_limited") == 1


async def test_a_429_without_retry_after_waits_for_the_windows_reset(kus, kfake: FakeKustomer):
    """Kustomer sends no Retry-After: the wait comes from x-ratelimit-reset (a UNIX time)."""
    kfake.set_mode(rate_limit=0)
    r = await kus.call(CN, "customer.read", {"customer_id": ADA})
    assert (r.ok, r.error_code, r.upstream_status) == (False, "upstream_error", 429)
    m = re.search(r"retry after (\d+) s", r.error_message)
    assert m and 1 <= int(m.group(1)) <= 61, r.error_message
    assert "rate_limit_exceeded: Rate limit exceeded." in r.error_message


async def test_a_long_retry_after_is_a_clear_upstream_error(kus, kfake: FakeKustomer):
    kfake.set_mode(rate_limit=0, retry_after_s=30)
    r = await kus.call(CN, "customer.read", {"customer_id": ADA})
    assert (r.ok, r.error_code, r.upstream_status) == (False, "upstream_error", 429)
    assert "rate limited" in r.error_message and "retry after 30 s" in r.error_message
    args = {"conversation_id": CONV, "body": "throttled"}
    r = await kus.call(CN, "conversation.note", args, idempotency_key="rl")
    assert (r.ok, r.error_code) == (False, "upstream_error")
    kfake.set_mode()
    r = await kus.call(CN, "conversation.note", args, idempotency_key="rl")
    assert r.ok, r  # a 429 applied nothing: the same key goes through once allowed
    assert len(kfake.notes_of(CONV)) == 1


async def test_the_per_customer_note_limit(kus: ConnectorRuntime, kfake: FakeKustomer):
    auth = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
    async with httpx.AsyncClient(base_url=kfake.url, headers=auth) as c:
        for i in range(NOTES_PER_MINUTE_PER_CUSTOMER):
            r = await c.post(f"/v1/conversations/{CONV}/notes", json={"body": f"n{i}"})
            assert r.status_code == 201
    r = await kus.call(
        CN, "conversation.note", {"conversation_id": CONV, "body": "one more"}, idempotency_key="x"
    )
    assert (r.ok, r.error_code, r.upstream_status) == (False, "upstream_error", 429)
    assert kfake.count("note.create") == NOTES_PER_MINUTE_PER_CUSTOMER


async def test_an_html_error_page_and_a_5xx(kus: ConnectorRuntime, kfake: FakeKustomer):
    kfake.set_mode(fail_status=503, html=True)
    r = await kus.call(CN, "customer.read", {"customer_id": ADA})
    assert (r.ok, r.error_code, r.upstream_status) == (False, "upstream_error", 503)
    assert "<html" not in r.error_message and "503" in r.error_message
    kfake.set_mode(fail_status=500)
    args = {"conversation_id": CONV, "body": "during an outage"}
    r = await kus.call(CN, "conversation.note", args, idempotency_key="k500")
    assert (r.ok, r.error_code) == (False, "upstream_error")
    kfake.set_mode()
    # a 500 on a write is an unknown outcome: the retry reconciles (nothing there) and writes
    r = await kus.call(CN, "conversation.note", args, idempotency_key="k500")
    assert r.ok, r
    assert len(kfake.notes_of(CONV)) == 1
