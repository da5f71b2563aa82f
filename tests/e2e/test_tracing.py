"""OpenTelemetry traces through the running stack (issue 13 item 2, decisions §45).

`fibric up` runs with OTEL_EXPORTER_OTLP_ENDPOINT pointed at a real OTLP/HTTP receiver this test
serves on 127.0.0.1 (the exporters of the api, worker and connector processes post protobuf
``ExportTraceServiceRequest``s to it; the SDK's in-memory exporter cannot see across processes).
For each event that leads to an action: one trace, whose spans from the three services connect
parent → child (POST /v1/events → ingest → plan → model / execute → MCP call → connector tool
call; ledger inserts under the spans whose records they stored), and the receipt's trace_id is
that trace. An event produced straight to Kafka (no traceparent) starts its trace at ingest."""

from __future__ import annotations

import gzip
import threading
import uuid
from collections import defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import client, create_operator, free_port, install_sandbox, make_stack
from tests.conftest import new_tenant as make_tenant
from tests.e2e.test_kafka_pipeline import envelope, publish, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HOLD = {
    "tool": "order.hold",
    "args": {"order_id": "{{payload.order_id}}"},
    "entity_key": "order:{{payload.order_id}}",
    "idempotency_key": "hold:{{payload.order_id}}",
}
EVENTS = 3


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


class Receiver:
    """A minimal OTLP/HTTP trace receiver (POST /v1/traces, protobuf)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                ok = self.path == "/v1/traces"
                if ok:
                    receiver.take(ExportTraceServiceRequest.FromString(body))
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def take(self, req: ExportTraceServiceRequest) -> None:
        got = []
        for rs in req.resource_spans:
            res = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(
                        Span(
                            service=str(res.get("service.name")),
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            attributes={kv.key: _value(kv.value) for kv in s.attributes},
                        )
                    )
        with self._lock:
            self.requests += 1
            self.spans.extend(got)

    def traces(self) -> dict[str, list[Span]]:
        with self._lock:
            out: dict[str, list[Span]] = defaultdict(list)
            for s in self.spans:
                out[s.trace_id].append(s)
            return out


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory):
    receiver = Receiver()
    receiver.thread.start()
    s = make_stack(
        tmp_path_factory.mktemp("tracing"),
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
        OTEL_TRACES_SAMPLER="always_on",
        # export within a fraction of a second, not the default 5 s
        OTEL_BSP_SCHEDULE_DELAY="200",
    )
    try:
        s.start()
        yield s, receiver
    finally:
        s.stop()
        receiver.server.shutdown()


def _one(spans: list[Span], name: str, service: str) -> Span:
    found = [s for s in spans if s.name == name and s.service == service]
    assert len(found) == 1, (name, service, [(s.service, s.name) for s in spans])
    return found[0]


def test_one_connected_trace_per_event_across_api_worker_and_connector(traced) -> None:
    stack, receiver = traced
    tenant = make_tenant(stack, f"tr-{uuid.uuid4().hex[:8]}")
    c = client(stack, tenant.keys["admin"])
    install_sandbox(c)
    create_operator(
        c,
        "holder",
        ["order.hold"],
        [{"tool": "order.hold", "decision": "ALLOW"}],
        [{"when": "order.created", "then": [HOLD]}],
    )
    posted = []
    for i in range(EVENTS):
        r = c.post(
            "/v1/events",
            json={"source": "shop", "event_type": "order.created", "payload": {"order_id": str(i)}},
        )
        assert r.status_code == 201, r.text
        posted.append(r.json()["id"])
    # one more, straight to Kafka: no traceparent header, so its trace starts at ingest
    publish(stack, [envelope(tenant.id, "kafka", payload={"order_id": "k"})])

    def applied() -> dict[str, dict] | None:
        rcs = c.get("/v1/receipts", params={"limit": 100}).json()["data"]
        by_event = {r["event_id"]: r for r in rcs if r["outcome"] == "applied"}
        return by_event if len(by_event) == EVENTS + 1 else None

    receipts = wait_for(applied, timeout=90, interval=0.5)
    by_trace: dict[str, str] = {}
    for ev, rc in receipts.items():
        assert isinstance(rc["trace_id"], str) and len(rc["trace_id"]) == 32, rc
        by_trace[rc["trace_id"]] = ev
    assert len(by_trace) == EVENTS + 1  # one trace per event, never shared

    expected_root = ("fibric-api", "POST /v1/events")
    expected = {
        expected_root,
        ("fibric-worker", "ingest"),
        ("fibric-worker", "plan"),
        ("fibric-worker", "model rules"),
        ("fibric-worker", "execute"),
        ("fibric-worker", "mcp tools/call order.hold"),
        ("fibric-connector", "tools/call order.hold"),
        ("fibric-api", "ledger.insert"),
    }

    def complete() -> dict[str, list[Span]] | None:
        traces = receiver.traces()
        for tid in by_trace:
            spans = traces.get(tid, [])
            names = {(s.service, s.name) for s in spans}
            want = expected if by_trace[tid] in posted else expected - {expected_root}
            # the receipt's insert is the last span of a trace to be exported
            inserts = [s for s in spans if s.name == "ledger.insert"]
            if not want <= names or len(inserts) < 3:
                return None
        return traces

    traces = wait_for(complete, timeout=60, interval=0.5)

    for tid, event_id in by_trace.items():
        spans = traces[tid]
        ids = {s.span_id for s in spans}
        roots = [s for s in spans if not s.parent_id]
        # connected: one root, every other span's parent is a span of this very trace
        assert len(roots) == 1, [(s.service, s.name) for s in roots]
        assert all(s.parent_id in ids for s in spans if s.parent_id), spans
        ingest = _one(spans, "ingest", "fibric-worker")
        assert ingest.attributes["fibric.event_id"] == event_id
        if event_id in posted:
            post = _one(spans, "POST /v1/events", "fibric-api")
            assert roots == [post]
            assert ingest.parent_id == post.span_id
        else:
            assert roots == [ingest]  # from Kafka without a traceparent: the trace starts here
        plan = _one(spans, "plan", "fibric-worker")
        model = _one(spans, "model rules", "fibric-worker")
        execute = _one(spans, "execute", "fibric-worker")
        call = _one(spans, "mcp tools/call order.hold", "fibric-worker")
        tool = _one(spans, "tools/call order.hold", "fibric-connector")
        assert plan.parent_id == ingest.span_id
        assert model.parent_id == plan.span_id
        assert execute.parent_id == plan.span_id
        assert call.parent_id == execute.span_id
        assert tool.parent_id == call.span_id
        assert execute.attributes["fibric.outcome"] == "applied"
        # the sink's inserts: the event row (ingest), plan + action rows (plan), the receipt
        # (execute), each in the trace of the records it stored
        insert_parents = {s.parent_id for s in spans if s.name == "ledger.insert"}
        assert insert_parents == {ingest.span_id, plan.span_id, execute.span_id}
        # no span carries a secret
        for s in spans:
            assert not any(k in str(s.attributes.values()) for k in tenant.keys.values())
