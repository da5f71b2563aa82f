"""Signed webhooks against a real `fibric up` and a real HTTP receiver on 127.0.0.1 (issue 11):
signatures checked by an independent implementation, a receiver that fails its first attempts,
one that is slow, one that answers 410, tenancy, and a kill -9 of the api mid-retry."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fibric.admin import Admin
from schemas.settings import Settings
from tests.conftest import Tenant, client, create_operator, install_sandbox, make_stack
from tests.e2e.test_kafka_pipeline import _role_pid, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HOLD = {
    "tool": "order.hold",
    "args": {"order_id": "{{payload.order_id}}"},
    "entity_key": "order:{{payload.order_id}}",
    "idempotency_key": "hold:{{payload.order_id}}",
}


class Receiver:
    """Records every request per path. ``fail[path] = n``: the first n attempts of each delivery
    id answer 500; ``gone``: 410; ``hold``: the handler waits for ``release`` (a slow receiver)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.fail: dict[str, int] = {}
        self.gone: set[str] = set()
        self.hold: set[str] = set()
        self.release = threading.Event()
        self.held = threading.Event()
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request: nothing was delivered
                    return
                path = self.path
                did = self.headers.get("Fibric-Delivery-Id", "")
                with outer.lock:
                    seen = sum(1 for r in outer.requests if r["path"] == path and r["id"] == did)
                    outer.requests.append(
                        {"path": path, "id": did, "headers": dict(self.headers), "body": body}
                    )
                if path in outer.hold:
                    outer.held.set()
                    outer.release.wait(30)
                if path in outer.gone:
                    code = 410
                elif seen < outer.fail.get(path, 0):
                    code = 500
                else:
                    code = 200
                out = b"ok" if code == 200 else b"nope: try again"
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender gave up (its timeout) or was killed: it hears nothing

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def bodies(self, path: str) -> list[dict]:
        return [json.loads(r["body"]) for r in self.at(path)]


