"""``/v1/events``: ingest one envelope, list and retrieve events (seed 000, spec §3.2)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
from litestar import Controller, Request, Response, get, post

from api.auth import api_state, auth_of
from api.body import read_body, validate
from api.pagination import decode_cursor, list_body, parse_limit
from api.query import event_filters
from api.respond import documented, respond
from schemas import tracing
from schemas.envelope import Event, EventIn
from schemas.errors import ErrorCode, FibricError
from schemas.ids import sequential_id
from schemas.limits import LimitProblem, check_payload
from schemas.objects import EventObject, ListOf
from streams.topics import EVENTS, entity_key

EVENT_ID_RE = re.compile(r"^ev_[0-9A-Z]{26}$")


def limit_error(problems: list[LimitProblem]) -> FibricError:
    """The HTTP form of the refusal ``admit`` would write for the same payload on Kafka."""
    first = problems[0]
    if first.reason == "payload_too_large":
        return FibricError(ErrorCode.REQUEST_TOO_LARGE, f"{first.message}.", param="payload")
    return FibricError(
        ErrorCode.INVALID_PARAMETER,
        f"{first.loc}: {first.message}.",
        param=first.loc,
        details={"errors": [{"param": p.loc, "message": p.message} for p in problems]},
    )


def _json(data: Any, status: int = 200) -> Response[bytes]:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def publish_span(request: Request[Any, Any, Any]) -> Any:
    """The span of one POST /v1/events (schemas/tracing.py), under the client's traceparent."""
    return tracing.start(
        "POST /v1/events",
        request.headers.get("traceparent"),
        kind="server",
        attributes={
            "http.request.method": "POST",
            "http.route": "/v1/events",
            "fibric.request_id": request.scope["state"]["request_id"],
        },
    )


class EventsController(Controller):
    path = "/events"
    tags = ["events"]

    @post(
        "/",
        opt={"scope": "events:write", "route_class": "events_write"},
        operation_id="createEvent",
        status_code=201,
        **documented(409, 503, body=EventIn),
    )
    async def create_event(
        self, request: Request[Any, Any, Any], data: EventIn | None = None
    ) -> Response[EventObject]:
        """Ingest one event envelope. Tenancy is stamped from the API key; the event is durable
        on the events topic when this returns, and immediately readable by this client."""
        state = api_state(request)
        auth = auth_of(request)
        body = await read_body(request)
        headers = request.headers
        # the event's trace starts here (or continues the client's traceparent header)
        span = publish_span(request) if tracing.ENABLED else None

        def prepare() -> tuple[int, bytes, Event]:
            # one validation of the body; the event is the one model built from it
            data = validate(EventIn, body)
            tenant = auth.tenant
            if data.tenant_id is not None and data.tenant_id != tenant.id:
                raise FibricError(
                    ErrorCode.TENANT_MISMATCH,
                    "tenant_id in the body does not match the API key's tenant.",
                    param="tenant_id",
                )
            if data.reseller_id is not None and data.reseller_id != tenant.reseller_id:
                raise FibricError(
                    ErrorCode.TENANT_MISMATCH,
                    "reseller_id in the body does not match the API key's tenant.",
                    param="reseller_id",
                )
            # the worker's limits, checked here so a 201 is never an event it will dead-letter
            problems = check_payload(data.payload, body)
            if problems:
                raise limit_error(problems)
            now = datetime.now(UTC)
            ms = int(now.timestamp() * 1000)
            event = Event(
                id=sequential_id("ev", ms),
                tenant_id=tenant.id,
                reseller_id=tenant.reseller_id,
                livemode=auth.key.livemode,
                workspace_id=data.workspace_id,
                source=data.source,
                event_type=data.event_type,
                correlation_id=data.correlation_id or sequential_id("co", ms),
                payload=data.payload,
                entity_key=data.entity_key,
                idempotency_key=headers.get("idempotency-key"),
                request_id=request.scope["state"]["request_id"],
                created_at=now,
            )
            doc = event.object_json()
            doc["plan_ids"] = []
            return 201, orjson.dumps(doc), event

        async def deliver(event: Event) -> None:
            # the 201 means durable on the events topic: wait for the broker's acknowledgement
            await state.producer.send_and_wait(
                EVENTS,
                orjson.dumps(event.envelope_json()),
                key=entity_key(event.tenant_id, event.entity_key or event.id),
                headers=tracing.headers_of(span) if span is not None else None,
            )
            state.pending.add(auth.scope, event)

        async def replay(recorded: bytes) -> None:
            # the recorded attempt (a 503 may still have reached the broker): deliver the same
            # event again, the worker's ingest dedup keeps one
            await deliver(Event.model_validate_json(recorded))

        if span is None:
            return await state.idempotency.run_recorded(
                request, auth.scope, body, prepare, deliver, replay
            )
        try:
            response = await state.idempotency.run_recorded(
                request, auth.scope, body, prepare, deliver, replay
            )
            span.set_attribute("http.response.status_code", response.status_code)
            return response
        except BaseException as exc:
            tracing.fail(span, type(exc).__name__)
            raise
        finally:
            span.end()

    @get(
        "/",
        opt={"scope": "events:read", "route_class": "events_read"},
        operation_id="listEvents",
        **documented(),
    )
    async def list_events(self, request: Request[Any, Any, Any]) -> Response[ListOf[EventObject]]:
        """List events newest first. Filters (AND): ``event_type`` (exact or glob, ``*`` = one
        dot segment, ``**`` = several), ``source``, ``correlation_id``, ``workspace_id``,
        ``entity_key``, ``since``/``until`` (RFC 3339, half-open range)."""
        state = api_state(request)
        auth = auth_of(request)
        limit = parse_limit(request.query_params.get("limit"))
        filters, raw = event_filters(request.query_params)
        after = decode_cursor(request.query_params.get("cursor"), raw)
        page = await state.store.list_events(auth.scope, filters, limit, after)
        pending = state.pending.matching(auth.scope, filters, after)
        if pending:
            merged = {e.id: e for e in page.items}
            for e in pending:
                merged.setdefault(e.id, e)
            items = sorted(merged.values(), key=lambda e: (e.created_at, e.id), reverse=True)
            has_more = page.has_more or len(items) > limit
            items = items[:limit]
        else:
            items, has_more = page.items, page.has_more
        last = (items[-1].created_at, items[-1].id) if items else None
        plan_ids = await state.store.plan_ids_for_events(auth.scope, [e.id for e in items])
        data = [{**e.model_dump(mode="json"), "plan_ids": plan_ids.get(e.id, [])} for e in items]
        return respond(ListOf[EventObject], list_body(data, has_more, last, raw))

    @get(
        "/{event_id:str}",
        opt={"scope": "events:read", "route_class": "events_read"},
        operation_id="retrieveEvent",
        **documented(404),
    )
    async def retrieve_event(
        self, request: Request[Any, Any, Any], event_id: str
    ) -> Response[EventObject]:
        """Retrieve one event. Ids of another tenant or mode read as 404."""
        state = api_state(request)
        auth = auth_of(request)
        if not EVENT_ID_RE.match(event_id):
            raise FibricError(ErrorCode.NOT_FOUND, f"No event {event_id[:60]!r}.")
        event = state.pending.get(auth.scope, event_id) or await state.store.get_event(
            auth.scope, event_id
        )
        if event is None:
            raise FibricError(ErrorCode.NOT_FOUND, f"No event {event_id!r}.")
        plan_ids = await state.store.plan_ids_for_events(auth.scope, [event.id])
        data = {**event.model_dump(mode="json"), "plan_ids": plan_ids.get(event.id, [])}
        return respond(EventObject, data)
