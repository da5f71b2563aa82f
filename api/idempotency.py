"""The Idempotency-Key header for POST and PATCH (seed 000, spec §3.10).

Same key + same body → 200 with the stored original response (its ``request_id`` included);
same key + different body → 409 ``idempotency_conflict``. Keys are scoped per tenant, mode and
route and kept 24 h in ClickHouse, so they survive API restarts and are shared by API
instances. Only successful (2xx) results are stored: a failed request changed nothing, so the
client may fix it and retry with the same key. Concurrent requests with one key are serialised
in-process; the second receives the first's result.

``POST /v1/events`` uses :meth:`Idempotency.run_recorded` instead: its effect (a record on the
events topic) may land even when the request fails (a 503 after the broker got the record), so
the validated answer — the event id — is recorded *before* the record is produced, and a retry
with the key re-delivers that same event rather than minting a new id the worker's ingest dedup
would drop (docs/decisions.md §30).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
from litestar import Request, Response

from api.metrics import ApiMetrics
from ledger.store import IDEMPOTENCY_COLUMNS, LedgerStore, Scope
from schemas.errors import ErrorCode, FibricError

RETENTION = timedelta(hours=24)
MAX_KEY_LEN = 255
# Records this process wrote recently, answered from memory without a ClickHouse round trip.
CACHE_SIZE = 50_000

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Stored:
    body_hash: str
    status: int
    response: bytes
    request_id: str
    created_at: datetime


def body_hash(body: bytes) -> str:
    """Hash of the JSON body, insensitive to key order and whitespace."""
    try:
        canon = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS) if body else b""
    except orjson.JSONDecodeError:
        canon = body
    return hashlib.sha256(canon).hexdigest()


class _GroupWriter:
    """Group commit: rows queued while an insert runs go out together in the next one."""

    def __init__(self, store: LedgerStore) -> None:
        self._store = store
        self._queue: list[tuple[list[Any], asyncio.Future[None]]] = []
        self._running = False

    async def write(self, row: list[Any]) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((row, fut))
        if not self._running:
            self._running = True
            asyncio.create_task(self._drain())
        await fut

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    await self._store.insert(
                        "idempotency_keys", [r for r, _ in batch], IDEMPOTENCY_COLUMNS
                    )
                except Exception as exc:  # noqa: BLE001 - reported to every waiting request
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
        finally:
            self._running = False


_LOOKUP_SQL = (
    "SELECT tenant_id, livemode, route, key, body_hash, status, response, request_id "
    "FROM idempotency_keys WHERE tenant_id IN {t:Array(String)} AND key IN {k:Array(String)} "
    "AND created_at >= {nb:DateTime64(6, 'UTC')} ORDER BY created_at"
)
# Keys looked up together in one query at most (the query's IN lists stay small).
LOOKUP_BATCH = 512


class _GroupReader:
    """Group lookup: keys asked for while a query runs are looked up together in the next one
    (a new key per request would otherwise cost a ClickHouse query each: S2's second line)."""

    def __init__(self, store: LedgerStore) -> None:
        self._store = store
        self._queue: list[tuple[tuple, asyncio.Future[tuple | None]]] = []
        self._running = False

    async def read(self, ident: tuple) -> tuple | None:
        fut: asyncio.Future[tuple | None] = asyncio.get_running_loop().create_future()
        self._queue.append((ident, fut))
        if not self._running:
            self._running = True
            asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:LOOKUP_BATCH], self._queue[LOOKUP_BATCH:]
                try:
                    rows = await self._store.query(
                        _LOOKUP_SQL,
                        {
                            "t": sorted({i[0] for i, _ in batch}),
                            "k": sorted({i[3] for i, _ in batch}),
                            "nb": datetime.now(UTC) - RETENTION,
                        },
                    )
                except Exception as exc:  # noqa: BLE001 - reported to every waiting request
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                found: dict[tuple, tuple] = {}
                for r in rows:  # oldest first: the first row of an ident is its record
                    found.setdefault((r[0], bool(r[1]), r[2], r[3]), tuple(r[4:8]))
                for ident, fut in batch:
                    if not fut.done():
                        fut.set_result(found.get(ident))
        finally:
            self._running = False


