"""Live streams (issue 11 part 3, spec §3.3, decisions §33):

* ``GET /v1/events/stream`` — Server-Sent Events, one ``id: <ev_id>`` / ``event: envelope`` /
  ``data: <event + cursor>`` frame per matching event, ``: keep-alive`` comments, the
  ``GET /v1/events`` filters, resume by ``Last-Event-ID`` or ``cursor`` (backfill from the
  ledger, then live, each event once);
* ``GET /v1/events/ws`` — the same frames over a WebSocket (JSON text messages);
* ``GET /v1/receipts/stream`` — the loop's activity: plans, actions and receipts as the public
  objects of ``api/controllers/loop.py``;
* ``GET /v1/plans/{id}/stream`` — one plan, for an approver's screen; ends once it is disposed.

Frames come from the hub (api/hub.py), which the ledger sink feeds with what it has just stored:
a stream shows what ``GET`` can read, never something the ledger might still refuse. A stream
never slows the sink or the loop: a client that does not keep up is dropped (SSE: a last
``event: error`` frame; WebSocket: close 1013) and a client whose socket stops taking bytes is
cut off after ``stream_send_timeout_s``. API keys are never logged here.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from litestar import Controller, Request, WebSocket, get, websocket
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import Stream
from litestar.response.streaming import ASGIStreamingResponse

from api.auth import AuthContext, api_state, auth_of, require_scope
from api.hub import SLOW_CONSUMER, Item, StreamHub, Subscription
from api.objects import TERMINAL, Publisher, action_public, plan_public, receipt_public
from api.pagination import decode_cursor, fingerprint
from api.query import event_filters
from api.respond import FibricOperation, errors
from api.services.plans import find_plan
from api.state import ApiState
from ledger.store import EVENT_COLUMNS, EventFilters, Scope
from schemas.envelope import Event
from schemas.errors import ErrorCode, FibricError, error_envelope
from schemas.ids import new_id
from schemas.streams import (
    ENVELOPE,
    ERROR,
    StreamedEvent,
    StreamedPlan,
    StreamedReceipt,
)

log = logging.getLogger(__name__)

SSE_MEDIA_TYPE = "text/event-stream"
KEEP_ALIVE = b": keep-alive\n\n"
# Stored events read per replay query: large enough that a backfill of thousands is a few
# queries, small enough that one query never holds chDB (one query at a time) for long.
REPLAY_CHUNK = 1_000
BACKFILL_TOO_LARGE = "backfill_too_large"
# The cursor binding of the loop stream's frames (their cursors resume only that stream).
LOOP_BIND = "loop-stream"
LOOP_TYPES = {"plan": "plans", "action": "actions", "receipt": "receipts"}
# WebSocket close codes (RFC 6455): 1013 "try again later" for a dropped slow consumer, 1008
# "policy violation" for a refused request, 1001 "going away" at shutdown, 1011 on a fault.
WS_SLOW = 1013
WS_POLICY = 1008
WS_GOING_AWAY = 1001
WS_INTERNAL = 1011


# ---- cursors ----------------------------------------------------------------------------------
# A frame's cursor is the cursor GET /v1/events pages with (``t``, ``i``, ``f``: the event's
# list position and the filters it is bound to, api/pagination.py, which ignores other keys),
# plus the stream position: ``h`` the hub's epoch, ``p`` a hub sequence number, ``r`` 1 while
# the frame came from the replay of stored events, ``x`` the sequence up to which the start
# already had every event (see EventStart).
def frame_cursor(
    key: tuple[datetime, str], filters: dict[str, Any], bind: str, pos: dict[str, Any]
) -> str:
    ts, id_ = key
    doc = {"t": int(ts.timestamp() * 1_000_000), "i": id_, "f": fingerprint(filters, bind), **pos}
    return "cur_" + base64.urlsafe_b64encode(orjson.dumps(doc)).decode().rstrip("=")


def cursor_position(cursor: str) -> dict[str, Any]:
    """The stream-position fields of a cursor already validated by ``decode_cursor``."""
    body = cursor[4:]
    doc = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    out: dict[str, Any] = {}
    if isinstance(doc.get("h"), str) and isinstance(doc.get("p"), int):
        out = {"h": doc["h"], "p": doc["p"], "r": int(doc.get("r") == 1)}
        out["x"] = doc["x"] if isinstance(doc.get("x"), int) else 0
    return out


def _key(ev: Event) -> tuple[datetime, str]:
    return (ev.created_at, ev.id)


def _event_from_row(row: tuple) -> Event:
    d = dict(zip(EVENT_COLUMNS, row, strict=True))
    ts = d["created_at"]
    d["created_at"] = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    d["payload"] = orjson.loads(d["payload"])
    return Event.model_validate(d)


async def stored_events_after(
    state: ApiState, scope: Scope, filters: EventFilters, after: tuple[datetime, str], n: int
) -> list[Event]:
    """Stored events of ``scope`` matching ``filters`` after ``after`` in list order, oldest
    first (the replay of a stream that starts from a cursor)."""
    params: dict[str, Any] = {
        "t": scope.tenant_id,
        "m": scope.livemode,
        "at": after[0],
        "ai": after[1],
        "n": n,
    }
    clauses = [
        "tenant_id = {t:String}",
        "livemode = {m:Bool}",
        "(created_at, id) > ({at:DateTime64(6, 'UTC')}, {ai:String})",
        *filters.where(params),
    ]
    rows = await state.store.query(
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE {' AND '.join(clauses)} "
        "ORDER BY created_at, id LIMIT 1 BY id LIMIT {n:UInt32}",
        params,
        {"max_threads": 1},
    )
    return [_event_from_row(r) for r in rows]


def hub_of(state: ApiState) -> StreamHub:
    hub = state.extra.get("hub")
    if hub is None:
        raise FibricError(ErrorCode.SERVICE_UNAVAILABLE, "Live streams are not available.")
    return hub


# ---- the event stream's start and frames -------------------------------------------------------
@dataclass
class EventStart:
    """Where a stream starts, resolved from ``cursor`` / ``Last-Event-ID`` / ``since``.

    * ``key`` — replay the stored events after this list position first (None: live only);
    * ``exact`` — the start names a position of this process's hub that is still in its ring
      (``p``): what came after it is taken from memory, exactly;
    * ``replaying`` — with ``exact``: the position was inside a replay, which continues from
      ``key`` (rows after ``p`` come from the ring, not from the replay);
    * ``upto`` — rows at hub positions up to this one are never replayed (the client had them:
      they were readable before the event it named).
    """

    key: tuple[datetime, str] | None = None
    exact: bool = False
    replaying: bool = False
    p: int = 0
    upto: int = 0
    skip_late_overlay: bool = False


async def resolve_start(
    state: ApiState,
    auth: AuthContext,
    filters: EventFilters,
    raw: dict[str, Any],
    cursor: str | None,
    last_event_id: str | None,
) -> EventStart:
    hub = hub_of(state)
    # an EventSource reconnect sends Last-Event-ID and repeats the URL's original cursor: the
    # header is the newer position
    value, param = (last_event_id, "Last-Event-ID") if last_event_id else (cursor, "cursor")
    if not value:
        if filters.since is not None:
            return EventStart(key=(filters.since, ""))
        return EventStart()
    value = value.strip()
    if value.startswith("ev_") and len(value) <= 64:
        seq = hub.event_seq(auth.scope, value)
        ev = hub.event(auth.scope, value) if seq is not None else None
        if ev is None:
            ev = state.pending.get(auth.scope, value) or await state.store.get_event(
                auth.scope, value
            )
        if ev is None:
            raise FibricError(
                ErrorCode.INVALID_CURSOR,
                f"{param} names no event of this tenant; restart without it.",
                param=param,
            )
        return EventStart(key=_key(ev), upto=seq or 0, skip_late_overlay=True)
    try:
        key = decode_cursor(value, raw)
    except FibricError as exc:
        exc.param = param
        raise
    assert key is not None
    pos = cursor_position(value)
    if pos and pos["h"] == hub.epoch and hub.covers(pos["p"]):
        return EventStart(
            key=key, exact=True, replaying=bool(pos["r"]), p=pos["p"], upto=pos["x"]
        )
    # a list cursor, or a frame cursor of another process / too old for the ring: by key
    return EventStart(key=key, skip_late_overlay=True)


@dataclass
class EventSession:
    """One open event stream: subscribed at open (so nothing stored from then on is missed),
    then ``frames()`` replays, drains the ring's tail and goes live."""

    state: ApiState
    scope: Scope
    filters: EventFilters
    raw: dict[str, Any]
    start: EventStart
    sub: Subscription
    tail: list[Item]
    overlay_seen: set[str] = field(default_factory=set)
    request_id: str = ""

    @classmethod
    async def open(
        cls,
        state: ApiState,
        auth: AuthContext,
        query: Any,
        last_event_id: str | None,
        request_id: str,
    ) -> EventSession:
        filters, raw = event_filters(query.query_params)
        start = await resolve_start(
            state, auth, filters, raw, query.query_params.get("cursor"), last_event_id
        )
        hub = hub_of(state)
        # Steps 1–3 run without an await between them, so no row can fall between them:
        # 1. subscribe: every row published from now on reaches the queue;
        sub = hub.subscribe(auth.scope, ("events",), lambda item: filters.matches(item.obj))
        # 2. the rows between the start's position and now, from the ring (exact starts);
        tail = hub.tail(start.p, sub) if start.exact else []
        # 3. the client's own writes this process shows in GET lists but has not stored yet:
        #    a key start that listed them must not get them again when they are stored.
        seen: set[str] = set()
        if start.key is not None and start.skip_late_overlay:
            seen = {
                e.id
                for e in state.pending.matching(auth.scope, filters, None)
                if _key(e) <= start.key
            }
        return cls(state, auth.scope, filters, raw, start, sub, tail, seen, request_id)

    def _frame(self, ev: Event, pos: dict[str, Any]) -> tuple[str, bytes]:
        data = ev.model_dump(mode="json")
        data["cursor"] = frame_cursor(_key(ev), self.raw, "", pos)
        return ev.id, orjson.dumps(data)

    def _live_frame(self, item: Item) -> tuple[str, bytes]:
        # a live frame depends only on the row and the filters: shared by every stream with
        # the same filters (1,000 streams of one tenant serialise a row once)
        key = ("event", fingerprint(self.raw))
        frame = item.frames.get(key)
        if frame is None:
            frame = item.frames[key] = self._frame(
                item.obj, {"h": self.sub.hub.epoch, "p": item.seq, "r": 0}
            )
        return frame

    async def frames(self, keepalive_s: float) -> AsyncGenerator[tuple[str, bytes] | None, None]:
        """``(event id, data as JSON)`` per frame, ``None`` when a keep-alive is due; returns
        when the subscription ended (``self.sub.ended`` says why)."""
        hub, start, sub = self.sub.hub, self.start, self.sub
        replayed: set[str] = set()
        try:
            # 4. replay the stored events after the start's key, oldest first. A row the hub
            #    published after the subscription (or, for an exact start, after ``p``) comes
            #    from the tail or the queue instead, and one at or before ``upto`` the client
            #    already had — so a row stored while we read is sent once, from one place.
            if start.key is not None and (start.replaying or not start.exact):
                limit = self.state.settings.stream_backfill_max
                after = start.key
                top = start.p if start.exact else sub.start_seq
                while limit > 0:
                    n = min(REPLAY_CHUNK, limit)
                    chunk = await stored_events_after(
                        self.state, self.scope, self.filters, after, n
                    )
                    for ev in chunk:
                        seq = hub.event_seq(self.scope, ev.id)
                        if seq is not None and (seq > top or seq <= start.upto):
                            continue
                        replayed.add(ev.id)
                        yield self._frame(ev, {"h": hub.epoch, "p": top, "r": 1, "x": start.upto})
                    if len(chunk) < n or sub.ended is not None:
                        break
                    limit -= len(chunk)
                    after = _key(chunk[-1])
                    if limit <= 0:
                        # more stored events than one start replays: never go live with a gap
                        sub.end(BACKFILL_TOO_LARGE)
                        return
            # 5. what the ring held between the start's position and the subscription;
            for held in self.tail:
                if held.id not in replayed:
                    yield self._live_frame(held)
            # 6. live, until the client leaves or is dropped.
            async for item in live(sub, keepalive_s):
                if item is None:
                    yield None
                    continue
                if item.id in replayed:
                    replayed.discard(item.id)
                    continue
                if (
                    item.id in self.overlay_seen
                    and start.key is not None
                    and _key(item.obj) <= start.key
                ):
                    self.overlay_seen.discard(item.id)
                    continue
                yield self._live_frame(item)
        finally:
            sub.close()


