"""The Faust app factory for the worker role and its agents.

* ``ingest_events`` reads ``fibric.events.v1`` in batches: admits or refuses each envelope
  (pure :func:`agents.ingest.admit`), drops repeated idempotency keys (RocksDB), routes each new
  event to the operators whose triggers match, asks the operator's model for a plan (the embedded
  ``rules`` model runs inline; other models go through ``fibric.offers.v1``), judges every action
  by policy, and produces ledger rows, refusal records and vetted actions.
* ``reason_offers`` calls external models (OpenAI-compatible) concurrently and plans the same way.
* ``execute_actions`` is the deterministic executor (streams/executor.py).
* ``apply_commands`` is the control agent: the single writer of configuration.

Order per ingest batch, written down because durability depends on it:
1. decide every record (pure; a bad record becomes a refusal, never an exception);
2. produce every output and wait for the broker's acknowledgement;
3. remember the batch's idempotency keys in RocksDB;
4. return, so Faust acks the batch and commits its offsets.
A crash before 4 replays the batch: outputs carry deterministic ids, so the ledger stores each
row once and the executor recognises actions it already disposed. Workers never open ClickHouse.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
import orjson

from agents.control import decide
from agents.ingest import Admitted, Coordinates, Refused, admit
from agents.planning import Built, build_plan, routed_operators
from agents.rules_model import propose
from agents.schedule import due_slots, run_envelope
from agents.secrets import SecretBox
from schemas.commands import Command, Reply, ReplyError
from schemas.config import ConfigRecord
from schemas.envelope import Event, LedgerRecord
from schemas.ids import derived_id, new_id
from schemas.operator import Operator
from schemas.plan import ActionRecord
from schemas.settings import Settings
from streams.config_log import publish
from streams.config_view import ConfigView
from streams.dedup import DedupStore
from streams.executor import Executor
from streams.kafka import make_producer, partition_for
from streams.membership import record_member_id
from streams.models import ModelRouter
from streams.topics import (
    ACTIONS,
    COMMANDS,
    DLQ,
    EVENTS,
    HEARTBEATS,
    INGEST_GROUP,
    LEDGER,
    OFFERS,
    REPLIES,
)

log = logging.getLogger(__name__)

# Batch size and wait: large enough to amortise Faust's per-batch overhead and the produce
# round trip, short enough that an idle stream still flushes within ~10 ms.
INGEST_BATCH = 5000
INGEST_WITHIN_S = 0.01
# Executor batches: small waits keep event → receipt latency low; lanes give the concurrency.
EXECUTE_BATCH = 2000
EXECUTE_WITHIN_S = 0.005
OFFERS_BATCH = 200
HEARTBEAT_INTERVAL_S = 2.0
# last_run summaries are flushed to the operator at most this often (a "run" is that window).
RUN_FLUSH_S = 5.0
EXPIRY_SCAN_S = 15.0
# Cron has minute resolution; scanning twice a minute never misses a slot.
SCHEDULE_SCAN_S = 30.0


# Faust hard-codes fetch_max_wait_ms=1500 for its consumer. The embedded broker (Tansu) does not
# complete a waiting fetch when data arrives, so every hop through a Faust agent would cost ~0.5 s
# (measured: 450 ms at 1500, 3 ms at 100). 20 ms keeps hops fast and idle polling cheap
# (decisions §16).
FETCH_MAX_WAIT_MS = 20


def _patch_faust_fetch_wait() -> None:
    from faust.transport.drivers import aiokafka as faust_aiokafka

    thread_cls = faust_aiokafka.AIOKafkaConsumerThread
    if getattr(thread_cls, "_fibric_patched", False):
        return
    original = thread_cls._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by the fetcher at start()
        return consumer

    thread_cls._create_worker_consumer = create
    thread_cls._fibric_patched = True


def default_worker_id() -> str:
    return f"worker-{socket.gethostname()}"


class WorkerState:
    """What the worker's agents share: config view, dedup store, producer, MCP runtime, counters."""

    def __init__(self, settings: Settings, worker_id: str) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.home = settings.resolved_home / "workers" / worker_id
        self.view = ConfigView(settings.kafka_bootstrap)
        self.dedup = DedupStore(self.home / "dedup")
        self.box = SecretBox(settings.load_secret_key())
        self.ready = asyncio.Event()
        self.counts: dict[str, int] = defaultdict(int)
        self.runs: dict[str, dict[str, int]] = defaultdict(
            lambda: {"sensed": 0, "proposed": 0, "applied": 0}
        )
        # made in start(): aiokafka and the MCP pool bind to the running loop
        self.producer: Any = None
        self.runtime: Any = None
        self.executor: Executor | None = None
        self.models: ModelRouter | None = None
        self.instance = f"{worker_id}-{os.getpid()}"
        self.schedule_scanned_at = datetime.now(UTC)

    async def start(self) -> None:
        from connectors.pool import ConnectorRuntime

        self.producer = make_producer(self.settings.kafka_bootstrap)
        await self.producer.start()
        self.runtime = ConnectorRuntime(state_dir=self.home / "connectors")
        self.executor = Executor(
            self.settings.kafka_bootstrap,
            self.producer,
            self.runtime,
            self.view,
            self.box,
            worker_id=self.worker_id,
        )
        self.models = ModelRouter(self.settings)
        await self.view.start()
        await self.view.sync()
        self.ready.set()

    async def admit_all(
        self, records: Sequence[tuple[bytes | None, Coordinates]]
    ) -> list[Admitted | Refused]:
        results = [admit(raw, at, self.view.tenant_exists) for raw, at in records]
        if any(
            isinstance(r, Refused) and r.dead_letter.reason == "unknown_tenant" for r in results
        ):
            # A tenant created a moment ago may not be in the view yet: catch up once, re-decide.
            await self.view.sync()
            results = [
                admit(raw, at, self.view.tenant_exists)
                if isinstance(r, Refused) and r.dead_letter.reason == "unknown_tenant"
                else r
                for r, (raw, at) in zip(results, records, strict=True)
            ]
        return results

    async def describe_tools(self, connector_id: str) -> list[Any]:
        """The connector's MCP tool list (names, side effects, input schemas) for a model prompt."""
        assert self.executor is not None
        if await self.executor.ensure_connector(connector_id):
            return []
        return await self.runtime.tools(connector_id)

    def plan(self, event: Event, operator: Operator, proposal: Any, refusal: str | None) -> Built:
        return build_plan(
            event=event,
            operator=operator,
            connectors=self.view.connectors_of(event.tenant_id, event.livemode),
            proposal=proposal,
            refusal=refusal,
            now=datetime.now(UTC),
            approval_ttl=timedelta(seconds=self.settings.approval_ttl_s),
        )


