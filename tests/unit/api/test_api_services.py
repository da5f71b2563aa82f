"""The api's services (api/services/, decisions §48) called without HTTP: the catch-up resume
(through the real ingest ``admit`` on the far side), receipt export jobs on a real directory, the
connection test's refusals, the status-list pager and the streams' one live loop over a real hub.
The store, producer and command client are small in-memory stand-ins: the services' contract
with them is a few calls, and the e2e tests drive the same code against the real ones."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from agents.ingest import Admitted, Coordinates, admit
from api.auth import AuthContext
from api.hub import SLOW_CONSUMER, StreamHub
from api.objects import Publisher
from api.pagination import status_list
from api.services import catch_up, exports
from api.services import connectors as connector_service
from api.services.context import Caller
from api.services.exports import ExportBody
from ledger.store import Scope
from schemas.commands import Reply
from schemas.config import ApiKey, Tenant
from schemas.connector import Connector, ConnectorTool
from schemas.envelope import Event, EventEnvelope
from schemas.errors import ErrorCode, FibricError
from schemas.operator import Operator
from schemas.settings import Settings

T0 = datetime(2026, 6, 14, 9, 0, tzinfo=UTC)
SCOPE = Scope("t_acme", False)
OP_ID = "op_01J00000000000000000000000"


def _event(i: int, **extra: Any) -> Event:
    return Event(
        id=f"ev_01J0000000000000000000000{i}",
        tenant_id=SCOPE.tenant_id,
        livemode=False,
        source="magento",
        event_type="order.created",
        correlation_id=f"co_{i}",
        payload={"order": f"SO-{i}"},
        created_at=T0 + timedelta(seconds=i),
        **extra,
    )


def _operator(status: str = "paused") -> Operator:
    return Operator(
        id=OP_ID,
        tenant_id=SCOPE.tenant_id,
        livemode=False,
        name="promise-keeper",
        status=status,  # type: ignore[arg-type]
        outcome="keep promises",
        capabilities=["order.hold"],
        guardrails=[],
        triggers=["order.*"],
        created_at=T0,
        updated_at=T0,
        paused_at=T0 if status == "paused" else None,
    )


class _Store:
    """What the catch-up and export services read and write."""

    def __init__(self, events: list[Event] | None = None) -> None:
        self.events = events or []
        self.exports: dict[str, tuple[dict[str, Any], int]] = {}

    async def count_events_matching(self, scope, patterns, since, until) -> int:
        return len(self.events)

    async def events_matching(self, scope, patterns, since, until, limit) -> list[Event]:
        assert scope == SCOPE and patterns == ["order.*"]
        return self.events[:limit]

    async def save_export(self, scope, doc, version) -> None:
        self.exports[doc["id"]] = (dict(doc), version)

    async def get_export(self, scope, export_id) -> dict[str, Any] | None:
        found = self.exports.get(export_id)
        return dict(found[0]) if found else None

    async def iter_receipts(self, scope, filters):
        return
        yield  # an async generator of no chunks: an export of nothing


@dataclass
class _Producer:
    sent: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    acked: int = 0

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        self.sent.append((topic, value, key))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def ack() -> None:
            self.acked += 1
            fut.set_result(None)

        asyncio.get_running_loop().call_soon(ack)
        return fut


@dataclass
class _Commands:
    result: dict[str, Any]
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def call(self, type_: str, **kw: Any) -> Reply:
        self.calls.append((type_, kw))
        return Reply(id="r", reply_to="c", ok=True, result=dict(self.result))


class _View:
    vault: dict[str, Any] = {}

    async def wait_for_records(self, ids: list[str]) -> None:
        return None


def _caller(store: Any, producer: Any = None, commands: Any = None, home: Path | None = None):
    state = SimpleNamespace(
        store=store,
        producer=producer,
        commands=commands,
        view=_View(),
        settings=Settings(home=home or Path("/nonexistent")),
        extra={},
        runtime=None,
    )
    now = T0
    key = ApiKey(
        id="key_1",
        tenant_id=SCOPE.tenant_id,
        mode="test",
        scopes=["operators:write"],
        secret_hash="x",
        hint="sk_test_…abcd",
        created_at=now,
    )
    tenant = Tenant(id=SCOPE.tenant_id, slug="acme", name="Acme", created_at=now)
    return Caller(state, AuthContext(key, tenant), "req_1")  # type: ignore[arg-type]


# ---- catch-up ----------------------------------------------------------------------------------
async def test_replay_offers_each_missed_event_to_the_operator_alone():
    stored = [_event(1, idempotency_key="magento:SO-1", entity_key="SO-1"), _event(2)]
    producer = _Producer()
    window = {"from": "2026-06-14T09:00:00Z", "to": "2026-06-14T10:00:00Z"}
    n = await catch_up.replay_catch_up(_Store(stored), producer, SCOPE, _operator(), window)
    assert n == 2 and producer.acked == 2  # every send acknowledged before it returns
    for (topic, value, key), ev in zip(producer.sent, stored, strict=True):
        assert topic == "fibric.events.v1"
        assert key == f"{ev.tenant_id}:{ev.entity_key or ev.id}".encode()
        env = EventEnvelope.model_validate_json(value)
        assert (env.event_id, env.received_at, env.route_to) == (ev.id, ev.created_at, OP_ID)
        # the ingest dedup would drop a replay that carried the event's own idempotency key
        assert env.idempotency_key is None
        # the far side: ingest admits the same event, addressed to the operator, no dedup key
        at = Coordinates("fibric.events.v1", 0, 7, 0)
        got = admit(value, at, lambda t: t == SCOPE.tenant_id)
        assert isinstance(got, Admitted)
        assert got.route_to == OP_ID and got.dedup_key is None
        assert got.event == ev.model_copy(update={"idempotency_key": None})


async def test_resume_counts_replays_and_reports_the_replayed_number():
    stored = [_event(1), _event(2), _event(3)]
    window = {"from": "2026-06-14T09:00:00Z", "to": "2026-06-14T10:00:00Z"}
    commands = _Commands({"id": OP_ID, "status": "active", "catch_up_window": window})
    producer = _Producer()
    caller = _caller(_Store(stored), producer, commands)
    result = await catch_up.resume(caller, _operator(), catch_up=True)
    ((type_, kw),) = commands.calls
    assert type_ == "operator.resume"
    assert kw["args"] == {"operator_id": OP_ID, "catch_up": True, "catch_up_events": 3}
    assert (kw["tenant_id"], kw["actor"], kw["request_id"]) == ("t_acme", "key_1", "req_1")
    assert result["catch_up_events"] == 3 and len(producer.sent) == 3


async def test_resume_without_catch_up_replays_nothing_and_drops_a_null_window():
    commands = _Commands({"id": OP_ID, "status": "active", "catch_up_window": None})
    producer = _Producer()
    caller = _caller(_Store([_event(1)]), producer, commands)
    result = await catch_up.resume(caller, _operator(), catch_up=False)
    assert commands.calls[0][1]["args"]["catch_up_events"] == 0
    assert "catch_up_window" not in result and producer.sent == []
    # an operator that is not paused has nothing to catch up on
    result = await catch_up.resume(caller, _operator("active"), catch_up=True)
    assert commands.calls[1][1]["args"]["catch_up_events"] == 0 and producer.sent == []


# ---- receipt exports ---------------------------------------------------------------------------
async def test_export_job_writes_the_file_and_serves_it_until_it_expires(tmp_path: Path):
    store = _Store()
    caller = _caller(store, home=tmp_path)
    state = caller.state
    body = ExportBody.model_validate({"format": "csv", "outcome": "applied"})
    doc = await exports.start(state, SCOPE, Publisher(None, {}), body)
    assert doc["status"] == "running" and doc["url"] is None
    assert doc["filters"] == {"outcome": "applied"}
    # a running export has nothing to download
    with pytest.raises(FibricError) as exc:
        await exports.download(state, SCOPE, doc["id"])
    assert exc.value.code is ErrorCode.STATE_CONFLICT
    await asyncio.gather(*state.extra["export_tasks"])
    done = await exports.retrieve(state, SCOPE, doc["id"])
    assert (done["status"], done["row_count"]) == ("complete", 0)
    assert done["url"].endswith(f"/v1/exports/{doc['id']}/download")
    data, media_type, name = await exports.download(state, SCOPE, doc["id"])
    assert media_type == "text/csv" and name == f"{doc['id']}.csv"
    assert data.decode().splitlines() == [",".join(exports.EXPORT_COLUMNS)]
    # expired: 404, and the file is gone
    saved, version = store.exports[doc["id"]]
    store.exports[doc["id"]] = ({**saved, "expires_at": "2026-01-01T00:00:00Z"}, version)
    path = exports.export_path(state, SCOPE, doc["id"], "csv")
    assert path.exists()
    with pytest.raises(FibricError) as exc:
        await exports.download(state, SCOPE, doc["id"])
    assert exc.value.code is ErrorCode.NOT_FOUND and not path.exists()


async def test_an_unknown_export_is_not_found():
    with pytest.raises(FibricError) as exc:
        await exports.retrieve(_caller(_Store()).state, SCOPE, "exp_nope")
    assert exc.value.code is ErrorCode.NOT_FOUND


# ---- connector test ----------------------------------------------------------------------------
def _connector(status: str = "connected") -> Connector:
    return Connector(
        id="cn_01J00000000000000000000000",
        tenant_id=SCOPE.tenant_id,
        livemode=False,
        listing="cn-magento",
        name="cn-magento",
        kind="saas",
        capabilities=["order.hold"],
        tools=[ConnectorTool(name="order.hold", side_effect=True, capability="order.hold")],
        auth={"type": "api_key", "hint": "…abcd"},
        config={},
        status=status,  # type: ignore[arg-type]
        created_at=T0,
        updated_at=T0,
    )


async def test_connection_test_refuses_before_starting_anything():
    caller = _caller(_Store())  # no runtime: a refusal must come before it is needed
    with pytest.raises(FibricError) as exc:
        await connector_service.run_test(caller, _connector(), ["order.cancel"])
    assert (exc.value.code, exc.value.param) == (ErrorCode.INVALID_PARAMETER, "tools")
    with pytest.raises(FibricError) as exc:
        await connector_service.run_test(caller, _connector("pending_auth"), None)
    assert exc.value.code is ErrorCode.STATE_CONFLICT


def test_dry_run_args_fill_required_arguments_only():
    schema = {
        "properties": {
            "order_id": {"type": "string"},
            "qty": {"type": ["null", "integer"]},
            "note": {"type": "string"},
            "idempotency_key": {"type": "string"},
        },
        "required": ["order_id", "qty", "idempotency_key"],
    }
    assert connector_service.dry_run_args(schema) == {
        "order_id": "fibric connection test",
        "qty": 0,
    }


# ---- the status-list pager (guardrails, webhooks, API keys) -------------------------------------
@dataclass
class _Obj:
    id: str
    status: str
    created_at: datetime

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status}


ITEMS = [
    _Obj(f"x_{i}", "active" if i % 2 else "disabled", T0 + timedelta(seconds=i)) for i in range(5)
]
STATUSES = ("active", "disabled")


def test_status_list_pages_newest_first_with_a_bound_cursor():
    first = status_list({"limit": "2"}, ITEMS, STATUSES, "things", _Obj.public)
    assert [o["id"] for o in first["data"]] == ["x_4", "x_3"] and first["has_more"]
    rest = status_list(
        {"limit": "5", "cursor": first["next_cursor"]}, ITEMS, STATUSES, "things", _Obj.public
    )
    assert [o["id"] for o in rest["data"]] == ["x_2", "x_1", "x_0"] and not rest["has_more"]
    active = status_list({"status": "active"}, ITEMS, STATUSES, "things", _Obj.public)
    assert [o["id"] for o in active["data"]] == ["x_3", "x_1"]
    # the cursor is bound to its list and its filter
    for query, bind in (
        ({"cursor": first["next_cursor"]}, "others"),
        ({"cursor": first["next_cursor"], "status": "active"}, "things"),
    ):
        with pytest.raises(FibricError) as exc:
            status_list(query, ITEMS, STATUSES, bind, _Obj.public)
        assert exc.value.code is ErrorCode.INVALID_CURSOR


@pytest.mark.parametrize(
    ("query", "param"),
    [({"status": "gone"}, "status"), ({"colour": "red"}, "colour"), ({"limit": "0"}, "limit")],
)
def test_status_list_refuses_what_it_does_not_take(query, param):
    with pytest.raises(FibricError) as exc:
        status_list(query, ITEMS, STATUSES, "things", _Obj.public)
    assert (exc.value.code, exc.value.param) == (ErrorCode.INVALID_PARAMETER, param)


# ---- the streams' one live loop and SSE body ---------------------------------------------------
async def test_live_loop_and_sse_body_end_with_the_reason_the_hub_gave():
    from api.controllers.streams import KEEP_ALIVE, live, sse, sse_body

    hub = StreamHub(ring_size=10, queue_max=10, max_per_tenant=10)
    sub = hub.subscribe(SCOPE, ("events",), lambda item: True)

    async def frames():
        yield None
        async for item in live(sub, 0.05):
            yield None if item is None else sse("envelope", b"{}", item.id)

    hub.publish("events", [_event(1)])
    body = sse_body(frames(), sub, "req_1")
    got = [await anext(body), await anext(body), await anext(body)]
    assert got[0] == KEEP_ALIVE and got[1].startswith(b"id: ev_") and got[2] == KEEP_ALIVE
    sub.end(SLOW_CONSUMER)
    last = [chunk async for chunk in body]
    assert len(last) == 1 and last[0].startswith(b"event: error\n")
    assert orjson.loads(last[0].split(b"data: ", 1)[1])["error"]["code"] == "slow_consumer"
    assert sub.ended == SLOW_CONSUMER
