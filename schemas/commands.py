"""Config commands and their replies: the request/reply contract between the api (or
``fibric admin``) and the control agent, the single writer of configuration.

Commands travel on ``fibric.commands.v1`` keyed by tenant (tenant creation uses one fixed key,
so slugs are checked by one writer); replies on ``fibric.replies.v1``, matched by ``id``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from schemas.errors import ErrorCode

CommandType = Literal[
    "tenant.create",
    "key.create",
    "key.revoke",
    "key.touch",
    "operator.create",
    "operator.update",
    "operator.pause",
    "operator.resume",
    "operator.record_run",
    "operator.rollback",
    "connector.install",
    "connector.set_status",
    "connector.uninstall",
    "connector.authorize",
    "connector.reauthorize",
    "connector.credentials",
    "connector.touch",
    "plan.approve",
    "plan.veto",
    "plan.expire",
    "action.undo",
    "webhook.create",
    "webhook.update",
    "webhook.rotate",
    "webhook.set_status",
    "webhook.delete",
    "guardrail.create",
    "guardrail.update",
    "guardrail.delete",
    "guardrail.rollback",
]

# All tenant.create commands share this partition key: one writer sees every slug.
TENANTS_KEY = "__tenants__"


class Command(BaseModel):
    id: str  # correlation id; also the reply's id
    reply_to: str  # requesting process instance
    type: CommandType
    tenant_id: str | None = None
    livemode: bool = False
    actor: str = "admin-cli"
    request_id: str | None = None
    args: dict[str, Any] = {}
    at: datetime


class ReplyError(BaseModel):
    status: int
    code: ErrorCode  # the enum itself end to end: the api raises it as is, never parses a string
    message: str
    details: dict[str, Any] = {}


class Reply(BaseModel):
    id: str
    reply_to: str
    ok: bool
    result: dict[str, Any] | None = None
    error: ReplyError | None = None
    # config records written for this command: the requester waits until its view has them
    record_ids: list[str] = []
