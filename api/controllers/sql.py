"""``POST /v1/sql`` (scope ``ledger:query``, in no role preset): one read-only SELECT over the
key's tenant and mode, run by the embedded ledger under its row policies and limits
(ledger/analyst.py, decisions §42). ``fibric sql`` is its command-line client."""

from __future__ import annotations

from typing import Any

import orjson
from litestar import Controller, Request, Response, post

from api.auth import api_state, auth_of
from api.body import read_body, validate
from api.respond import documented, respond
from schemas.sql import SqlQuery, SqlResult


def _json_safe(rows: list[list[Any]]) -> list[list[Any]]:
    """Rows as JSON values: orjson takes datetimes, UUIDs and non-string map keys; anything
    else it cannot encode (Decimal, IP addresses, bytes) becomes its string form."""
    return orjson.loads(
        orjson.dumps(rows, default=str, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z)
    )


class SqlController(Controller):
    path = "/sql"
    tags = ["ledger"]

    @post(
        "/",
        opt={"scope": "ledger:query", "route_class": "ledger_query"},
        operation_id="runSqlQuery",
        status_code=200,
        **documented(403, 422, 503, body=SqlQuery),
    )
    async def run_sql(
        self, request: Request[Any, Any, Any], data: SqlQuery | None = None
    ) -> Response[SqlResult]:
        """Run one read-only ``SELECT`` over this tenant's ledger (``events``, ``dead_letters``,
        ``plans``, ``actions``, ``receipts``, ``config_log``) in the key's mode. The ledger
        itself scopes every table read to the tenant; writes, table functions, system tables
        and settings are refused (403 ``sql_refused``), a row or time limit beyond ``max_rows``
        / ``timeout_s`` is 422 ``sql_limit_exceeded``. ``{tenant:String}`` is bound to the key's
        tenant unless ``parameters`` names it."""
        state, auth = api_state(request), auth_of(request)
        body = validate(SqlQuery, await read_body(request))
        scope = auth.scope
        params: dict[str, Any] = {"tenant": scope.tenant_id, **body.parameters}
        out = await state.store.analyst_query(
            scope, body.query, body.max_rows, body.timeout_s, params
        )
        rows = _json_safe(out["rows"])
        return respond(
            SqlResult,
            {
                "object": "sql_result",
                "livemode": scope.livemode,
                "columns": out["columns"],
                "rows": rows,
                "row_count": len(rows),
                "max_rows": body.max_rows,
                "elapsed_ms": out["elapsed_ms"],
            },
        )
