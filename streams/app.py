"""The Faust app factory for the worker role and its agents.

``ingest_events`` reads ``fibric.events.v1`` in batches, admits or refuses each envelope with the
pure :func:`agents.ingest.admit`, drops repeated idempotency keys (RocksDB), and produces ledger
rows and dead-letter records. Order per batch, written down because durability depends on it:

1. decide every record (pure; a bad record becomes a refusal, never an exception);
2. produce every output and wait for the broker's acknowledgement;
3. remember the batch's idempotency keys in RocksDB;
4. return, so Faust acks the batch and commits its offsets.

A crash before 4 replays the batch: outputs carry deterministic ids, so the ledger sink's
id-dedup stores each row once. Workers never open ClickHouse.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import faust
import orjson

from agents.control import decide
from agents.ingest import Admitted, Coordinates, Refused, admit
from schemas.commands import Command, Reply, ReplyError
from schemas.envelope import LedgerRecord
from schemas.ids import new_id
from schemas.settings import Settings
from streams.config_log import publish
from streams.config_view import ConfigView
from streams.dedup import DedupStore
from streams.kafka import make_producer, partition_for
from streams.topics import COMMANDS, DLQ, EVENTS, HEARTBEATS, INGEST_GROUP, LEDGER, REPLIES

log = logging.getLogger(__name__)

# Batch size and wait: large enough to amortise Faust's per-batch overhead and the produce
# round trip, short enough that an idle stream still flushes within ~10 ms.
INGEST_BATCH = 5000
INGEST_WITHIN_S = 0.01
HEARTBEAT_INTERVAL_S = 2.0


def default_worker_id() -> str:
    return f"worker-{socket.gethostname()}"


class IngestState:
    """What the ingest agent holds across batches: config view, dedup store, counters."""

    def __init__(self, settings: Settings, worker_id: str) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.view = ConfigView(settings.kafka_bootstrap)
        self.dedup = DedupStore(settings.resolved_home / "workers" / worker_id / "dedup")
        self.ready = asyncio.Event()
        self.counts = {"admitted": 0, "refused": 0, "deduplicated": 0}
        # config records and replies go through a plain aiokafka producer (acks=all), made in
        # start() because aiokafka binds to the running loop
        self.producer: Any = None

    async def start(self) -> None:
        self.producer = make_producer(self.settings.kafka_bootstrap)
        await self.producer.start()
        await self.view.start()
        await self.view.sync()
        self.ready.set()

    async def decide(
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


def create_app(settings: Settings, worker_id: str | None = None) -> faust.App:
    worker_id = worker_id or settings.worker_id or default_worker_id()
    datadir = settings.resolved_home / "workers" / worker_id
    app = faust.App(
        INGEST_GROUP,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_disable_leader=True,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        # Failover in seconds, not a minute: the broker drops a dead worker after 10 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        broker_commit_interval=1.0,
        producer_acks=-1,
        producer_linger=0.002,
        stream_buffer_maxsize=INGEST_BATCH * 2,
        consumer_max_fetch_size=4 * 1024 * 1024,
    )
    state = IngestState(settings, worker_id)
    app.fibric_state = state  # type: ignore[attr-defined]
    events_topic = app.topic(EVENTS, key_serializer="raw", value_serializer="raw")
    commands_topic = app.topic(COMMANDS, key_serializer="raw", value_serializer="raw")

    @app.task
    async def start_config_view() -> None:
        await state.start()

    @app.agent(events_topic)
    async def ingest_events(stream: faust.StreamT) -> None:
        await state.ready.wait()
        async for batch in stream.take_events(INGEST_BATCH, within=INGEST_WITHIN_S):
            await _ingest_batch(app, state, batch)

    @app.agent(commands_topic)
    async def apply_commands(stream: faust.StreamT) -> None:
        """The control agent: the single writer of configuration, one command at a time."""
        await state.ready.wait()
        async for raw in stream:
            await _apply_command(app, state, raw)

    @app.timer(interval=HEARTBEAT_INTERVAL_S)
    async def heartbeat() -> None:
        assigned = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == EVENTS)
        beat = {
            "worker_id": worker_id,
            "pid": os.getpid(),
            "at": datetime.now(UTC).isoformat(),
            "partitions": assigned,
            "counts": state.counts,
        }
        await app.producer.send(
            HEARTBEATS, worker_id.encode(), orjson.dumps(beat), None, None, None
        )

    @app.on_after_configured.connect
    def _quiet(app: Any, **kwargs: Any) -> None:  # noqa: ARG001
        logging.getLogger("faust").setLevel(logging.WARNING)

    return app


async def _apply_command(app: faust.App, state: IngestState, raw: bytes) -> None:
    """1. catch up with the config log; 2. decide (pure); 3. write the records and wait for the
    broker; 4. apply them locally (the next command sees them at once); 5. reply. A crash before
    5 replays the command: its records carry the command id, so it is answered, not re-applied."""
    try:
        cmd = Command.model_validate_json(raw)
    except Exception:  # noqa: BLE001 - a malformed command has nobody to answer; log and skip
        log.error("dropping malformed command")
        return
    try:
        await state.view.sync()
        done = state.view.command_results.get(cmd.id)
        if done is not None:
            reply = Reply(id=cmd.id, reply_to=cmd.reply_to, ok=True, result=done[1], record_ids=done[0])
        else:
            decision = decide(state.view, cmd, datetime.now(UTC), new_id)
            records = decision.records
            for i, rec in enumerate(records):
                rec.command_id = cmd.id
                if i == 0:
                    rec.result = decision.reply.result
            if records:
                await publish(state.producer, records)
                for rec in records:
                    state.view.apply_record(rec)
            reply = decision.reply
    except Exception as exc:  # noqa: BLE001 - every command gets an answer, even a failure
        log.exception("command %s failed", cmd.id)
        reply = Reply(
            id=cmd.id, reply_to=cmd.reply_to, ok=False,
            error=ReplyError(status=500, code="internal_error", message=f"control agent error: {type(exc).__name__}"),
        )
    parts = state.producer.client.cluster.partitions_for_topic(REPLIES) or {0}
    await state.producer.send_and_wait(
        REPLIES, reply.model_dump_json().encode(), key=cmd.reply_to.encode(),
        partition=partition_for(cmd.reply_to, len(parts)),
    )


async def _ingest_batch(app: faust.App, state: IngestState, batch: Sequence[Any]) -> None:
    # 1. decide
    records = []
    for ev in batch:
        msg = ev.message
        records.append(
            (
                msg.value,
                Coordinates(msg.topic, msg.partition, msg.offset, int(msg.timestamp * 1000)),
            )
        )
    results = await state.decide(records)

    keys = [r.dedup_key for r in results if isinstance(r, Admitted) and r.dedup_key]
    already = state.dedup.seen(keys)
    fresh_keys: set[str] = set()
    sends = []
    for r in results:
        if isinstance(r, Refused):
            dl = r.dead_letter
            state.counts["refused"] += 1
            sends.append((DLQ, dl.tenant_id, dl.model_dump_json().encode()))
            continue
        if r.dedup_key:
            if r.dedup_key in already or r.dedup_key in fresh_keys:
                state.counts["deduplicated"] += 1
                continue
            fresh_keys.add(r.dedup_key)
        state.counts["admitted"] += 1
        rec = LedgerRecord(kind="event", row=r.event.model_dump(mode="json"))
        sends.append((LEDGER, r.event.tenant_id, orjson.dumps(rec.model_dump(mode="json"))))

    # 2. produce and wait for every acknowledgement
    futures = [
        await app.producer.send(topic, key.encode(), value, None, None, None)
        for topic, key, value in sends
    ]
    if futures:
        await asyncio.gather(*futures)
    # 3. remember idempotency keys only once their events are safely on the ledger topic
    state.dedup.remember(sorted(fresh_keys))
    # 4. returning lets take_events ack the batch; Faust commits the offsets
