"""Seeds 001 (Connectors API) and 002 (Operators API) through a real `fibric up`: every curl
example returns the documented shape and every documented error row is triggered over HTTP.
Connectors are real MCP servers (cn-magento) talking to the fake Magento over HTTP."""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from aiokafka import AIOKafkaConsumer

from streams.topics import topic_specs
from tests.conftest import client, new_tenant
from tests.e2e.test_events_api import assert_error

pytestmark = pytest.mark.e2e

TOKEN = "mg_live_9f4c2e8b1a41"
OPERATOR = {
    "name": "order-risk",
    "outcome": "No order misses its promised ship date without a hold and a reason on the record.",
    "capabilities": ["order.read", "order.hold", "order.notify"],
    "guardrails": [
        {"tool": "order.hold", "decision": "ALLOW", "max_value": 500},
        {"tool": "order.notify", "decision": "ALERT"},
    ],
    "schedule": "*/15 * * * *",
}


def install(c, magento, name="magento-us-store", token=TOKEN, **extra):
    body = {
        "listing": "cn-magento",
        "name": name,
        "auth": {"type": "api_key", "key": token},
        "config": {"base_url": magento.url},
        **extra,
    }
    return c.post(
        "/v1/connectors",
        json=body,
        headers={"Idempotency-Key": f"install-{name}-{uuid.uuid4().hex}"},
    )


