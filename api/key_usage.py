"""``last_used_at`` for API keys without a Kafka round trip per request.

When a key authenticates, :meth:`KeyUsage.note` decides from memory whether its recorded
``last_used_at`` is stale (older than :data:`LAST_USED_RESOLUTION_S`) and, if so, sends one
fire-and-forget ``key.touch`` command to the control agent in the background; the request never
waits for it. Each api process sends at most one touch per key per window, and the control agent
writes at most one record per key per window across all processes (it drops touches within the
window of the recorded value). A touch lost to a broker hiccup is resent on a later request.
This module must never log or send a secret: it only handles key ids.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from schemas.commands import Command
from schemas.config import LAST_USED_RESOLUTION_S, ApiKey
from schemas.ids import new_id
from streams.topics import COMMANDS

if TYPE_CHECKING:
    from api.state import ApiState

log = logging.getLogger(__name__)


class KeyUsage:
    def __init__(self) -> None:
        # key id -> monotonic time this process last sent a touch for it
        self._sent: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def note(self, state: ApiState, key: ApiKey) -> None:
        """Called on every authenticated request: two comparisons unless a touch is due."""
        now = time.time()
        last = key.last_used_at
        if last is not None and now - last.timestamp() < LAST_USED_RESOLUTION_S:
            return
        mono = time.monotonic()
        sent = self._sent.get(key.id)
        if sent is not None and mono - sent < LAST_USED_RESOLUTION_S:
            return
        self._sent[key.id] = mono
        task = asyncio.create_task(self._touch(state, key, datetime.fromtimestamp(now, UTC)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _touch(self, state: ApiState, key: ApiKey, used_at: datetime) -> None:
        cmd = Command(
            id=new_id("cmd"),
            reply_to=state.commands.instance,  # the reply arrives and is ignored
            type="key.touch",
            tenant_id=key.tenant_id,
            livemode=key.livemode,
            actor=key.id,
            args={"key_id": key.id, "used_at": used_at.isoformat()},
            at=used_at,
        )
        try:
            delivery = await state.producer.send(
                COMMANDS, cmd.model_dump_json().encode(), key=key.tenant_id.encode()
            )
            await delivery
        except Exception:  # noqa: BLE001 - usage metadata must never fail a request
            log.warning("could not record the use of key %s; a later request retries", key.id)
            self._sent.pop(key.id, None)


def key_usage(state: ApiState) -> KeyUsage:
    usage = state.extra.get("key_usage")
    if usage is None:
        usage = state.extra["key_usage"] = KeyUsage()
    return usage
