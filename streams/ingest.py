"""The ingest and reason agents' batch bodies (the Faust wiring is in ``streams/app.py``).

``ingest_batch``: admits or refuses each envelope (pure :func:`agents.ingest.admit`), drops
repeated idempotency keys (RocksDB), routes each new event to the operators whose triggers match,
plans with the embedded ``rules`` model inline (other models go through ``fibric.offers.v1``),
and commits ledger rows, refusal records and vetted actions through one
:class:`streams.checkpoint.Checkpoint` (its docstring has the commit order).

``reason_batch``: external models (OpenAI-compatible) plan each offer; offers of one key are
reasoned in order, different keys concurrently.

``poison_*``: what the batch guard (``streams/guard.py``) calls for a record that cannot be
processed — a dead-letter refusal record naming where it came from, never a silent drop.
Workers never open ClickHouse.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from agents.ingest import Admitted, Coordinates, Refused
from agents.planning import Built, routed_operators
from agents.rules_model import propose
from schemas import tracing
from schemas.config import ConfigRecord
from schemas.envelope import MAX_DEAD_LETTER_RAW, DeadLetter, Event
from schemas.ids import derived_id
from schemas.operator import Operator
from streams.checkpoint import Checkpoint
from streams.topics import OFFERS
from streams.worker_state import WorkerState

log = logging.getLogger(__name__)


def coordinates(ev: Any) -> Coordinates:
    m = ev.message
    return Coordinates(m.topic, m.partition, m.offset, int(m.timestamp * 1000))


async def ingest_batch(state: WorkerState, batch: Sequence[Any]) -> None:
    # tracing (schemas/tracing.py) is decided once per batch: off, no span and no header
    spans: list[Any] | None = [] if tracing.ENABLED else None
    started = tracing.now_ns() if spans is not None else 0
    # 1. decide every record (pure; a bad record is a refusal, never an exception)
    records = [(ev.message.value, coordinates(ev)) for ev in batch]
    results = await state.admit_all(records)
    keys = [r.dedup_key for r in results if isinstance(r, Admitted) and r.dedup_key]
    already = state.dedup.seen(keys)
    fresh_keys: set[str] = set()
    out = state.checkpoint()
    for i, r in enumerate(results):
        span = trace = None
        if spans is not None:
            span = _ingest_span(batch[i], r, started)
            spans.append(span)
            trace = tracing.headers_of(span)
        if isinstance(r, Refused):
            state.counts["refused"] += 1
            out.dead_letter(r.dead_letter, trace)
            if span is not None:
                tracing.fail(span, f"refused: {r.dead_letter.reason}")
            continue
        if r.dedup_key:
            if r.dedup_key in already or r.dedup_key in fresh_keys:
                state.counts["deduplicated"] += 1
                if span is not None:
                    span.set_attribute("fibric.deduplicated", True)
                continue
            fresh_keys.add(r.dedup_key)
        state.counts["admitted"] += 1
        out.ledger("event", r.event, trace)
        candidates = state.view.operators_of(r.event.tenant_id, r.event.livemode)
        for op in routed_operators(candidates, r.event, r.route_to):
            offer(state, out, r.event, op, span)
    out.dedup_keys = sorted(fresh_keys)
    # 2.–5. state, produce, acknowledge, views, dedup keys (streams/checkpoint.py)
    try:
        await out.commit()
    finally:
        # each event's ingest span covers its batch, from the batch's start to its commit
        for span in spans or ():
            span.end()


def _ingest_span(ev: Any, r: Admitted | Refused, started: int) -> Any:
    """The event's ingest span: under the producer's ``traceparent`` header (POST /v1/events
    sets one), else the first span of a new trace."""
    m = ev.message
    attrs: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.destination.name": m.topic,
        "messaging.kafka.partition": m.partition,
        "messaging.kafka.offset": m.offset,
    }
    if isinstance(r, Admitted):
        attrs["fibric.event_id"] = r.event.id
        attrs["fibric.event_type"] = r.event.event_type
    return tracing.start(
        "ingest",
        tracing.header_value(m.headers),
        kind="consumer",
        start_time=started,
        attributes=attrs,
    )


def offer(
    state: WorkerState, out: Checkpoint, event: Event, op: Operator, span: Any = None
) -> None:
    """``span``: the event's ingest span when tracing is on (the plan and model spans are its
    children; the offer record carries it to the reason agent)."""
    assert state.models is not None
    provider = state.models.provider_of(op)
    if provider == "rules":
        if span is None:
            try:
                proposal, refusal = propose(op.playbook, event), None
            except ValueError as exc:
                proposal, refusal = None, str(exc)
            add_built(state, out, state.plan(event, op, proposal, refusal))
            return
        plan_span = _plan_span(op, tracing.child_context(span))
        model_span = tracing.start(
            "model rules",
            context=tracing.child_context(plan_span),
            kind="client",
            attributes={"fibric.model": op.model},
        )
        try:
            proposal, refusal = propose(op.playbook, event), None
        except ValueError as exc:
            proposal, refusal = None, str(exc)
            tracing.fail(model_span, "the rules model refused")
        model_span.end()
        traceparent = tracing.traceparent_of(plan_span)
        built = state.plan(event, op, proposal, refusal, traceparent)
        add_built(state, out, built, tracing.headers_of(plan_span), plan_span)
    else:
        doc = {
            "event": event.model_dump(mode="json"),
            "operator_id": op.id,
            "operator_version": op.version,
        }
        key = f"{op.id}:{event.entity_key or event.id}".encode()
        out.send(OFFERS, key, orjson.dumps(doc), trace=tracing.headers_of(span) if span else None)


def _plan_span(op: Operator, context: Any) -> Any:
    return tracing.start(
        "plan",
        context=context,
        attributes={"fibric.operator_id": op.id, "fibric.operator": op.name},
    )


def add_built(
    state: WorkerState, out: Checkpoint, built: Built, trace: Any = None, span: Any = None
) -> None:
    """A built plan's outputs: plan, actions and receipts to the ledger, ALLOW actions to the
    executor, a held plan to the config log (approve/veto/expire are control commands).
    ``trace``/``span``: the plan span's headers and the span itself (ended here) when traced."""
    plan = built.plan
    out.ledger("plan", plan, trace)
    for a in plan.actions:
        out.ledger("action", a, trace)
    metrics = state.executor.metrics if state.executor is not None else None
    for rc in built.receipts:
        out.ledger("receipt", rc, trace)
        if metrics is not None:  # verdicts disposed at planning (BLOCK, ALERT)
            metrics.disposed(rc.decision, rc.outcome)
    for a in built.dispatch:
        out.action(a, trace)
    if span is not None:
        span.set_attribute("fibric.plan_id", plan.id)
        span.set_attribute("fibric.plan_status", plan.status)
        span.set_attribute("fibric.actions", len(plan.actions))
        span.end()
    if plan.status == "proposed":
        out.config.append(
            ConfigRecord(
                id=derived_id(
                    "cfg", int(plan.created_at.timestamp() * 1000), plan.id, plan.version
                ),
                kind="pending_plan",
                tenant_id=plan.tenant_id,
                version=plan.version,
                data=plan.model_dump(mode="json"),
                actor=f"operator:{plan.operator_name}",
                note="plan.proposed",
                at=plan.created_at,
            )
        )
    run = state.runs[plan.operator_id]
    run["sensed"] += 1
    run["proposed"] += len(plan.actions)