@pytest.fixture(scope="module")
def tenant(stack):
    return new_tenant(stack, f"cp-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="module")
def store_cn(stack, tenant, magento):
    with client(stack, tenant.keys["admin"]) as c:
        r = install(c, magento)
        assert r.status_code == 201, r.text
        return r.json()


# ---- seed 001 -----------------------------------------------------------------------------
def test_install_returns_the_documented_connector(store_cn):
    cn = store_cn
    assert (
        cn["id"].startswith("cn_") and cn["object"] == "connector" and cn["listing"] == "cn-magento"
    )
    assert cn["name"] == "magento-us-store" and cn["kind"] == "saas" and cn["transport"] == "mcp"
    assert set(cn["capabilities"]) >= {"order.read", "order.hold", "order.notify"}
    assert cn["auth"] == {"type": "api_key", "hint": "mg_****41"}
    assert cn["status"] == "connected" and cn["created_at"].endswith("Z")
    assert cn["price"]["amount"] == "29.00"
    tools = {t["name"]: t["side_effect"] for t in cn["tools"]}
    assert tools["order.read"] is False and tools["order.hold"] is True


def test_list_retrieve_and_filters(stack, tenant, store_cn):
    with client(stack, tenant.keys["read_only"]) as c:
        page = c.get("/v1/connectors", params={"capability": "order.hold"}).json()
        assert (
            page["object"] == "list" and page["has_more"] is False and page["next_cursor"] is None
        )
        assert [x["id"] for x in page["data"]] == [store_cn["id"]]
        assert set(page["data"][0]) == {
            "id",
            "object",
            "listing",
            "name",
            "kind",
            "capabilities",
            "status",
        }
        assert c.get("/v1/connectors", params={"capability": "ticket.create"}).json()["data"] == []
        assert c.get("/v1/connectors", params={"kind": "hardware"}).json()["data"] == []
        assert len(c.get("/v1/connectors", params={"status": "connected"}).json()["data"]) == 1
        full = c.get(f"/v1/connectors/{store_cn['id']}").json()
        assert full["tools"] and "credentials" not in full and TOKEN not in str(full)
        assert_error(c.get("/v1/connectors", params={"kind": "cloud"}), 400, "invalid_parameter")
        assert_error(c.get("/v1/connectors/cn_01M84AJB4RA9TX61DER03S1XK0"), 404, "not_found")


def test_connection_test_runs_reads_live_and_side_effects_dry(stack, tenant, store_cn, magento):
    holds = magento.count("order.hold")
    with client(stack, tenant.keys["admin"]) as c:
        r = c.post(
            f"/v1/connectors/{store_cn['id']}/test", json={"tools": ["order.read", "order.hold"]}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "connector_test" and body["connector_id"] == store_cn["id"]
        assert body["status"] == "passed" and body["tested_at"].endswith("Z")
        assert [(x["tool"], x["mode"], x["ok"]) for x in body["results"]] == [
            ("order.read", "live", True),
            ("order.hold", "dry_run", True),
        ]
        assert all(isinstance(x["latency_ms"], int) for x in body["results"])
        assert magento.count("order.hold") == holds  # dry run wrote nothing
        assert_error(
            c.post(f"/v1/connectors/{store_cn['id']}/test", json={"tools": ["order.cancel"]}),
            400,
            "invalid_parameter",
        )
        assert_error(
            c.post("/v1/connectors/cn_01M84AJB4RA9TX61DER03S1XK0/test", json={}), 404, "not_found"
        )


def test_install_error_rows(stack, tenant, magento):
    with client(stack, tenant.keys["admin"]) as c:
        assert_error(
            c.post("/v1/connectors", json={"auth": {"type": "api_key", "key": "k"}}),
            400,
            "missing_parameter",
        )
        assert_error(
            c.post("/v1/connectors", json={"listing": "cn-magento"}), 400, "missing_parameter"
        )
        err = assert_error(
            c.post(
                "/v1/connectors",
                json={
                    "listing": "cn-magento",
                    "auth": {"type": "basic", "username": "u", "password": "p"},
                    "config": {"base_url": magento.url},
                },
            ),
            400,
            "invalid_parameter",
        )
        assert err["param"] == "auth.type"
        err = assert_error(
            c.post(
                "/v1/connectors",
                json={"listing": "cn-magento", "auth": {"type": "api_key", "key": TOKEN}},
            ),
            400,
            "invalid_parameter",
        )
        assert err["param"] == "config.base_url"
        assert_error(
            c.post(
                "/v1/connectors",
                json={"listing": "cn-nope", "auth": {"type": "api_key", "key": "k"}},
            ),
            404,
            "not_found",
        )
        assert_error(install(c, magento), 409, "state_conflict")  # duplicate name
        early = c.get("/v1/marketplace/listings", params={"status": "early_access"}).json()["data"]
        assert len(early) >= 2
        lst = early[0]
        auth = (
            {"type": lst["auth_type"]}
            | ({"key": "k"} if lst["auth_type"] == "api_key" else {})
            | ({"username": "u", "password": "p"} if lst["auth_type"] == "basic" else {})
        )
        config = {k["name"]: "x" for k in lst["config_keys"] if k["required"]}
        assert_error(
            c.post("/v1/connectors", json={"listing": lst["id"], "auth": auth, "config": config}),
            422,
            "listing_early_access",
        )
        before = {x["id"] for x in c.get("/v1/connectors").json()["data"]}
        err = assert_error(
            install(c, magento, name="bad-token", token="mg_wrong_token_000"), 422, "auth_failed"
        )
        assert "nothing was installed" in err["message"]
        assert {x["id"] for x in c.get("/v1/connectors").json()["data"]} == before


def test_oauth2_listing_installs_pending_auth(stack, tenant):
    with client(stack, tenant.keys["admin"]) as c:
        lst = c.get("/v1/marketplace/listings/cn-amazon-connect").json()
        assert lst["auth_type"] == "oauth2" and lst["status"] == "live"
        config = {k["name"]: "inst-1" for k in lst["config_keys"] if k["required"]}
        r = c.post(
            "/v1/connectors",
            json={"listing": "cn-amazon-connect", "auth": {"type": "oauth2"}, "config": config},
        )
        assert r.status_code == 201, r.text
        cn = r.json()
        assert (
            cn["status"] == "pending_auth"
            and cn["authorize_url"].startswith("http")
            and cn["id"] in cn["authorize_url"]
        )
        assert_error(c.post(f"/v1/connectors/{cn['id']}/test", json={}), 409, "state_conflict")
        assert c.delete(f"/v1/connectors/{cn['id']}").json()["deleted"] is True


def test_upstream_failure_moves_the_connector_to_error(stack, magento):
    t = new_tenant(stack, f"up-{uuid.uuid4().hex[:6]}")
    with client(stack, t.keys["admin"]) as c:
        cn = install(c, magento).json()
        magento.mode(fail_status=503)
        try:
            err = assert_error(
                c.post(f"/v1/connectors/{cn['id']}/test", json={}), 502, "connector_upstream_error"
            )
            assert err["results"] and not err["results"][0]["ok"]
        finally:
            magento.mode(fail_status=None)
        again = c.get(f"/v1/connectors/{cn['id']}").json()
        assert again["status"] == "error" and again["version"] > cn["version"]
        # fix the source and re-test: connected again
        assert c.post(f"/v1/connectors/{cn['id']}/test", json={}).json()["status"] == "passed"
        assert c.get(f"/v1/connectors/{cn['id']}").json()["status"] == "connected"


def test_uninstall_refuses_while_in_use_then_purges(stack, magento):
    t = new_tenant(stack, f"un-{uuid.uuid4().hex[:6]}")
    with client(stack, t.keys["admin"]) as c:
        cn = install(c, magento).json()
        op = c.post("/v1/operators", json=OPERATOR).json()
        err = assert_error(c.delete(f"/v1/connectors/{cn['id']}"), 409, "connector_in_use")
        assert (
            err["type"] == "conflict_error"
            and op["id"] in err["message"]
            and cn["id"] in err["message"]
        )
        assert err["operators"] == [{"id": op["id"], "name": "order-risk"}]
        assert c.post(f"/v1/operators/{op['id']}/pause", json={}).status_code == 200
        assert c.delete(f"/v1/connectors/{cn['id']}").json() == {
            "id": cn["id"],
            "object": "connector",
            "deleted": True,
        }
        assert_error(c.get(f"/v1/connectors/{cn['id']}"), 404, "not_found")
        assert_error(c.delete(f"/v1/connectors/{cn['id']}"), 404, "not_found")


# ---- seed 002 -----------------------------------------------------------------------------
def test_operator_lifecycle_matches_the_seed(stack, tenant, store_cn):
    with client(stack, tenant.keys["admin"]) as c:
        r = c.post(
            "/v1/operators", json=OPERATOR, headers={"Idempotency-Key": "op-create-order-risk"}
        )
        assert r.status_code == 201, r.text
        op = r.json()
        assert (
            op["id"].startswith("op_") and op["object"] == "operator" and op["status"] == "active"
        )
        assert op["guardrails"] == OPERATOR["guardrails"] and op["model"] == "router:default"
        assert op["schedule"] == "*/15 * * * *" and op["last_run"] is None and op["version"] == 1
        assert op["triggers"] == ["order.**"]
        replay = c.post(
            "/v1/operators", json=OPERATOR, headers={"Idempotency-Key": "op-create-order-risk"}
        )
        assert replay.status_code == 200 and replay.json() == op
        listed = c.get("/v1/operators", params={"status": "active"}).json()
        assert op["id"] in [o["id"] for o in listed["data"]]
        assert (
            c.get("/v1/operators", params={"capability": "order.hold"}).json()["data"][0]["id"]
            == op["id"]
        )
        assert c.get(f"/v1/operators/{op['id']}").json() == op
        new = [
            {"tool": "order.hold", "decision": "ALLOW", "max_value": 1000},
            {"tool": "order.notify", "decision": "ALERT"},
        ]
        patched = c.patch(f"/v1/operators/{op['id']}", json={"guardrails": new}).json()
        assert (
            patched["guardrails"] == new
            and patched["version"] == 2
            and patched["outcome"] == op["outcome"]
        )
        paused = c.post(
            f"/v1/operators/{op['id']}/pause",
            json={"reason": "warehouse inventory count this weekend"},
        )
        assert paused.status_code == 200
        assert (
            set(paused.json()) == {"id", "object", "name", "status", "paused_at"}
            and paused.json()["status"] == "paused"
        )
        again = c.post(f"/v1/operators/{op['id']}/pause", json={})
        assert again.status_code == 200 and again.json()["paused_at"] == paused.json()["paused_at"]
        for i in range(3):  # events that arrive while paused are counted on resume
            c.post(
                "/v1/events",
                json={"source": "magento", "event_type": "order.updated", "payload": {"i": i}},
            )
        c.post(
            "/v1/events",
            json={"source": "magento", "event_type": "customer.created", "payload": {}},
        )
        time.sleep(2)
        resumed = c.post(f"/v1/operators/{op['id']}/resume", json={"catch_up": True}).json()
        assert (
            resumed["status"] == "active"
            and resumed["catch_up_events"] == 3
            and resumed["resumed_at"].endswith("Z")
        )
        assert c.get(f"/v1/operators/{op['id']}").json()["status"] == "active"


def test_operator_error_rows(stack, tenant, store_cn):
    with client(stack, tenant.keys["admin"]) as c:
        for missing in ("name", "outcome", "capabilities"):
            body = {k: v for k, v in OPERATOR.items() if k != missing}
            assert (
                assert_error(c.post("/v1/operators", json=body), 400, "missing_parameter")["param"]
                == missing
            )
        assert_error(
            c.post("/v1/operators", json=OPERATOR | {"name": "Order Risk!"}),
            400,
            "invalid_parameter",
        )
        assert_error(
            c.post("/v1/operators", json=OPERATOR | {"name": "ab"}), 400, "invalid_parameter"
        )
        assert_error(
            c.post("/v1/operators", json=OPERATOR | {"name": "x-1", "capabilities": ["hold"]}),
            400,
            "invalid_parameter",
        )
        assert_error(
            c.post(
                "/v1/operators",
                json=OPERATOR | {"name": "x-2", "guardrails": [{"decision": "BLOCK"}]},
            ),
            400,
            "invalid_parameter",
        )
        assert_error(
            c.post(
                "/v1/operators",
                json=OPERATOR
                | {"name": "x-3", "guardrails": [{"decision": "ALLOW", "max_value": "10"}]},
            ),
            400,
            "invalid_parameter",
        )
        name = f"dup-{uuid.uuid4().hex[:6]}"
        assert c.post("/v1/operators", json=OPERATOR | {"name": name}).status_code == 201
        assert_error(c.post("/v1/operators", json=OPERATOR | {"name": name}), 409, "state_conflict")
        err = assert_error(
            c.post(
                "/v1/operators",
                json=OPERATOR | {"name": "needs-tickets", "capabilities": ["ticket.create"]},
            ),
            422,
            "capability_unbound",
        )
        assert "ticket.create" in err["message"]
        op = c.get("/v1/operators", params={"limit": 1}).json()["data"][0]
        assert_error(
            c.patch(f"/v1/operators/{op['id']}", json={"name": "renamed"}), 400, "invalid_parameter"
        )
        assert_error(
            c.patch("/v1/operators/op_01M84AJB4RA9TX61DER03S1XK0", json={"outcome": "x"}),
            404,
            "not_found",
        )
        assert_error(
            c.patch(f"/v1/operators/{op['id']}", json={"capabilities": ["ticket.create"]}),
            422,
            "capability_unbound",
        )
        assert_error(
            c.post("/v1/operators/op_01M84AJB4RA9TX61DER03S1XK0/pause", json={}), 404, "not_found"
        )
        assert_error(
            c.post("/v1/operators/op_01M84AJB4RA9TX61DER03S1XK0/resume", json={}), 404, "not_found"
        )
        draft = c.post(
            "/v1/operators",
            json=OPERATOR | {"name": f"draft-{uuid.uuid4().hex[:6]}", "status": "draft"},
        ).json()
        assert_error(c.post(f"/v1/operators/{draft['id']}/resume", json={}), 409, "state_conflict")
        assert (
            c.patch(f"/v1/operators/{draft['id']}", json={"status": "active"}).json()["status"]
            == "active"
        )
    with client(stack, tenant.keys["read_only"]) as ro:
        assert_error(ro.post("/v1/operators", json=OPERATOR), 403, "insufficient_scope")


def test_two_concurrent_creates_one_wins(stack, tenant, store_cn):
    name = f"race-{uuid.uuid4().hex[:6]}"

    def create(_):
        with client(stack, tenant.keys["admin"]) as c:
            return c.post("/v1/operators", json=OPERATOR | {"name": name}).status_code

    with ThreadPoolExecutor(2) as pool:
        codes = sorted(pool.map(create, range(2)))
    assert codes == [201, 409]


def test_cross_tenant_config_ids_are_404(stack, tenant, globex, store_cn):
    with client(stack, tenant.keys["admin"]) as c:
        op = c.get("/v1/operators", params={"limit": 1}).json()["data"][0]
    with client(stack, globex.keys["admin"]) as g:
        assert_error(g.get(f"/v1/operators/{op['id']}"), 404, "not_found")
        assert_error(g.patch(f"/v1/operators/{op['id']}", json={"outcome": "x"}), 404, "not_found")
        assert_error(g.get(f"/v1/connectors/{store_cn['id']}"), 404, "not_found")
        assert_error(g.delete(f"/v1/connectors/{store_cn['id']}"), 404, "not_found")


def test_credentials_never_leave_the_vault(stack, tenant, store_cn):
    """The connector token appears in no log line and on no topic (only sealed ciphertext)."""
    for log in (stack.home / "logs").glob("*.log"):
        assert TOKEN not in log.read_text(errors="replace"), log.name

    async def scan() -> int:
        consumer = AIOKafkaConsumer(
            *[s.name for s in topic_specs()],
            bootstrap_servers=stack.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        seen = 0
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=1500, max_records=10000)
                if not batch:
                    return seen
                for msgs in batch.values():
                    for m in msgs:
                        seen += 1
                        assert TOKEN.encode() not in (m.value or b""), m.topic
        finally:
            await consumer.stop()

    assert asyncio.run(scan()) > 0
