"""Who a service works for: the tenant scope and key of the request, and its request id (for
commands and receipts), without the request itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from api.auth import AuthContext
from api.commands import command_as
from api.state import ApiState
from ledger.store import Scope
from schemas.commands import CommandType


@dataclass(frozen=True, slots=True)
class Caller:
    state: ApiState
    auth: AuthContext
    request_id: str

    @property
    def scope(self) -> Scope:
        return self.auth.scope

    @property
    def tenant_id(self) -> str:
        return self.auth.tenant.id

    @property
    def livemode(self) -> bool:
        return self.auth.key.livemode

    async def command(self, type_: CommandType, args: dict[str, Any]) -> dict[str, Any]:
        """A config command as this caller (the control agent's reply, or its ErrorCode raised
        as a FibricError; api/commands.py), read-your-writes included."""
        return await command_as(
            self.state,
            type_,
            tenant_id=self.auth.tenant.id,
            livemode=self.auth.key.livemode,
            actor=self.auth.key.id,
            request_id=self.request_id,
            args=args,
        )
