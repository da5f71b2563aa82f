"""Cursor pagination: ``limit`` 1–100 (never clamped) and opaque cursors bound to their filters."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import orjson

from api.query import only_params
from ledger.store import DATETIME_MAX, DATETIME_MIN
from schemas.errors import ErrorCode, FibricError

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# Longest digit string parse_count converts: far beyond any count a query takes, and it keeps
# int() (quadratic in the number of digits) cheap on hostile input.
MAX_COUNT_DIGITS = 9


def parse_count(raw: str) -> int | None:
    """A non-negative count from a query string: ASCII digits only, else None. ``int()`` alone
    also takes surrounding spaces, ``_`` separators, a sign and non-ASCII digits (``"٢٠"``)."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > MAX_COUNT_DIGITS:
        return None
    return int(raw)


def parse_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    value = parse_count(raw)
    if value is None or not 1 <= value <= MAX_LIMIT:
        raise FibricError(
            ErrorCode.INVALID_PARAMETER,
            f"limit must be an integer from 1 to {MAX_LIMIT}.",
            param="limit",
        )
    return value


def fingerprint(filters: dict[str, Any], bind: str = "") -> str:
    """The filters a cursor is bound to. ``bind`` names the list (``"plans"``, ``"receipts"``…):
    a list that passes one refuses another list's cursor even when both have no filters (a
    cursor is a position in one list's order; another list's position means nothing)."""
    canon = orjson.dumps({k: v for k, v in sorted(filters.items()) if v is not None}, default=str)
    if bind:
        canon = bind.encode() + b"\x00" + canon
    return hashlib.sha256(canon).hexdigest()[:16]


def encode_cursor(key: tuple[datetime, str], filters: dict[str, Any], bind: str = "") -> str:
    ts, id_ = key
    doc = {"t": int(ts.timestamp() * 1_000_000), "i": id_, "f": fingerprint(filters, bind)}
    return "cur_" + base64.urlsafe_b64encode(orjson.dumps(doc)).decode().rstrip("=")


def decode_cursor(
    cursor: str | None, filters: dict[str, Any], bind: str = ""
) -> tuple[datetime, str] | None:
    if not cursor:
        return None
    bad = FibricError(
        ErrorCode.INVALID_CURSOR,
        "This cursor is invalid, stale, or belongs to a query with other filters; "
        "restart from the first page.",
        param="cursor",
    )
    if not cursor.startswith("cur_") or len(cursor) > 512:
        raise bad
    try:
        body = cursor[4:]
        doc = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        ts = datetime.fromtimestamp(int(doc["t"]) / 1_000_000, tz=UTC)
        id_, fp = str(doc["i"]), str(doc["f"])
    except (ValueError, KeyError, TypeError, OverflowError, OSError, orjson.JSONDecodeError):
        raise bad from None
    if fp != fingerprint(filters, bind) or not DATETIME_MIN <= ts <= DATETIME_MAX:
        raise bad
    return ts, id_


def list_body(
    data: list[Any],
    has_more: bool,
    next_key: tuple[datetime, str] | None,
    filters: dict[str, Any],
    bind: str = "",
) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "next_cursor": encode_cursor(next_key, filters, bind) if has_more and next_key else None,
    }


def paginate(
    items: list[Any], key: Any, limit: int, after: tuple[datetime, str] | None
) -> tuple[list[Any], bool, tuple[datetime, str] | None]:
    """Newest-first keyset pagination over an in-memory list (config objects)."""
    ordered = sorted(items, key=key, reverse=True)
    if after is not None:
        ordered = [i for i in ordered if key(i) < after]
    page = ordered[:limit]
    return page, len(ordered) > limit, (key(page[-1]) if page else None)


# The query parameters a status-filtered config list takes.
STATUS_LIST_PARAMS = frozenset({"limit", "cursor", "status"})


class _Listed(Protocol):
    id: str
    status: Any
    created_at: datetime


L = TypeVar("L", bound=_Listed)


def status_list(
    query: Mapping[str, Any],
    items: Iterable[L],
    statuses: tuple[str, ...],
    bind: str,
    public: Callable[[L], dict[str, Any]],
) -> dict[str, Any]:
    """One newest-first page of the config objects ``items`` (from the config view) as a list
    body: ``limit``, ``cursor`` (bound to ``bind`` and the filter) and an optional ``status``
    filter from ``statuses``; any other parameter is a 400."""
    only_params(query, STATUS_LIST_PARAMS)
    limit = parse_limit(query.get("limit"))
    status = query.get("status")
    if status is not None and status not in statuses:
        raise FibricError(
            ErrorCode.INVALID_PARAMETER,
            f"status must be one of {', '.join(statuses)}.",
            param="status",
        )
    raw = {"status": status}
    after = decode_cursor(query.get("cursor"), raw, bind)
    chosen = [o for o in items if status is None or o.status == status]
    page, more, last = paginate(chosen, lambda o: (o.created_at, o.id), limit, after)
    return list_body([public(o) for o in page], more, last, raw, bind)