class Idempotency:
    def __init__(self, store: LedgerStore, metrics: ApiMetrics | None = None) -> None:
        self._store = store
        self._metrics = metrics
        self._writer = _GroupWriter(store)
        self._reader = _GroupReader(store)
        self._cache: OrderedDict[tuple, Stored] = OrderedDict()
        self._locks: dict[tuple, asyncio.Lock] = {}

    async def run(
        self,
        request: Request[Any, Any, Any],
        scope: Scope,
        body: bytes,
        handler: Callable[[], Awaitable[Response[Any]]],
    ) -> Response[Any]:
        key = request.headers.get("idempotency-key")
        if key is None:
            return await handler()
        ident, route, digest = self._ident(request, scope, key, body)
        lock = self._locks.setdefault(ident, asyncio.Lock())
        try:
            async with lock:
                stored = await self._lookup(ident, scope, route, key)
                if stored is not None:
                    self._check(stored, digest)
                    return self._replayed(stored)
                response = await handler()
                status = response.status_code or 200
                if 200 <= status < 300:
                    content = response.content
                    data = content if isinstance(content, bytes) else orjson.dumps(content)
                    response.content = data
                    await self._record(
                        ident,
                        scope,
                        route,
                        key,
                        digest,
                        status,
                        data,
                        _request_id(request),
                    )
                return response
        finally:
            self._release(ident, lock)

    async def run_recorded(
        self,
        request: Request[Any, Any, Any],
        scope: Scope,
        body: bytes,
        prepare: Callable[[], tuple[int, bytes, T]],
        deliver: Callable[[T], Awaitable[None]],
        replay: Callable[[bytes], Awaitable[None]],
    ) -> Response[Any]:
        """For writes whose effect leaves the process (``POST /v1/events``: a record on the
        events topic) and may land even when the request fails (a 503 after the broker got the
        record). ``prepare`` validates and builds the whole answer — status, body and what to
        deliver — without side effects; with an Idempotency-Key that answer is recorded
        *before* ``deliver`` runs, so the attempt (the event id) is the same across retries.
        A retry with the key finds the record and runs ``replay`` on the recorded body (deliver
        it again: the worker's ingest dedup drops a second copy) before answering 200 with it,
        so a replayed answer also means delivered. A failure in ``prepare`` records nothing."""
        key = request.headers.get("idempotency-key")
        if key is None:
            status, content, item = prepare()
            await deliver(item)
            return Response(content, status_code=status, media_type="application/json")
        ident, route, digest = self._ident(request, scope, key, body)
        lock = self._locks.setdefault(ident, asyncio.Lock())
        try:
            async with lock:
                stored = await self._lookup(ident, scope, route, key)
                if stored is not None:
                    self._check(stored, digest)
                    await replay(stored.response)
                    return self._replayed(stored)
                status, content, item = prepare()
                await self._record(
                    ident, scope, route, key, digest, status, content, _request_id(request)
                )
                await deliver(item)
                return Response(content, status_code=status, media_type="application/json")
        finally:
            self._release(ident, lock)

    def _ident(
        self, request: Request[Any, Any, Any], scope: Scope, key: str, body: bytes
    ) -> tuple[tuple, str, str]:
        if not 1 <= len(key) <= MAX_KEY_LEN:
            raise FibricError(
                ErrorCode.INVALID_PARAMETER,
                f"Idempotency-Key must be 1–{MAX_KEY_LEN} characters.",
                param="Idempotency-Key",
            )
        route = f"{request.method} {request.url.path}"
        return (scope.tenant_id, scope.livemode, route, key), route, body_hash(body)

    def _check(self, stored: Stored, digest: str) -> None:
        if stored.body_hash != digest:
            if self._metrics is not None:
                self._metrics.conflict.inc()
            raise FibricError(
                ErrorCode.IDEMPOTENCY_CONFLICT,
                "This Idempotency-Key was already used with a different request body.",
                param="Idempotency-Key",
            )

    def _replayed(self, stored: Stored) -> Response[Any]:
        if self._metrics is not None:
            self._metrics.replayed.inc()
        return Response(
            stored.response,
            status_code=200,
            media_type="application/json",
            headers={"Idempotent-Replayed": "true", "Original-Request-Id": stored.request_id},
        )

    def _release(self, ident: tuple, lock: asyncio.Lock) -> None:
        if not lock.locked() and not getattr(lock, "_waiters", None):
            self._locks.pop(ident, None)

    async def _lookup(self, ident: tuple, scope: Scope, route: str, key: str) -> Stored | None:
        now = datetime.now(UTC)
        hit = self._cache.get(ident)
        if hit is not None:
            if now - hit.created_at < RETENTION:
                return hit
            del self._cache[ident]
        row = await self._reader.read(ident)
        if row is None:
            return None
        return Stored(row[0], int(row[1]), row[2].encode(), row[3], now)

    async def _record(
        self,
        ident: tuple,
        scope: Scope,
        route: str,
        key: str,
        digest: str,
        status: int,
        body: bytes,
        rid: str,
    ) -> None:
        now = datetime.now(UTC)
        await self._writer.write(
            [scope.tenant_id, scope.livemode, route, key, digest, status, body.decode(), rid, now]
        )
        self._cache[ident] = Stored(digest, status, body, rid, now)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)


def _request_id(request: Request[Any, Any, Any]) -> str:
    return request.scope["state"]["request_id"]