def ended_error(reason: str | None, request_id: str) -> dict[str, Any] | None:
    """The error envelope a stream's last frame carries, or None for an ordinary end."""
    if reason == SLOW_CONSUMER:
        return error_envelope(
            429,
            ErrorCode.SLOW_CONSUMER,
            "This stream fell too far behind and was closed; reconnect with the cursor of the "
            "last frame you processed.",
            request_id,
        )
    if reason == "shutdown":
        return error_envelope(
            503,
            ErrorCode.SERVICE_UNAVAILABLE,
            "The server is shutting down; reconnect with the cursor of the last frame.",
            request_id,
        )
    if reason == BACKFILL_TOO_LARGE:
        return error_envelope(
            400,
            ErrorCode.INVALID_CURSOR,
            "More events follow this cursor than a stream replays "
            "(FIBRIC_STREAM_BACKFILL_MAX); page GET /v1/events and start from a newer cursor, or "
            "reconnect with the cursor of the last frame to continue.",
            request_id,
            param="cursor",
        )
    if reason == "error":
        return error_envelope(
            500,
            ErrorCode.INTERNAL_ERROR,
            "The stream failed on the server; reconnect with the cursor of the last frame.",
            request_id,
        )
    return None


# ---- SSE wire format ---------------------------------------------------------------------------
def sse(event: str, data: Any, id_: str | None = None) -> bytes:
    """One SSE frame; ``data`` is an object or its JSON already serialised."""
    head = f"id: {id_}\n" if id_ is not None else ""
    body = data if isinstance(data, bytes) else orjson.dumps(data)
    return f"{head}event: {event}\n".encode() + b"data: " + body + b"\n\n"


