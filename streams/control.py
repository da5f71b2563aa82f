"""The control agent's body: the single writer of configuration, one command at a time.

1. catch up with the config log; 2. decide (pure :func:`agents.control.decide`); 3. commit the
records and outputs through a :class:`streams.checkpoint.Checkpoint` (produce, acknowledge,
apply to this worker's view so the next command sees them); 4. reply. A crash before 4 replays
the command: its records carry the command id, so it is answered, not re-applied (commands with
no records are idempotent by construction).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from agents.guardrail_control import decide  # agents.control.decide + webhook.*, guardrail.*
from schemas.commands import Command, Reply, ReplyError
from schemas.errors import ErrorCode
from schemas.ids import new_id
from schemas.operator import Operator
from streams.guard import TRANSIENT
from streams.kafka import partition_for
from streams.topics import COMMANDS, REPLIES
from streams.worker_state import WorkerState

log = logging.getLogger(__name__)


def parse_command(raw: bytes | None) -> Command:
    """Raises ValidationError for a malformed command (the guard dead-letters it)."""
    return Command.model_validate_json(raw or b"")


async def apply_command(state: WorkerState, raw: bytes | None) -> None:
    cmd = parse_command(raw)
    try:
        await state.view.sync()
        done = state.view.command_results.get(cmd.id)
        if done is not None:
            reply = Reply(
                id=cmd.id, reply_to=cmd.reply_to, ok=True, result=done[1], record_ids=done[0]
            )
        else:
            decision = decide(state.view, cmd, datetime.now(UTC), new_id)
            out = state.checkpoint()
            for kind, obj in decision.outputs:
                out.ledger(kind, obj)
            for a in decision.dispatch:
                out.action(a)
            for i, rec in enumerate(decision.records):
                rec.command_id = cmd.id
                if i == 0:
                    rec.result = decision.reply.result
            out.config = decision.records
            await out.commit()
            reply = decision.reply
    except TRANSIENT:
        raise  # the broker is unavailable: the guard retries the command
    except Exception as exc:  # noqa: BLE001 - every command gets an answer, even a failure
        log.exception("command %s failed", cmd.id)
        reply = Reply(
            id=cmd.id,
            reply_to=cmd.reply_to,
            ok=False,
            error=ReplyError(
                status=500,
                code=ErrorCode.INTERNAL_ERROR,
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


async def send_command(
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
