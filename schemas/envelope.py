"""Event envelopes: the API request body, the Kafka wire envelope, the stored/API event object,
and the dead-letter (refusal) record for envelopes that cannot be processed.

Wire contract of ``fibric.events.v1`` (what producers publish): JSON :class:`EventEnvelope`,
message key ``<tenant_id>:<entity_key or idempotency_key or anything stable>``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1

# Event payloads are business documents; 512 KiB serialized is generous and keeps every Kafka
# record (envelope + metadata) under the default 1 MiB message size of Apache Kafka.
MAX_PAYLOAD_BYTES = 512 * 1024
# Raw bytes kept on a dead-letter record so the tenant can see what was refused.
MAX_DEAD_LETTER_RAW = 16 * 1024

EVENT_TYPE_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$"
_Str200 = Field(min_length=1, max_length=200)


class EventIn(BaseModel):
    """Body of ``POST /v1/events``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    source: str = _Str200
    event_type: str = Field(min_length=3, max_length=200, pattern=EVENT_TYPE_PATTERN)
    payload: dict[str, Any]
    correlation_id: str | None = Field(default=None, min_length=1, max_length=200)
    workspace_id: str | None = Field(default=None, min_length=1, max_length=200)
    entity_key: str | None = Field(default=None, min_length=1, max_length=200)
    # Accepted only so a mismatch can be refused with 403 tenant_mismatch; tenancy comes from
    # the API key, never from the body.
    tenant_id: str | None = None
    reseller_id: str | None = None


class EventEnvelope(BaseModel):
    """The envelope on ``fibric.events.v1``. Producers set the caller fields; Fibric the rest."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str | None = Field(default=None, pattern=r"^ev_[0-9A-Z]{26}$")
    tenant_id: str = Field(min_length=3, max_length=64)
    reseller_id: str | None = None
    livemode: bool = False
    workspace_id: str | None = Field(default=None, min_length=1, max_length=200)
    source: str = _Str200
    event_type: str = Field(min_length=3, max_length=200, pattern=EVENT_TYPE_PATTERN)
    correlation_id: str | None = Field(default=None, min_length=1, max_length=200)
    payload: dict[str, Any]
    agent_id: str | None = None
    session_id: str | None = None
    entity_key: str | None = Field(default=None, min_length=1, max_length=200)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)
    received_at: datetime | None = None
    # Set by Fibric only: offer this (already stored) event to one operator — a catch-up replay
    # after a paused operator resumes, or a scheduled run.
    route_to: str | None = Field(default=None, pattern=r"^op_[0-9A-Z]{26}$")
    request_id: str | None = None

    @field_validator("received_at")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("received_at must carry a timezone (RFC 3339)")
        return v.astimezone(UTC) if v is not None else None


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