async def reason_batch(state: WorkerState, batch: Sequence[Any]) -> None:
    """Offers of one key are reasoned in order; different keys concurrently."""
    assert state.models is not None
    models = state.models
    traced = tracing.ENABLED
    lanes: dict[bytes, list[tuple[dict[str, Any], str | None]]] = defaultdict(list)
    for ev in batch:
        tp = tracing.header_value(ev.message.headers) if traced else None
        lanes[ev.message.key or b""].append((orjson.loads(ev.message.value), tp))
    out = state.checkpoint()

    async def lane(offers: list[tuple[dict[str, Any], str | None]]) -> None:
        for doc, tp in offers:
            op = state.view.operators.get(doc["operator_id"])
            if op is None or op.status != "active":
                continue
            event = Event.model_validate(doc["event"])
            connectors = state.view.connectors_of(event.tenant_id, event.livemode)
            if not traced:
                proposal, refusal = await models.reason(op, event, connectors, state.describe_tools)
                add_built(state, out, state.plan(event, op, proposal, refusal))
                continue
            plan_span = _plan_span(op, tracing.parent(tp))
            model_span = tracing.start(
                f"model {op.model}",
                context=tracing.child_context(plan_span),
                kind="client",
                attributes={"fibric.model": op.model},
            )
            try:
                proposal, refusal = await models.reason(op, event, connectors, state.describe_tools)
                if refusal:
                    tracing.fail(model_span, "the model's plan was refused")
            finally:
                model_span.end()
            built = state.plan(event, op, proposal, refusal, tracing.traceparent_of(plan_span))
            add_built(state, out, built, tracing.headers_of(plan_span), plan_span)

    await asyncio.gather(*(lane(offers) for offers in lanes.values()))
    await out.commit()


# ---- records that cannot be processed --------------------------------------------------------
def unprocessable(ev: Any, exc: BaseException, tenant_id: str = "") -> DeadLetter:
    """The refusal record for a record that failed processing (reason ``unprocessable``)."""
    m = ev.message
    raw = m.value or b""
    return DeadLetter(
        id=derived_id("dl", int(m.timestamp * 1000), m.topic, m.partition, m.offset),
        tenant_id=tenant_id,
        reason="unprocessable",
        message=f"the record could not be processed ({type(exc).__name__}); it was set aside "
        "so the records after it could be",
        raw=raw[:MAX_DEAD_LETTER_RAW].decode("utf-8", errors="replace"),
        source_topic=m.topic,
        partition=m.partition,
        offset=m.offset,
        created_at=datetime.fromtimestamp(m.timestamp, tz=UTC),
    )


def tenant_of(raw: bytes | None, state: WorkerState) -> str:
    """The tenant a raw record names, when it is a known one (else the refusal is operator-only)."""
    try:
        doc = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return ""
    if isinstance(doc, dict):
        inner = doc.get("event")
        nested = inner.get("tenant_id") if isinstance(inner, dict) else None
        for candidate in (doc.get("tenant_id"), nested):
            if isinstance(candidate, str) and state.view.tenant_exists(candidate):
                return candidate
    return ""


async def poison(state: WorkerState, ev: Any, exc: BaseException) -> None:
    state.counts["unprocessable"] += 1
    out = state.checkpoint()
    out.dead_letter(unprocessable(ev, exc, tenant_of(ev.message.value, state)))
    await out.commit()
