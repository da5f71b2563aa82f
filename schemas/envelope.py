"""Event envelopes: the API request body, the Kafka wire envelope, the stored/API event object,
and the dead-letter (refusal) record for envelopes that cannot be processed.

Wire contract of ``fibric.events.v1`` (what producers publish): JSON :class:`EventEnvelope`,
message key ``<tenant_id>:<entity_key or idempotency_key or anything stable>``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.limits import (
    MAX_FIELD_CHARS,
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_PAYLOAD_BYTES,
    MAX_RECEIVED_AT,
    MAX_TENANT_ID_CHARS,
    MIN_RECEIVED_AT,
)

# Re-exported: every input limit lives in schemas/limits.py (README "Limits" table).
__all__ = ["MAX_PAYLOAD_BYTES"]

SCHEMA_VERSION: Literal[1] = 1

# Raw bytes kept on a dead-letter record so the tenant can see what was refused.
MAX_DEAD_LETTER_RAW = 16 * 1024

EVENT_TYPE_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$"
_FieldStr = Field(min_length=1, max_length=MAX_FIELD_CHARS)


class EventIn(BaseModel):
    """Body of ``POST /v1/events``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    source: str = _FieldStr
    event_type: str = Field(min_length=3, max_length=MAX_FIELD_CHARS, pattern=EVENT_TYPE_PATTERN)
    payload: dict[str, Any]
    correlation_id: str | None = Field(default=None, min_length=1, max_length=MAX_FIELD_CHARS)
    workspace_id: str | None = Field(default=None, min_length=1, max_length=MAX_FIELD_CHARS)
    entity_key: str | None = Field(default=None, min_length=1, max_length=MAX_FIELD_CHARS)
    # Accepted only so a mismatch can be refused with 403 tenant_mismatch; tenancy comes from
    # the API key, never from the body.
    tenant_id: str | None = None
    reseller_id: str | None = None


