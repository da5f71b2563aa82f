"""Live streams (issue 11 part 3, spec §3.3, decisions §33) against a real `fibric up`: SSE read
over a real socket with httpx streaming (and a raw socket for the slow consumer), WebSocket with
the `websockets` client. The stack is this module's own, with a short keep-alive, a small
per-stream queue and a small per-tenant cap, so each behaviour shows within seconds."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from schemas.streams import StreamedEvent, StreamedPlan
from tests.conftest import Stack, client, create_operator, install_sandbox, make_stack, new_tenant
from tests.e2e.test_events_api import assert_error

pytestmark = pytest.mark.e2e

QUEUE_MAX = 50
MAX_STREAMS = 5
WAIT_S = 30.0
BACKFILL_MAX = 250


@pytest.fixture(scope="module")
def sstack(tmp_path_factory: pytest.TempPathFactory):
    s = make_stack(
        tmp_path_factory.mktemp("streams"),
        FIBRIC_STREAM_KEEPALIVE_S="0.5",
        FIBRIC_STREAM_QUEUE_MAX=str(QUEUE_MAX),
        FIBRIC_STREAM_MAX_LAG_S="1",
        FIBRIC_STREAM_MAX_PER_TENANT=str(MAX_STREAMS),
        # long enough that the slow consumer below is dropped by its queue, not its socket
        FIBRIC_STREAM_SEND_TIMEOUT_S="120",
        FIBRIC_STREAM_BACKFILL_MAX=str(BACKFILL_MAX),
        FIBRIC_VALIDATE_RESPONSES="1",
    )
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def tenant(sstack: Stack):
    return new_tenant(sstack, f"st-{uuid.uuid4().hex[:6]}")


class SSE:
    """One SSE response read on a thread: frames (``{"id", "event", "data"}``, data parsed) and
    comments (``{"comment": ...}``) land in a queue; None marks the end of the stream."""

    def __init__(self, stack: Stack, secret: str, path: str = "/v1/events/stream", **kw) -> None:
        self.q: queue.Queue = queue.Queue()
        self._client = httpx.Client(
            base_url=stack.base_url, timeout=httpx.Timeout(WAIT_S, read=None)
        )
        headers = {"Authorization": f"Bearer {secret}", **kw.pop("headers", {})}
        self._cm = self._client.stream("GET", path, headers=headers, **kw)
        self.response = self._cm.__enter__()
        self.status = self.response.status_code
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()
        else:
            self.response.read()

    def _read(self) -> None:
        frame: dict = {}
        try:
            for line in self.response.iter_lines():
                if line == "":
                    if frame:
                        if "data" in frame:
                            frame["data"] = json.loads(frame["data"])
                        self.q.put(frame)
                        frame = {}
                elif line.startswith(":"):
                    self.q.put({"comment": line[1:].strip()})
                else:
                    k, _, v = line.partition(":")
                    frame[k] = v[1:] if v.startswith(" ") else v
        except (httpx.HTTPError, RuntimeError, ValueError):
            pass
        finally:
            self.q.put(None)

    def next(self, timeout: float = WAIT_S, comments: bool = False) -> dict | None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no frame within the wait")
            item = self.q.get(timeout=left)
            if item is None or comments or "comment" not in item:
                return item

    def opened(self) -> SSE:
        """Wait for the first byte (a keep-alive): the server has subscribed."""
        assert self.next(comments=True) == {"comment": "keep-alive"}
        return self

    def take(self, n: int, timeout: float = WAIT_S) -> list[dict]:
        out = []
        while len(out) < n:
            f = self.next(timeout)
            assert f is not None, f"stream ended after {len(out)} of {n} frames"
            out.append(f)
        return out

    def close(self) -> None:
        try:
            self._cm.__exit__(None, None, None)
        except Exception:  # noqa: BLE001 - the reader thread may be mid-read
            pass
        self._client.close()

    def __enter__(self) -> SSE:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def refused(stack: Stack, secret: str, status: int, code: str, path: str = "/v1/events/stream",
            **kw) -> httpx.Response:
    """A stream request that must be answered with an error envelope, not a stream."""
    with SSE(stack, secret, path, **kw) as s:
        assert s.status == status, s.status
        assert_error(s.response, status, code)
        return s.response


def post(c: httpx.Client, source: str, event_type: str = "order.created", **payload) -> dict:
    r = c.post(
        "/v1/events", json={"source": source, "event_type": event_type, "payload": payload}
    )
    assert r.status_code == 201, r.text
    return r.json()


def listed(c: httpx.Client, params: dict, cursor: str | None = None) -> list[dict]:
    """Every event GET /v1/events lists for ``params`` from ``cursor`` on (older ones)."""
    out = []
    while True:
        q = {**params, "limit": 100, **({"cursor": cursor} if cursor else {})}
        page = c.get("/v1/events", params=q).json()
        out += page["data"]
        if not page["has_more"]:
            return out
        cursor = page["next_cursor"]


def test_frames_cursor_and_keepalive(sstack, tenant):
    source = f"frames-{uuid.uuid4().hex[:6]}"
    with client(sstack, tenant.keys["admin"]) as c, SSE(
        sstack, tenant.keys["read_only"], params={"source": source}
    ) as s:
        assert s.status == 200
        assert s.response.headers["content-type"].startswith("text/event-stream")
        assert s.response.headers["request-id"].startswith("req_")
        s.opened()
        posted = [post(c, source, i=i) for i in range(3)]
        frames = s.take(3)
        assert [f["id"] for f in frames] == [e["id"] for e in posted]
        assert {f["event"] for f in frames} == {"envelope"}
        for f, e in zip(frames, posted, strict=True):
            StreamedEvent.model_validate(f["data"])  # the documented shape, nothing extra
            assert f["data"]["cursor"].startswith("cur_")
            got = {k: v for k, v in f["data"].items() if k != "cursor"}
            assert got == {k: v for k, v in e.items() if k != "plan_ids"}
        # the cursor vocabulary of GET /v1/events: the last frame's cursor pages the older two
        older = c.get(
            "/v1/events", params={"source": source, "cursor": frames[-1]["data"]["cursor"]}
        ).json()
        assert [e["id"] for e in older["data"]] == [posted[1]["id"], posted[0]["id"]]
        # idle: keep-alive comments
        assert s.next(comments=True) == {"comment": "keep-alive"}


def test_filters_are_the_list_vocabulary(sstack, tenant):
    source = f"filters-{uuid.uuid4().hex[:6]}"
    with client(sstack, tenant.keys["admin"]) as c, SSE(
        sstack, tenant.keys["admin"], params={"source": source, "event_type": "order.*"}
    ) as s:
        s.opened()
        wanted = [post(c, source, "order.created")["id"]]
        post(c, source, "order.refund.issued")  # `*` is one segment
        post(c, source, "customer.created")
        post(c, f"{source}-other", "order.created")
        wanted.append(post(c, source, "order.updated")["id"])
        assert [f["id"] for f in s.take(2)] == wanted
        # the same matches as the list
        assert {e["id"] for e in listed(c, {"source": source, "event_type": "order.*"})} == set(
            wanted
        )
    key = tenant.keys["admin"]
    refused(sstack, key, 400, "invalid_parameter", params={"event_type": "order..*"})
    refused(sstack, key, 400, "invalid_parameter", params={"since": "yesterday"})
    with client(sstack, key) as c:
        post(c, source)
        cur = c.get("/v1/events", params={"source": source, "limit": 1}).json()["next_cursor"]
    # a cursor is bound to its filters, as in the list
    refused(sstack, key, 400, "invalid_cursor", params={"source": "else", "cursor": cur})
    refused(sstack, key, 400, "invalid_cursor", headers={"Last-Event-ID": "ev_nope"})


class Writer:
    """Posts ``n`` events of one source from 4 threads at once."""

    def __init__(self, stack: Stack, secret: str, source: str, n: int) -> None:
        self.ids: list[str] = []
        self.started = threading.Event()
        self._lock = threading.Lock()
        self._c = client(stack, secret)
        self._source, self._n = source, n
        self._pool = ThreadPoolExecutor(4)
        self._futs = []

    def one(self, i: int) -> None:
        ev = post(self._c, self._source, i=i)
        with self._lock:
            self.ids.append(ev["id"])
            if len(self.ids) >= 20:
                self.started.set()

    def start(self) -> Writer:
        self._futs = [self._pool.submit(self.one, i) for i in range(self._n)]
        return self

    def join(self) -> list[str]:
        for f in self._futs:
            f.result()
        self._pool.shutdown()
        self._c.close()
        return self.ids


def collect_until(s: SSE, want: set[str], got: list[str]) -> list[str]:
    while not want <= set(got):
        f = s.next()
        assert f is not None, f"stream ended; missing {len(want - set(got))}"
        got.append(f["id"])
    return got


def test_backfill_then_live_exactly_once_under_concurrent_writes(sstack, tenant):
    """Page history, then open the stream from a list cursor while 4 writers keep posting:
    every event arrives exactly once, from the pages or from the stream, never both."""
    source = f"backfill-{uuid.uuid4().hex[:6]}"
    writer = Writer(sstack, tenant.keys["admin"], source, 200).start()
    assert writer.started.wait(WAIT_S)
    with client(sstack, tenant.keys["admin"]) as c:
        # 1. page history: the first page gives the starting position, the pages after it
        #    everything older
        first = c.get("/v1/events", params={"source": source, "limit": 10}).json()
        cursor = first["next_cursor"]
        history = [first["data"][-1]["id"], *(e["id"] for e in listed(c, {"source": source},
                                                                      cursor))]
        # 2. the stream from that cursor: everything after it (the rest of the first page too),
        #    oldest first, then live
        with SSE(sstack, tenant.keys["admin"], params={"source": source, "cursor": cursor}) as s:
            ids = writer.join()
            streamed = collect_until(s, set(ids) - set(history), [])
    assert len(streamed) == len(set(streamed)), "an event came twice from the stream"
    assert not set(streamed) & set(history), "an event came from both the pages and the stream"
    assert set(streamed) | set(history) == set(ids)


def test_resume_with_last_event_id_and_cursor(sstack, tenant):
    source = f"resume-{uuid.uuid4().hex[:6]}"
    with client(sstack, tenant.keys["admin"]) as c:
        with SSE(sstack, tenant.keys["admin"], params={"source": source}) as s:
            s.opened()
            first = [post(c, source, i=i)["id"] for i in range(3)]
            assert [f["id"] for f in s.take(3)] == first
        # disconnected; more happens; an EventSource reconnect sends the last id it saw
        missed = [post(c, source, i=i)["id"] for i in range(3, 6)]
        with SSE(
            sstack, tenant.keys["admin"], params={"source": source},
            headers={"Last-Event-ID": first[-1]},
        ) as s:
            s.opened()
            assert [f["id"] for f in s.take(3)] == missed
            later = post(c, source, i=6)["id"]
            assert s.next()["id"] == later

    # a frame's cursor resumes exactly, even while 4 writers post concurrently
    source = f"resume-c-{uuid.uuid4().hex[:6]}"
    with SSE(sstack, tenant.keys["admin"], params={"source": source}) as s:
        s.opened()
        writer = Writer(sstack, tenant.keys["admin"], source, 120).start()
        part1 = s.take(30)
    with SSE(
        sstack, tenant.keys["admin"],
        params={"source": source, "cursor": part1[-1]["data"]["cursor"]},
    ) as s:
        ids = writer.join()
        got = [f["id"] for f in part1]
        collect_until(s, set(ids), got)
    assert len(got) == len(set(got)) == len(ids)


def test_a_backfill_larger_than_the_bound_ends_with_a_reason_and_resumes(sstack, tenant):
    source = f"big-{uuid.uuid4().hex[:6]}"
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
    with SSE(sstack, tenant.keys["read_only"], params={"source": source}) as live:
        live.opened()
        ids = Writer(sstack, tenant.keys["admin"], source, BACKFILL_MAX + 10).start().join()
        collect_until(live, set(ids), [])  # streamed = stored (lists also show unstored ones)
    with SSE(sstack, tenant.keys["read_only"], params={"source": source, "since": since}) as s:
        frames = []
        while (f := s.next()) is not None:
            frames.append(f)
    *replayed, last = frames
    assert len(replayed) == BACKFILL_MAX and {f["event"] for f in replayed} == {"envelope"}
    assert last["event"] == "error" and last["data"]["error"]["code"] == "invalid_cursor"
    with SSE(
        sstack, tenant.keys["read_only"],
        params={"source": source, "since": since, "cursor": replayed[-1]["data"]["cursor"]},
    ) as s:
        rest = s.take(len(ids) - BACKFILL_MAX)
    got = [f["id"] for f in replayed + rest]
    assert len(got) == len(set(got)) and set(got) == set(ids)


def test_slow_consumer_is_dropped_while_another_stream_keeps_flowing(sstack):
    t = new_tenant(sstack, f"slow-{uuid.uuid4().hex[:6]}")
    source = "slow"
    host, port = "127.0.0.1", int(sstack.env["FIBRIC_API_PORT"])
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window, never read
    slow.connect((host, port))
    slow.sendall(
        f"GET /v1/events/stream?source={source} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {t.keys['read_only']}\r\nAccept: text/event-stream\r\n\r\n"
        .encode()
    )
    head = b""
    while b": keep-alive" not in head:
        head += slow.recv(1)
    assert head.startswith(b"HTTP/1.1 200")
    n = 200  # ~12 MB of frames: more than socket buffers and the queue of 50 can hold
    with client(sstack, t.keys["admin"]) as c, SSE(
        sstack, t.keys["read_only"], params={"source": source}
    ) as fast:
        fast.opened()
        pad = "x" * 60_000
        ids = [post(c, source, i=i, pad=pad)["id"] for i in range(n)]
        # the fast one saw everything (in the ledger's insert order, which interleaves the
        # partitions' batches; per-stream order is checked by the tests above)
        assert sorted(f["id"] for f in fast.take(n)) == sorted(ids)
    # the slow one now reads what it was sent: fewer frames, then the reason, then the end
    slow.settimeout(WAIT_S)
    rest = b""
    while not rest.endswith(b"\r\n0\r\n\r\n"):  # the last chunk of the response
        chunk = slow.recv(1 << 20)
        if not chunk:
            break
        rest += chunk
    slow.close()
    body = head + rest
    got = body.count(b"event: envelope")
    assert got < n
    assert b"event: error" in body and b'"code":"slow_consumer"' in body
    assert body.index(b"event: error") > body.rindex(b"event: envelope")


def test_tenancy_and_mode_walls(sstack):
    a = new_tenant(sstack, f"wall-a-{uuid.uuid4().hex[:6]}")
    b = new_tenant(sstack, f"wall-b-{uuid.uuid4().hex[:6]}")
    with SSE(sstack, a.keys["admin"]) as sa, SSE(sstack, b.keys["admin"]) as sb, SSE(
        sstack, a.keys["live"]
    ) as sa_live:
        for s in (sa, sb, sa_live):
            s.opened()
        with client(sstack, a.keys["admin"]) as ca, client(sstack, b.keys["admin"]) as cb:
            ea = [post(ca, "wall", i=i)["id"] for i in range(3)]
            eb = [post(cb, "wall", i=i)["id"] for i in range(2)]
        with client(sstack, a.keys["live"]) as cl:
            el = post(cl, "wall")["id"]
        assert [f["id"] for f in sa.take(3)] == ea
        assert [f["id"] for f in sb.take(2)] == eb
        assert [f["id"] for f in sa_live.take(1)] == [el]
        # a marker per stream, posted last: nothing of the others came before it
        with client(sstack, a.keys["admin"]) as ca:
            mark = post(ca, "wall", marker=True)["id"]
        assert sa.next()["id"] == mark
    # another tenant's event id is no resume point
    refused(sstack, b.keys["admin"], 400, "invalid_cursor", headers={"Last-Event-ID": ea[0]})


def test_stream_cap_per_tenant_is_429(sstack):
    t = new_tenant(sstack, f"cap-{uuid.uuid4().hex[:6]}")
    held = [SSE(sstack, t.keys["read_only"]).opened() for _ in range(MAX_STREAMS)]
    try:
        r = refused(sstack, t.keys["read_only"], 429, "rate_limited")
        assert int(r.headers["retry-after"]) > 0
        held.pop().close()

        def reopened():
            s = SSE(sstack, t.keys["read_only"])
            if s.status == 200:
                return s
            s.close()
            return None

        deadline = time.monotonic() + WAIT_S
        again = None
        while again is None and time.monotonic() < deadline:
            again = reopened()
        assert again is not None
        held.append(again)
    finally:
        for s in held:
            s.close()


def test_websocket_same_frames_and_auth(sstack, tenant):
    url = f"ws://127.0.0.1:{sstack.env['FIBRIC_API_PORT']}/v1/events/ws?source=ws"
    with pytest.raises(InvalidStatus):
        connect(url, open_timeout=WAIT_S).close()  # no key: the upgrade is refused
    with connect(
        url,
        additional_headers={"Authorization": f"Bearer {tenant.keys['read_only']}"},
        open_timeout=WAIT_S,
    ) as ws, client(sstack, tenant.keys["admin"]) as c:
        posted = [post(c, "ws", i=i)["id"] for i in range(2)]
        got = []
        while len(got) < 2:
            msg = json.loads(ws.recv(timeout=WAIT_S))
            if msg["type"] == "envelope":
                StreamedEvent.model_validate(msg["data"])
                assert msg["id"] == msg["data"]["id"]
                got.append(msg["id"])
        assert got == posted
    # a refused stream: the error envelope as the last message, then close 1008 with its code
    with connect(
        url + "&cursor=cur_nope",
        additional_headers={"Authorization": f"Bearer {tenant.keys['read_only']}"},
        open_timeout=WAIT_S,
    ) as ws:
        msg = json.loads(ws.recv(timeout=WAIT_S))
        assert msg["type"] == "error" and msg["error"]["code"] == "invalid_cursor"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=WAIT_S)
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "invalid_cursor")


def test_plan_stream_ends_at_disposition_and_loop_stream(sstack):
    t = new_tenant(sstack, f"plan-{uuid.uuid4().hex[:6]}")
    with client(sstack, t.keys["admin"]) as c, SSE(
        sstack, t.keys["read_only"], "/v1/receipts/stream"
    ) as loop:
        loop.opened()
        install_sandbox(c)
        create_operator(
            c,
            "held",
            ["order.hold"],
            [{"tool": "order.hold", "decision": "ALERT"}],
            [{"when": "order.created", "then": [{
                "tool": "order.hold",
                "args": {"order_id": "{{payload.order_id}}"},
                "entity_key": "order:{{payload.order_id}}",
                "idempotency_key": "hold:{{payload.order_id}}",
            }]}],
        )
        ev = post(c, "shop", order_id="A-1")
        deadline = time.monotonic() + WAIT_S
        plans = []
        while not plans and time.monotonic() < deadline:
            plans = c.get("/v1/plans", params={"event_id": ev["id"]}).json()["data"]
        plan = plans[0]
        assert plan["status"] == "proposed"
        with SSE(sstack, t.keys["read_only"], f"/v1/plans/{plan['id']}/stream") as ps:
            first = ps.next()
            assert first["event"] == "execution_plan"
            StreamedPlan.model_validate(first["data"])
            assert (first["data"]["id"], first["data"]["status"]) == (plan["id"], "proposed")
            r = c.post(f"/v1/plans/{plan['id']}/approve", json={"approver": "ops"})
            assert r.status_code == 200, r.text
            frames = []
            while (f := ps.next()) is not None:
                frames.append(f)
            last = frames[-1]["data"]
            assert last["status"] == "executed" and last["disposed_at"]
            assert [a["outcome"] for a in last["actions"]] == ["applied"]
        # the loop stream saw the plan, its action and its receipts, as the public objects
        kinds: dict[str, list] = {}
        while "receipt" not in kinds or not any(
            r["outcome"] == "applied" for r in kinds["receipt"]
        ):
            f = loop.next()
            kinds.setdefault(f["event"], []).append(f["data"])
            assert f["id"] == f["data"]["cursor"]
        assert {p["id"] for p in kinds["execution_plan"]} == {plan["id"]}
        assert all(r["plan_id"] == plan["id"] for r in kinds["receipt"])
    # another tenant's plan is a 404; so is its stream
    other = new_tenant(sstack, f"plan-o-{uuid.uuid4().hex[:6]}")
    refused(sstack, other.keys["admin"], 404, "not_found", f"/v1/plans/{plan['id']}/stream")
