"""Request/reply to the control agent over Kafka: send a :class:`Command`, await its
:class:`Reply`. Used by the api and by ``fibric admin``; works the same against any broker."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import UnknownError
from pydantic import ValidationError

from schemas.commands import TENANTS_KEY, Command, CommandType, Reply
from schemas.ids import new_id
from streams.kafka import partition_for, stop_consuming
from streams.topics import COMMANDS, REPLIES

log = logging.getLogger(__name__)

# A config change is one small record through one agent; seconds mean a worker is down.
COMMAND_TIMEOUT_S = 15.0
# Sends of a command that met a broker race (see call()): a couple of quick retries.
SEND_ATTEMPTS = 3
SEND_RETRY_S = 0.2


class CommandTimeout(Exception):
    pass


def instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{new_id('i')[-6:]}"


class CommandClient:
    def __init__(self, bootstrap: str, producer: AIOKafkaProducer) -> None:
        self._bootstrap = bootstrap
        self._producer = producer
        self.instance = instance_id()
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20
        )
        await consumer.start()
        parts = consumer.partitions_for_topic(REPLIES) or {0}
        tp = TopicPartition(REPLIES, partition_for(self.instance, len(parts)))
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        await consumer.position(tp)  # materialise the position before any command is sent
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="command-replies")

    async def stop(self) -> None:
        await stop_consuming(self._task, self._consumer)

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=200)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep listening through broker hiccups
                log.exception("reply fetch failed; retrying")
                await asyncio.sleep(0.5)
                continue
            for messages in batch.values():
                for msg in messages:
                    try:
                        reply = Reply.model_validate_json(msg.value)
                    except ValidationError:
                        continue
                    fut = self._pending.get(reply.id)
                    if fut is not None and not fut.done() and reply.reply_to == self.instance:
                        fut.set_result(reply)

    async def call(
        self,
        type_: CommandType,
        *,
        tenant_id: str | None = None,
        livemode: bool = False,
        actor: str = "admin-cli",
        request_id: str | None = None,
        args: dict[str, Any] | None = None,
        timeout: float = COMMAND_TIMEOUT_S,
    ) -> Reply:
        cmd = Command(
            id=new_id("cmd"),
            reply_to=self.instance,
            type=type_,
            tenant_id=tenant_id,
            livemode=livemode,
            actor=actor,
            request_id=request_id,
            args=args or {},
            at=datetime.now(UTC),
        )
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[cmd.id] = fut
        try:
            key = (tenant_id or TENANTS_KEY) if type_ != "tenant.create" else TENANTS_KEY
            for attempt in range(SEND_ATTEMPTS):
                try:
                    await self._producer.send_and_wait(
                        COMMANDS, cmd.model_dump_json().encode(), key=key.encode()
                    )
                    break
                except UnknownError:
                    # Tansu 0.6 races two producers' first write to an empty partition and
                    # answers the loser with an unknown error (seen after a broker restart).
                    # Resending is safe: the command id makes the control agent answer a
                    # repeat with the first result instead of applying it twice.
                    if attempt == SEND_ATTEMPTS - 1:
                        raise
                    await asyncio.sleep(SEND_RETRY_S)
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise CommandTimeout(f"no control agent answered within {timeout:.0f}s") from None
        finally:
            self._pending.pop(cmd.id, None)
