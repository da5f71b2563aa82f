"""Query-string parameters shared by the /v1 lists and streams: RFC 3339 time bounds, the event
filters of ``GET /v1/events`` (and its streams), and the refusal of parameters a route does not
take (a misspelt filter silently matching everything is worse than a 400)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from agents.globs import glob_problem, is_glob
from ledger.store import DATETIME_MAX, DATETIME_MIN, EventFilters
from schemas.errors import ErrorCode, FibricError

EVENT_FILTER_PARAMS = (
    "event_type",
    "source",
    "correlation_id",
    "workspace_id",
    "entity_key",
    "since",
    "until",
)


def parse_time(raw: str | None, param: str) -> datetime | None:
    if raw is None or raw == "":
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise FibricError(
            ErrorCode.INVALID_PARAMETER, f"{param} must be an RFC 3339 timestamp.", param=param
        ) from None
    if value.tzinfo is None:
        raise FibricError(
            ErrorCode.INVALID_PARAMETER, f"{param} must include a timezone (e.g. Z).", param=param
        )
    try:
        value = value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 has no UTC instant
        value = datetime.min.replace(tzinfo=UTC)
    if not DATETIME_MIN <= value <= DATETIME_MAX:
        raise FibricError(
            ErrorCode.INVALID_PARAMETER,
            f"{param} must be from {_iso(DATETIME_MIN)} to {_iso(DATETIME_MAX)}.",
            param=param,
        )
    return value


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def event_filters(query: Mapping[str, Any]) -> tuple[EventFilters, dict[str, Any]]:
    """The ``GET /v1/events`` filters of ``query`` (a request's query parameters), and the raw
    values a cursor is bound to."""
    raw = {name: query.get(name) for name in EVENT_FILTER_PARAMS}
    for name, value in raw.items():
        if value is not None and (value == "" or len(value) > 200):
            raise FibricError(
                ErrorCode.INVALID_PARAMETER, f"{name} must be 1–200 characters.", param=name
            )
    if raw["event_type"] is not None and is_glob(raw["event_type"]):
        problem = glob_problem(raw["event_type"])
        if problem:
            raise FibricError(
                ErrorCode.INVALID_PARAMETER, f"event_type: {problem}.", param="event_type"
            )
    filters = EventFilters(
        event_type=raw["event_type"],
        source=raw["source"],
        correlation_id=raw["correlation_id"],
        workspace_id=raw["workspace_id"],
        entity_key=raw["entity_key"],
        since=parse_time(raw["since"], "since"),
        until=parse_time(raw["until"], "until"),
    )
    return filters, raw


def only_params(query: Iterable[str], allowed: frozenset[str]) -> None:
    """400 naming the first (in sort order) query parameter not in ``allowed``."""
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise FibricError(
            ErrorCode.INVALID_PARAMETER,
            f"{unknown[0][:60]} is not a recognised parameter.",
            param=unknown[0][:60],
        )
