"""The webhook dispatcher (api/deliveries.py) against real chDB and a real HTTP receiver on
127.0.0.1: lanes keep order while other lanes proceed, replayed ledger batches add nothing, a
restart restores what was pending, the in-memory bound spills to ClickHouse and reads it back,
the retry window ends a delivery, and sustained failures suspend the endpoint."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import api.deliveries as deliveries
from agents.secrets import SecretBox
from api.deliveries import WebhookDispatcher
from ledger.store import LedgerStore, Scope
from schemas.config import Tenant
from schemas.connector import VaultEntry
from schemas.ids import new_id
from schemas.plan import Receipt
from schemas.settings import Settings
from schemas.webhook import WebhookEndpoint, verify_signature
from tests.e2e.test_webhooks import Receiver

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC) - timedelta(seconds=5)
BOX = SecretBox("test-secret-key")
SECRET = "whsec_test"


@dataclass
class View:
    """The config view's webhook-facing part (the real one reads the config log over Kafka)."""

    webhooks: dict[str, WebhookEndpoint] = field(default_factory=dict)
    vault: dict[str, VaultEntry] = field(default_factory=dict)
    tenants: dict[str, Tenant] = field(default_factory=dict)
    connectors: dict[str, Any] = field(default_factory=dict)


class Commands:
    """Stands in for the control agent: applies webhook.set_status to the view."""

    def __init__(self, view: View) -> None:
        self.view, self.calls = view, []

    async def call(self, type_: str, **kw: Any) -> None:
        self.calls.append((type_, kw["args"]))
        ep = self.view.webhooks[kw["args"]["webhook_id"]]
        self.view.webhooks[ep.id] = ep.model_copy(
            update={"status": kw["args"]["status"], "status_reason": kw["args"]["reason"]}
        )


@pytest.fixture
def store(tmp_path):
    s = LedgerStore(f"chdb://{tmp_path / 'ch'}")
    s.open()
    yield s
    s.close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.release.set()
    r.server.shutdown()


def endpoint(view: View, url: str, types=("receipt.written",), status="active") -> WebhookEndpoint:
    ep = WebhookEndpoint(
        id=new_id("whk"),
        tenant_id="t_1",
        livemode=False,
        url=url,
        types=list(types),
        status=status,
        secret_hint="whsec_…test",
        created_at=T0 - timedelta(minutes=1),
        updated_at=T0,
    )
    view.webhooks[ep.id] = ep
    sealed = BOX.seal({"secrets": [{"secret": SECRET, "expires_at": None}]})
    view.vault[ep.id] = VaultEntry(connector_id=ep.id, tenant_id="t_1", ciphertext=sealed)
    view.tenants["t_1"] = Tenant(id="t_1", slug="acme", name="Acme", created_at=T0)
    return ep


def receipt(entity: str, i: int) -> Receipt:
    return Receipt(
        id=new_id("rc"),
        tenant_id="t_1",
        livemode=False,
        operator_id="op_1",
        operator_name="holder",
        guardrail_version=1,
        event_id=None,
        plan_id=f"pl_{entity}",
        action_id=None,
        correlation_id="co_1",
        connector_id=None,
        connector_name=None,
        tool="order.hold",
        entity_key=entity,
        idempotency_key=f"hold:{entity}:{i}",
        value=None,
        decision="ALLOW",
        outcome="applied",
        rule=None,
        reason="ok",
        created_at=T0 + timedelta(milliseconds=i),
    )


def batch(*receipts: Receipt) -> dict[str, dict[str, Any]]:
    return {"receipt": {r.id: r for r in receipts}}


def dispatcher(store, view, **settings) -> WebhookDispatcher:
    base = {"webhook_backoff_base_s": 0.05, "webhook_backoff_max_s": 0.2, "webhook_timeout_s": 2}
    s = Settings(**{**base, **settings})
    return WebhookDispatcher(s, store, view, BOX, Commands(view))