class _Frames:
    """The byte chunks of one SSE response, with what the response needs to police the socket:
    a chunk the client's socket does not take within ``send_timeout`` ends the stream."""

    def __init__(self, chunks: AsyncIterator[bytes], sub: Subscription, send_timeout: float):
        self._chunks = chunks
        self.sub = sub
        self.send_timeout = send_timeout

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks


class _PolicedStreamingResponse(ASGIStreamingResponse):
    __slots__ = ()

    async def _stream(self, send: Any) -> None:
        frames = self.iterator
        timeout = getattr(frames, "send_timeout", None)
        try:
            async for chunk in frames:
                event = {"type": "http.response.body", "body": chunk, "more_body": True}
                try:
                    # a timeout scope, not wait_for: no task per frame and stream (measured:
                    # benchmarks/push.py SSE, decisions §34)
                    async with asyncio.timeout(timeout):
                        await send(event)
                except TimeoutError:
                    # the client's TCP window has been full for `timeout`: it is not reading
                    sub = getattr(frames, "sub", None)
                    if sub is not None:
                        sub.end(SLOW_CONSUMER)
                    log.info("stream dropped: the client stopped reading")
                    return
        finally:
            aclose = getattr(getattr(frames, "_chunks", None), "aclose", None)
            if aclose is not None:
                await aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class PolicedStream(Stream):
    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        resp = super().to_asgi_response(*args, **kwargs)
        resp.__class__ = _PolicedStreamingResponse
        return resp


