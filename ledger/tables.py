"""One spec per ClickHouse table the ledger sink writes: which record kind fills it, the model
its rows decode into, its columns and row codec, its time column (the primary key's prune for
the sink's "ids already stored?" check) and its row identity. The sink, the readers and the
exec-state restore all take these from here (``ledger/store.py`` holds the column tuples and
row functions the specs name)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ledger.store import (
    ACTION_COLUMNS,
    ATTEMPT_COLUMNS,
    CONFIG_COLUMNS,
    DEAD_LETTER_COLUMNS,
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    PLAN_COLUMNS,
    RECEIPT_COLUMNS,
    action_row,
    attempt_from_row,
    attempt_row,
    dead_letter_row,
    delivery_from_row,
    delivery_row,
    event_row,
    plan_row,
    receipt_from_row,
    receipt_row,
)
from schemas.config import ConfigRecord
from schemas.envelope import DeadLetter, Event
from schemas.plan import ActionRecord, Plan, Receipt
from schemas.webhook import Attempt, Delivery


def _config_row(c: ConfigRecord) -> list[Any]:
    return [c.tenant_id, c.at, c.id, c.kind, c.version, c.actor, c.model_dump_json()]


def _by_id(obj: Any) -> str:
    return obj.id


def _by_version(obj: Any) -> str:
    # plans are versioned rows: each version is stored once
    return f"{obj.id}#{obj.version}"


@dataclass(frozen=True, slots=True)
class TableSpec:
    kind: str  # the LedgerRecord kind (or "dead_letter" / "config" for their own topics)
    table: str
    model: type[Any]
    columns: tuple[str, ...]
    to_row: Callable[[Any], list[Any]]
    time_attr: str  # the model attribute the time column holds
    time_col: str
    identity: Callable[[Any], str]  # one stored row per identity
    id_expr: str = "id"  # the same identity as a ClickHouse expression
    from_row: Callable[[Any], Any] | None = None


TABLES: dict[str, TableSpec] = {
    s.kind: s
    for s in (
        TableSpec(
            "event", "events", Event, EVENT_COLUMNS, event_row, "created_at", "created_at", _by_id
        ),
        TableSpec(
            "dead_letter",
            "dead_letters",
            DeadLetter,
            DEAD_LETTER_COLUMNS,
            dead_letter_row,
            "created_at",
            "created_at",
            _by_id,
        ),
        TableSpec(
            "config", "config_log", ConfigRecord, CONFIG_COLUMNS, _config_row, "at", "at", _by_id
        ),
        TableSpec(
            "plan",
            "plans",
            Plan,
            PLAN_COLUMNS,
            plan_row,
            "created_at",
            "created_at",
            _by_version,
            "concat(id, '#', toString(version))",
        ),
        TableSpec(
            "action",
            "actions",
            ActionRecord,
            ACTION_COLUMNS,
            action_row,
            "proposed_at",
            "proposed_at",
            _by_id,
        ),
        TableSpec(
            "receipt",
            "receipts",
            Receipt,
            RECEIPT_COLUMNS,
            receipt_row,
            "created_at",
            "created_at",
            _by_id,
            from_row=receipt_from_row,
        ),
    )
}

# Tables the api's webhook dispatcher (api/deliveries.py) writes itself, not the sink from a
# topic: no LedgerRecord has these kinds. Same spec shape, so columns and codecs sit together.
WEBHOOK_TABLES: dict[str, TableSpec] = {
    s.kind: s
    for s in (
        TableSpec(
            "webhook_delivery",
            "webhook_deliveries",
            Delivery,
            DELIVERY_COLUMNS,
            delivery_row,
            "created_at",
            "created_at",
            _by_version,
            "concat(id, '#', toString(version))",
            from_row=delivery_from_row,
        ),
        TableSpec(
            "webhook_attempt",
            "webhook_attempts",
            Attempt,
            ATTEMPT_COLUMNS,
            attempt_row,
            "at",
            "at",
            lambda a: f"{a.delivery_id}#{a.attempt}",
            "concat(delivery_id, '#', toString(attempt))",
            from_row=attempt_from_row,
        ),
    )
}