async def until(fn, timeout: float = 20.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = fn()
        if got:
            return got
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def receipt_ids(receiver: Receiver, path: str) -> list[str]:
    return [json.loads(r["body"])["data"]["id"] for r in receiver.at(path)]


async def test_a_lane_waits_for_its_head_while_other_lanes_proceed(store, receiver):
    view = View()
    endpoint(view, f"{receiver.url}/lanes")
    receiver.fail["/lanes"] = 3  # every delivery's first three attempts fail
    d = dispatcher(store, view)
    await d.start()
    a1, a2, b1 = receipt("order:A", 1), receipt("order:A", 2), receipt("order:B", 3)
    await d.on_batch(batch(a2, b1, a1))  # arrival order is not delivery order
    await until(lambda: d.stats["succeeded"] == 3)
    seen = receipt_ids(receiver, "/lanes")
    assert len(seen) == 12  # three deliveries, four attempts each
    lane_a = [x for x in seen if x in (a1.id, a2.id)]
    # a2 is first sent only after a1's fourth attempt (its success)
    assert lane_a == [a1.id] * 4 + [a2.id] * 4
    # lane B did not wait for lane A
    assert seen.index(b1.id) < seen.index(a2.id)
    for r in receiver.at("/lanes"):
        sig = r["headers"]["Fibric-Signature"]
        assert verify_signature(SECRET, r["body"], sig, now=time.time())
    await d.stop()


async def test_replayed_batches_add_nothing_and_a_restart_restores_pending(store, receiver):
    view = View()
    ep = endpoint(view, f"{receiver.url}/restart")
    receiver.fail["/restart"] = 10**6  # down
    first = dispatcher(store, view)
    await first.start()
    rs = [receipt("order:R", i) for i in range(3)]
    await first.on_batch(batch(*rs))
    await first.on_batch(batch(*rs))  # the sink replayed the batch (crash before commit)
    assert first.stats["created"] == 3
    await until(lambda: len(receiver.at("/restart")) >= 1)
    await first.stop()  # as after a crash: only ClickHouse remains

    receiver.fail["/restart"] = 0  # back up
    second = dispatcher(store, view)
    await second.start()
    await second.on_batch(batch(*rs))  # replayed once more after the restart
    assert second.stats["created"] == 0
    await until(lambda: len({r["id"] for r in receiver.at("/restart")}) == 3)
    await until(lambda: second.stats["succeeded"] == 3)
    await second.flush()
    page = await store.list_deliveries(Scope("t_1", False), ep.id, None, 10, None)
    assert sorted(x.status for x in page.items) == ["succeeded"] * 3
    by_id: dict[str, set[bytes]] = {}
    for r in receiver.at("/restart"):
        by_id.setdefault(r["id"], set()).add(r["body"])
    assert all(len(bodies) == 1 for bodies in by_id.values())  # one body per delivery id
    await second.stop()


async def test_the_memory_bound_spills_to_clickhouse_and_reads_back(store, receiver, monkeypatch):
    monkeypatch.setattr(deliveries, "MAX_QUEUED", 4)
    view = View()
    ep = endpoint(view, f"{receiver.url}/spill")
    d = dispatcher(store, view)
    await d.start()
    rs = [receipt("order:S", i) for i in range(10)]
    await d.on_batch(batch(*rs))
    # disabled before its queue ran (on_batch does not yield after queueing)
    view.webhooks[ep.id] = ep.model_copy(update={"status": "disabled"})
    assert d.stats["created"] == 10
    assert len(d.queues[ep.id].ids) == 4 and d.queues[ep.id].overflow
    await d.on_batch(batch(receipt("order:S", 99)))
    assert d.stats["created"] == 10  # a disabled endpoint gets no new deliveries
    view.webhooks[ep.id] = ep
    later = [receipt("order:S", 100 + i) for i in range(3)]
    await d.on_batch(batch(*later))  # while older ones still wait in ClickHouse
    await until(lambda: len(receiver.at("/spill")) == 13)
    # in order (the later ones behind those that spilled), none lost, none twice
    assert receipt_ids(receiver, "/spill") == [r.id for r in rs + later]
    await d.stop()


async def test_the_retry_window_ends_a_delivery(store, receiver):
    view = View()
    ep = endpoint(view, f"{receiver.url}/dead")
    receiver.fail["/dead"] = 10**6
    d = dispatcher(store, view, webhook_retry_window_s=0.4)
    await d.start()
    await d.on_batch(batch(receipt("order:D", 1)))
    await until(lambda: d.stats["failed"] == 1)
    await d.flush()
    scope = Scope("t_1", False)
    (failed,) = (await store.list_deliveries(scope, ep.id, "failed", 10, None)).items
    assert "retry window exhausted" in (failed.last_error or "")
    assert failed.attempts == len(receiver.at("/dead")) >= 1
    attempts = await store.attempts_for(scope, [failed.id])
    assert [a.attempt for a in attempts] == list(range(1, failed.attempts + 1))
    assert all(a.status_code == 500 and a.response_excerpt == "nope: try again" for a in attempts)
    assert not d.commands.calls  # not failing for long enough to suspend
    await d.stop()


async def test_sustained_failures_suspend_the_endpoint_and_pause_it(store, receiver):
    view = View()
    ep = endpoint(view, f"{receiver.url}/down")
    receiver.fail["/down"] = 10**6
    d = dispatcher(store, view, webhook_suspend_after_s=0.3)
    await d.start()
    await d.on_batch(batch(receipt("order:U", 1)))
    await until(lambda: view.webhooks[ep.id].status == "suspended")
    (call,) = d.commands.calls
    assert call == (
        "webhook.set_status",
        {"webhook_id": ep.id, "status": "suspended", "reason": "deliveries failed for too long"},
    )
    await until(lambda: not d.queues[ep.id].busy)
    sent = len(receiver.at("/down"))
    receiver.fail["/down"] = 0
    await d.flush()
    (pending,) = (await store.list_deliveries(Scope("t_1", False), ep.id, None, 10, None)).items
    assert pending.status == "pending"  # waits for the owner, not dropped
    assert len(receiver.at("/down")) == sent  # nothing sent while suspended
    view.webhooks[ep.id] = ep  # re-enabled
    await until(lambda: d.stats["succeeded"] == 1)
    await d.stop()


async def test_a_connector_status_change_is_delivered_as_the_connector_object(store, receiver):
    from schemas.config import ConfigRecord
    from schemas.connector import Connector

    view = View()
    ep = endpoint(view, f"{receiver.url}/cn", types=("connector.status_changed",))
    d = dispatcher(store, view)
    await d.start()
    cn = Connector(
        id=new_id("cn"),
        tenant_id="t_1",
        livemode=False,
        listing="cn-sandbox-orders",
        name="sandbox",
        kind="saas",
        capabilities=["order.hold"],
        tools=[],
        auth={"type": "api_key", "hint": "san****ox"},
        config={},
        status="error",
        status_detail="upstream refused the key",
        created_at=T0,
        updated_at=T0,
        version=2,
    )

    def record(note: str) -> ConfigRecord:
        data = cn.model_dump(mode="json")
        return ConfigRecord(
            id=new_id("cfg"), kind="connector", tenant_id="t_1", data=data, note=note, at=T0
        )

    installed, changed = record("connector.install"), record("connector.set_status: error")
    await d.on_batch({"config": {installed.id: installed, changed.id: changed}})
    (req,) = await until(lambda: receiver.at("/cn"))
    body = json.loads(req["body"])
    assert body["type"] == "connector.status_changed" and body["webhook_id"] == ep.id
    assert body["data"] == cn.public() and body["data"]["status"] == "error"
    await until(lambda: d.stats["succeeded"] == 1)
    assert d.stats["created"] == 1  # the install is not a status change
    await d.stop()


@pytest.mark.parametrize("sender", ["process", "inline"])
async def test_both_senders_deliver_signed_in_lane_order(store, receiver, sender):
    """The child process (the default, decisions §40) and the inline sender are one contract."""
    view = View()
    ep = endpoint(view, f"{receiver.url}/{sender}")
    receiver.fail[f"/{sender}"] = 1
    d = dispatcher(store, view, webhook_sender=sender)
    await d.start()
    rs = [receipt("order:P", i) for i in range(5)]
    await d.on_batch(batch(*reversed(rs)))
    await until(lambda: d.stats["succeeded"] == 5)
    assert receipt_ids(receiver, f"/{sender}") == [r.id for r in rs for _ in range(2)]
    for r in receiver.at(f"/{sender}"):
        assert verify_signature(SECRET, r["body"], r["headers"]["Fibric-Signature"], time.time())
    await d.flush()
    page = await store.list_deliveries(Scope("t_1", False), ep.id, None, 10, None)
    attempts = await store.attempts_for(Scope("t_1", False), [x.id for x in page.items])
    assert sorted(a.status_code for a in attempts) == [200] * 5 + [500] * 5
    assert all(a.latency_ms > 0 for a in attempts)
    assert (d.sender is None) == (sender == "inline")
    await d.stop()


async def test_a_killed_sending_process_is_replaced_and_the_attempt_sent_again(store, receiver):
    """kill -9 of the sending child mid-attempt: a new child sends the same delivery again,
    under the same id and body; nothing is lost, and the attempt record has no gap."""
    view = View()
    ep = endpoint(view, f"{receiver.url}/child")
    receiver.hold.add("/child")
    d = dispatcher(store, view, webhook_timeout_s=20)
    await d.start()
    r1 = receipt("order:K", 1)
    await d.on_batch(batch(r1))
    await until(lambda: receiver.held.is_set())
    assert d.sender is not None and d.sender.proc is not None
    first = d.sender.proc.pid
    os.kill(first, signal.SIGKILL)
    receiver.hold.discard("/child")
    receiver.release.set()
    await until(lambda: d.stats["succeeded"] == 1)
    assert d.sender.proc.pid != first and d.sender.spawned == 2
    sent = receiver.at("/child")
    assert len(sent) == 2 and len({r["id"] for r in sent}) == 1
    assert len({r["body"] for r in sent}) == 1
    await d.flush()
    (done,) = (await store.list_deliveries(Scope("t_1", False), ep.id, None, 10, None)).items
    assert done.status == "succeeded" and done.attempts == 1  # the lost attempt is not counted
    await d.stop()
    assert d.sender.proc is None  # stopped with the dispatcher
