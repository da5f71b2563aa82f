"""The events slice and the API conventions, driven over HTTP against a real `fibric up`."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.conftest import client

pytestmark = pytest.mark.e2e


def event(**kw):
    body = {
        "source": "magento",
        "event_type": "order.created",
        "payload": {"order": "SO-1", "total": 120},
    }
    body.update(kw)
    return body


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    assert set(err) >= {"type", "code", "message", "doc_url", "request_id"}
    assert err["request_id"].startswith("req_") and r.headers["request-id"] == err["request_id"]
    assert err["doc_url"].endswith(f"#{code}")
    return err


def test_post_then_get_reads_its_own_write(stack, acme):
    with client(stack, acme.keys["admin"]) as c:
        r = c.post("/v1/events", json=event(correlation_id="co-ryw", entity_key="SO-1"))
        assert r.status_code == 201, r.text
        ev = r.json()
        assert ev["object"] == "event" and ev["id"].startswith("ev_")
        assert ev["tenant_id"] == acme.id and ev["livemode"] is False
        assert ev["correlation_id"] == "co-ryw" and ev["payload"] == {"order": "SO-1", "total": 120}
        assert r.headers["request-id"].startswith("req_") and r.headers["fibric-version"]
        assert "x-ratelimit-limit" in r.headers
        # immediately visible: by id and in the list
        assert c.get(f"/v1/events/{ev['id']}").json() == ev
        listed = c.get("/v1/events", params={"correlation_id": "co-ryw"}).json()
        assert [e["id"] for e in listed["data"]] == [ev["id"]]


def test_list_is_newest_first_with_working_cursors(stack, acme):
    source = f"pager-{uuid.uuid4().hex[:8]}"
    with client(stack, acme.keys["admin"]) as c:
        ids = [
            c.post("/v1/events", json=event(source=source, payload={"i": i})).json()["id"]
            for i in range(7)
        ]
        seen, cursor, pages = [], None, 0
        while True:
            params = {"source": source, "limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = c.get("/v1/events", params=params).json()
            assert page["object"] == "list"
            seen += [e["id"] for e in page["data"]]
            pages += 1
            assert (page["next_cursor"] is None) == (not page["has_more"])
            if not page["has_more"]:
                break
            cursor = page["next_cursor"]
        assert seen == list(reversed(ids)) and pages == 3
        # a cursor is bound to its filters
        first = c.get("/v1/events", params={"source": source, "limit": 3}).json()
        r = c.get("/v1/events", params={"source": "other", "cursor": first["next_cursor"]})
        assert_error(r, 400, "invalid_cursor")
        # changing only the limit is allowed
        assert (
            c.get(
                "/v1/events", params={"source": source, "limit": 5, "cursor": first["next_cursor"]}
            ).status_code
            == 200
        )


def test_event_type_glob_and_time_filters(stack, acme):
    source = f"glob-{uuid.uuid4().hex[:8]}"
    with client(stack, acme.keys["admin"]) as c:
        for et in ("order.created", "order.refund.issued", "customer.created"):
            c.post("/v1/events", json=event(source=source, event_type=et))

        def types(**params):
            data = c.get("/v1/events", params={"source": source, **params}).json()["data"]
            return sorted(e["event_type"] for e in data)

        assert types(event_type="order.*") == ["order.created"]
        assert types(event_type="order.**") == ["order.created", "order.refund.issued"]
        assert types(event_type="*.created") == ["customer.created", "order.created"]
        assert types(event_type="customer.created") == ["customer.created"]
        assert types(since="2299-01-01T00:00:00Z") == []
        assert len(types(until="2299-01-01T00:00:00Z")) == 3
        assert_error(c.get("/v1/events", params={"since": "yesterday"}), 400, "invalid_parameter")


def test_idempotency_key_replay_and_conflict(stack, acme):
    key = f"idem-{uuid.uuid4().hex}"
    with client(stack, acme.keys["admin"]) as c:
        first = c.post("/v1/events", json=event(payload={"n": 1}), headers={"Idempotency-Key": key})
        assert first.status_code == 201
        again = c.post(
            "/v1/events",
            json={"payload": {"n": 1}, "event_type": "order.created", "source": "magento"},
            headers={"Idempotency-Key": key},
        )
        assert again.status_code == 200 and again.content == first.content
        assert again.json()["request_id"] == first.headers["request-id"]
        conflict = c.post(
            "/v1/events", json=event(payload={"n": 2}), headers={"Idempotency-Key": key}
        )
        assert_error(conflict, 409, "idempotency_conflict")
        # one stored event, not two
        data = c.get("/v1/events", params={"source": "magento", "limit": 100}).json()["data"]
        assert sum(1 for e in data if e["idempotency_key"] == key) == 1
    # scoped per tenant and mode: the same key under the live key is a new request
    with client(stack, acme.keys["live"]) as c:
        assert (
            c.post(
                "/v1/events", json=event(payload={"n": 3}), headers={"Idempotency-Key": key}
            ).status_code
            == 201
        )


def test_tenancy_wall(stack, acme, globex):
    with client(stack, acme.keys["admin"]) as a, client(stack, globex.keys["admin"]) as g:
        ev = a.post("/v1/events", json=event(source="wall")).json()
        assert_error(g.get(f"/v1/events/{ev['id']}"), 404, "not_found")
        assert all(
            e["tenant_id"] == globex.id
            for e in g.get("/v1/events", params={"limit": 100}).json()["data"]
        )
        assert_error(g.post("/v1/events", json=event(tenant_id=acme.id)), 403, "tenant_mismatch")
        assert_error(
            g.post("/v1/events", json=event(reseller_id="r_other")), 403, "tenant_mismatch"
        )
        # naming its own tenant is fine
        assert g.post("/v1/events", json=event(tenant_id=globex.id)).status_code == 201
    # live and test modes of one tenant never see each other's ids
    with client(stack, acme.keys["live"]) as live:
        assert_error(live.get(f"/v1/events/{ev['id']}"), 404, "not_found")


def test_authentication_and_scopes(stack, acme):
    with client(stack, None) as anon:
        assert_error(anon.get("/v1/events"), 401, "key_invalid")
        assert_error(
            anon.get("/v1/events", headers={"Authorization": "Bearer sk_test_nope"}),
            401,
            "key_invalid",
        )
        r = anon.get("/v1/events", headers={"Authorization": "Basic abc"})
        assert_error(r, 401, "key_invalid")
        # a 401 carries the budget headers too (unauthenticated requests have their own budget)
        unknown = anon.get("/v1/events", headers={"Authorization": "Bearer sk_test_nope"})
        assert int(unknown.headers["x-ratelimit-limit"]) > 0
        left = int(unknown.headers["x-ratelimit-remaining"])
        assert int(r.headers["x-ratelimit-remaining"]) > left
        assert "retry-after" not in unknown.headers
        assert anon.get("/healthz").status_code == 200
    with client(stack, acme.keys["read_only"]) as ro:
        err = assert_error(ro.post("/v1/events", json=event()), 403, "insufficient_scope")
        assert err["type"] == "permission_error"
        assert ro.get("/v1/events").status_code == 200
    with client(stack, acme.keys["ingest"]) as ingest:
        assert ingest.post("/v1/events", json=event()).status_code == 201


def test_revoked_key_is_rejected(stack, acme):
    created = stack.cli("admin", "key", "create", "--tenant", acme.slug, "--json")
    with client(stack, created["secret"]) as c:
        assert c.get("/v1/events").status_code == 200
        stack.cli("admin", "key", "revoke", created["id"], "--json")
        import time

        deadline = time.monotonic() + 10
        while c.get("/v1/events").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert_error(c.get("/v1/events"), 401, "key_revoked")


@pytest.mark.parametrize(
    "content,headers,status,code",
    [
        (b"{not json", {}, 400, "invalid_json"),
        (b"[1, 2]", {}, 400, "invalid_parameter"),
        (
            b'{"source": 5, "event_type": "order.created", "payload": {}}',
            {},
            400,
            "invalid_parameter",
        ),
        (
            b'{"source": "s", "event_type": "order.created", "payload": "str"}',
            {},
            400,
            "invalid_parameter",
        ),
        (b'{"source": "s", "event_type": "nodots", "payload": {}}', {}, 400, "invalid_parameter"),
        (b'{"event_type": "order.created", "payload": {}}', {}, 400, "missing_parameter"),
        (
            b'{"source": "s", "event_type": "order.created", "payload": {}, "bogus": 1}',
            {},
            400,
            "invalid_parameter",
        ),
        (b"", {}, 400, "missing_parameter"),
        (b'{"source":"s"}', {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        (
            b'{"source":"s"}',
            {"Content-Type": "application/x-www-form-urlencoded"},
            415,
            "unsupported_media_type",
        ),
        (b'{"source":"s"}', {"Fibric-Version": "1999-01-01"}, 400, "invalid_parameter"),
        (b'{"source":"s"}', {"Idempotency-Key": "x" * 256}, 400, "invalid_parameter"),
    ],
)
def test_malformed_requests_get_the_error_envelope(stack, acme, content, headers, status, code):
    h = {"Content-Type": "application/json", **headers}
    with client(stack, acme.keys["admin"]) as c:
        assert_error(c.post("/v1/events", content=content, headers=h), status, code)


def test_oversize_body_is_413(stack, acme):
    big = b'{"source":"s","event_type":"order.created","payload":{"x":"' + b"a" * 1_100_000 + b'"}}'
    with client(stack, acme.keys["admin"]) as c:
        assert_error(
            c.post("/v1/events", content=big, headers={"Content-Type": "application/json"}),
            413,
            "request_too_large",
        )


def test_versions_pagination_and_routing_errors(stack, acme):
    with client(stack, acme.keys["admin"]) as c:
        r = c.get("/v1/events", headers={"Fibric-Version": "2026-06-01"})
        assert r.status_code == 200 and r.headers["fibric-version"] == "2026-06-01"
        assert_error(
            c.get("/v1/events", headers={"Fibric-Version": "2020-13-45"}), 400, "invalid_parameter"
        )
        for bad in ("0", "101", "x"):
            assert_error(c.get("/v1/events", params={"limit": bad}), 400, "invalid_parameter")
        assert_error(c.get("/v1/events", params={"cursor": "cur_garbage"}), 400, "invalid_cursor")
        assert_error(c.get("/v1/events/ev_doesnotexist"), 404, "not_found")
        assert_error(c.get("/v1/events/ev_01M84AJB4RA9TX61DER03S1XK0"), 404, "not_found")
        assert_error(c.get("/v1/nothing-here"), 404, "not_found")
        assert_error(c.delete("/v1/events"), 405, "method_not_allowed")


def test_rate_limit_headers_count_down(stack, acme):
    with client(stack, acme.keys["admin"]) as c:
        a = int(c.get("/v1/dead_letters").headers["x-ratelimit-remaining"])
        b = int(c.get("/v1/dead_letters").headers["x-ratelimit-remaining"])
        assert b < a


def test_health_and_openapi(stack):
    r = httpx.get(f"{stack.base_url}/readyz")
    assert r.status_code == 200 and all(r.json()["checks"].values())
    doc = httpx.get(f"{stack.base_url}/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    post = doc["paths"]["/v1/events"]["post"]
    assert post["operationId"] == "createEvent"
    assert "payload" in post["requestBody"]["content"]["application/json"]["schema"]["properties"]
