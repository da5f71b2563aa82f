"""Hostile input at the HTTP edge (issue 15 items 4, 5, 9), over HTTP and raw sockets against a
real `fibric up`: every error is the envelope, nothing echoes the client's Host, and a body
naming another tenant is 403 on every write route."""

from __future__ import annotations

import base64
import socket
import time
import uuid

import orjson
import pytest

from api.pagination import fingerprint
from tests.conftest import client, new_tenant
from tests.e2e.test_control_plane import OPERATOR, install
from tests.e2e.test_events_api import assert_error

pytestmark = pytest.mark.e2e

# Bounds: one raw-socket read, and how long an export of an empty tenant may take to complete.
SOCKET_TIMEOUT_S = 10
EXPORT_TIMEOUT_S = 30
HOSTILE_HOST = "evil.attacker.example"
MISSING_ACTION = "act_" + "0" * 26
MISSING_PLAN = "pl_" + "0" * 26


@pytest.fixture(scope="module")
def tenant(stack):
    return new_tenant(stack, f"edge-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="module")
def operator(stack, tenant, magento):
    with client(stack, tenant.keys["admin"]) as c:
        assert install(c, magento).status_code == 201
        r = c.post("/v1/operators", json={**OPERATOR, "name": "edge-op"})
        assert r.status_code == 201, r.text
        return r.json()


# ---- item 4: no 500s, no plain text ------------------------------------------------------------


@pytest.mark.parametrize("bound", ["since", "until"])
@pytest.mark.parametrize(
    "value", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "1899-12-31T23:59:59Z"]
)
def test_out_of_range_time_bounds_are_400_on_every_list(stack, tenant, bound, value):
    with client(stack, tenant.keys["admin"]) as c:
        for r in (
            c.get("/v1/events", params={bound: value}),
            c.get("/v1/receipts", params={bound: value}),
            c.post("/v1/receipts/exports", json={bound: value}),
        ):
            err = assert_error(r, 400, "invalid_parameter")
            assert err["param"] == bound and "1900-01-01T00:00:00Z" in err["message"]
        edge = "1900-01-01T00:00:00Z" if bound == "since" else "2299-12-31T23:59:59.999999Z"
        assert c.get("/v1/events", params={bound: edge}).status_code == 200
        assert c.get("/v1/receipts", params={bound: edge}).status_code == 200


def test_a_forged_cursor_outside_the_time_range_is_invalid_cursor(stack, tenant):
    doc = {"t": -62135596800000000, "i": "ev_X", "f": fingerprint({})}
    forged = "cur_" + base64.urlsafe_b64encode(orjson.dumps(doc)).decode().rstrip("=")
    with client(stack, tenant.keys["admin"]) as c:
        for path in ("/v1/events", "/v1/receipts", "/v1/plans", "/v1/dead_letters"):
            assert_error(c.get(path, params={"cursor": forged}), 400, "invalid_cursor")


def raw_exchange(stack, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    port = int(stack.env["FIBRIC_API_PORT"])
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n",
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"GET /healthz\x00 HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_http_gets_the_envelope(stack, raw):
    status, headers, body = raw_exchange(stack, raw)
    assert status == 400 and headers["content-type"] == "application/json", body
    err = orjson.loads(body)["error"]
    assert err["code"] == "invalid_parameter" and err["request_id"] == headers["request-id"]


# ---- item 5: absolute URLs from configuration ------------------------------------------------


def test_a_hostile_host_header_appears_in_no_response(stack, tenant):
    seen = []
    with client(stack, tenant.keys["admin"]) as c:
        c.headers["Host"] = HOSTILE_HOST
        job = c.post("/v1/receipts/exports", json={"format": "jsonl"})
        assert job.status_code == 202, job.text
        seen.append(job)
        deadline = time.monotonic() + EXPORT_TIMEOUT_S
        while True:
            r = c.get(f"/v1/exports/{job.json()['id']}")
            seen.append(r)
            if r.json()["status"] != "running" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        done = r.json()
        assert done["status"] == "complete", done
        assert done["url"] == f"{stack.base_url}/v1/exports/{done['id']}/download"
        seen += [
            c.get(done["url"].replace(stack.base_url, "")),
            c.get("/v1/exports/exp_nope"),
            c.get("/v1/no-such-route"),
            c.get("/healthz"),
        ]
    for r in seen:
        assert HOSTILE_HOST not in r.text and HOSTILE_HOST not in str(r.headers), r


# ---- item 9: tenancy, bodies and query integers ----------------------------------------------


def test_a_foreign_tenancy_is_403_on_every_write_route(stack, tenant, globex, operator):
    op = operator["id"]
    routes = [
        ("POST", "/v1/events", {"source": "s", "event_type": "a.b", "payload": {}}),
        ("POST", "/v1/operators", {**OPERATOR, "name": "other-op"}),
        ("PATCH", f"/v1/operators/{op}", {"outcome": "changed"}),
        ("POST", f"/v1/operators/{op}/pause", {}),
        ("POST", f"/v1/operators/{op}/resume", {}),
        ("POST", "/v1/connectors", {"listing": "cn-magento", "name": "x"}),
        ("POST", f"/v1/plans/{MISSING_PLAN}/approve", {}),
        ("POST", f"/v1/plans/{MISSING_PLAN}/veto", {}),
        ("POST", f"/v1/actions/{MISSING_ACTION}/undo", {}),
        ("POST", "/v1/receipts/exports", {}),
    ]
    with client(stack, tenant.keys["admin"]) as c:
        for method, path, body in routes:
            for field, value in (("tenant_id", globex.id), ("reseller_id", "r_someone_else")):
                r = c.request(method, path, json={**body, field: value})
                assert assert_error(r, 403, "tenant_mismatch")["param"] == field, (method, path)
        # nothing changed: the operator still has its outcome and is active
        after = c.get(f"/v1/operators/{op}").json()
        assert after["outcome"] == OPERATOR["outcome"] and after["status"] == "active"


@pytest.mark.parametrize(
    "content,code",
    [
        (b"garbage", "invalid_json"),
        (b"[1, 2]", "invalid_parameter"),
        (b'{"unexpected": true}', "invalid_parameter"),
    ],
)
def test_undo_refuses_a_body_it_does_not_define(stack, tenant, content, code):
    with client(stack, tenant.keys["admin"]) as c:
        headers = {"Content-Type": "application/json"}
        r = c.post(f"/v1/actions/{MISSING_ACTION}/undo", content=content, headers=headers)
        assert_error(r, 400, code)
        # an empty object is the documented body: it reaches the lookup (no such action)
        r = c.post(f"/v1/actions/{MISSING_ACTION}/undo", content=b"{}", headers=headers)
        assert_error(r, 404, "not_found")


@pytest.mark.parametrize("bad", [" 20 ", "٢٠", "1_0", "+5", "0x10", "1e1", "0", "101"])
def test_limit_is_ascii_digits_one_to_a_hundred_on_every_list(stack, tenant, bad):
    lists = [
        "/v1/events",
        "/v1/dead_letters",
        "/v1/operators",
        "/v1/connectors",
        "/v1/marketplace/listings",
        "/v1/plans",
        "/v1/actions",
        "/v1/receipts",
    ]
    with client(stack, tenant.keys["admin"]) as c:
        for path in lists:
            err = assert_error(c.get(path, params={"limit": bad}), 400, "invalid_parameter")
            assert err["param"] == "limit", path
            assert c.get(path, params={"limit": "100"}).status_code == 200, path
