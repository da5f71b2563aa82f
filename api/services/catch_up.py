"""Resume with ``catch_up`` (decisions §15): count the events a paused operator missed, resume it
through the control agent, then offer those events to it alone, oldest first. They keep their ids
and times (the ledger stores each once) and go through the executor like any plan."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from api.services.context import Caller
from ledger.store import Scope
from schemas.envelope import Event
from schemas.operator import Operator
from streams.topics import EVENTS, entity_key

# A resume replays at most this many missed events (oldest first); the rest stay in the log.
MAX_CATCH_UP = 10_000


class CatchUpStore(Protocol):
    async def count_events_matching(
        self, scope: Scope, patterns: list[str], since: datetime, until: datetime
    ) -> int: ...

    async def events_matching(
        self, scope: Scope, patterns: list[str], since: datetime, until: datetime, limit: int
    ) -> list[Event]: ...


async def replay_catch_up(
    store: CatchUpStore, producer: Any, scope: Scope, op: Operator, window: dict[str, Any]
) -> int:
    """Publish the events of ``window`` (``{"from", "to"}``, RFC 3339) that match ``op``'s
    triggers to the events topic addressed to ``op``; every send is acknowledged before this
    returns. The number of events replayed."""
    since = datetime.fromisoformat(window["from"].replace("Z", "+00:00"))
    until = datetime.fromisoformat(window["to"].replace("Z", "+00:00"))
    events = await store.events_matching(scope, op.triggers, since, until, MAX_CATCH_UP)
    futures = []
    for ev in events:
        key = entity_key(ev.tenant_id, ev.entity_key or ev.id)
        futures.append(
            await producer.send(EVENTS, orjson.dumps(ev.replay_envelope_json(op.id)), key=key)
        )
    for fut in futures:
        await fut
    return len(events)


async def resume(caller: Caller, op: Operator, catch_up: bool) -> dict[str, Any]:
    """Resume ``op``; with ``catch_up`` (and a paused operator) replay what it missed. The
    ``operator_resumed`` reply, ``catch_up_events`` the number replayed."""
    state = caller.state
    count = 0
    if catch_up and op.status == "paused" and op.paused_at is not None:
        count = await state.store.count_events_matching(
            caller.scope, op.triggers, op.paused_at, datetime.now(UTC)
        )
    args = {"operator_id": op.id, "catch_up": catch_up, "catch_up_events": count}
    result = await caller.command("operator.resume", args)
    if count and result.get("catch_up_window"):
        replayed = await replay_catch_up(
            state.store, state.producer, caller.scope, op, result["catch_up_window"]
        )
        result["catch_up_events"] = replayed
    if result.get("catch_up_window") is None:
        result.pop("catch_up_window", None)
    return result
