"""cn-amazon-connect installed the way a tenant does it: the OAuth 2.0 dance (authorization code +
PKCE) against the stand-in authorization server (connectors/fakes/oauth_server.py), its tools
against the stand-in Amazon Connect (connectors/fakes/amazon_connect.py), refresh before expiry
and on 401, a revoked grant, and the health probe. One `fibric up` for the module, probing every
second; every fake is a real HTTP server, every assertion about a provider reads its state."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from connectors.fakes.amazon_connect import DEFAULT_FLOW, DEFAULT_INSTANCE, FakeAmazonConnect
from connectors.fakes.oauth_server import Client, FakeOAuthServer
from streams.topics import topic_specs
from tests.conftest import Stack, Tenant, client, make_stack, new_tenant
from tests.e2e.test_events_api import assert_error

pytestmark = pytest.mark.e2e

CLIENT_SECRET = "fibric-oauth-client-secret-7c1d"
CALLBACK = "/v1/connectors/oauth/callback"


@pytest.fixture(scope="module")
def provider():
    auth = FakeOAuthServer(clients=[Client("fibric-test", CLIENT_SECRET)]).start()
    connect = FakeAmazonConnect(token_check=auth.active).start()
    yield auth, connect
    connect.stop()
    auth.stop()


@pytest.fixture(scope="module")
def ostack(tmp_path_factory, provider):
    auth, _ = provider
    providers = {
        "cn-amazon-connect": {
            "authorize_url": f"{auth.url}/authorize",
            "token_url": f"{auth.url}/token",
            "client_id": "fibric-test",
            "client_secret": CLIENT_SECRET,
        }
    }
    s = make_stack(
        tmp_path_factory.mktemp("oauth"),
        FIBRIC_OAUTH_PROVIDERS=json.dumps(providers),
        FIBRIC_OAUTH_TIMEOUT_S="2",
        FIBRIC_CONNECTOR_PROBE_INTERVAL_S="1",
        FIBRIC_CONNECTOR_PROBE_TIMEOUT_S="5",
    )
    s.start()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _modes(provider):
    auth, connect = provider
    yield
    auth.set_mode(token_failure=None, deny=False, expires_in=3600)
    connect.set_mode(fail_status=None, apply_then_fail=False, hang_s=None)


def remove_connected(c: httpx.Client) -> None:
    """Uninstall the tenant's connectors that may hold a grant (they are probed, and refreshed
    when tokens expire), pausing the operators first; the shared connector and operator stay."""
    keep = set(SHARED.values())
    for op in c.get("/v1/operators", params={"limit": 100}).json()["data"]:
        if op["id"] not in keep and op["status"] != "paused":
            c.post(f"/v1/operators/{op['id']}/pause", json={})
    for cn in c.get("/v1/connectors", params={"limit": 100}).json()["data"]:
        # a pending one is never probed: it costs nothing and stays, saving the deletes
        if cn["id"] not in keep and cn["status"] != "pending_auth":
            r = c.delete(f"/v1/connectors/{cn['id']}")
            assert r.status_code in (200, 204), r.text


@pytest.fixture(autouse=True)
def _uninstall(request):
    """Every probed connector costs a server process in the api: each test removes the ones it
    connected."""
    yield
    if "acme" not in request.fixturenames:
        return
    stack, tenant = request.getfixturevalue("ostack"), request.getfixturevalue("acme")
    with client(stack, tenant.keys["admin"]) as c:
        remove_connected(c)


SHARED: dict[str, str] = {}  # the shared connector's and operator's ids, once made


def wait_for(predicate, timeout=45.0, interval=0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def install(c: httpx.Client, connect: FakeAmazonConnect, name: str | None = None) -> dict:
    r = c.post(
        "/v1/connectors",
        json={
            "listing": "cn-amazon-connect",
            "name": name or f"connect-{uuid.uuid4().hex[:6]}",
            "auth": {"type": "oauth2"},
            "config": {"instance_id": DEFAULT_INSTANCE, "api_base_url": connect.url},
        },
    )
    assert r.status_code == 201, r.text
    cn = r.json()
    assert cn["status"] == "pending_auth"
    return cn


def consent(authorize_url: str) -> str:
    """The person's browser at the provider: the redirect back to Fibric's callback."""
    r = httpx.get(authorize_url, follow_redirects=False, timeout=10)
    assert r.status_code == 302, r.text
    return r.headers["location"]


def callback(stack: Stack, location: str) -> httpx.Response:
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}" == stack.base_url and parts.path == CALLBACK
    return httpx.get(location, timeout=30)  # no API key: the state authenticates it


def connected(stack: Stack, c: httpx.Client, connect: FakeAmazonConnect) -> dict:
    cn = install(c, connect)
    r = callback(stack, consent(cn["authorize_url"]))
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def acme(ostack) -> Tenant:
    return new_tenant(ostack, "oauth-acme")


@pytest.fixture(scope="module")
def shared(ostack, acme, provider) -> dict:
    """One connected cn-amazon-connect and an operator creating a task per ``task.requested``
    through it (named in the playbook, so another test's connector never takes its actions),
    shared by the dispatch cases instead of a dance each."""
    _, connect = provider
    with client(ostack, acme.keys["admin"]) as c:
        cn = connected(ostack, c, connect)
        op = c.post(
            "/v1/operators",
            json={
                "name": f"tasks-{uuid.uuid4().hex[:6]}",
                "outcome": "Every requested task is created in Amazon Connect.",
                "capabilities": ["task.create"],
                "guardrails": [{"tool": "task.create", "decision": "ALLOW"}],
                "playbook": [
                    {
                        "when": "task.requested",
                        "then": [
                            {
                                "tool": "task.create",
                                "connector": cn["name"],
                                "args": {
                                    "name": "Task {{payload.id}}",
                                    "contact_flow_id": DEFAULT_FLOW,
                                },
                                "entity_key": "contact:{{payload.id}}",
                                "idempotency_key": "t:{{payload.id}}",
                            }
                        ],
                    }
                ],
            },
        )
        assert op.status_code == 201, op.text
    SHARED.update(connector=cn["id"], operator=op.json()["id"])
    return {"cn": cn, "op": op.json()}


def dispatch(c: httpx.Client, op: dict, task_id: str) -> dict:
    """Request a task through the shared operator; its receipt once the executor disposed it."""
    ev = c.post(
        "/v1/events",
        json={"source": "crm", "event_type": "task.requested", "payload": {"id": task_id}},
    ).json()
    rc = wait_for(
        lambda: next(
            (
                r
                for r in c.get("/v1/receipts", params={"operator_id": op["id"]}).json()["data"]
                if r["event_id"] == ev["id"] and r["outcome"] != "pending"
            ),
            None,
        ),
        timeout=45,
    )
    assert rc, (ev, c.get("/v1/plans", params={"event_id": ev["id"]}).text)
    return rc


def test_the_dance_connects_and_every_tool_runs_against_amazon_connect(ostack, acme, provider):
    auth, connect = provider
    with client(ostack, acme.keys["admin"]) as c:
        cn = install(c, connect)
        url = cn["authorize_url"]
        q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        assert url.startswith(f"{auth.url}/authorize?")
        assert q["response_type"] == "code" and q["client_id"] == "fibric-test"
        assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
        assert q["redirect_uri"] == ostack.base_url + CALLBACK and cn["id"] in q["state"]
        assert_error(c.post(f"/v1/connectors/{cn['id']}/test", json={}), 409, "state_conflict")

        location = consent(url)
        r = callback(ostack, location)
        assert r.status_code == 200, r.text
        done = r.json()
        assert done["id"] == cn["id"] and done["status"] == "connected"
        assert "authorize_url" not in done and done["health"]["token_expires_at"]
        # the token endpoint got the PKCE verifier and client_secret_basic, once
        assert auth.count("token") == 1 and auth.count("issued") == 1
        assert auth.token_requests[-1]["grant_type"] == "authorization_code"
        assert "client_secret" not in auth.token_requests[-1]  # sent as HTTP Basic

        # a replayed callback (same state, same code) completes nothing
        assert_error(callback(ostack, location), 409, "state_conflict")
        assert auth.count("token") == 1

        # connection test: contact.read live (DescribeInstance), task.create as a dry run
        t = c.post(f"/v1/connectors/{cn['id']}/test", json={})
        assert t.status_code == 200, t.text
        assert t.json()["status"] == "passed", t.text
        assert connect.count("DescribeInstance") >= 2 and connect.tasks() == []

        # every tool through the governed loop: an operator creates a task (the worker runs the
        # connector with the sealed token), and reads the contact
        op = c.post(
            "/v1/operators",
            json={
                "name": f"follow-up-{uuid.uuid4().hex[:6]}",
                "outcome": "Every missed call gets a follow-up task.",
                "capabilities": ["task.create", "contact.read"],
                "guardrails": [{"tool": "task.create", "decision": "ALLOW"}],
                "playbook": [
                    {
                        "when": "contact.missed",
                        "then": [
                            {
                                "tool": "task.create",
                                "args": {
                                    "name": "Call back {{payload.contact_id}}",
                                    "contact_flow_id": DEFAULT_FLOW,
                                    "description": "Missed call",
                                },
                                "entity_key": "contact:{{payload.contact_id}}",
                                "idempotency_key": "task:{{payload.contact_id}}",
                            }
                        ],
                    }
                ],
            },
        )
        assert op.status_code == 201, op.text
        ev = c.post(
            "/v1/events",
            json={
                "source": "amazon_connect",
                "event_type": "contact.missed",
                "payload": {"contact_id": "c0ffee00-0000-4000-8000-000000000001"},
            },
        ).json()
        rc = wait_for(
            lambda: next(
                (
                    r
                    for r in c.get("/v1/receipts", params={"operator_id": op.json()["id"]}).json()[
                        "data"
                    ]
                    if r["event_id"] == ev["id"] and r["outcome"] != "pending"
                ),
                None,
            ),
            timeout=30,
        )
        assert rc and rc["outcome"] == "applied", rc
        tasks = connect.tasks()
        assert len(tasks) == 1 and tasks[0]["Name"].startswith("Call back c0ffee00")
        # the ClientToken is the idempotency key: a re-issue after an unknown outcome is
        # deduplicated by Amazon, so the reconcile path creates nothing twice
        assert connect.count("StartTaskContact.deduplicated") == 0
        read = c.post(f"/v1/connectors/{cn['id']}/test", json={"tools": ["contact.read"]}).json()
        assert read["results"][0]["ok"]


def test_health_probe_fills_the_health_block_and_last_synced_at(ostack, acme, provider):
    _, connect = provider
    with client(ostack, acme.keys["admin"]) as c:
        cn = connected(ostack, c, connect)
        got = wait_for(
            lambda: (
                (x := c.get(f"/v1/connectors/{cn['id']}").json()).get("last_synced_at")
                and x.get("health", {}).get("ok")
                and x
            )
        )
        assert got, c.get(f"/v1/connectors/{cn['id']}").json()
        assert got["health"]["latency_ms"] >= 0 and got["health"]["consecutive_failures"] == 0
        # the upstream starts failing: degraded, then error after repeated failures; recovery
        connect.set_mode(fail_status=503)
        seen = set()

        def status() -> str:
            s = c.get(f"/v1/connectors/{cn['id']}").json()["status"]
            seen.add(s)
            return s

        assert wait_for(lambda: status() == "error", timeout=45)
        assert "degraded" in seen
        body = c.get(f"/v1/connectors/{cn['id']}").json()
        assert body["health"]["last_error"]["code"] == "upstream_error"
        assert "health check failed" in body["status_detail"]
        connect.set_mode(fail_status=None)
        assert wait_for(lambda: status() == "connected", timeout=45)
        listed = c.get("/v1/connectors", params={"status": "connected"}).json()["data"]
        assert cn["id"] in {x["id"] for x in listed}


def test_refresh_before_expiry_and_on_401_reseals_the_token(ostack, acme, provider):
    auth, connect = provider
    with client(ostack, acme.keys["admin"]) as c:
        auth.set_mode(expires_in=4)  # the probe refreshes it in its last 10 %
        cn = connected(ostack, c, connect)
        before = auth.count("refresh")
        got = wait_for(
            lambda: (
                auth.count("refresh") > before
                and (x := c.get(f"/v1/connectors/{cn['id']}").json())["health"].get(
                    "token_refreshed_at"
                )
                and x
            ),
            timeout=45,
        )
        assert got and got["status"] == "connected" and got["version"] > cn["version"]
        auth.set_mode(expires_in=3600)
        # the provider invalidates the access token early: the probe's 401 triggers a refresh
        wait_for(lambda: c.get(f"/v1/connectors/{cn['id']}").json()["health"]["token_expires_at"])
        n = auth.count("refresh")
        auth.expire_access_tokens()
        assert wait_for(lambda: auth.count("refresh") > n, timeout=45)
        assert wait_for(
            lambda: (
                c.post(f"/v1/connectors/{cn['id']}/test", json={}).json().get("status") == "passed"
            ),
            timeout=45,
        )
        assert c.get(f"/v1/connectors/{cn['id']}").json()["status"] == "connected"


def test_a_dispatch_that_meets_a_401_renews_the_token_and_applies_once(
    ostack, acme, provider, shared
):
    """The provider invalidates the access token early: the worker's dispatch meets the 401,
    renews the token (one refresh at the provider, sealed again through the control agent) and
    calls once more with the same ClientToken; the task exists once and the receipt is applied.
    The api's probe (every second) may renew first; then the dispatch never meets the 401 and
    the case is tried again with a new task (the assertion is about dispatches that did)."""
    auth, connect = provider
    cn = shared["cn"]
    with client(ostack, acme.keys["admin"]) as c:
        remove_connected(c)  # no other grant is refreshed meanwhile (even after a failed test)
        assert dispatch(c, shared["op"], "warm")["outcome"] == "applied"  # the session is up
        met = None
        for attempt in range(6):
            version = c.get(f"/v1/connectors/{cn['id']}").json()["version"]
            refreshes, seen = auth.count("refresh"), len(connect.log())
            auth.expire_access_tokens()
            rc = dispatch(c, shared["op"], f"renew-{attempt}")
            token = f"t:renew-{attempt}"
            mine = [x for x in connect.log()[seen:] if x["client_token"] == token]
            if [x["status"] for x in mine] == [200]:
                continue  # the probe renewed the token before the dispatch reached it: again
            met = (rc, mine, refreshes, version)
            break
        assert met is not None, "every dispatch ran after the probe had renewed the token"
        rc, mine, refreshes, version = met
        # the dispatch met the 401 and then succeeded once, with the same ClientToken
        assert [x["status"] for x in mine] == [401, 200], mine
        assert rc["outcome"] == "applied", rc
        assert rc["result"]["contact_id"], rc
        assert len([t for t in connect.tasks() if t["Name"] == f"Task renew-{attempt}"]) == 1
        # one refresh at the provider (it rotates refresh tokens: a second refresher's
        # attempt is refused, never counted), and the renewed token sealed again: a new version
        assert auth.count("refresh") == refreshes + 1
        got = wait_for(
            lambda: (x := c.get(f"/v1/connectors/{cn['id']}").json())["version"] > version and x
        )
        assert got and got["status"] == "connected" and got["health"]["token_refreshed_at"]
        # the next dispatch uses the renewed token straight away
        before = len(connect.log())
        assert dispatch(c, shared["op"], f"after-{attempt}")["outcome"] == "applied"
        assert [x["status"] for x in connect.log()[before:] if x["client_token"]] == [200]


def test_a_revoked_grant_is_error_and_dispatches_are_refused_with_a_receipt(
    ostack, acme, provider, shared
):
    """The person revokes the app at the provider and the token expires: whether the worker's
    dispatch meets the 401 first (its refresh is refused: invalid_grant) or the probe does, the
    dispatch ends connector_unavailable with a receipt, the connector is in error, nothing is
    created, and later dispatches are refused without calling the provider."""
    auth, connect = provider
    cn, op = shared["cn"], shared["op"]
    with client(ostack, acme.keys["admin"]) as c:
        tasks_before = len(connect.tasks())
        auth.revoke_all()
        auth.expire_access_tokens()
        for i, rc in enumerate([dispatch(c, op, "revoked-1"), dispatch(c, op, "revoked-2")]):
            assert rc["outcome"] == "failed", (i, rc)
            assert "connector_unavailable" in json.dumps(rc) and "revoked" in json.dumps(rc), rc
        got = c.get(f"/v1/connectors/{cn['id']}").json()
        assert got["status"] == "error" and "revoked" in got["status_detail"], got
        assert len(connect.tasks()) == tasks_before
        # authorizing again: a fresh link, and connected once more; dispatches run again
        again = c.post(f"/v1/connectors/{cn['id']}/authorize")
        assert again.status_code == 200 and again.json()["status"] == "pending_auth"
        r = callback(ostack, consent(again.json()["authorize_url"]))
        assert r.status_code == 200 and r.json()["status"] == "connected", r.text
        assert dispatch(c, op, "reauthorized")["outcome"] == "applied"


def test_wrong_forged_missing_and_cross_tenant_states_complete_nothing(ostack, acme, provider):
    _, connect = provider
    globex = new_tenant(ostack, "oauth-globex")
    with client(ostack, acme.keys["admin"]) as a, client(ostack, globex.keys["admin"]) as g:
        mine = install(a, connect)
        theirs = install(g, connect)
        location = consent(mine["authorize_url"])
        q = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        cid, nonce, exp, mac = q["state"].split(".")
        base = ostack.base_url + CALLBACK
        cases = [
            ({"code": q["code"]}, 400, "missing_parameter"),
            ({"state": "nonsense", "code": q["code"]}, 400, "invalid_parameter"),
            (
                {"state": f"{cid}.{nonce}.{exp}.{mac[:-2]}xx", "code": q["code"]},
                400,
                "invalid_parameter",
            ),
            # acme's state pointed at globex's connector: its MAC names acme's tenant
            (
                {"state": f"{theirs['id']}.{nonce}.{exp}.{mac}", "code": q["code"]},
                400,
                "invalid_parameter",
            ),
        ]
        for params, status, code in cases:
            assert_error(httpx.get(base, params=params, timeout=10), status, code)
        assert g.get(f"/v1/connectors/{theirs['id']}").json()["status"] == "pending_auth"
        # globex's key cannot see acme's connector, and the genuine callback still works
        assert_error(g.get(f"/v1/connectors/{mine['id']}"), 404, "not_found")
        ok = callback(ostack, location)
        assert ok.status_code == 200 and ok.json()["status"] == "connected"


def test_failed_exchanges_are_clear_errors_and_429_loses_nothing(ostack, acme, provider):
    auth, connect = provider
    with client(ostack, acme.keys["admin"]) as c:
        # 429 + Retry-After: still pending_auth; the same callback works afterwards
        cn = install(c, connect)
        location = consent(cn["authorize_url"])
        auth.set_mode(token_failure="rate_limit", retry_after_s=7)
        r = callback(ostack, location)
        err = assert_error(r, 503, "service_unavailable")
        assert r.headers["retry-after"] == "7" and err["upstream_status"] == 429
        assert c.get(f"/v1/connectors/{cn['id']}").json()["status"] == "pending_auth"
        auth.set_mode(token_failure=None)
        assert callback(ostack, location).json()["status"] == "connected"

        # an HTML error page from a proxy in front of the token endpoint
        cn = install(c, connect)
        auth.set_mode(token_failure="html")
        err = assert_error(
            callback(ostack, consent(cn["authorize_url"])), 502, "connector_upstream_error"
        )
        assert "HTML" in err["message"] and err["upstream_status"] == 502
        body = c.get(f"/v1/connectors/{cn['id']}").json()
        assert body["status"] == "error" and "HTML page" in body["status_detail"]

        # a token endpoint that never answers (FIBRIC_OAUTH_TIMEOUT_S=2)
        cn = install(c, connect)
        auth.set_mode(token_failure="timeout", hang_s=6)
        err = assert_error(
            callback(ostack, consent(cn["authorize_url"])), 502, "connector_upstream_error"
        )
        assert "did not answer" in err["message"]
        auth.set_mode(token_failure=None)

        # the person declines consent
        cn = install(c, connect)
        auth.set_mode(deny=True)
        err = assert_error(callback(ostack, consent(cn["authorize_url"])), 422, "auth_failed")
        assert "access_denied" in err["message"]
        assert c.get(f"/v1/connectors/{cn['id']}").json()["status"] == "error"


def test_tokens_and_the_client_secret_never_leave_the_vault(ostack, acme, provider):
    """No access or refresh token, and not the client secret, in any log line, topic record
    or response (only sealed ciphertext)."""
    auth, _ = provider
    secrets = [*auth.issued_tokens(), CLIENT_SECRET]
    assert len(secrets) > 3 and auth.count("refresh") >= 1  # renewed tokens are scanned too
    with client(ostack, acme.keys["admin"]) as c:
        for cn in c.get("/v1/connectors", params={"limit": 100}).json()["data"]:
            text = c.get(f"/v1/connectors/{cn['id']}").text
            assert not any(s in text for s in secrets)
        receipts = c.get("/v1/receipts", params={"limit": 100}).text
        assert not any(s in receipts for s in secrets)
    # every log under the stack's home: the roles' logs and every connector server's stderr
    # (the worker's and the api's sessions, restarted with each renewed token)
    logs = list(ostack.home.rglob("*.log"))
    assert any("connectors" in str(p) for p in logs), logs
    for log in logs:
        text = log.read_text(errors="replace")
        assert not any(s in text for s in secrets), log
    assert not any(s in ostack.up_output() for s in secrets)

    async def scan() -> int:
        consumer = AIOKafkaConsumer(
            *[s.name for s in topic_specs()],
            bootstrap_servers=ostack.bootstrap,
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
                        value = m.value or b""
                        assert not any(s.encode() in value for s in secrets), m.topic
        finally:
            await consumer.stop()

    assert asyncio.run(scan()) > 0
