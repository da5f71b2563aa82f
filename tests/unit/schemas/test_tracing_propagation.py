"""The trace-context helpers (schemas/tracing.py, decisions §45) with the SDK's in-memory
exporter: what a record carries in its Kafka headers, what a child continues, what a batch
item's MCP ``_meta`` carries, what a receipt's trace_id is, and that off means nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from agents.planning import build_plan
from agents.rules_model import propose
from schemas import tracing
from streams.checkpoint import Checkpoint
from streams.executor import CallBatcher
from tests.unit.agents.test_planning import CN, NOW, PLAYBOOK, event, operator


@pytest.fixture
def exporter():
    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    tracing.use(provider)
    yield exp
    tracing.use(None)


def test_trace_id_of_reads_only_sampled_traceparents() -> None:
    tid = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert tracing.trace_id_of(f"00-{tid}-00f067aa0ba902b7-01") == tid
    assert tracing.trace_id_of(f"00-{tid}-00f067aa0ba902b7-00") is None  # not sampled
    assert tracing.trace_id_of("00-xyz") is None
    assert tracing.trace_id_of(None) is None
    assert tracing.parent("garbage") is None
    assert tracing.parent(f"00-{'0' * 32}-00f067aa0ba902b7-01") is None  # invalid trace id


def test_header_value_from_pairs_and_mappings() -> None:
    tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert tracing.header_value([("fibric-worker", b"w1"), ("traceparent", tp)]) == tp.decode()
    assert tracing.header_value({"traceparent": tp}) == tp.decode()
    assert tracing.header_value([("fibric-worker", b"w1")]) is None
    assert tracing.header_value(None) is None
    assert tracing.meta_value({"traceparent": tp.decode()}) == tp.decode()
    assert tracing.meta_value(None) is None


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    async def send(self, topic, value, key=None, partition=None, headers=None):  # noqa: ANN001
        import asyncio

        self.sent.append((topic, headers))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


async def test_records_carry_the_span_they_were_produced_in_and_hops_continue_it(
    exporter: InMemorySpanExporter,
) -> None:
    ingest = tracing.start("ingest", kind="consumer")
    producer = Producer()
    out = Checkpoint(producer, headers=[("fibric-worker", b"w1")])
    out.send("fibric.offers.v1", b"k", b"{}", trace=tracing.headers_of(ingest))
    await out.commit()
    ingest.end()
    ((_, headers),) = producer.sent
    tp = tracing.header_value(headers)
    assert tp == tracing.traceparent_of(ingest)
    # the next hop: a child of the record's span, in the same trace
    plan = tracing.start("plan", tp)
    plan.end()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["plan"].parent.span_id == spans["ingest"].context.span_id
    assert spans["plan"].context.trace_id == spans["ingest"].context.trace_id
    # the executor's own header is kept next to the trace context
    out2 = Checkpoint(Producer(), headers=[("fibric-worker", b"w1")])
    out2.ledger_row("receipt", {"tenant_id": "t"}, trace=tracing.headers_of(plan))
    assert out2.sends[0].headers == [("fibric-worker", b"w1"), *tracing.headers_of(plan)]


def test_build_plan_keeps_the_plan_span_on_actions_and_receipts(
    exporter: InMemorySpanExporter,
) -> None:
    span = tracing.start("plan")
    tp = tracing.traceparent_of(span)
    span.end()
    want = f"{span.get_span_context().trace_id:032x}"

    def plan(**kw: Any) -> Any:
        return build_plan(event=event(), operator=operator(), connectors=[CN], now=NOW, **kw)

    # hold ALLOW + notify ALERT: the plan is held, notify's receipt is pending_approval
    held = plan(proposal=propose(PLAYBOOK, event()), refusal=None, traceparent=tp)
    assert held.plan.actions and all(a.traceparent == tp for a in held.plan.actions)
    assert held.receipts and all(rc.trace_id == want for rc in held.receipts)
    refused = plan(proposal=None, refusal="no plan", traceparent=tp)
    assert [rc.trace_id for rc in refused.receipts] == [want]
    # tracing off: nothing to carry
    untraced = plan(proposal=propose(PLAYBOOK, event()), refusal=None)
    assert all(a.traceparent is None for a in untraced.plan.actions)
    assert [rc.trace_id for rc in untraced.receipts] == [None]
    # and the rows are otherwise the same (the trace is additive, never part of an identity)
    assert [rc.id for rc in untraced.receipts] == [rc.id for rc in held.receipts]


def test_an_unsampled_trace_propagates_but_no_receipt_names_it() -> None:
    exp = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exp))
    tracing.use(provider)
    try:
        span = tracing.start("ingest")
        tp = tracing.traceparent_of(span)
        # still propagated (children stay unsampled), the sampled flag clear
        assert tp is not None and not int(tp[-2:], 16) & 1
        assert tracing.trace_id_of(tp) is None
        span.end()
        assert exp.get_finished_spans() == ()
    finally:
        tracing.use(None)


class Runtime:
    def __init__(self) -> None:
        self.kwargs: list[dict] = []

    async def call_many(self, instance_id: str, calls: list, **kw: Any) -> list:
        self.kwargs.append(kw)
        return [None for _ in calls]


async def test_batched_calls_keep_each_calls_own_trace() -> None:
    rt = Runtime()
    b = CallBatcher(rt)
    import asyncio

    await asyncio.gather(
        b.call("cn_1", "order.hold", {}, "k1", "00-" + "1" * 32 + "-" + "2" * 16 + "-01"),
        b.call("cn_1", "order.hold", {}, "k2", None),
    )
    assert rt.kwargs == [{"traces": ["00-" + "1" * 32 + "-" + "2" * 16 + "-01", None]}]
    # off (no traceparent anywhere): the runtime is called exactly as before
    await b.call("cn_1", "order.hold", {}, "k3")
    assert rt.kwargs[-1] == {}


async def test_server_continues_each_batch_items_trace(
    exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    from connectors.server import BATCH_TOOL
    from tests.unit.connectors.test_connectors_toolkit import Toy, make_server

    s = make_server(tmp_path, Toy())
    a, b = tracing.start("mcp tools/call a", kind="client"), tracing.start("mcp b", kind="client")
    calls = [
        {
            "tool": "thing.poke",
            "arguments": {"idempotency_key": "k1", "thing_id": "1"},
            "_meta": {"traceparent": tracing.traceparent_of(a)},
        },
        {
            "tool": "thing.read",
            "arguments": {"thing_id": "1"},
            "_meta": {"traceparent": tracing.traceparent_of(b)},
        },
    ]
    r = await s.call_tool(BATCH_TOOL, {"calls": calls})
    assert [i["ok"] for i in r.structured_content["results"]] == [True, True]
    a.end()
    b.end()
    server = {s.name: s for s in exporter.get_finished_spans() if s.name.startswith("tools/")}
    assert server["tools/call thing.poke"].parent.span_id == a.get_span_context().span_id
    assert server["tools/call thing.read"].parent.span_id == b.get_span_context().span_id
    assert (
        server["tools/call thing.poke"].context.trace_id
        != server["tools/call thing.read"].context.trace_id
    )
