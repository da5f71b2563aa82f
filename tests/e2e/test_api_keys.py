"""The API keys API (spec §2.12) through a real `fibric up`: create from a role or scopes, the
secret shown once, list/retrieve without secrets, revoke -> 401, no scope escalation, tenancy
and mode walls, Idempotency-Key on create, last_used_at, the audit trail, the CLI's key shape."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from streams.topics import CONFIG, topic_specs
from tests.conftest import client, new_tenant
from tests.e2e.test_events_api import assert_error

pytestmark = pytest.mark.e2e

SPEC_FIELDS = {
    "id",
    "object",
    "name",
    "mode",
    "role",
    "scopes",
    "workspace_id",
    "hint",
    "status",
    "last_used_at",
    "created_at",
}


@pytest.fixture(scope="module")
def tenant(stack):
    return new_tenant(stack, f"keys-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="module")
def other(stack):
    return new_tenant(stack, f"keys-{uuid.uuid4().hex[:6]}")


def create(c, **body):
    body.setdefault("name", f"k-{uuid.uuid4().hex[:8]}")
    return c.post("/v1/api_keys", json=body)


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    return predicate()


def test_create_from_role_returns_the_secret_once(stack, tenant):
    with client(stack, tenant.keys["admin"]) as c:
        r = create(c, name="ci-ingest", role="ingest")
        assert r.status_code == 201, r.text
        key = r.json()
        assert SPEC_FIELDS <= set(key)
        assert key["id"].startswith("key_") and key["object"] == "api_key"
        assert key["mode"] == "test" and key["livemode"] is False
        assert key["role"] == "ingest" and key["scopes"] == ["events:read", "events:write"]
        assert key["status"] == "active" and key["workspace_id"] is None
        assert key["last_used_at"] is None and key["created_at"].endswith("Z")
        secret = key["secret"]
        assert secret.startswith("sk_test_")
        assert key["hint"] == f"sk_test_…{secret[-4:]}"
        assert "secret_hash" not in key

        got = c.get(f"/v1/api_keys/{key['id']}")
        assert got.status_code == 200
        assert "secret" not in got.json() and "secret_hash" not in got.json()
        assert secret not in got.text
        listed = c.get("/v1/api_keys", params={"limit": 100}).json()
        assert listed["object"] == "list"
        assert key["id"] in [k["id"] for k in listed["data"]]
        assert secret not in str(listed) and "secret_hash" not in str(listed)

    with client(stack, secret) as new:
        assert new.get("/v1/events").status_code == 200
        assert_error(new.post("/v1/operators", json={}), 403, "insufficient_scope")
        assert_error(new.get("/v1/api_keys"), 403, "insufficient_scope")


def test_explicit_scopes_have_no_role(stack, tenant):
    with client(stack, tenant.keys["admin"]) as c:
        r = create(c, scopes=["receipts:read", "events:read"])
        assert r.status_code == 201, r.text
        key = r.json()
        assert key["role"] is None and key["scopes"] == ["events:read", "receipts:read"]
        assert_error(create(c, role="admin", scopes=["events:read"]), 400, "invalid_parameter")
        assert_error(create(c), 400, "missing_parameter")
        assert_error(create(c, scopes=["events:nuke"]), 400, "invalid_parameter")
        assert_error(create(c, role="root"), 400, "invalid_parameter")
        assert_error(create(c, role="admin", workspace_id="ws_1"), 400, "invalid_parameter")
        assert_error(create(c, role="admin", mode="live"), 400, "invalid_parameter")


def test_active_names_are_unique(stack, tenant):
    with client(stack, tenant.keys["admin"]) as c:
        name = f"dup-{uuid.uuid4().hex[:6]}"
        first = create(c, name=name, role="read_only").json()
        assert_error(create(c, name=name, role="read_only"), 409, "state_conflict")
        assert c.post(f"/v1/api_keys/{first['id']}/revoke").status_code == 200
        assert create(c, name=name, role="read_only").status_code == 201


def test_a_key_cannot_grant_scopes_it_lacks(stack, tenant):
    with client(stack, tenant.keys["admin"]) as c:
        manager = create(c, scopes=["keys:read", "keys:write", "events:read"]).json()
        wide = create(c, role="operate").json()
    with client(stack, manager["secret"]) as m:
        err = assert_error(create(m, role="admin"), 403, "insufficient_scope")
        assert "operators:write" in err["missing_scopes"] and err["type"] == "permission_error"
        assert "keys:write" not in err["missing_scopes"]
        assert_error(create(m, scopes=["events:write"]), 403, "insufficient_scope")
        # within its own scopes it may create, and a narrower key cannot revoke a wider one
        assert create(m, scopes=["events:read"]).status_code == 201
        assert create(m, scopes=["keys:read"]).status_code == 201
        assert_error(m.post(f"/v1/api_keys/{wide['id']}/revoke"), 403, "insufficient_scope")
    with client(stack, tenant.keys["admin"]) as c:
        assert c.get(f"/v1/api_keys/{wide['id']}").json()["status"] == "active"
    # the roles without keys:write cannot reach the endpoint at all
    with client(stack, tenant.keys["read_only"]) as ro:
        assert_error(create(ro, role="read_only"), 403, "insufficient_scope")
        assert_error(ro.get("/v1/api_keys"), 403, "insufficient_scope")


def test_revoked_key_gets_401_and_revocation_is_permanent(stack, tenant):
    with client(stack, tenant.keys["admin"]) as c:
        key = create(c, role="read_only").json()
        with client(stack, key["secret"]) as k:
            assert k.get("/v1/events").status_code == 200
            r = c.post(f"/v1/api_keys/{key['id']}/revoke")
            assert r.status_code == 200, r.text
            revoked = r.json()
            assert revoked["status"] == "revoked" and revoked["revoked_at"].endswith("Z")
            assert "secret" not in revoked
            # read-your-writes: the revoking process refuses the key at once
            assert_error(k.get("/v1/events"), 401, "key_revoked")
        again = c.post(f"/v1/api_keys/{key['id']}/revoke")
        assert again.status_code == 200 and again.json()["revoked_at"] == revoked["revoked_at"]
        actives = c.get("/v1/api_keys", params={"status": "active", "limit": 100}).json()["data"]
        assert key["id"] not in [k["id"] for k in actives]
        gone = c.get("/v1/api_keys", params={"status": "revoked", "limit": 100}).json()["data"]
        assert key["id"] in [k["id"] for k in gone]


def test_cross_tenant_and_cross_mode_ids_are_404(stack, tenant, other):
    with client(stack, tenant.keys["admin"]) as c:
        mine = create(c, role="read_only").json()
    with client(stack, other.keys["admin"]) as o:
        assert_error(o.get(f"/v1/api_keys/{mine['id']}"), 404, "not_found")
        assert_error(o.post(f"/v1/api_keys/{mine['id']}/revoke"), 404, "not_found")
        ids = [k["id"] for k in o.get("/v1/api_keys", params={"limit": 100}).json()["data"]]
        assert mine["id"] not in ids
    with client(stack, tenant.keys["live"]) as live:
        assert_error(live.get(f"/v1/api_keys/{mine['id']}"), 404, "not_found")
        assert_error(live.post(f"/v1/api_keys/{mine['id']}/revoke"), 404, "not_found")
        created = create(live, role="read_only").json()
        assert created["mode"] == "live" and created["secret"].startswith("sk_live_")
        live_list = live.get("/v1/api_keys", params={"limit": 100}).json()["data"]
        assert {k["mode"] for k in live_list} == {"live"}
    with client(stack, tenant.keys["admin"]) as c:
        test_list = c.get("/v1/api_keys", params={"limit": 100}).json()["data"]
        assert {k["mode"] for k in test_list} == {"test"}
        assert created["id"] not in [k["id"] for k in test_list]
    with client(stack, other.keys["admin"]) as o:
        assert o.get(f"/v1/api_keys/{mine['id']}").status_code == 404  # still
    with client(stack, mine["secret"]) as k:
        assert k.get("/v1/events").status_code == 200  # untouched by the other tenant


def test_idempotent_create_shows_the_secret_once(stack, tenant):
    with client(stack, tenant.keys["admin"]) as c:
        idem = {"Idempotency-Key": f"key-{uuid.uuid4().hex}"}
        body = {"name": f"idem-{uuid.uuid4().hex[:6]}", "role": "ingest"}
        first = c.post("/v1/api_keys", json=body, headers=idem)
        assert first.status_code == 201, first.text
        replay = c.post("/v1/api_keys", json=body, headers=idem)
        assert replay.status_code == 200
        assert replay.json()["id"] == first.json()["id"]
        assert replay.json()["secret"] is None and first.json()["secret"] not in replay.text
        assert replay.headers.get("Idempotent-Replayed") == "true"
        assert_error(
            c.post("/v1/api_keys", json={**body, "role": "read_only"}, headers=idem),
            409,
            "idempotency_conflict",
        )
        same_name = [
            k
            for k in c.get("/v1/api_keys", params={"limit": 100}).json()["data"]
            if k["name"] == body["name"]
        ]
        assert len(same_name) == 1


def test_list_paginates_newest_first(stack, tenant):
    with client(stack, tenant.keys["admin"]) as c:
        for _ in range(3):
            assert create(c, role="read_only").status_code == 201
        page = c.get("/v1/api_keys", params={"limit": 2}).json()
        assert len(page["data"]) == 2 and page["has_more"] and page["next_cursor"]
        rest = c.get("/v1/api_keys", params={"limit": 100, "cursor": page["next_cursor"]}).json()
        everything = c.get("/v1/api_keys", params={"limit": 100}).json()["data"]
        assert [k["id"] for k in page["data"] + rest["data"]] == [k["id"] for k in everything]
        stamps = [k["created_at"] for k in everything]
        assert stamps == sorted(stamps, reverse=True)
        cur = page["next_cursor"]
        assert_error(
            c.get("/v1/api_keys", params={"cursor": cur, "status": "active"}),
            400,
            "invalid_cursor",
        )
        assert_error(c.get("/v1/api_keys", params={"limit": 0}), 400, "invalid_parameter")
        for i in range(2):
            ev = {"source": "keys-test", "event_type": "order.created", "payload": {"i": i}}
            assert c.post("/v1/events", json=ev).status_code == 201
        foreign = wait_for(lambda: c.get("/v1/events", params={"limit": 1}).json()["next_cursor"])
        assert foreign  # a cursor of another list (events) is refused here
        assert_error(c.get("/v1/api_keys", params={"cursor": foreign}), 400, "invalid_cursor")
        assert_error(c.get("/v1/api_keys", params={"owner": "x"}), 400, "invalid_parameter")


def test_last_used_at_is_recorded(stack, tenant):
    with client(stack, tenant.keys["admin"]) as c:
        key = create(c, role="read_only").json()
        assert key["last_used_at"] is None
        with client(stack, key["secret"]) as k:
            assert k.get("/v1/events", params={"limit": 1}).status_code == 200
        used = wait_for(lambda: c.get(f"/v1/api_keys/{key['id']}").json()["last_used_at"])
        assert used and used.endswith("Z") and used >= key["created_at"]


def test_key_changes_are_audited_and_secrets_stay_out_of_logs_and_topics(stack, tenant):
    """Every key change is a config record (the ledger copies each into ClickHouse
    ``config_log`` verbatim) naming the key that made it; no secret on any topic or in any log."""
    with client(stack, tenant.keys["admin"]) as c:
        admin_id = next(
            k["id"]
            for k in c.get("/v1/api_keys", params={"limit": 100}).json()["data"]
            if k["role"] == "admin" and k["name"] is None
        )
        key = create(c, name=f"audit-{uuid.uuid4().hex[:6]}", role="ingest").json()
        assert c.post(f"/v1/api_keys/{key['id']}/revoke").status_code == 200
    secret = key["secret"].encode()
    records = asyncio.run(_scan(stack, secret))
    mine = [r for r in records if r.get("data", {}).get("id") == key["id"]]
    notes = {(r["actor"], r["note"].split(":")[0]) for r in mine}
    assert {(admin_id, "key.create"), (admin_id, "key.revoke")} <= notes
    for log in (stack.home / "logs").glob("*.log"):
        assert key["secret"] not in log.read_text(errors="replace"), log.name


async def _scan(stack, secret: bytes) -> list[dict]:
    consumer = AIOKafkaConsumer(
        *[s.name for s in topic_specs()],
        bootstrap_servers=stack.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    config = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=1500, max_records=10000)
            if not batch:
                return config
            for msgs in batch.values():
                for m in msgs:
                    assert secret not in (m.value or b""), m.topic
                    if m.topic == CONFIG and m.value:
                        config.append(orjson.loads(m.value))
    finally:
        await consumer.stop()


def test_cli_prints_the_same_key_object(stack, tenant):
    created = stack.cli(
        "admin", "key", "create", "--tenant", tenant.slug, "--role", "ingest", "--json"
    )
    assert SPEC_FIELDS <= set(created) and created["secret"].startswith("sk_test_")
    assert created["tenant_id"] == tenant.id
    listed = stack.cli("admin", "key", "list", "--tenant", tenant.slug, "--json")["data"]
    mine = next(k for k in listed if k["id"] == created["id"])
    assert "secret" not in mine and "secret_hash" not in mine
    with client(stack, tenant.keys["admin"]) as c:
        api = c.get(f"/v1/api_keys/{created['id']}").json()
    assert set(api) == set(mine)
    assert {k: v for k, v in api.items() if k != "last_used_at"} == {
        k: v for k, v in mine.items() if k != "last_used_at"
    }
    revoked = stack.cli("admin", "key", "revoke", created["id"], "--json")
    assert revoked["status"] == "revoked" and set(revoked) == set(mine)