class EventEnvelope(BaseModel):
    """The envelope on ``fibric.events.v1``. Producers set the caller fields; Fibric the rest."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str | None = Field(default=None, pattern=r"^ev_[0-9A-Z]{26}$")
    tenant_id: str = Field(min_length=3, max_length=MAX_TENANT_ID_CHARS)
    reseller_id: str | None = Field(default=None, max_length=MAX_TENANT_ID_CHARS)
    livemode: bool = False
    workspace_id: str | None = Field(default=None, min_length=1, max_length=MAX_FIELD_CHARS)
    source: str = _FieldStr
    event_type: str = Field(min_length=3, max_length=MAX_FIELD_CHARS, pattern=EVENT_TYPE_PATTERN)
    correlation_id: str | None = Field(default=None, min_length=1, max_length=MAX_FIELD_CHARS)
    payload: dict[str, Any]
    agent_id: str | None = Field(default=None, max_length=MAX_FIELD_CHARS)
    session_id: str | None = Field(default=None, max_length=MAX_FIELD_CHARS)
    entity_key: str | None = Field(default=None, min_length=1, max_length=MAX_FIELD_CHARS)
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=MAX_IDEMPOTENCY_KEY_CHARS
    )
    received_at: datetime | None = None
    # Set by Fibric only: offer this (already stored) event to one operator — a catch-up replay
    # after a paused operator resumes, or a scheduled run.
    route_to: str | None = Field(default=None, pattern=r"^op_[0-9A-Z]{26}$")
    request_id: str | None = Field(default=None, max_length=MAX_FIELD_CHARS)

    @field_validator("received_at")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        if v.tzinfo is None:
            raise ValueError("received_at must carry a timezone (RFC 3339)")
        if not MIN_RECEIVED_AT <= v <= MAX_RECEIVED_AT:
            raise ValueError(
                f"received_at must be from {MIN_RECEIVED_AT.date()} to {MAX_RECEIVED_AT.date()}"
            )
        return v.astimezone(UTC)

    def to_event(self, event_id: str, correlation_id: str, created_at: datetime) -> Event:
        """The stored event this envelope becomes (the one envelope -> event copy: ingest's
        ``admit`` and the api use it; ids and times are the caller's, as only it knows them)."""
        return Event(
            id=event_id,
            tenant_id=self.tenant_id,
            reseller_id=self.reseller_id,
            livemode=self.livemode,
            workspace_id=self.workspace_id,
            source=self.source,
            event_type=self.event_type,
            correlation_id=correlation_id,
            payload=self.payload,
            agent_id=self.agent_id,
            session_id=self.session_id,
            entity_key=self.entity_key,
            idempotency_key=self.idempotency_key,
            request_id=self.request_id,
            created_at=created_at,
        )


# Event fields carried on the wire under the same name (id -> event_id, created_at ->
# received_at are renamed; object is not carried).
_WIRE_FIELDS = (
    "tenant_id",
    "reseller_id",
    "livemode",
    "workspace_id",
    "source",
    "event_type",
    "correlation_id",
    "payload",
    "agent_id",
    "session_id",
    "entity_key",
    "idempotency_key",
)


class Event(BaseModel):
    """The stored event and API object (``object: "event"``)."""

    id: str
    object: Literal["event"] = "event"
    tenant_id: str
    reseller_id: str | None = None
    livemode: bool
    workspace_id: str | None = None
    source: str
    event_type: str
    correlation_id: str
    payload: dict[str, Any]
    agent_id: str | None = None
    session_id: str | None = None
    entity_key: str | None = None
    idempotency_key: str | None = None
    request_id: str | None = None
    created_at: datetime

    def envelope_json(self) -> dict[str, Any]:
        """The ``fibric.events.v1`` envelope of this event as JSON-ready values (the one
        event -> envelope copy): exactly ``EventEnvelope(...).model_dump(mode="json",
        exclude_none=True)`` of the same fields, without building a second model. The caller
        validated every field already (this event was made from a validated ``EventIn``)."""
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "event_id": self.id}
        for name in _WIRE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out["received_at"] = _rfc3339(self.created_at)
        if self.request_id is not None:
            out["request_id"] = self.request_id
        return out

    def object_json(self) -> dict[str, Any]:
        """``self.model_dump(mode="json")`` without pydantic's serializer walking the payload
        (the hot path of ``POST /v1/events``): every field but ``created_at`` is already a JSON
        value (the payload came from JSON), so only the timestamp needs its JSON form. A unit
        test compares the two on every field."""
        out = {name: getattr(self, name) for name in _EVENT_FIELDS}
        out["created_at"] = _rfc3339(self.created_at)
        return out

    def to_envelope(self) -> EventEnvelope:
        """The same envelope as a validated model (for callers that need the model)."""
        return EventEnvelope.model_validate(self.envelope_json())

    def replay_envelope_json(self, route_to: str) -> dict[str, Any]:
        """This stored event offered again to one operator (``route_to``; a catch-up replay,
        decisions §15): :meth:`envelope_json` without ``idempotency_key`` — ingest would
        deduplicate the replay against the event itself — and with ``route_to``. Same id and
        time: the ledger keeps one copy."""
        out = self.envelope_json()
        out.pop("idempotency_key", None)
        out["route_to"] = route_to
        return out


_EVENT_FIELDS = tuple(Event.model_fields)


def _rfc3339(value: datetime) -> str:
    """pydantic's JSON form of an aware datetime (``2026-01-02T03:04:05.123456Z``)."""
    value = value.astimezone(UTC)
    text = value.replace(tzinfo=None).isoformat()
    return text + "Z"


class DeadLetter(BaseModel):
    """A refusal record for an envelope that could not be processed (``object: "dead_letter"``)."""

    id: str
    object: Literal["dead_letter"] = "dead_letter"
    tenant_id: str  # "" when the envelope named no known tenant
    livemode: bool = False
    reason: str  # stable code: invalid_json | invalid_envelope | unknown_tenant | payload_too_large
    message: str
    errors: list[dict[str, Any]] = []
    raw: str
    source_topic: str
    partition: int
    offset: int
    created_at: datetime


class LedgerRecord(BaseModel):
    """One row for ClickHouse, carried on ``fibric.ledger.v1`` (and the DLQ / config topics)."""

    kind: Literal["event", "dead_letter", "config", "plan", "action", "receipt"]
    row: dict[str, Any]
