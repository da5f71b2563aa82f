"""ClickHouse access for the api role: migrations, batched inserts, and tenant-scoped readers.

The same code talks to chDB (``chdb:///path``, embedded) and a ClickHouse server
(``http://…``, production): only the DSN differs. Every read takes the tenant scope first;
there is no unscoped reader. Calls run in a small thread pool so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import clickhouse_connect
import orjson

from agents.globs import glob_to_regex, is_glob
from agents.replay import Replayer, StoredVerdicts
from ledger import analyst
from schemas.envelope import DeadLetter, Event
from schemas.errors import ErrorCode, FibricError
from schemas.operator import Operator
from schemas.plan import ActionRecord, Plan, Receipt
from schemas.webhook import Attempt, Delivery

log = logging.getLogger(__name__)

# Threads for ClickHouse calls: enough for concurrent reads while an insert runs; chDB runs
# queries in C++ and releases the GIL, so more threads than cores still overlap I/O and merges.
CH_THREADS = 4

# The instants a DateTime64(6, 'UTC') column (every timestamp here) can hold, per ClickHouse's
# documentation. A bound outside it cannot be compared meaningfully, and the driver formats years
# before 1000 unpadded, which ClickHouse then rejects: callers refuse such bounds up front.
DATETIME_MIN = datetime(1900, 1, 1, tzinfo=UTC)
DATETIME_MAX = datetime(2299, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)

EVENT_COLUMNS = (
    "tenant_id",
    "livemode",
    "created_at",
    "id",
    "reseller_id",
    "workspace_id",
    "source",
    "event_type",
    "correlation_id",
    "entity_key",
    "idempotency_key",
    "agent_id",
    "session_id",
    "request_id",
    "payload",
)
DEAD_LETTER_COLUMNS = (
    "tenant_id",
    "livemode",
    "created_at",
    "id",
    "reason",
    "message",
    "errors",
    "raw",
    "source_topic",
    "partition",
    "offset",
)
CONFIG_COLUMNS = ("tenant_id", "at", "id", "kind", "version", "actor", "record")
VAULT_COLUMNS = ("tenant_id", "connector_id", "at", "id", "record")
PLAN_COLUMNS = (
    "tenant_id",
    "livemode",
    "created_at",
    "id",
    "version",
    "updated_at",
    "operator_id",
    "operator_name",
    "guardrail_version",
    "event_id",
    "correlation_id",
    "status",
    "approver",
    "expires_at",
    "doc",
)
ACTION_COLUMNS = (
    "tenant_id",
    "livemode",
    "proposed_at",
    "id",
    "plan_id",
    "operator_id",
    "event_id",
    "correlation_id",
    "connector_id",
    "tool",
    "entity_key",
    "idempotency_key",
    "value",
    "undo_of",
    "doc",
)
# Receipts an export reads per query: large enough that a million-row export is 100 queries,
# small enough that one chunk of decoded receipts stays a few tens of MiB.
EXPORT_CHUNK = 10_000
# Events are partitioned by month of their time and producers may send backdated events
# (received_at from 1970 on, schemas/limits.py): ClickHouse's default of 100 partitions per
# insert would refuse a batch spanning more months, so the limit is lifted (0 = no limit).
INSERT_SETTINGS = {"max_partitions_per_insert_block": 0}

# Receipt rows a policy replay groups per ClickHouse query (actions are bucketed by a hash of
# their id), so one bucket's distinct judge inputs stay a bounded list whatever the window holds.
REPLAY_BUCKET_ROWS = 1_000_000
# Receipt list/export filters matched by equality (plus the since/until time window); the api
# takes its list of accepted query parameters from here.
RECEIPT_EQ_FILTERS = (
    "operator_id",
    "outcome",
    "decision",
    "entity_key",
    "correlation_id",
    "plan_id",
    "action_id",
    "event_id",
)

RECEIPT_COLUMNS = (
    "tenant_id",
    "livemode",
    "created_at",
    "id",
    "operator_id",
    "operator_name",
    "guardrail_version",
    "event_id",
    "plan_id",
    "action_id",
    "correlation_id",
    "connector_id",
    "connector_name",
    "tool",
    "entity_key",
    "idempotency_key",
    "value",
    "decision",
    "outcome",
    "rule",
    "reason",
    "result",
    "error",
    "approver",
    "request_id",
    "latency_ms",
    "proposed_at",
    "policy_versions",  # 0006: JSON, additive (decisions §37)
    "shadow_verdict",
    "trace_id",  # 0007: additive (decisions §45)
)
RECEIPT_JSON = ("rule", "result", "error", "policy_versions", "shadow_verdict")


def _dumps(v: Any) -> str | None:
    return None if v is None else orjson.dumps(v).decode()


def plan_row(p: Plan) -> list[Any]:
    return [
        p.tenant_id,
        p.livemode,
        p.created_at,
        p.id,
        p.version,
        p.updated_at,
        p.operator_id,
        p.operator_name,
        p.guardrail_version,
        p.event_id,
        p.correlation_id,
        p.status,
        p.approver,
        p.expires_at,
        p.model_dump_json(),
    ]


def action_row(a: ActionRecord) -> list[Any]:
    return [
        a.tenant_id,
        a.livemode,
        a.proposed_at,
        a.id,
        a.plan_id,
        a.operator_id,
        a.event_id,
        a.correlation_id,
        a.connector_id,
        a.tool,
        a.entity_key,
        a.idempotency_key,
        a.value,
        a.undo_of,
        a.model_dump_json(),
    ]


def receipt_row(r: Receipt) -> list[Any]:
    return [
        r.tenant_id,
        r.livemode,
        r.created_at,
        r.id,
        r.operator_id,
        r.operator_name,
        r.guardrail_version,
        r.event_id,
        r.plan_id,
        r.action_id,
        r.correlation_id,
        r.connector_id,
        r.connector_name,
        r.tool,
        r.entity_key,
        r.idempotency_key,
        r.value,
        r.decision,
        r.outcome,
        _dumps(r.rule),
        r.reason,
        _dumps(r.result),
        _dumps(r.error),
        r.approver,
        r.request_id,
        r.latency_ms,
        r.proposed_at,
        _dumps(r.policy_versions),
        _dumps(r.shadow_verdict),
        r.trace_id,
    ]


def receipt_from_row(row: Sequence[Any]) -> Receipt:
    d = dict(zip(RECEIPT_COLUMNS, row, strict=True))
    d["created_at"] = _utc(d["created_at"])
    if d["proposed_at"] is not None:
        d["proposed_at"] = _utc(d["proposed_at"])
    for k in RECEIPT_JSON:
        d[k] = orjson.loads(d[k]) if d[k] is not None else None
    return Receipt.model_validate(d)


DELIVERY_COLUMNS = (
    "tenant_id",
    "livemode",
    "endpoint_id",
    "created_at",
    "id",
    "version",
    "type",
    "lane",
    "object_id",
    "occurred_at",
    "status",
    "attempts",
    "next_attempt_at",
    "window_start",
    "last_status_code",
    "last_error",
    "last_attempt_at",
    "body",
)
ATTEMPT_COLUMNS = (
    "tenant_id",
    "livemode",
    "endpoint_id",
    "delivery_id",
    "attempt",
    "at",
    "status_code",
    "latency_ms",
    "error",
    "response_excerpt",
)
# A delivery's created_at is its source row's time, which replays keep: this margin only covers
# clocks of the roles that wrote the rows.
DELIVERY_ID_SKEW = timedelta(minutes=5)


def delivery_row(d: Delivery) -> list[Any]:
    return [getattr(d, c) for c in DELIVERY_COLUMNS]


def delivery_from_row(row: Sequence[Any]) -> Delivery:
    d = dict(zip(DELIVERY_COLUMNS, row, strict=True))
    for k in ("created_at", "occurred_at", "window_start", "next_attempt_at", "last_attempt_at"):
        if d[k] is not None:
            d[k] = _utc(d[k])
    return Delivery.model_validate(d)


def attempt_row(a: Attempt) -> list[Any]:
    return [getattr(a, c) for c in ATTEMPT_COLUMNS]


def attempt_from_row(row: Sequence[Any]) -> Attempt:
    d = dict(zip(ATTEMPT_COLUMNS, row, strict=True))
    d["at"] = _utc(d["at"])
    return Attempt.model_validate(d)


IDEMPOTENCY_COLUMNS = (
    "tenant_id",
    "livemode",
    "route",
    "key",
    "body_hash",
    "status",
    "response",
    "request_id",
    "created_at",
)


@dataclass(frozen=True, slots=True)
class Scope:
    """The tenancy wall: every read is filtered by tenant and mode (live/test)."""

    tenant_id: str
    livemode: bool


@dataclass(frozen=True, slots=True)
class EventFilters:
    event_type: str | None = None
    source: str | None = None
    correlation_id: str | None = None
    workspace_id: str | None = None
    entity_key: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, ev: Event) -> bool:
        """The same predicate as :meth:`where` (used for the read-your-writes overlay)."""
        from agents.globs import matches

        return (
            (self.event_type is None or matches(self.event_type, ev.event_type))
            and (self.source is None or ev.source == self.source)
            and (self.correlation_id is None or ev.correlation_id == self.correlation_id)
            and (self.workspace_id is None or ev.workspace_id == self.workspace_id)
            and (self.entity_key is None or ev.entity_key == self.entity_key)
            and (self.since is None or ev.created_at >= self.since)
            and (self.until is None or ev.created_at < self.until)
        )

    def where(self, params: dict[str, Any]) -> list[str]:
        clauses = []
        if self.event_type is not None:
            if is_glob(self.event_type):
                params["event_type_re"] = glob_to_regex(self.event_type)
                clauses.append("match(event_type, {event_type_re:String})")
            else:
                params["event_type"] = self.event_type
                clauses.append("event_type = {event_type:String}")
        for name in ("source", "correlation_id", "workspace_id", "entity_key"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
                clauses.append(f"{name} = {{{name}:String}}")
        if self.since is not None:
            params["since"] = self.since
            clauses.append("created_at >= {since:DateTime64(6, 'UTC')}")
        if self.until is not None:
            params["until"] = self.until
            clauses.append("created_at < {until:DateTime64(6, 'UTC')}")
        return clauses


@dataclass(slots=True)
class Page:
    items: list[Any]
    has_more: bool
    last_key: tuple[datetime, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def event_row(ev: Event) -> list[Any]:
    return [
        ev.tenant_id,
        ev.livemode,
        ev.created_at,
        ev.id,
        ev.reseller_id,
        ev.workspace_id,
        ev.source,
        ev.event_type,
        ev.correlation_id,
        ev.entity_key,
        ev.idempotency_key,
        ev.agent_id,
        ev.session_id,
        ev.request_id,
        orjson.dumps(ev.payload).decode(),
    ]


def _event_from_row(row: Sequence[Any]) -> Event:
    d = dict(zip(EVENT_COLUMNS, row, strict=True))
    d["created_at"] = _utc(d["created_at"])
    d["payload"] = orjson.loads(d["payload"])
    return Event.model_validate(d)


def dead_letter_row(dl: DeadLetter) -> list[Any]:
    return [
        dl.tenant_id,
        dl.livemode,
        dl.created_at,
        dl.id,
        dl.reason,
        dl.message,
        orjson.dumps(dl.errors).decode(),
        dl.raw,
        dl.source_topic,
        dl.partition,
        dl.offset,
    ]


def _dead_letter_from_row(row: Sequence[Any]) -> DeadLetter:
    d = dict(zip(DEAD_LETTER_COLUMNS, row, strict=True))
    d["created_at"] = _utc(d["created_at"])
    d["errors"] = orjson.loads(d["errors"])
    return DeadLetter.model_validate(d)


# A list page reads a few granules: one thread is as fast as two, and leaves the other core to
# the api's event loop (with two, pages refreshing under load stalled the loop; decisions §18).
PAGE_SETTINGS = {"max_threads": 1}


class LedgerStore:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._pool = ThreadPoolExecutor(max_workers=CH_THREADS, thread_name_prefix="clickhouse")
        self._client: Any = None
        self._policy: Any = None
        self._sql_ready = False
        # analyst SQL: its own engine session and thread, so a long query never holds up the
        # api's reads and writes, and one at a time per api process
        self._sql_client: Any = None
        self._sql_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-sql")

    # ---- plumbing --------------------------------------------------------------------------
    def open(self) -> None:
        """Connect and apply migrations (synchronous; call before serving). On the embedded
        engine, also make sure the analyst row policies cover every table (ledger/analyst.py):
        if migrations added a table the policy file does not know, rewrite it and reopen."""
        self._policy = analyst.policy_dir(self._dsn)
        if self._policy is not None:
            policy = analyst.AccessPolicy(self._policy)
            if not policy.config_file.exists():
                policy.write(set())
        self._connect()
        self._migrate()
        if self._policy is not None:
            policy = analyst.AccessPolicy(self._policy)
            tables = self._engine_tables()
            if not policy.covers(tables):
                policy.write(tables)
                self._client.close()
                self._connect()
            self._sql_ready = policy.covers(self._engine_tables())
            if not self._sql_ready:
                log.error("analyst SQL is off: tables without a row policy remain")

    def _connect(self) -> None:
        if self._policy is not None:
            self._client = clickhouse_connect.get_client(
                dsn=self._dsn,
                chdb_options={"config-file": str(analyst.AccessPolicy(self._policy).config_file)},
            )
        else:
            self._client = clickhouse_connect.get_client(dsn=self._dsn)

    def _engine_tables(self) -> set[tuple[str, str]]:
        rows = self._client.query(
            "SELECT database, name FROM system.tables WHERE engine NOT IN ('View')"
        ).result_rows
        return {(r[0], r[1]) for r in rows}

    def _migrate(self) -> None:
        self._client.command(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name String, applied_at DateTime "
            "DEFAULT now()) ENGINE = MergeTree ORDER BY name"
        )
        done = {r[0] for r in self._client.query("SELECT name FROM schema_migrations").result_rows}
        files = sorted(
            (p for p in resources.files("ledger.migrations").iterdir() if p.name.endswith(".sql")),
            key=lambda p: p.name,
        )
        for f in files:
            if f.name in done:
                continue
            for stmt in _statements(f.read_text()):
                self._client.command(stmt)
            self._client.insert("schema_migrations", [[f.name]], column_names=["name"])
            log.info("applied migration %s", f.name)

    def close(self) -> None:
        self._sql_pool.shutdown(wait=True)
        if self._sql_client is not None:
            self._sql_client.close()
        if self._client is not None:
            self._client.close()
        self._pool.shutdown(wait=True)

    # ---- analyst SQL (decisions §42) ---------------------------------------------------------
    async def analyst_query(
        self,
        scope: Scope,
        sql: str,
        max_rows: int,
        seconds: float,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run one read-only SELECT for ``scope``'s tenant and mode under the engine's row
        policies and limits (ledger/analyst.py). Raises FibricError (``sql_*`` codes)."""
        if not self._sql_ready:
            raise FibricError(
                ErrorCode.SQL_UNAVAILABLE,
                "SQL through the api needs the embedded ledger with its row policies in force; "
                "on a ClickHouse server connect with a per-tenant user (docs/production.md).",
            )
        return await asyncio.get_running_loop().run_in_executor(
            self._sql_pool, self._analyst_query, scope, sql, max_rows, seconds, params or {}
        )

    def _analyst_query(
        self, scope: Scope, sql: str, max_rows: int, seconds: float, params: dict[str, Any]
    ) -> dict[str, Any]:
        if self._sql_client is None:
            self._connect_sql()
        if not analyst.AccessPolicy(self._policy).covers(self._engine_tables()):
            raise FibricError(
                ErrorCode.SQL_UNAVAILABLE,
                "A ledger table has no row policy yet; restart the api to cover it.",
            )
        settings = analyst.settings_clause(scope.tenant_id, scope.livemode, max_rows, seconds)
        # the parse checks answer with a line per AST node: the caller's row limit is not theirs
        checks = analyst.settings_clause(scope.tenant_id, scope.livemode, 1_000_000, seconds)
        c = self._sql_client
        try:
            # the engine parses: exactly one statement, in its canonical form
            canonical = c.query(
                "SELECT formatQuery({q:String}) " + checks, parameters={"q": sql}
            ).result_rows[0][0]
        except Exception as exc:  # noqa: BLE001 - the engine's verdict becomes the envelope
            raise _sql_error(exc) from None
        try:
            # a subquery admits only a SELECT: no INSERT/ALTER/DROP, INTO OUTFILE or FORMAT
            c.query(f"EXPLAIN AST SELECT 1 FROM (\n{canonical}\n) {checks}", parameters=params)
        except Exception as exc:  # noqa: BLE001
            head = canonical.lstrip("( ").split(None, 1)[0].upper() if canonical.strip() else ""
            if head not in ("SELECT", "WITH"):
                raise FibricError(
                    ErrorCode.SQL_REFUSED,
                    f"Only a read-only SELECT may run here, not {head or 'this statement'}.",
                    param="query",
                ) from None
            raise _sql_error(exc) from None
        started = datetime.now(UTC)
        try:
            result = c.query(f"{canonical}\n{settings}", parameters=params)
        except Exception as exc:  # noqa: BLE001
            raise _sql_error(exc) from None
        elapsed = (datetime.now(UTC) - started).total_seconds() * 1000
        columns = [
            {"name": n, "type": t.name}
            for n, t in zip(result.column_names, result.column_types, strict=True)
        ]
        if not columns:  # an empty result carries no block: ask the engine for its shape
            try:
                desc = c.query(f"DESCRIBE (\n{canonical}\n) {checks}", parameters=params)
                columns = [{"name": r[0], "type": r[1]} for r in desc.result_rows]
            except Exception:  # noqa: BLE001 - the rows are the answer; columns are a courtesy
                log.warning("DESCRIBE of an analyst query failed", exc_info=True)
        return {
            "columns": columns,
            "rows": [list(r) for r in result.result_rows],
            "elapsed_ms": round(elapsed, 3),
        }

    def _connect_sql(self) -> None:
        self._sql_client = clickhouse_connect.get_client(
            dsn=self._dsn,
            chdb_options={"config-file": str(analyst.AccessPolicy(self._policy).config_file)},
        )

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: fn(*args, **kwargs)
        )

    async def query(
        self, sql: str, params: dict[str, Any] | None = None, settings: dict[str, Any] | None = None
    ) -> list[tuple]:
        result = await self._run(
            self._client.query, sql, parameters=params or {}, settings=settings or {}
        )
        return result.result_rows

    async def insert(self, table: str, rows: list[list[Any]], columns: Sequence[str]) -> None:
        if rows:
            await self._run(
                self._client.insert,
                table,
                rows,
                column_names=list(columns),
                settings=INSERT_SETTINGS,
            )

    async def ping(self) -> bool:
        try:
            return (await self.query("SELECT 1")) == [(1,)]
        except Exception:  # noqa: BLE001 - readiness reports the failure, it does not raise
            log.exception("clickhouse ping failed")
            return False

    async def existing_ids(
        self,
        table: str,
        time_col: str,
        ids: Iterable[str],
        lo: datetime,
        hi: datetime,
        id_expr: str = "id",
    ) -> set[str]:
        """Which of ``ids`` (rows created between lo and hi) are already stored."""
        ids = list(ids)
        if not ids:
            return set()
        rows = await self.query(
            f"SELECT {id_expr} AS k FROM {table} WHERE {time_col} BETWEEN "
            "{lo:DateTime64(6, 'UTC')} AND {hi:DateTime64(6, 'UTC')} AND k IN {ids:Array(String)}",
            {"lo": lo, "hi": hi, "ids": ids},
        )
        return {r[0] for r in rows}

    # ---- events ----------------------------------------------------------------------------
    async def list_events(
        self, scope: Scope, filters: EventFilters, limit: int, after: tuple[datetime, str] | None
    ) -> Page:
        return await self._list(
            "events", EVENT_COLUMNS, _event_from_row, scope, filters.where, limit, after
        )

    async def count_events_matching(
        self, scope: Scope, patterns: list[str], since: datetime, until: datetime
    ) -> int:
        """Events of ``scope`` in [since, until) whose type matches any glob (catch-up counts)."""
        rows = await self.query(
            "SELECT count() FROM events WHERE tenant_id = {t:String} AND livemode = {m:Bool} "
            "AND created_at >= {s:DateTime64(6, 'UTC')} AND created_at < {u:DateTime64(6, 'UTC')} "
            "AND arrayExists(r -> match(event_type, r), {res:Array(String)})",
            {
                "t": scope.tenant_id,
                "m": scope.livemode,
                "s": since,
                "u": until,
                "res": [glob_to_regex(p) for p in patterns],
            },
        )
        return int(rows[0][0])

    async def events_matching(
        self, scope: Scope, patterns: list[str], since: datetime, until: datetime, limit: int
    ) -> list[Event]:
        """Events of ``scope`` in [since, until) matching any glob, oldest first (catch-up)."""
        rows = await self.query(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE tenant_id = {{t:String}} "
            "AND livemode = {m:Bool} AND created_at >= {s:DateTime64(6, 'UTC')} "
            "AND created_at < {u:DateTime64(6, 'UTC')} "
            "AND arrayExists(r -> match(event_type, r), {res:Array(String)}) "
            "ORDER BY created_at, id LIMIT 1 BY id LIMIT {n:UInt32}",
            {
                "t": scope.tenant_id,
                "m": scope.livemode,
                "s": since,
                "u": until,
                "res": [glob_to_regex(p) for p in patterns],
                "n": limit,
            },
        )
        return [_event_from_row(r) for r in rows]

    async def get_event(self, scope: Scope, event_id: str) -> Event | None:
        rows = await self.query(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE tenant_id = {{t:String}} "
            "AND livemode = {m:Bool} AND id = {id:String} LIMIT 1",
            {"t": scope.tenant_id, "m": scope.livemode, "id": event_id},
        )
        return _event_from_row(rows[0]) if rows else None

    # ---- dead letters ----------------------------------------------------------------------
    async def list_dead_letters(
        self, scope: Scope, reason: str | None, limit: int, after: tuple[datetime, str] | None
    ) -> Page:
        def where(params: dict[str, Any]) -> list[str]:
            if reason is None:
                return []
            params["reason"] = reason
            return ["reason = {reason:String}"]

        return await self._list(
            "dead_letters", DEAD_LETTER_COLUMNS, _dead_letter_from_row, scope, where, limit, after
        )

    async def get_dead_letter(self, scope: Scope, dl_id: str) -> DeadLetter | None:
        rows = await self.query(
            f"SELECT {', '.join(DEAD_LETTER_COLUMNS)} FROM dead_letters WHERE tenant_id = "
            "{t:String} AND livemode = {m:Bool} AND id = {id:String} LIMIT 1",
            {"t": scope.tenant_id, "m": scope.livemode, "id": dl_id},
        )
        return _dead_letter_from_row(rows[0]) if rows else None

    async def _list(
        self,
        table: str,
        columns: Sequence[str],
        parse: Any,
        scope: Scope,
        where: Any,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> Page:
        params: dict[str, Any] = {"t": scope.tenant_id, "m": scope.livemode, "n": limit + 1}
        clauses = ["tenant_id = {t:String}", "livemode = {m:Bool}", *where(params)]
        if after is not None:
            params["after_ts"], params["after_id"] = after
            clauses.append(
                "(created_at, id) < ({after_ts:DateTime64(6, 'UTC')}, {after_id:String})"
            )
        sql = (
            f"SELECT {', '.join(columns)} FROM {table} WHERE {' AND '.join(clauses)} "
            "ORDER BY created_at DESC, id DESC @DEDUP@LIMIT {n:UInt32}"
        )
        # Rows are inserted once (the sink checks ids first), so a page almost never holds a
        # repeated id; `LIMIT 1 BY id` would cost 3x on every page to guard against it. Pages are
        # read plainly and only re-read with it when a repeat shows up (decisions §18).
        rows = await self.query(sql.replace("@DEDUP@", ""), params, PAGE_SETTINGS)
        if len({r[columns.index("id")] for r in rows}) < len(rows):
            rows = await self.query(sql.replace("@DEDUP@", "LIMIT 1 BY id "), params, PAGE_SETTINGS)
        items = [parse(r) for r in rows]
        has_more = len(items) > limit
        items = items[:limit]
        last = (items[-1].created_at, items[-1].id) if items else None
        return Page(items, has_more, last)

    # ---- plans, actions, receipts -------------------------------------------------------------
    async def list_receipts(
        self, scope: Scope, filters: dict[str, Any], limit: int, after: tuple[datetime, str] | None
    ) -> Page:
        def where(params: dict[str, Any]) -> list[str]:
            clause, extra = self.receipts_where(scope, filters)
            params.update(extra)
            return [clause]

        return await self._list(
            "receipts", RECEIPT_COLUMNS, receipt_from_row, scope, where, limit, after
        )

    async def get_receipt(self, scope: Scope, receipt_id: str) -> Receipt | None:
        rows = await self.query(
            f"SELECT {', '.join(RECEIPT_COLUMNS)} FROM receipts WHERE tenant_id = {{t:String}} "
            "AND livemode = {m:Bool} AND id = {id:String} LIMIT 1",
            {"t": scope.tenant_id, "m": scope.livemode, "id": receipt_id},
        )
        return receipt_from_row(rows[0]) if rows else None

    async def receipts_for(self, scope: Scope, column: str, ids: list[str]) -> list[Receipt]:
        if not ids:
            return []
        rows = await self.query(
            f"SELECT {', '.join(RECEIPT_COLUMNS)} FROM receipts WHERE tenant_id = {{t:String}} "
            f"AND livemode = {{m:Bool}} AND {column} IN {{ids:Array(String)}} "
            "ORDER BY created_at, id LIMIT 1 BY id",
            {"t": scope.tenant_id, "m": scope.livemode, "ids": ids},
        )
        return [receipt_from_row(r) for r in rows]

    async def budget_spend(
        self, scope: Scope, since: datetime, equal: dict[str, str]
    ) -> list[tuple[str, str, str, int, float]]:
        """Executions the ledger has stored since ``since`` (applied or undone receipts), as
        (operator name, connector id, tool, count, summed value) — what a budget has spent, for
        the dry-run evaluate (decisions §36). ``equal``: a budget's ``per`` scope (column →
        value: operator_id, connector_id, tool, entity_key)."""
        params: dict[str, Any] = {"t": scope.tenant_id, "m": scope.livemode, "s": since}
        cond = ""
        for i, (col, value) in enumerate(sorted(equal.items())):
            assert col in ("operator_id", "connector_id", "tool", "entity_key"), col
            cond += f" AND {col} = {{e{i}:String}}"
            params[f"e{i}"] = value
        rows = await self.query(
            "SELECT operator_name, ifNull(connector_id, ''), ifNull(tool, ''), count(), "
            "sum(ifNull(value, 0)) FROM (SELECT id, operator_name, connector_id, tool, value "
            "FROM receipts WHERE tenant_id = {t:String} AND livemode = {m:Bool} "
            "AND outcome IN ('applied', 'undone') AND created_at > {s:DateTime64(6, 'UTC')}"
            f"{cond} LIMIT 1 BY id) GROUP BY 1, 2, 3",
            params,
        )
        return [(str(a), str(b), str(c), int(n), float(v)) for a, b, c, n, v in rows]

    async def get_plan(self, scope: Scope, plan_id: str) -> Plan | None:
        rows = await self.query(
            "SELECT doc FROM plans WHERE tenant_id = {t:String} AND livemode = {m:Bool} "
            "AND id = {id:String} ORDER BY version DESC LIMIT 1",
            {"t": scope.tenant_id, "m": scope.livemode, "id": plan_id},
        )
        return Plan.model_validate_json(rows[0][0]) if rows else None

    async def list_plans(
        self,
        scope: Scope,
        status: str | Sequence[str] | None,
        operator_id: str | None,
        event_id: str | None,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> Page:
        params: dict[str, Any] = {"t": scope.tenant_id, "m": scope.livemode, "n": limit + 1}
        inner = ["tenant_id = {t:String}", "livemode = {m:Bool}"]
        outer = []
        if operator_id is not None:
            params["op"] = operator_id
            inner.append("operator_id = {op:String}")
        if event_id is not None:
            params["ev"] = event_id
            inner.append("event_id = {ev:String}")
        if after is not None:
            params["after_ts"], params["after_id"] = after
            inner.append("(created_at, id) < ({after_ts:DateTime64(6, 'UTC')}, {after_id:String})")
        if status is not None:
            # the stored statuses that read as one public status (schemas/plan.py)
            params["st"] = [status] if isinstance(status, str) else list(status)
            outer.append("WHERE status IN {st:Array(String)}")
        # One row per plan id, whatever the rows: versions fold by argMax, and a copy stored
        # under another created_at (written before plans were dated by their event) folds into
        # its earliest time, so no id is listed twice, on one page or across pages.
        rows = await self.query(
            "SELECT doc, status, first_at FROM (SELECT min(created_at) AS first_at, id, "
            "argMax(doc, version) AS doc, argMax(status, version) AS status FROM plans "
            f"WHERE {' AND '.join(inner)} GROUP BY id) {' '.join(outer)} "
            "ORDER BY first_at DESC, id DESC LIMIT {n:UInt32}",
            params,
        )
        items = [Plan.model_validate_json(r[0]) for r in rows]
        has_more = len(items) > limit
        items, rows = items[:limit], rows[:limit]
        last = (_utc(rows[-1][2]), items[-1].id) if items else None
        return Page(items, has_more, last)

    async def get_action(self, scope: Scope, action_id: str) -> ActionRecord | None:
        rows = await self.query(
            "SELECT doc FROM actions WHERE tenant_id = {t:String} AND livemode = {m:Bool} "
            "AND id = {id:String} LIMIT 1",
            {"t": scope.tenant_id, "m": scope.livemode, "id": action_id},
        )
        return ActionRecord.model_validate_json(rows[0][0]) if rows else None

    async def list_actions(
        self, scope: Scope, filters: dict[str, Any], limit: int, after: tuple[datetime, str] | None
    ) -> Page:
        params: dict[str, Any] = {"t": scope.tenant_id, "m": scope.livemode, "n": limit + 1}
        clauses = ["tenant_id = {t:String}", "livemode = {m:Bool}"]
        for name in ("plan_id", "operator_id", "entity_key", "tool"):
            if filters.get(name) is not None:
                params[name] = filters[name]
                clauses.append(f"{name} = {{{name}:String}}")
        if after is not None:
            params["after_ts"], params["after_id"] = after
            clauses.append(
                "(proposed_at, id) < ({after_ts:DateTime64(6, 'UTC')}, {after_id:String})"
            )
        rows = await self.query(
            f"SELECT doc FROM actions WHERE {' AND '.join(clauses)} "
            "ORDER BY proposed_at DESC, id DESC LIMIT 1 BY id LIMIT {n:UInt32}",
            params,
        )
        items = [ActionRecord.model_validate_json(r[0]) for r in rows]
        has_more = len(items) > limit
        items = items[:limit]
        return Page(items, has_more, (items[-1].proposed_at, items[-1].id) if items else None)

    def receipts_where(self, scope: Scope, filters: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {"t": scope.tenant_id, "m": scope.livemode}
        clauses = ["tenant_id = {t:String}", "livemode = {m:Bool}"]
        for name in RECEIPT_EQ_FILTERS:
            if filters.get(name) is not None:
                params[name] = filters[name]
                clauses.append(f"{name} = {{{name}:String}}")
        for name, op in (("since", ">="), ("until", "<")):
            if filters.get(name) is not None:
                params[name] = filters[name]
                clauses.append(f"created_at {op} {{{name}:DateTime64(6, 'UTC')}}")
        return " AND ".join(clauses), params

    async def export_receipts(self, scope: Scope, filters: dict[str, Any], fmt: str) -> bytes:
        """All matching receipts, oldest first, in a ClickHouse output format."""
        where, params = self.receipts_where(scope, filters)
        sql = (
            f"SELECT {', '.join(RECEIPT_COLUMNS)} FROM receipts WHERE {where} "
            "ORDER BY created_at, id LIMIT 1 BY id"
        )
        return await self._run(self._client.raw_query, sql, parameters=params, fmt=fmt)

    async def iter_receipts(
        self, scope: Scope, filters: dict[str, Any], chunk: int = EXPORT_CHUNK
    ) -> AsyncIterator[list[Receipt]]:
        """All matching receipts, oldest first, ``chunk`` at a time (exports): keyset pages on
        the table's order, so memory stays bounded by one chunk whatever the export's size."""
        where, params = self.receipts_where(scope, filters)
        after: tuple[datetime, str] | None = None
        while True:
            page_params = {**params, "n": chunk}
            clause = where
            if after is not None:
                page_params["after_ts"], page_params["after_id"] = after
                clause += (
                    " AND (created_at, id) > ({after_ts:DateTime64(6, 'UTC')}, {after_id:String})"
                )
            rows = await self.query(
                f"SELECT {', '.join(RECEIPT_COLUMNS)} FROM receipts WHERE {clause} "
                "ORDER BY created_at, id LIMIT 1 BY id LIMIT {n:UInt32}",
                page_params,
            )
            items = [receipt_from_row(r) for r in rows]
            if items:
                yield items
            if len(items) < chunk:
                return
            after = (items[-1].created_at, items[-1].id)

    async def save_export(self, scope: Scope, doc: dict[str, Any], version: int) -> None:
        await self.insert(
            "exports",
            [
                [
                    scope.tenant_id,
                    scope.livemode,
                    datetime.fromisoformat(doc["created_at"].replace("Z", "+00:00")),
                    doc["id"],
                    version,
                    orjson.dumps(doc).decode(),
                ]
            ],
            ("tenant_id", "livemode", "created_at", "id", "version", "doc"),
        )

    async def get_export(self, scope: Scope, export_id: str) -> dict[str, Any] | None:
        rows = await self.query(
            "SELECT doc FROM exports WHERE tenant_id = {t:String} AND livemode = {m:Bool} "
            "AND id = {id:String} ORDER BY version DESC LIMIT 1",
            {"t": scope.tenant_id, "m": scope.livemode, "id": export_id},
        )
        return orjson.loads(rows[0][0]) if rows else None

    # ---- policy replay (api/replays.py, decisions §37) ---------------------------------------
    def _replay_where(self, scope: Scope, filters: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The receipts a replay re-judges: the tenant's, in the window, one per action (an
        action's verdict: DEDUP dispositions and whole-plan refusals carry none)."""
        params: dict[str, Any] = {
            "t": scope.tenant_id,
            "m": scope.livemode,
            "since": filters["since"],
            "until": filters["until"],
        }
        clauses = [
            "tenant_id = {t:String}",
            "livemode = {m:Bool}",
            "created_at >= {since:DateTime64(6, 'UTC')}",
            "created_at < {until:DateTime64(6, 'UTC')}",
            "action_id IS NOT NULL",
            "decision IN ('ALLOW', 'ALERT', 'BLOCK')",
        ]
        if filters.get("operator"):
            params["op"] = filters["operator"]
            clauses.append("(operator_id = {op:String} OR operator_name = {op:String})")
        tool = filters.get("tool")
        if tool:
            if is_glob(tool):
                params["tool_re"] = glob_to_regex(tool)
                clauses.append("match(assumeNotNull(tool), {tool_re:String})")
            else:
                params["tool"] = tool
                clauses.append("tool = {tool:String}")
        return " AND ".join(clauses), params

    async def replay_count(self, scope: Scope, filters: dict[str, Any]) -> int:
        """Receipt rows in a replay's window (what it scans)."""
        where, params = self._replay_where(scope, filters)
        rows = await self.query(f"SELECT count() FROM receipts WHERE {where}", params)
        return int(rows[0][0])

    async def replay_inputs(
        self, scope: Scope, filters: dict[str, Any], bucket: int, buckets: int
    ) -> list[StoredVerdicts]:
        """One bucket (by action id hash) of the stored verdicts, grouped by judge input: each
        action's first receipt in the window, then one row per (operator, version, connector,
        tool, value class, decision) with its count, a representative value and up to three
        plan ids. A value class is the values between two consecutive ``thresholds`` (every
        ``max_value`` the judge may compare with): the judge compares a value with nothing
        else, so all the values of a class get the same decision (decisions §37)."""
        where, params = self._replay_where(scope, filters)
        params.update(b=bucket, nb=buckets, th=sorted(filters.get("thresholds") or []))
        rows = await self.query(
            "SELECT t.1, t.2, t.3, t.4, t.5, min(t.6), t.7, count(), groupArray(3)(t.8) FROM ("
            "SELECT argMin((operator_id, guardrail_version, connector_id, connector_name, "
            "assumeNotNull(tool), value, decision, plan_id), (created_at, id)) AS t "
            f"FROM receipts WHERE {where} AND cityHash64(action_id) % {{nb:UInt32}} = {{b:UInt32}} "
            "GROUP BY action_id) GROUP BY t.1, t.2, t.3, t.4, t.5, t.7, "
            "if(isNull(t.6), -1, arrayCount(x -> x < assumeNotNull(t.6), {th:Array(Float64)}))",
            params,
        )
        return [
            StoredVerdicts(r[0], int(r[1]), r[2], r[3], r[4], r[5], r[6], int(r[7]), r[8])
            for r in rows
        ]

    async def rejudge(
        self,
        scope: Scope,
        filters: dict[str, Any],
        replayer: Replayer,
        bucket_rows: int = REPLAY_BUCKET_ROWS,
        progress: Callable[[int, float], Any] | None = None,
    ) -> int:
        """Feed the window's stored verdicts to ``replayer``, bucket by bucket (the judging in
        a thread, off the event loop); returns the receipt rows scanned. ``progress(rows,
        fraction)`` is called after each bucket."""
        rows = await self.replay_count(scope, filters)
        buckets = max(1, math.ceil(rows / bucket_rows))
        for b in range(buckets):
            groups = await self.replay_inputs(scope, filters, b, buckets)
            await asyncio.to_thread(replayer.feed, groups)
            if progress is not None:
                progress(rows, (b + 1) / buckets)
        return rows

    async def operator_versions(self, scope: Scope) -> list[Operator]:
        """Every stored version of the tenant's operators (the config log's operator records)."""
        rows = await self.query(
            "SELECT record FROM config_log WHERE tenant_id = {t:String} AND kind = 'operator' "
            "ORDER BY at, id LIMIT 1 BY id",
            {"t": scope.tenant_id},
        )
        out = []
        for (raw,) in rows:
            op = Operator.model_validate(orjson.loads(raw)["data"])
            if op.livemode == scope.livemode:
                out.append(op)
        return out

    async def save_replay(self, scope: Scope, doc: dict[str, Any], version: int) -> None:
        await self.insert(
            "guardrail_replays",
            [
                [
                    scope.tenant_id,
                    scope.livemode,
                    datetime.fromisoformat(doc["created_at"].replace("Z", "+00:00")),
                    doc["id"],
                    version,
                    orjson.dumps(doc).decode(),
                ]
            ],
            ("tenant_id", "livemode", "created_at", "id", "version", "doc"),
        )

    async def get_replay(self, scope: Scope, replay_id: str) -> tuple[dict[str, Any], int] | None:
        """The newest version of a replay job and its version number."""
        rows = await self.query(
            "SELECT doc, version FROM guardrail_replays WHERE tenant_id = {t:String} AND "
            "livemode = {m:Bool} AND id = {id:String} ORDER BY version DESC LIMIT 1",
            {"t": scope.tenant_id, "m": scope.livemode, "id": replay_id},
        )
        return (orjson.loads(rows[0][0]), int(rows[0][1])) if rows else None

    async def plan_ids_for_events(self, scope: Scope, event_ids: list[str]) -> dict[str, list[str]]:
        if not event_ids:
            return {}
        rows = await self.query(
            "SELECT event_id, groupUniqArray(id) FROM plans WHERE tenant_id = {t:String} AND "
            "livemode = {m:Bool} AND event_id IN {ids:Array(String)} GROUP BY event_id",
            {"t": scope.tenant_id, "m": scope.livemode, "ids": event_ids},
        )
        return {r[0]: sorted(r[1]) for r in rows}

    # ---- config ----------------------------------------------------------------------------
    async def config_records(self) -> list[bytes]:
        """Every config change in order, then the current vault entries (for a restore)."""
        rows = await self.query("SELECT record FROM config_log ORDER BY at, id LIMIT 1 BY id")
        vault = await self.query("SELECT record FROM vault FINAL ORDER BY at")
        return [r[0].encode() for r in rows] + [r[0].encode() for r in vault]

    async def purge_vault(self, connector_ids: list[str]) -> None:
        if connector_ids:
            await self._run(
                self._client.command,
                "DELETE FROM vault WHERE connector_id IN {ids:Array(String)}",
                parameters={"ids": connector_ids},
            )

    # ---- idempotency -----------------------------------------------------------------------
    async def get_idempotency(
        self, scope: Scope, route: str, key: str, not_before: datetime
    ) -> tuple[str, int, str, str] | None:
        rows = await self.query(
            "SELECT body_hash, status, response, request_id FROM idempotency_keys WHERE "
            "tenant_id = {t:String} AND livemode = {m:Bool} AND route = {r:String} AND "
            "key = {k:String} AND created_at >= {nb:DateTime64(6, 'UTC')} "
            "ORDER BY created_at LIMIT 1",
            {"t": scope.tenant_id, "m": scope.livemode, "r": route, "k": key, "nb": not_before},
        )
        return tuple(rows[0]) if rows else None

    # ---- webhook deliveries (api/deliveries.py) ---------------------------------------------
    async def new_deliveries(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Insert the deliveries not stored yet (ids are derived from what they deliver, so a
        replayed ledger batch finds its own) and return those."""
        if not deliveries:
            return []
        lo = min(d.created_at for d in deliveries) - DELIVERY_ID_SKEW
        hi = max(d.created_at for d in deliveries) + DELIVERY_ID_SKEW
        have = await self.existing_ids(
            "webhook_deliveries", "created_at", [d.id for d in deliveries], lo, hi
        )
        new = [d for d in deliveries if d.id not in have]
        await self.insert("webhook_deliveries", [delivery_row(d) for d in new], DELIVERY_COLUMNS)
        return new

    async def save_delivery_states(
        self, deliveries: list[Delivery], attempts: list[Attempt]
    ) -> None:
        await self.insert("webhook_attempts", [attempt_row(a) for a in attempts], ATTEMPT_COLUMNS)
        await self.insert(
            "webhook_deliveries", [delivery_row(d) for d in deliveries], DELIVERY_COLUMNS
        )

    async def pending_deliveries(
        self, endpoint_id: str | None = None, limit: int = 100_000
    ) -> list[Delivery]:
        """Pending deliveries (latest versions), in delivery order: the dispatcher's queue."""
        clause = "" if endpoint_id is None else "AND endpoint_id = {e:String} "
        rows = await self.query(
            f"SELECT {', '.join(DELIVERY_COLUMNS)} FROM webhook_deliveries FINAL "
            f"WHERE status = 'pending' {clause}ORDER BY occurred_at, id LIMIT {{n:UInt32}}",
            {"e": endpoint_id or "", "n": limit},
        )
        return [delivery_from_row(r) for r in rows]

    async def list_deliveries(
        self,
        scope: Scope,
        endpoint_id: str,
        status: str | None,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> Page:
        params: dict[str, Any] = {
            "t": scope.tenant_id,
            "m": scope.livemode,
            "e": endpoint_id,
            "n": limit + 1,
        }
        clauses = ["tenant_id = {t:String}", "livemode = {m:Bool}", "endpoint_id = {e:String}"]
        if status is not None:
            params["s"] = status
            clauses.append("status = {s:String}")
        if after is not None:
            params["at"], params["ai"] = after
            clauses.append("(created_at, id) < ({at:DateTime64(6, 'UTC')}, {ai:String})")
        rows = await self.query(
            f"SELECT {', '.join(DELIVERY_COLUMNS)} FROM webhook_deliveries FINAL WHERE "
            f"{' AND '.join(clauses)} ORDER BY created_at DESC, id DESC LIMIT {{n:UInt32}}",
            params,
        )
        items = [delivery_from_row(r) for r in rows]
        more = len(items) > limit
        items = items[:limit]
        last = (items[-1].created_at, items[-1].id) if items else None
        return Page(items, more, last)

    async def get_delivery(
        self, scope: Scope, endpoint_id: str, delivery_id: str
    ) -> Delivery | None:
        rows = await self.query(
            f"SELECT {', '.join(DELIVERY_COLUMNS)} FROM webhook_deliveries WHERE "
            "tenant_id = {t:String} AND livemode = {m:Bool} AND endpoint_id = {e:String} "
            "AND id = {id:String} ORDER BY version DESC LIMIT 1",
            {"t": scope.tenant_id, "m": scope.livemode, "e": endpoint_id, "id": delivery_id},
        )
        return delivery_from_row(rows[0]) if rows else None

    async def attempts_for(self, scope: Scope, delivery_ids: list[str]) -> list[Attempt]:
        if not delivery_ids:
            return []
        rows = await self.query(
            f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM webhook_attempts FINAL WHERE "
            "tenant_id = {t:String} AND livemode = {m:Bool} AND delivery_id IN {ids:Array(String)} "
            "ORDER BY delivery_id, attempt",
            {"t": scope.tenant_id, "m": scope.livemode, "ids": delivery_ids},
        )
        return [attempt_from_row(r) for r in rows]

    async def actions_by_ids(self, scope: Scope, ids: list[str]) -> list[ActionRecord]:
        if not ids:
            return []
        rows = await self.query(
            "SELECT doc FROM actions WHERE tenant_id = {t:String} AND livemode = {m:Bool} "
            "AND id IN {ids:Array(String)} LIMIT 1 BY id",
            {"t": scope.tenant_id, "m": scope.livemode, "ids": ids},
        )
        return [ActionRecord.model_validate_json(r[0]) for r in rows]

    async def plans_by_ids(self, scope: Scope, ids: list[str]) -> list[Plan]:
        """The latest version of each plan."""
        if not ids:
            return []
        rows = await self.query(
            "SELECT doc FROM plans WHERE tenant_id = {t:String} AND livemode = {m:Bool} "
            "AND id IN {ids:Array(String)} ORDER BY version DESC LIMIT 1 BY id",
            {"t": scope.tenant_id, "m": scope.livemode, "ids": ids},
        )
        return [Plan.model_validate_json(r[0]) for r in rows]


def _sql_error(exc: BaseException) -> FibricError:
    code, message = analyst.engine_code(exc), analyst.engine_message(exc)
    if code in analyst.REFUSED_CODES:
        return FibricError(ErrorCode.SQL_REFUSED, f"Refused by the ledger: {message}", param="query")
    if code in analyst.LIMIT_CODES:
        return FibricError(ErrorCode.SQL_LIMIT_EXCEEDED, f"Query limit: {message}", param="query")
    return FibricError(ErrorCode.SQL_INVALID, f"Invalid query: {message}", param="query")


def _statements(sql: str) -> list[str]:
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