def _senders(api_pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if ppid == api_pid and b"api.webhook_sender" in cmd:
            out.append(int(d))
    return out


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def verify(secret: str, body: bytes, header: str) -> bool:
    """An independent verifier (what the README tells receivers to do)."""
    items = [p.split("=", 1) for p in header.split(",")]
    t = next(v for k, v in items if k == "t")
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return abs(time.time() - int(t)) <= 300 and any(
        k == "v1" and hmac.compare_digest(mac, v) for k, v in items
    )


@pytest.fixture(scope="module")
def hooks(tmp_path_factory):
    s = make_stack(
        tmp_path_factory.mktemp("webhooks"),
        FIBRIC_WEBHOOK_BACKOFF_BASE_S="0.3",
        FIBRIC_WEBHOOK_BACKOFF_MAX_S="2",
        FIBRIC_WEBHOOK_TIMEOUT_S="2",
    )
    s.start()
    yield s
    s.stop()


# The module's tenants, made at once when it starts (config round trips overlap instead of
# adding up): name -> (operator decision, keys). Tests that share "main" use their own order ids
# and receiver paths, and each asserts only on the endpoints it creates.
SHOPS = {
    "main": ("ALLOW", ("admin", "live", "ingest")),
    "other": ("ALLOW", ("admin",)),
    "alert": ("ALERT", ("admin",)),
}


@pytest.fixture(scope="module")
def shops(hooks) -> dict[str, Shop]:
    suffix = uuid.uuid4().hex[:6]
    tenants = asyncio.run(_tenants(hooks, {f"{k}-{suffix}": v[1] for k, v in SHOPS.items()}))
    with ThreadPoolExecutor(len(SHOPS)) as pool:
        made = pool.map(
            lambda kv: Shop(hooks, tenants[f"{kv[0]}-{suffix}"], kv[1][0]), SHOPS.items()
        )
        return dict(zip(SHOPS, made, strict=True))


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.release.set()
    r.server.shutdown()


async def _tenants(stack, wanted: dict[str, tuple[str, ...]]) -> dict[str, Tenant]:
    """Tenants with only the keys each test uses, made concurrently through one admin client
    (what `fibric admin` does, without a process and a config-log sync per key)."""
    settings = Settings(
        kafka_bootstrap=stack.bootstrap, partitions=int(stack.env["FIBRIC_PARTITIONS"])
    )
    async with Admin(settings) as admin:

        async def one(slug: str, roles: tuple[str, ...]) -> Tenant:
            t = await admin.create_tenant(slug, None)
            keys = {}
            for role in roles:
                mode = "live" if role == "live" else "test"
                _, keys[role] = await admin.create_key(
                    t.id, "admin" if role == "live" else role, None, mode, None
                )
            return Tenant(t.id, slug, keys)

        made = await asyncio.gather(*(one(slug, roles) for slug, roles in wanted.items()))
        return dict(zip(wanted, made, strict=True))


class Shop:
    def __init__(self, stack, tenant: Tenant, decision: str = "ALLOW") -> None:
        self.tenant = tenant
        self.c = client(stack, self.tenant.keys["admin"])
        install_sandbox(self.c)
        self.op = create_operator(
            self.c,
            "holder",
            ["order.hold"],
            [{"tool": "order.hold", "decision": decision}],
            [{"when": "order.created", "then": [HOLD]}],
        )

    def endpoint(self, url: str, types: list[str]) -> dict:
        r = self.c.post("/v1/webhooks", json={"url": url, "types": types})
        assert r.status_code == 201, r.text
        return r.json()

    def order(self, order_id: str) -> str:
        r = self.c.post(
            "/v1/events",
            json={
                "source": "shop",
                "event_type": "order.created",
                "payload": {"order_id": order_id},
            },
        )
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def deliveries(self, whk: str, **params) -> list[dict]:
        r = self.c.get(f"/v1/webhooks/{whk}/deliveries", params={"limit": 100, **params})
        assert r.status_code == 200, r.text
        return r.json()["data"]


def test_endpoints_api_rules(hooks, shops, receiver):
    shop = shops["main"]
    live = client(hooks, shop.tenant.keys["live"])
    r = live.post("/v1/webhooks", json={"url": f"{receiver.url}/x", "types": ["plan.proposed"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "url"  # live: HTTPS only
    r = live.post("/v1/webhooks", json={"url": "https://10.0.0.7/hook", "types": ["plan.proposed"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "url"  # private address
    r = shop.c.post(
        "/v1/webhooks", json={"url": "http://example.com/hook", "types": ["plan.proposed"]}
    )
    assert r.status_code == 400  # test mode: plain http only to loopback
    r = shop.c.post("/v1/webhooks", json={"url": f"{receiver.url}/x", "types": ["order.created"]})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("types")

    body = {"url": f"{receiver.url}/api", "types": ["plan.proposed", "plan.awaiting_approval"]}
    first = shop.c.post("/v1/webhooks", json=body, headers={"Idempotency-Key": "wh-1"})
    assert first.status_code == 201, first.text
    ep = first.json()
    assert ep["object"] == "webhook_endpoint" and ep["id"].startswith("whk_")
    assert ep["secret"].startswith("whsec_") and ep["status"] == "active"
    replay = shop.c.post("/v1/webhooks", json=body, headers={"Idempotency-Key": "wh-1"})
    assert replay.status_code == 200 and replay.json()["id"] == ep["id"]  # a replay
    assert replay.json()["secret"] is None  # shown once
    got = shop.c.get(f"/v1/webhooks/{ep['id']}").json()
    assert got["secret"] is None and got["secret_hint"].endswith(ep["secret"][-4:])
    assert ep["secret"] not in shop.c.get("/v1/webhooks").text

    other = shops["other"]
    for path in (f"/v1/webhooks/{ep['id']}", f"/v1/webhooks/{ep['id']}/deliveries"):
        r = other.c.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert other.c.delete(f"/v1/webhooks/{ep['id']}").status_code == 404
    assert live.get(f"/v1/webhooks/{ep['id']}").status_code == 404  # the other mode
    ro = client(hooks, shop.tenant.keys["ingest"])
    assert ro.get("/v1/webhooks").json()["error"]["code"] == "insufficient_scope"

    r = shop.c.patch(f"/v1/webhooks/{ep['id']}", json={"types": ["receipt.written"]})
    assert r.status_code == 200 and r.json()["types"] == ["receipt.written"]
    r = shop.c.post(f"/v1/webhooks/{ep['id']}/disable")
    assert r.status_code == 200 and r.json()["status"] == "disabled"
    listed = shop.c.get("/v1/webhooks", params={"status": "disabled", "limit": 1}).json()
    assert [e["id"] for e in listed["data"]] == [ep["id"]]
    r = shop.c.delete(f"/v1/webhooks/{ep['id']}")
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert shop.c.get(f"/v1/webhooks/{ep['id']}").status_code == 404


def test_deliveries_are_signed_full_objects_and_retried_under_one_id(shops, receiver):
    shop = shops["main"]
    receiver.fail["/flaky"] = 2
    ok = shop.endpoint(f"{receiver.url}/ok", ["receipt.written", "plan.proposed", "plan.disposed"])
    flaky = shop.endpoint(f"{receiver.url}/flaky", ["action.disposed"])
    shop.order("SIG-1")

    def disposed():
        return [b for b in receiver.bodies("/ok") if b["type"] == "plan.disposed"]

    plan_disposed = wait_for(disposed, timeout=60)[0]
    types = [b["type"] for b in receiver.bodies("/ok")]
    assert types.index("plan.proposed") < types.index("receipt.written")
    assert types.index("receipt.written") < types.index("plan.disposed")  # one lane, in order
    for r in receiver.at("/ok"):
        assert verify(ok["secret"], r["body"], r["headers"]["Fibric-Signature"])
        assert r["headers"]["Fibric-Delivery-Id"] == json.loads(r["body"])["id"]
    assert not verify(
        flaky["secret"],
        receiver.at("/ok")[0]["body"],
        receiver.at("/ok")[0]["headers"]["Fibric-Signature"],
    )
    receipt = next(b for b in receiver.bodies("/ok") if b["type"] == "receipt.written")["data"]
    assert receipt == shop.c.get(f"/v1/receipts/{receipt['id']}").json()  # the full API object
    assert plan_disposed["data"]["status"] == "executed"
    assert plan_disposed["data"]["actions"][0]["outcome"] == "applied"

    # the flaky receiver: two 500s, then a 200, all under the same delivery id
    wait_for(lambda: len(receiver.at("/flaky")) >= 3, timeout=60)
    ids = {r["id"] for r in receiver.at("/flaky")}
    assert len(ids) == 1
    action = receiver.bodies("/flaky")[-1]["data"]
    assert action["object"] == "action" and action["outcome"] == "applied"

    def succeeded():
        ds = shop.deliveries(flaky["id"])
        return ds if ds and ds[0]["status"] == "succeeded" else None

    (d,) = wait_for(succeeded, timeout=30)
    assert d["id"] in ids and d["attempt_count"] == 3
    assert [a["status_code"] for a in d["attempts"]] == [500, 500, 200]
    assert d["attempts"][0]["response_excerpt"] == "nope: try again"
    assert all(a["latency_ms"] >= 0 for a in d["attempts"])

    # a manual resend reuses the delivery id and body
    r = shop.c.post(f"/v1/webhooks/{flaky['id']}/deliveries/{d['id']}/retry")
    assert r.status_code == 202, r.text
    wait_for(lambda: len(receiver.at("/flaky")) >= 4, timeout=30)
    again = receiver.at("/flaky")[-1]
    assert again["id"] == d["id"] and again["body"] == receiver.at("/flaky")[-2]["body"]


def test_slow_receiver_does_not_hold_the_loop_or_other_endpoints(shops, receiver):
    shop = shops["main"]
    receiver.hold.add("/slow")
    shop.endpoint(f"{receiver.url}/slow", ["receipt.written"])
    fast = shop.endpoint(f"{receiver.url}/fast", ["receipt.written"])
    shop.order("SLOW-1")
    assert receiver.held.wait(60)
    # while the slow receiver holds its request, the loop goes on and the other endpoint hears
    shop.order("SLOW-2")
    wait_for(lambda: len(receiver.at("/fast")) >= 2, timeout=60)
    receipts = shop.c.get("/v1/receipts", params={"operator_id": shop.op["id"]}).json()["data"]
    assert len(receipts) >= 2
    receiver.release.set()
    # the held attempt timed out (2 s) and is retried; the slow endpoint gets both in the end
    wait_for(lambda: len({r["id"] for r in receiver.at("/slow")}) >= 2, timeout=60)
    assert all(r["headers"]["Fibric-Webhook-Id"] == fast["id"] for r in receiver.at("/fast"))


def test_410_fails_the_delivery_and_suspends_the_endpoint(shops, receiver):
    shop = shops["main"]
    receiver.gone.add("/gone")
    ep = shop.endpoint(f"{receiver.url}/gone", ["receipt.written"])
    shop.order("GONE-1")

    def suspended():
        got = shop.c.get(f"/v1/webhooks/{ep['id']}").json()
        return got if got["status"] == "suspended" else None

    got = wait_for(suspended, timeout=60)
    assert "410" in got["status_reason"]
    (d,) = wait_for(lambda: shop.deliveries(ep["id"], status="failed"), timeout=30)
    assert d["attempt_count"] == 1 and d["last_status_code"] == 410
    assert len(receiver.at("/gone")) == 1  # never retried
    r = shop.c.post(f"/v1/webhooks/{ep['id']}/deliveries/{d['id']}/retry")
    assert r.status_code == 409 and r.json()["error"]["code"] == "state_conflict"


def test_tenants_never_receive_each_others_objects(shops, receiver):
    a, b = shops["main"], shops["other"]
    ea = a.endpoint(f"{receiver.url}/tenant-a", ["receipt.written", "plan.proposed"])
    eb = b.endpoint(f"{receiver.url}/tenant-b", ["receipt.written", "plan.proposed"])
    a.order("TEN-A1")
    b.order("TEN-B1")
    a.order("TEN-A2")
    wait_for(lambda: len(receiver.at("/tenant-a")) >= 4, timeout=60)
    wait_for(lambda: len(receiver.at("/tenant-b")) >= 2, timeout=60)
    for shop, ep, path, other in ((a, ea, "/tenant-a", b), (b, eb, "/tenant-b", a)):
        for r in receiver.at(path):
            body = json.loads(r["body"])
            assert body["webhook_id"] == ep["id"]
            assert verify(ep["secret"], r["body"], r["headers"]["Fibric-Signature"])
            kind = "receipts" if body["type"] == "receipt.written" else "plans"
            oid = body["data"]["id"]
            assert shop.c.get(f"/v1/{kind}/{oid}").status_code == 200
            assert other.c.get(f"/v1/{kind}/{oid}").status_code == 404


def test_rotation_signs_with_both_secrets_during_the_overlap(shops, receiver):
    shop = shops["main"]
    ep = shop.endpoint(f"{receiver.url}/rot", ["receipt.written"])
    r = shop.c.post(f"/v1/webhooks/{ep['id']}/rotate_secret", json={"overlap_s": 3600})
    assert r.status_code == 200, r.text
    new = r.json()["secret"]
    assert new and new != ep["secret"] and r.json()["secret_rotated_at"]
    shop.order("ROT-1")
    (req,) = wait_for(lambda: receiver.at("/rot"), timeout=60)
    sig = req["headers"]["Fibric-Signature"]
    assert sig.count("v1=") == 2
    assert verify(new, req["body"], sig) and verify(ep["secret"], req["body"], sig)


def test_kill_9_of_the_api_mid_retry_loses_no_delivery(hooks, shops, receiver):
    shop = shops["main"]
    receiver.fail["/kill"] = 4
    ep = shop.endpoint(f"{receiver.url}/kill", ["receipt.written"])
    orders = [f"KILL-{i}" for i in range(5)]
    for o in orders:
        shop.order(o)
    # every delivery has failed at least once: they are mid-retry
    wait_for(lambda: len({r["id"] for r in receiver.at("/kill")}) >= 5, timeout=60)
    pid = _role_pid(hooks, "api")
    (sender,) = _senders(pid)  # the api's sending process (decisions §40)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _role_pid(hooks, "api") not in (0, pid), timeout=60)
    # the old api's sender saw its stdin close and exited: it never outlives its api
    wait_for(lambda: not os.path.exists(f"/proc/{sender}") or _zombie(sender), timeout=30)
    shop.c = client(hooks, shop.tenant.keys["admin"])

    def delivered():
        ok = {}
        for r in receiver.at("/kill"):
            ok.setdefault(r["id"], []).append(r)
        done = [i for i, rs in ok.items() if len(rs) > receiver.fail["/kill"]]
        return ok if len(done) == 5 else None

    by_id = wait_for(delivered, timeout=120, interval=0.5)
    assert len(by_id) == 5  # one delivery id per receipt, before and after the kill
    receipts = {json.loads(rs[0]["body"])["data"]["id"] for rs in by_id.values()}
    assert len(receipts) == 5
    for rs in by_id.values():
        assert len({r["body"] for r in rs}) == 1  # the same body on every attempt

    def all_succeeded():
        ds = shop.deliveries(ep["id"])
        return ds if len(ds) == 5 and all(d["status"] == "succeeded" for d in ds) else None

    assert wait_for(all_succeeded, timeout=60)


def test_a_held_plan_is_announced_for_approval_and_its_veto_disposes_it(hooks, shops, receiver):
    c = client(hooks, shops["alert"].tenant.keys["admin"])  # a new client: the api restarted
    types = ["plan.proposed", "plan.awaiting_approval", "action.needs_approval", "plan.disposed"]
    r = c.post("/v1/webhooks", json={"url": f"{receiver.url}/alert", "types": types})
    assert r.status_code == 201, r.text
    ep = r.json()
    c.post(
        "/v1/events",
        json={"source": "shop", "event_type": "order.created", "payload": {"order_id": "SO-9"}},
    )
    wait_for(lambda: len(receiver.at("/alert")) >= 3, timeout=60)
    by_type = {b["type"]: b for b in receiver.bodies("/alert")}
    assert [b["type"] for b in receiver.bodies("/alert")][:3] == types[:3]  # in order
    held = by_type["plan.awaiting_approval"]["data"]
    assert held["status"] == "proposed" and held == by_type["plan.proposed"]["data"]
    action = by_type["action.needs_approval"]["data"]
    assert action["object"] == "action" and action["plan_id"] == held["id"]
    assert action["verdict"]["decision"] == "ALERT"
    r = c.post(f"/v1/plans/{held['id']}/veto", json={"approver": "ops@example.com"})
    assert r.status_code == 200, r.text
    wait_for(lambda: any(b["type"] == "plan.disposed" for b in receiver.bodies("/alert")), 60)
    disposed = next(b for b in receiver.bodies("/alert") if b["type"] == "plan.disposed")
    assert disposed["data"]["id"] == held["id"] and disposed["data"]["status"] == "vetoed"
    for req in receiver.at("/alert"):
        assert verify(ep["secret"], req["body"], req["headers"]["Fibric-Signature"])