LEDGER_KINDS = frozenset(LedgerRecord.model_fields["kind"].annotation.__args__)  # type: ignore[union-attr]


async def _retrying(what: str, fn: Any, *args: Any) -> None:
    """Run one batch until it succeeds. A batch fails only when the broker or the exec-state
    topic is unavailable (a bad record is a refusal, never an exception); if the exception
    escaped, Faust would restart the agent *past* the batch, and its records would stay
    unprocessed until the next rebalance. Retrying is safe: outputs carry deterministic ids."""
    delay = 0.5
    while True:
        try:
            await fn(*args)
            return
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - logged and retried, never skipped
            log.exception("%s batch failed; retrying in %.1fs", what, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


class Outbox:
    """Everything one batch produces, sent together and acknowledged before the batch is acked."""

    def __init__(self) -> None:
        self.sends: list[tuple[str, bytes, bytes]] = []
        self.config: list[ConfigRecord] = []

    def ledger(self, kind: str, obj: Any, tenant_id: str) -> None:
        # a LedgerRecord, serialised once: {"kind": ..., "row": <the model's JSON>}
        assert kind in LEDGER_KINDS
        value = b'{"kind":"' + kind.encode() + b'","row":' + obj.model_dump_json().encode() + b"}"
        self.sends.append((LEDGER, tenant_id.encode(), value))

    def built(self, built: Built, state: WorkerState) -> None:
        plan = built.plan
        self.ledger("plan", plan, plan.tenant_id)
        for a in plan.actions:
            self.ledger("action", a, a.tenant_id)
        for rc in built.receipts:
            self.ledger("receipt", rc, rc.tenant_id)
        for a in built.dispatch:
            self.action(a)
        if plan.status == "proposed":
            self.config.append(
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

    def action(self, a: ActionRecord) -> None:
        self.sends.append(
            (ACTIONS, f"{a.tenant_id}:{a.entity_key}".encode(), a.model_dump_json().encode())
        )

    async def flush(self, state: WorkerState) -> None:
        futures = [
            await state.producer.send(topic, value, key=key) for topic, key, value in self.sends
        ]
        if self.config:
            await publish(state.producer, self.config)
            for rec in self.config:
                state.view.apply_record(rec)
        if futures:
            await asyncio.gather(*futures)


def create_app(settings: Settings, worker_id: str | None = None) -> faust.App:
    worker_id = worker_id or settings.worker_id or default_worker_id()
    datadir = settings.resolved_home / "workers" / worker_id
    _patch_faust_fetch_wait()
    app = faust.App(
        INGEST_GROUP,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_disable_leader=True,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        # Static membership is off by default (decisions §19): with aiokafka (no KIP-814 skip-
        # assignment) a restarted static *leader* reassigns partitions without the other workers
        # rebalancing, which leaves partitions owned by two workers or by none.
        consumer_group_instance_id=worker_id if settings.kafka_static_membership else None,
        # Failover in seconds, not a minute (Faust's default session is 60 s).
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=settings.kafka_session_timeout_s / 4,
        broker_commit_interval=1.0,
        producer_acks=-1,
        producer_linger=0.002,
        stream_buffer_maxsize=INGEST_BATCH * 2,
        consumer_max_fetch_size=4 * 1024 * 1024,
    )
    state = WorkerState(settings, worker_id)
    app.fibric_state = state  # type: ignore[attr-defined]
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    events_topic = app.topic(EVENTS, **raw)
    commands_topic = app.topic(COMMANDS, **raw)
    actions_topic = app.topic(ACTIONS, **raw)
    offers_topic = app.topic(OFFERS, **raw)

    @app.task
    async def start_state() -> None:
        await state.start()

    @app.agent(events_topic)
    async def ingest_events(stream: faust.StreamT) -> None:
        await state.ready.wait()
        async for batch in stream.take_events(INGEST_BATCH, within=INGEST_WITHIN_S):
            await _retrying("ingest", _ingest_batch, state, batch)

    @app.agent(offers_topic)
    async def reason_offers(stream: faust.StreamT) -> None:
        """External models: plan each offer; offers of one partition are reasoned concurrently."""
        await state.ready.wait()
        async for batch in stream.take_events(OFFERS_BATCH, within=INGEST_WITHIN_S):
            await _retrying("offers", _reason_batch, state, batch)

    @app.agent(actions_topic)
    async def execute_actions(stream: faust.StreamT) -> None:
        await state.ready.wait()
        async for batch in stream.take_events(EXECUTE_BATCH, within=EXECUTE_WITHIN_S):
            items = []
            for ev in batch:
                try:
                    items.append(
                        (ActionRecord.model_validate_json(ev.message.value), ev.message.partition)
                    )
                except Exception:  # noqa: BLE001 - only Fibric writes this topic; log and skip
                    log.error(
                        "undecodable action at %s@%d", ev.message.partition, ev.message.offset
                    )
            assert state.executor is not None
            await _retrying("executor", state.executor.execute_batch, items)
            for outcome, n in state.executor.counts.items():
                state.counts[f"executor_{outcome}"] = n

    @app.agent(commands_topic)
    async def apply_commands(stream: faust.StreamT) -> None:
        """The control agent: the single writer of configuration, one command at a time."""
        await state.ready.wait()
        async for value in stream:
            await _apply_command(state, value)

    @app.on_partitions_revoked.connect
    async def _revoked(app: Any, revoked: Any, **kwargs: Any) -> None:  # noqa: ARG001
        if state.executor is not None:
            state.executor.forget_partitions()

    recorded = {"member_id": ""}

    def note_member_id() -> None:
        """Write the group member id to the worker's home when it changed (streams/membership)."""
        thread = getattr(app.consumer, "_thread", None)
        consumer = getattr(thread, "_consumer", None)
        current = str(getattr(getattr(consumer, "_coordinator", None), "member_id", "") or "")
        if current and current != recorded["member_id"]:
            record_member_id(datadir, current)
            recorded["member_id"] = current

    @app.on_partitions_assigned.connect
    async def _assigned(app: Any, assigned: Any, **kwargs: Any) -> None:  # noqa: ARG001
        note_member_id()
        # announce the new assignment now (readiness, /readyz) rather than at the next beat
        beat_task = asyncio.ensure_future(send_heartbeat())
        beat_task.add_done_callback(lambda t: t.cancelled() or t.exception())

    @app.timer(interval=HEARTBEAT_INTERVAL_S)
    async def heartbeat() -> None:
        await send_heartbeat()

    async def send_heartbeat() -> None:
        note_member_id()
        if state.producer is None:
            return
        assigned = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == EVENTS)
        beat = {
            "worker_id": worker_id,
            "pid": os.getpid(),
            "at": datetime.now(UTC).isoformat(),
            "partitions": assigned,
            "counts": dict(state.counts),
        }
        await state.producer.send_and_wait(HEARTBEATS, orjson.dumps(beat), key=worker_id.encode())

    @app.timer(interval=RUN_FLUSH_S)
    async def flush_runs() -> None:
        """Report each operator's activity in the last window as its ``last_run``."""
        if state.producer is None or state.executor is None:
            return
        for op_id, applied in state.executor.applied_by_operator.items():
            state.runs[op_id]["applied"] += applied
        state.executor.applied_by_operator.clear()
        runs, state.runs = (
            dict(state.runs),
            defaultdict(lambda: {"sensed": 0, "proposed": 0, "applied": 0}),
        )
        now = datetime.now(UTC)
        for op_id, counts in runs.items():
            op = state.view.operators.get(op_id)
            if op is None:
                continue
            last_run = {"run_id": new_id("run"), **counts, "at": now.isoformat()}
            await _send_command(
                state, "operator.record_run", op, {"operator_id": op_id, "last_run": last_run}
            )

    @app.timer(interval=SCHEDULE_SCAN_S)
    async def run_schedules() -> None:
        """Publish a run event for every operator whose cron slot passed since the last scan."""
        if state.producer is None:
            return
        now = datetime.now(UTC)
        last, state.schedule_scanned_at = state.schedule_scanned_at, now
        for op in list(state.view.operators.values()):
            if op.status != "active" or not op.schedule:
                continue
            for slot in due_slots(op.schedule, max(last, op.updated_at), now):
                env = run_envelope(op, slot)
                await state.producer.send(
                    EVENTS,
                    env.model_dump_json(exclude_none=True).encode(),
                    key=f"{op.tenant_id}:{env.entity_key}".encode(),
                )

    @app.timer(interval=EXPIRY_SCAN_S)
    async def expire_plans() -> None:
        """Plans past their approval deadline are expired by the control agent (idempotent)."""
        if state.producer is None:
            return
        now = datetime.now(UTC)
        for plan in list(state.view.pending_plans.values()):
            if plan.expires_at is not None and plan.expires_at <= now:
                await _send_command(
                    state,
                    "plan.expire",
                    None,
                    {"plan_id": plan.id},
                    tenant_id=plan.tenant_id,
                    livemode=plan.livemode,
                )

    @app.on_after_configured.connect
    def _quiet(app: Any, **kwargs: Any) -> None:  # noqa: ARG001
        # aiokafka's per-fetch debug records cost ~5% of the worker's CPU when enabled
        for name in ("faust", "aiokafka", "mode"):
            logging.getLogger(name).setLevel(logging.WARNING)

    return app


async def _send_command(
    state: WorkerState,
    type_: str,
    op: Operator | None,
    args: dict[str, Any],
    tenant_id: str | None = None,
    livemode: bool | None = None,
) -> None:
    """Fire-and-forget command from the worker itself (the reply is ignored)."""
    cmd = Command(
        id=new_id("cmd"),
        reply_to=state.instance,
        type=type_,  # type: ignore[arg-type]
        tenant_id=tenant_id or (op.tenant_id if op else None),
        livemode=livemode if livemode is not None else (op.livemode if op else False),
        actor=f"worker:{state.worker_id}",
        args=args,
        at=datetime.now(UTC),
    )
    await state.producer.send(
        COMMANDS, cmd.model_dump_json().encode(), key=(cmd.tenant_id or "").encode()
    )


async def _apply_command(state: WorkerState, raw: bytes) -> None:
    """1. catch up with the config log; 2. decide (pure); 3. write the records and outputs and
    wait for the broker; 4. apply records locally (the next command sees them at once);
    5. reply. A crash before 5 replays the command: its records carry the command id, so it is
    answered, not re-applied (commands with no records are idempotent by construction)."""
    try:
        cmd = Command.model_validate_json(raw)
    except Exception:  # noqa: BLE001 - a malformed command has nobody to answer; log and skip
        log.error("dropping malformed command")
        return
    try:
        await state.view.sync()
        done = state.view.command_results.get(cmd.id)
        if done is not None:
            reply = Reply(
                id=cmd.id, reply_to=cmd.reply_to, ok=True, result=done[1], record_ids=done[0]
            )
        else:
            decision = decide(state.view, cmd, datetime.now(UTC), new_id)
            out = Outbox()
            for kind, obj in decision.outputs:
                out.ledger(kind, obj, obj.tenant_id)
            for a in decision.dispatch:
                out.action(a)
            for i, rec in enumerate(decision.records):
                rec.command_id = cmd.id
                if i == 0:
                    rec.result = decision.reply.result
            out.config = decision.records
            await out.flush(state)
            reply = decision.reply
    except Exception as exc:  # noqa: BLE001 - every command gets an answer, even a failure
        log.exception("command %s failed", cmd.id)
        reply = Reply(
            id=cmd.id,
            reply_to=cmd.reply_to,
            ok=False,
            error=ReplyError(
                status=500,
                code="internal_error",
                message=f"control agent error: {type(exc).__name__}",
            ),
        )
    parts = state.producer.client.cluster.partitions_for_topic(REPLIES) or {0}
    await state.producer.send_and_wait(
        REPLIES,
        reply.model_dump_json().encode(),
        key=cmd.reply_to.encode(),
        partition=partition_for(cmd.reply_to, len(parts)),
    )


async def _ingest_batch(state: WorkerState, batch: Sequence[Any]) -> None:
    # 1. decide
    records = [
        (
            ev.message.value,
            Coordinates(
                ev.message.topic,
                ev.message.partition,
                ev.message.offset,
                int(ev.message.timestamp * 1000),
            ),
        )
        for ev in batch
    ]
    results = await state.admit_all(records)
    keys = [r.dedup_key for r in results if isinstance(r, Admitted) and r.dedup_key]
    already = state.dedup.seen(keys)
    fresh_keys: set[str] = set()
    out = Outbox()
    for r in results:
        if isinstance(r, Refused):
            dl = r.dead_letter
            state.counts["refused"] += 1
            out.sends.append((DLQ, dl.tenant_id.encode(), dl.model_dump_json().encode()))
            continue
        if r.dedup_key:
            if r.dedup_key in already or r.dedup_key in fresh_keys:
                state.counts["deduplicated"] += 1
                continue
            fresh_keys.add(r.dedup_key)
        state.counts["admitted"] += 1
        out.ledger("event", r.event, r.event.tenant_id)
        candidates = state.view.operators_of(r.event.tenant_id, r.event.livemode)
        for op in routed_operators(candidates, r.event, r.route_to):
            _offer(state, out, r.event, op)
    # 2. produce and wait for every acknowledgement
    await out.flush(state)
    # 3. remember idempotency keys only once their events are safely on the ledger topic
    state.dedup.remember(sorted(fresh_keys))
    # 4. returning lets take_events ack the batch; Faust commits the offsets


def _offer(state: WorkerState, out: Outbox, event: Event, op: Operator) -> None:
    assert state.models is not None
    provider = state.models.provider_of(op)
    if provider == "rules":
        try:
            proposal, refusal = propose(op.playbook, event), None
        except ValueError as exc:
            proposal, refusal = None, str(exc)
        out.built(state.plan(event, op, proposal, refusal), state)
    else:
        offer = {
            "event": event.model_dump(mode="json"),
            "operator_id": op.id,
            "operator_version": op.version,
        }
        key = f"{op.id}:{event.entity_key or event.id}".encode()
        out.sends.append((OFFERS, key, orjson.dumps(offer)))


async def _reason_batch(state: WorkerState, batch: Sequence[Any]) -> None:
    """Offers of one key are reasoned in order; different keys concurrently."""
    assert state.models is not None
    lanes: dict[bytes, list[dict[str, Any]]] = defaultdict(list)
    for ev in batch:
        try:
            lanes[ev.message.key or b""].append(orjson.loads(ev.message.value))
        except orjson.JSONDecodeError:
            log.error("undecodable offer at %s@%d", ev.message.partition, ev.message.offset)
    out = Outbox()

    async def lane(offers: list[dict[str, Any]]) -> None:
        for offer in offers:
            op = state.view.operators.get(offer["operator_id"])
            if op is None or op.status != "active":
                continue
            event = Event.model_validate(offer["event"])
            connectors = state.view.connectors_of(event.tenant_id, event.livemode)
            proposal, refusal = await state.models.reason(
                op, event, connectors, state.describe_tools
            )
            out.built(state.plan(event, op, proposal, refusal), state)

    await asyncio.gather(*(lane(offers) for offers in lanes.values()))
    await out.flush(state)