def sse_response(chunks: AsyncIterator[bytes], sub: Subscription, state: ApiState) -> Stream:
    return PolicedStream(
        _Frames(chunks, sub, state.settings.stream_send_timeout_s),
        media_type=SSE_MEDIA_TYPE,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse_doc(model: type, what: str) -> dict[str, Any]:
    responses = errors(404) if model is StreamedPlan else errors()
    responses[200] = ResponseSpec(
        data_container=model,
        media_type=SSE_MEDIA_TYPE,
        description=f"text/event-stream: {what}; `: keep-alive` comments while idle; a last "
        "`event: error` frame (the error envelope) when the server ends the stream.",
        generate_examples=False,
    )
    return {"responses": responses, "operation_class": FibricOperation}


async def live(sub: Subscription, keepalive_s: float) -> AsyncIterator[Item | None]:
    """The one live loop of every stream: the subscription's items as the hub publishes them,
    ``None`` whenever ``keepalive_s`` passed without one; ends once the subscription ended
    (``sub.ended`` says why: the client left, a slow consumer, shutdown)."""
    while True:
        item = await sub.next(keepalive_s)
        if item is None:
            if sub.ended is not None:
                return
            yield None
            continue
        yield item


async def sse_body(
    frames: AsyncIterator[bytes | None], sub: Subscription, request_id: str
) -> AsyncIterator[bytes]:
    """The body of every SSE response: each frame (``None``: a keep-alive comment), then, when
    the server ended the stream, a last ``event: error`` frame with the error envelope. The
    subscription is closed however the body ends."""
    try:
        async for frame in frames:
            yield KEEP_ALIVE if frame is None else frame
        err = ended_error(sub.ended, request_id)
        if err is not None:
            yield sse(ERROR, err)
    finally:
        sub.close()


async def _event_frames(session: EventSession) -> AsyncIterator[bytes | None]:
    yield None  # the headers and a first byte go out at once: the stream is open
    async for frame in session.frames(session.state.settings.stream_keepalive_s):
        yield None if frame is None else sse(ENVELOPE, frame[1], frame[0])


class EventStreamController(Controller):
    path = "/events"
    tags = ["events"]

    @get(
        "/stream",
        opt={"scope": "events:read", "route_class": "events_read"},
        operation_id="streamEvents",
        **_sse_doc(StreamedEvent, "one `id: <ev_id>` / `event: envelope` / `data: <event>` frame "
                   "per matching event"),
    )
    async def stream_events(self, request: Request[Any, Any, Any]) -> Stream:
        """Server-sent events: every matching event as it is stored. Filters are those of
        ``GET /v1/events``. Resume with ``Last-Event-ID`` (an event id or a frame's cursor) or
        ``cursor`` (a frame's cursor, or a ``GET /v1/events`` cursor): stored events after it are
        replayed oldest first, then the stream goes live, each event once (decisions §33)."""
        state, auth = api_state(request), auth_of(request)
        session = await EventSession.open(
            state,
            auth,
            request,
            request.headers.get("last-event-id"),
            request.scope["state"].get("request_id", ""),
        )
        body = sse_body(_event_frames(session), session.sub, session.request_id)
        return sse_response(body, session.sub, state)

    @websocket(
        "/ws",
        opt={"scope": "events:read", "route_class": "events_read"},
        guards=[require_scope],  # the /v1 router's request hook does not run for sockets
    )
    async def events_ws(self, socket: WebSocket[Any, Any, Any]) -> None:
        """The event stream over a WebSocket: the same frames as JSON text messages
        ``{"type": "envelope", "id", "data"}``, ``{"type": "keep-alive"}``, and a last
        ``{"type": "error", "error"}`` before the server closes (1013 for a slow consumer).
        Authenticate with ``Authorization: Bearer`` on the upgrade request."""
        state, auth = api_state(socket), auth_of(socket)
        request_id = new_id("req")
        try:
            session = await EventSession.open(
                state, auth, socket, socket.headers.get("last-event-id"), request_id
            )
        except FibricError as exc:
            await socket.accept()
            await _ws_send(socket, {"type": "error", **exc.envelope(request_id)}, 1.0)
            await socket.close(code=WS_POLICY, reason=exc.code.value)
            return
        await socket.accept()
        timeout = state.settings.stream_send_timeout_s
        frames = session.frames(state.settings.stream_keepalive_s)
        listener = asyncio.create_task(_ws_until_closed(socket))
        try:
            while True:
                nxt = asyncio.ensure_future(anext(frames))
                done, _ = await asyncio.wait({nxt, listener}, return_when=asyncio.FIRST_COMPLETED)
                if listener in done:
                    nxt.cancel()
                    return
                try:
                    frame = nxt.result()
                except StopAsyncIteration:
                    break
                msg = (
                    b'{"type":"keep-alive"}'
                    if frame is None
                    else b'{"type":"envelope","id":%s,"data":%s}' % (orjson.dumps(frame[0]), frame[1])
                )
                if not await _ws_send(socket, msg, timeout):
                    session.sub.end(SLOW_CONSUMER)
                    await _ws_close(socket, WS_SLOW, "slow_consumer")
                    return
            err = ended_error(session.sub.ended, request_id)
            if err is not None:
                await _ws_send(socket, {"type": "error", **err}, 1.0)
                code = WS_SLOW if session.sub.ended == SLOW_CONSUMER else WS_GOING_AWAY
                await _ws_close(socket, code, err["error"]["code"])
            else:
                await _ws_close(socket, 1000, "done")
        finally:
            listener.cancel()
            await frames.aclose()
            session.sub.close()


async def _ws_until_closed(socket: WebSocket[Any, Any, Any]) -> None:
    """Read (and ignore) what the client sends until it disconnects."""
    try:
        while True:
            msg = await socket.receive()
            if msg["type"] == "websocket.disconnect":
                return
    except Exception:  # noqa: BLE001 - any receive failure means the client is gone
        return


async def _ws_send(
    socket: WebSocket[Any, Any, Any], msg: dict[str, Any] | bytes, timeout: float
) -> bool:
    text = (msg if isinstance(msg, bytes) else orjson.dumps(msg)).decode()
    try:
        await asyncio.wait_for(socket.send_data(text, mode="text"), timeout)
        return True
    except TimeoutError:
        return False
    except Exception:  # noqa: BLE001 - the client went away mid-send
        return False


async def _ws_close(socket: WebSocket[Any, Any, Any], code: int, reason: str) -> None:
    try:
        await asyncio.wait_for(socket.close(code=code, reason=reason[:120]), 1.0)
    except Exception:  # noqa: BLE001 - already closed, or the client stopped reading
        pass


# ---- the loop-activity stream and the per-plan stream ----------------------------------------
def _loop_key(obj: Any) -> tuple[datetime, str]:
    ts = getattr(obj, "created_at", None) or getattr(obj, "proposed_at", None) or obj.updated_at
    return (ts, obj.id)


def _loop_object(item: Item, pub: Publisher) -> tuple[str, dict[str, Any]]:
    if item.table == "plans":
        return "execution_plan", plan_public(item.obj, [], pub)
    if item.table == "actions":
        return "action", action_public(item.obj, [], pub)
    return "receipt", receipt_public(item.obj, pub)


LOOP_PARAMS = ("types", "operator_id", "plan_id", "cursor")


def _loop_filters(request: Request[Any, Any, Any]) -> tuple[frozenset[str], dict[str, Any]]:
    q = request.query_params
    for name in q:
        if name not in LOOP_PARAMS:
            raise FibricError(
                ErrorCode.INVALID_PARAMETER,
                f"Unknown query parameter {name[:60]!r}; this stream takes "
                f"{', '.join(LOOP_PARAMS)}.",
                param=name[:60],
            )
    raw = {k: q.get(k) for k in ("types", "operator_id", "plan_id")}
    for name, value in raw.items():
        if value is not None and (not value or len(value) > 255):
            raise FibricError(
                ErrorCode.INVALID_PARAMETER, f"{name} must be 1–255 characters.", param=name
            )
    names = raw["types"].split(",") if raw["types"] else list(LOOP_TYPES)
    bad = [n for n in names if n not in LOOP_TYPES]
    if bad:
        raise FibricError(
            ErrorCode.INVALID_PARAMETER,
            f"types takes a comma-separated subset of {', '.join(LOOP_TYPES)}.",
            param="types",
        )
    return frozenset(LOOP_TYPES[n] for n in names), raw


class LoopStreamController(Controller):
    path = "/receipts"
    tags = ["receipts"]

    @get(
        "/stream",
        opt={"scope": "receipts:read", "route_class": "receipts_read"},
        operation_id="streamLoopActivity",
        **_sse_doc(StreamedReceipt, "`event: execution_plan|action|receipt` frames carrying those "
                   "objects as they are stored; `id:` is the frame's cursor"),
    )
    async def stream_loop(self, request: Request[Any, Any, Any]) -> Stream:
        """The governed loop as it happens: plans (each version), actions and receipts of this
        tenant and mode, the moment the ledger holds them. Filters ``types`` (comma-separated
        ``plan``, ``action``, ``receipt``), ``operator_id``, ``plan_id``. Each frame's ``id`` is
        its cursor: a reconnect with ``Last-Event-ID`` (or ``cursor``) resumes exactly while
        the position is recent; an older one is a 400 ``invalid_cursor`` (read the lists)."""
        state, auth = api_state(request), auth_of(request)
        hub = hub_of(state)
        tables, raw = _loop_filters(request)
        value = request.headers.get("last-event-id") or request.query_params.get("cursor")
        p = None
        if value:
            decode_cursor(value.strip(), raw, LOOP_BIND)
            pos = cursor_position(value.strip())
            if not pos or pos["h"] != hub.epoch or not hub.covers(pos["p"]):
                raise FibricError(
                    ErrorCode.INVALID_CURSOR,
                    "This cursor is older than the stream can resume from; read "
                    "GET /v1/plans, /v1/actions or /v1/receipts for what came before.",
                    param="cursor",
                )
            p = pos["p"]

        def wants(item: Item) -> bool:
            obj = item.obj
            if raw["operator_id"] is not None and obj.operator_id != raw["operator_id"]:
                return False
            plan_id = obj.id if item.table == "plans" else getattr(obj, "plan_id", None)
            return raw["plan_id"] is None or plan_id == raw["plan_id"]

        sub = hub.subscribe(auth.scope, tables, wants)
        tail = hub.tail(p, sub) if p is not None else []
        pub = Publisher.of(state, auth)
        request_id = request.scope["state"].get("request_id", "")
        keepalive = state.settings.stream_keepalive_s

        def frame(item: Item) -> bytes:
            kind, data = _loop_object(item, pub)
            cur = frame_cursor(_loop_key(item.obj), raw, LOOP_BIND, {"h": hub.epoch, "p": item.seq})
            data["cursor"] = cur
            return sse(kind, data, cur)

        async def frames() -> AsyncIterator[bytes | None]:
            yield None
            for held in tail:
                yield frame(held)
            async for item in live(sub, keepalive):
                yield None if item is None else frame(item)

        return sse_response(sse_body(frames(), sub, request_id), sub, state)


def plan_ended(obj: dict[str, Any]) -> bool:
    """Disposed (not ``proposed``) and, when it ran, every action's final receipt is in."""
    if obj["status"] == "proposed":
        return False
    if obj["status"] != "executed":
        return True
    return all(a.get("outcome") in TERMINAL for a in obj["actions"])


class PlanStreamController(Controller):
    path = "/plans"
    tags = ["plans"]

    @get(
        "/{plan_id:str}/stream",
        opt={"scope": "plans:read", "route_class": "loop_read"},
        operation_id="streamPlan",
        **_sse_doc(StreamedPlan, "`event: execution_plan` frames, the plan now and after each "
                   "change; the stream ends once the plan is disposed"),
    )
    async def stream_plan(self, request: Request[Any, Any, Any], plan_id: str) -> Stream:
        """One plan as it changes, for an approver's screen: the plan now, then after every
        new version, action and receipt of it; the stream ends after the frame in which the plan
        is disposed (executed with every action's outcome in, vetoed or expired). Another
        tenant's plan is a 404."""
        state, auth = api_state(request), auth_of(request)
        hub = hub_of(state)
        plan = await find_plan(state, auth, plan_id)
        # subscribe before reading its receipts: a receipt stored in between is in the queue
        sub = hub.subscribe(
            auth.scope,
            ("plans", "actions", "receipts"),
            lambda item: (item.obj.id if item.table == "plans" else item.obj.plan_id) == plan_id,
        )
        try:
            receipts = {
                r.id: r for r in await state.store.receipts_for(auth.scope, "plan_id", [plan_id])
            }
        except BaseException:
            sub.close()
            raise
        pub = Publisher.of(state, auth)
        request_id = request.scope["state"].get("request_id", "")
        keepalive = state.settings.stream_keepalive_s

        def frame(n: int) -> tuple[bytes, bool]:
            obj = plan_public(plan, list(receipts.values()), pub)
            obj["cursor"] = frame_cursor(
                (plan.updated_at, plan.id), {}, f"plan:{plan_id}", {"h": hub.epoch, "p": n}
            )
            return sse("execution_plan", obj, f"{plan.id}:{n}"), plan_ended(obj)

        async def frames() -> AsyncIterator[bytes | None]:
            nonlocal plan
            body, done = frame(sub.start_seq)
            yield body
            if done:
                return
            async for item in live(sub, keepalive):
                if item is None:
                    yield None
                    continue
                if item.table == "plans":
                    if item.obj.version < plan.version:
                        continue
                    plan = item.obj
                elif item.table == "receipts":
                    receipts[item.obj.id] = item.obj
                else:
                    continue  # an action of this plan: its receipts say what happened
                body, done = frame(item.seq)
                yield body
                if done:
                    return

        return sse_response(sse_body(frames(), sub, request_id), sub, state)
