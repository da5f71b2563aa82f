"""Pure ingest logic: decode and validate one raw envelope, stamp it, or refuse it.

No Faust, Kafka or ClickHouse here. The ``ingest_events`` agent calls :func:`admit` per record
and writes the results; a refusal becomes a dead-letter record, never an exception, so one bad
envelope can never crash the agent or block the next one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.envelope import MAX_DEAD_LETTER_RAW, DeadLetter, Event, EventEnvelope
from schemas.ids import derived_id
from schemas.limits import check_payload


@dataclass(frozen=True, slots=True)
class Coordinates:
    """Where a record came from; it makes derived ids deterministic across replays."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Admitted:
    event: Event
    dedup_key: str | None  # (tenant, mode, idempotency key) when the producer gave one
    route_to: str | None = None  # offer only to this operator (catch-up replay, scheduled run)


@dataclass(frozen=True, slots=True)
class Refused:
    dead_letter: DeadLetter


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]


def _refuse(
    raw: bytes,
    at: Coordinates,
    reason: str,
    message: str,
    *,
    tenant_id: str = "",
    livemode: bool = False,
    errors: list[dict[str, Any]] | None = None,
) -> Refused:
    return Refused(
        DeadLetter(
            id=derived_id("dl", at.timestamp_ms, at.topic, at.partition, at.offset),
            tenant_id=tenant_id,
            livemode=livemode,
            reason=reason,
            message=message,
            errors=errors or [],
            raw=raw[:MAX_DEAD_LETTER_RAW].decode("utf-8", errors="replace"),
            source_topic=at.topic,
            partition=at.partition,
            offset=at.offset,
            created_at=datetime.fromtimestamp(at.timestamp_ms / 1000, tz=UTC),
        )
    )


def dedup_key(tenant_id: str, livemode: bool, idempotency_key: str) -> str:
    return f"{tenant_id}\x1f{int(livemode)}\x1f{idempotency_key}"


def admit(
    raw: bytes | None, at: Coordinates, tenant_exists: Callable[[str], bool]
) -> Admitted | Refused:
    """Validate one envelope. Deterministic: the same bytes and coordinates give the same result."""
    if not raw:
        return _refuse(b"", at, "invalid_json", "empty record value")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _refuse(raw, at, "invalid_json", f"value is not JSON: {exc}")
    if not isinstance(doc, dict):
        return _refuse(raw, at, "invalid_envelope", "envelope must be a JSON object")
    tenant_field = doc.get("tenant_id")
    claimed_tenant = tenant_field if isinstance(tenant_field, str) else ""
    livemode = doc.get("livemode") is True
    known = bool(claimed_tenant) and tenant_exists(claimed_tenant)
    tenant_for_record = claimed_tenant if known else ""
    try:
        env = EventEnvelope.model_validate(doc)
    except ValidationError as exc:
        return _refuse(
            raw,
            at,
            "invalid_envelope",
            "envelope failed validation",
            tenant_id=tenant_for_record,
            livemode=livemode,
            errors=_errors(exc),
        )
    # the same limits as POST /v1/events (schemas/limits.py): what passes here, every later
    # step (orjson, model_dump_json, the ledger's JSON text) can serialise
    problems = check_payload(env.payload, raw)
    if problems:
        return _refuse(
            raw,
            at,
            problems[0].reason,
            problems[0].message,
            tenant_id=tenant_for_record,
            livemode=livemode,
            errors=[{"loc": p.loc, "msg": p.message, "type": p.limit} for p in problems],
        )
    if not known:
        return _refuse(raw, at, "unknown_tenant", f"no tenant {env.tenant_id!r}", livemode=livemode)
    received = env.received_at or datetime.fromtimestamp(at.timestamp_ms / 1000, tz=UTC)
    received_ms = int(received.timestamp() * 1000)
    event_id = env.event_id or derived_id("ev", received_ms, at.topic, at.partition, at.offset)
    event = env.to_event(
        event_id, env.correlation_id or derived_id("co", received_ms, event_id), received
    )
    key = (
        dedup_key(env.tenant_id, env.livemode, env.idempotency_key) if env.idempotency_key else None
    )
    return Admitted(event, key, env.route_to)
