"""The Faust app factory for the worker role: wiring only.

Agents (each a thin loop over batches; the bodies live in their own modules):

* ``ingest_events`` — ``fibric.events.v1`` → admit, dedup, route, plan (``streams/ingest.py``);
* ``reason_offers`` — ``fibric.offers.v1`` → external models plan (``streams/ingest.py``);
* ``execute_actions`` — ``fibric.actions.v1`` → the deterministic executor
  (``streams/executor.py`` around the pure core ``agents/executor.py``);
* ``apply_commands`` — ``fibric.commands.v1`` → the control agent (``streams/control.py``).

Every batch runs under the batch guard (``streams/guard.py``: transient failures are retried,
a record that cannot be processed is dead-lettered and the partition moves on) and commits
through one checkpoint (``streams/checkpoint.py``: the numbered commit order). Timers send
heartbeats (with the guard's health), last-run summaries, schedule ticks and plan expiries.
Workers never open ClickHouse.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import faust
import orjson

from agents.schedule import due_slots, run_envelope
from schemas import tracing
from schemas.ids import new_id
from schemas.plan import ActionRecord
from schemas.settings import Settings
from streams.control import apply_command, send_command
from streams.guard import guarded
from streams.ingest import ingest_batch, poison, reason_batch
from streams.membership import record_member_id
from streams.metrics import AGENT_OF_TOPIC, FibricSensor, agent_metrics, install
from streams.topics import (
    ACTIONS,
    COMMANDS,
    EVENTS,
    HEARTBEATS,
    INGEST_GROUP,
    OFFERS,
    entity_key,
)
from streams.worker_state import WorkerState, new_run_counts

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


_PATCHED: set[type] = set()  # consumer thread classes whose factory is patched (once each)


def _patch_faust_fetch_wait() -> None:
    from faust.transport.drivers import aiokafka as faust_aiokafka

    thread_cls = faust_aiokafka.AIOKafkaConsumerThread
    if thread_cls in _PATCHED:
        return
    original = thread_cls._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by the fetcher at start()
        return consumer

    # a monkeypatch of Faust's consumer factory is the point here (no hook for fetch_max_wait)
    thread_cls._create_worker_consumer = create  # type: ignore[method-assign]
    _PATCHED.add(thread_cls)


# The batch guard's stage names -> the agents' names (metric labels, docs/production.md)
AGENT_NAMES = {
    "ingest": "ingest_events",
    "reason": "reason_offers",
    "execute": "execute_actions",
    "control": "apply_commands",
}


def default_worker_id() -> str:
    return f"worker-{socket.gethostname()}"


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

    def raw_topic(name: str) -> faust.TopicT:
        return app.topic(name, key_serializer="raw", value_serializer="raw")

    events_topic = raw_topic(EVENTS)
    commands_topic = raw_topic(COMMANDS)
    actions_topic = raw_topic(ACTIONS)
    offers_topic = raw_topic(OFFERS)

    @app.task
    async def start_state() -> None:
        await state.start()

    # Metrics (streams/metrics.py): the sensor counts records in/out per agent and rebalances;
    # ``run`` times each batch. Off (FIBRIC_METRICS=false): no sensor, batches run bare.
    per_agent = agent_metrics() if settings.metrics else None
    if settings.metrics:
        app.sensors.add(FibricSensor())
        install(app)

    async def run(agent: str, batch: Any, body: Any) -> None:
        if per_agent is None:
            await guarded(agent, state.health, batch, body, dead_letter)
            return
        m = per_agent[AGENT_NAMES[agent]]
        started = time.perf_counter()
        try:
            await guarded(agent, state.health, batch, body, dead_letter)
        finally:
            m.seconds.observe(time.perf_counter() - started)
            m.size.observe(len(batch))

    async def dead_letter(ev: Any, exc: BaseException) -> None:
        if per_agent is not None:
            agent = AGENT_OF_TOPIC.get(getattr(ev.message, "topic", ""), "")
            if agent:
                per_agent[agent].dead_lettered.inc()
        await poison(state, ev, exc)

    async def ingest(batch: Any) -> None:
        await ingest_batch(state, batch)

    async def reason(batch: Any) -> None:
        await reason_batch(state, batch)

    async def execute(batch: Any) -> None:
        # an action that does not decode raises here; the guard isolates and dead-letters it
        items = [
            (ActionRecord.model_validate_json(ev.message.value), ev.message.partition)
            for ev in batch
        ]
        if tracing.ENABLED:
            # the record's traceparent header (the span that sent it) is the execution's
            # parent; an action without one continues the plan span it keeps (approvals)
            for (a, _), ev in zip(items, batch, strict=True):
                tp = tracing.header_value(ev.message.headers)
                if tp and tp != a.traceparent:
                    a.traceparent = tp
        assert state.executor is not None
        await state.executor.execute_batch(items)
        for outcome, n in state.executor.counts.items():
            state.counts[f"executor_{outcome}"] = n

    async def command(batch: Any) -> None:
        for ev in batch:
            await apply_command(state, ev.message.value)

    # (faust-streaming's StreamT protocol lacks take_events, which Stream has: hence the ignores)
    @app.agent(events_topic)
    async def ingest_events(stream: faust.StreamT) -> None:
        await state.ready.wait()
        async for batch in stream.take_events(INGEST_BATCH, within=INGEST_WITHIN_S):  # type: ignore[attr-defined]
            await run("ingest", batch, ingest)

    @app.agent(offers_topic)
    async def reason_offers(stream: faust.StreamT) -> None:
        """External models: plan each offer; offers of one partition are reasoned concurrently."""
        await state.ready.wait()
        async for batch in stream.take_events(OFFERS_BATCH, within=INGEST_WITHIN_S):  # type: ignore[attr-defined]
            await run("reason", batch, reason)

    @app.agent(actions_topic)
    async def execute_actions(stream: faust.StreamT) -> None:
        await state.ready.wait()
        async for batch in stream.take_events(EXECUTE_BATCH, within=EXECUTE_WITHIN_S):  # type: ignore[attr-defined]
            await run("execute", batch, execute)

    @app.agent(commands_topic)
    async def apply_commands(stream: faust.StreamT) -> None:
        """The control agent: the single writer of configuration, one command at a time."""
        await state.ready.wait()
        async for ev in stream.events():
            await run("control", [ev], command)

    @app.on_partitions_revoked.connect
    async def _revoked(app: Any, /, *args: Any, **kwargs: Any) -> None:  # noqa: ARG001
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
    async def _assigned(app: Any, /, *args: Any, **kwargs: Any) -> None:  # noqa: ARG001
        # mode's handler type is (sender, *args, signal=..., **kwargs); Faust sends one argument
        (assigned,) = args
        note_member_id()
        # announce the new assignment now (readiness, /readyz) rather than at the next beat
        beat_task = asyncio.ensure_future(send_heartbeat())
        beat_task.add_done_callback(lambda t: t.cancelled() or t.exception())
        # bring the executor state of the new partitions up to date at once, not at their first
        # action: after a broker crash this re-emits receipts the broker may have lost
        mine = sorted(tp.partition for tp in assigned if tp.topic == ACTIONS)
        if mine:
            load = asyncio.ensure_future(load_state(mine))
            load.add_done_callback(_log_failure("executor state load"))

    async def load_state(partitions: list[int]) -> None:
        await state.ready.wait()  # the config view is current: connectors resolve
        assert state.executor is not None
        await state.executor.ensure_loaded(partitions)

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
            # agents retrying one batch for long (broker down, or worse): /readyz turns red
            "stalled": state.health.stalled(),
            "unprocessable": state.health.poisoned,
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
        runs, state.runs = dict(state.runs), defaultdict(new_run_counts)
        now = datetime.now(UTC)
        for op_id, counts in runs.items():
            op = state.view.operators.get(op_id)
            if op is None:
                continue
            last_run = {"run_id": new_id("run"), **counts, "at": now.isoformat()}
            await send_command(
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
                    key=entity_key(op.tenant_id, env.entity_key or env.event_id or ""),
                )

    @app.timer(interval=EXPIRY_SCAN_S)
    async def expire_plans() -> None:
        """Plans past their approval deadline are expired by the control agent (idempotent)."""
        if state.producer is None:
            return
        now = datetime.now(UTC)
        for plan in list(state.view.pending_plans.values()):
            if plan.expires_at is not None and plan.expires_at <= now:
                await send_command(
                    state,
                    "plan.expire",
                    None,
                    {"plan_id": plan.id},
                    tenant_id=plan.tenant_id,
                    livemode=plan.livemode,
                )

    @app.on_after_configured.connect
    def _quiet(app: Any, /, *args: Any, **kwargs: Any) -> None:  # noqa: ARG001
        # aiokafka's per-fetch debug records cost ~5% of the worker's CPU when enabled
        for name in ("faust", "aiokafka", "mode"):
            logging.getLogger(name).setLevel(logging.WARNING)

    return app


def _log_failure(what: str) -> Any:
    def done(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s failed (%s); retried at the next batch", what, task.exception())

    return done
