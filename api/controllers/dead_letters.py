"""``/v1/dead_letters``: the refusal records of envelopes published to Kafka that could not be
processed (invalid JSON, failed validation, payload too large). Scoped to the tenant the
envelope named; envelopes naming no known tenant are visible only to operators (DLQ topic, SQL)."""

from __future__ import annotations

import re
from typing import Any

from litestar import Controller, Request, Response, get

from api.auth import api_state, auth_of
from api.pagination import decode_cursor, list_body, parse_limit
from api.respond import documented, respond
from schemas.envelope import DeadLetter
from schemas.errors import ErrorCode, FibricError
from schemas.objects import ListOf

DL_ID_RE = re.compile(r"^dl_[0-9A-Z]{26}$")
REASONS = ("invalid_json", "invalid_envelope", "unknown_tenant", "payload_too_large")


class DeadLettersController(Controller):
    path = "/dead_letters"
    tags = ["events"]

    @get(
        "/",
        opt={"scope": "events:read", "route_class": "events_read"},
        operation_id="listDeadLetters",
        **documented(),
    )
    async def list_dead_letters(
        self, request: Request[Any, Any, Any]
    ) -> Response[ListOf[DeadLetter]]:
        """List refusal records newest first; filter ``reason``."""
        state = api_state(request)
        auth = auth_of(request)
        limit = parse_limit(request.query_params.get("limit"))
        reason = request.query_params.get("reason")
        if reason is not None and reason not in REASONS:
            raise FibricError(
                ErrorCode.INVALID_PARAMETER,
                f"reason must be one of {', '.join(REASONS)}.",
                param="reason",
            )
        raw = {"reason": reason}
        after = decode_cursor(request.query_params.get("cursor"), raw)
        page = await state.store.list_dead_letters(auth.scope, reason, limit, after)
        body = list_body(
            [d.model_dump(mode="json") for d in page.items], page.has_more, page.last_key, raw
        )
        return respond(ListOf[DeadLetter], body)

    @get(
        "/{dead_letter_id:str}",
        opt={"scope": "events:read", "route_class": "events_read"},
        operation_id="retrieveDeadLetter",
        **documented(404),
    )
    async def retrieve_dead_letter(
        self, request: Request[Any, Any, Any], dead_letter_id: str
    ) -> Response[DeadLetter]:
        """Retrieve one refusal record."""
        state = api_state(request)
        auth = auth_of(request)
        found = None
        if DL_ID_RE.match(dead_letter_id):
            found = await state.store.get_dead_letter(auth.scope, dead_letter_id)
        if found is None:
            raise FibricError(ErrorCode.NOT_FOUND, f"No dead letter {dead_letter_id[:60]!r}.")
        return respond(DeadLetter, found.model_dump(mode="json"))
