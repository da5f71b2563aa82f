"""Sending a config command from a request and turning its reply into a response or an error.
After a successful command the handler waits until this process's config view holds the
written records, so the client reads its own write on the next request."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request

from api.auth import AuthContext
from api.errors import service_unavailable
from api.state import ApiState
from schemas.commands import CommandType
from schemas.errors import FibricError
from streams.commands import CommandTimeout

log = logging.getLogger(__name__)


async def run_command(
    state: ApiState,
    request: Request[Any, Any, Any],
    auth: AuthContext,
    type_: CommandType,
    args: dict[str, Any],
) -> dict[str, Any]:
    return await command_as(
        state,
        type_,
        tenant_id=auth.tenant.id,
        livemode=auth.key.livemode,
        actor=auth.key.id,
        request_id=request.scope["state"]["request_id"],
        args=args,
    )


async def command_as(
    state: ApiState,
    type_: CommandType,
    *,
    tenant_id: str,
    livemode: bool,
    actor: str,
    request_id: str,
    args: dict[str, Any],
) -> dict[str, Any]:
    """A command on behalf of a tenant without an API key in hand: the OAuth callback (the
    state names the tenant) and the connector health probe (decisions §43)."""
    try:
        reply = await state.commands.call(
            type_,
            tenant_id=tenant_id,
            livemode=livemode,
            actor=actor,
            request_id=request_id,
            args=args,
        )
    except CommandTimeout:
        raise service_unavailable(
            "The control plane did not answer in time; retry with the same Idempotency-Key."
        ) from None
    if not reply.ok:
        assert reply.error is not None
        err = reply.error
        param = err.details.pop("param", None)
        raise FibricError(
            err.code, err.message, status=err.status, param=param, details=err.details
        )
    try:
        await state.view.wait_for_records(reply.record_ids)
    except TimeoutError:
        # The command is applied (the reply says so); failing now would make the client retry
        # a write that happened. Only read-your-writes is late, so answer and say so in the log.
        log.warning("config view did not show %s in time", reply.record_ids)
    return reply.result or {}
