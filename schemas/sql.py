"""Analyst SQL (``POST /v1/sql``, scope ``ledger:query``; decisions §42): the request body and the
``sql_result`` object. Pure: no I/O here; the engine-side wall is ``ledger/analyst.py``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The longest query text accepted (the analytics examples are a few hundred characters).
MAX_QUERY_CHARS = 20_000
# Row and time limits: the body may lower them (ledger/analyst.py holds the same numbers).
MAX_ROWS = 10_000
DEFAULT_ROWS = 1_000
MAX_SECONDS = 30.0
DEFAULT_SECONDS = 10.0


class SqlQuery(BaseModel):
    """Body of ``POST /v1/sql``: one read-only SELECT over the tenant's own ledger rows."""

    model_config = ConfigDict(extra="forbid", strict=True)

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    # named parameters the query refers to as {name:Type} (ClickHouse query parameters)
    parameters: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=50)
    max_rows: int = Field(default=DEFAULT_ROWS, ge=1, le=MAX_ROWS)
    timeout_s: float = Field(default=DEFAULT_SECONDS, gt=0, le=MAX_SECONDS)


class SqlColumn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    type: str  # the ClickHouse type, e.g. "DateTime64(6, 'UTC')"


class SqlResult(BaseModel):
    """The answer of ``POST /v1/sql``: ``rows`` in ``columns`` order (JSON values; 64-bit
    integers as numbers, decimals and other exotic types as strings)."""

    model_config = ConfigDict(extra="forbid")

    object: Literal["sql_result"] = "sql_result"
    livemode: bool
    columns: list[SqlColumn]
    rows: list[list[Any]]
    row_count: int
    max_rows: int
    elapsed_ms: float
