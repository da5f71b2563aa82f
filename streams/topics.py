"""Every topic Fibric uses, in one place. Topics are created explicitly at start
(never by broker auto-create), all with the same partition count except where noted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

EVENTS = "fibric.events.v1"  # envelopes from producers and POST /v1/events; key tenant:entity
LEDGER = "fibric.ledger.v1"  # rows for ClickHouse, written by workers; key tenant
DLQ = "fibric.dlq.v1"  # refusal records for envelopes that could not be processed; key tenant
# config log (tenants, keys, operators, connectors, vault): partitioned by tenant, keyed by
# kind:object_id so compaction keeps every object's latest state; compacted in production
CONFIG = "fibric.config.v1"
HEARTBEATS = "fibric.heartbeats.v1"  # worker liveness for /readyz; one partition
COMMANDS = "fibric.commands.v1"  # config commands to the control agent; key tenant
REPLIES = "fibric.replies.v1"  # control agent replies; partition = hash(requesting instance)
OFFERS = "fibric.offers.v1"  # events offered to operators with external models; key op:entity
ACTIONS = "fibric.actions.v1"  # vetted actions to the executor; key tenant:entity_key
EXECSTATE = "fibric.execstate.v1"  # executor intent/result per idempotency key; same partitions

# Consumer groups
INGEST_GROUP = "fibric"  # the Faust app id
LEDGER_GROUP = "fibric-ledger"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int | None  # None = the configured FIBRIC_PARTITIONS
    compacted: bool = False
    # retention for the production broker; Tansu (memory engine) ignores both
    retention_ms: int | None = None


def topic_specs() -> tuple[TopicSpec, ...]:
    day = 24 * 3600 * 1000
    return (
        TopicSpec(EVENTS, None, retention_ms=7 * day),
        TopicSpec(LEDGER, None, retention_ms=7 * day),
        TopicSpec(DLQ, None, retention_ms=30 * day),
        # The config log is the source of truth for configuration: compacted, kept forever.
        TopicSpec(CONFIG, None, compacted=True, retention_ms=-1),
        TopicSpec(HEARTBEATS, 1, retention_ms=3600 * 1000),
        TopicSpec(COMMANDS, None, retention_ms=day),
        TopicSpec(REPLIES, None, retention_ms=3600 * 1000),
        TopicSpec(OFFERS, None, retention_ms=7 * day),
        TopicSpec(ACTIONS, None, retention_ms=7 * day),
        # the executor's seen-set: compacted, kept forever (DEDUP is permanent per tenant)
        TopicSpec(EXECSTATE, None, compacted=True, retention_ms=-1),
    )


# ---- keys and codecs: the one place each produce site gets them from --------------------------
LEDGER_KINDS = ("event", "dead_letter", "config", "plan", "action", "receipt")


def entity_key(tenant_id: str, entity: str) -> bytes:
    """Key of ``fibric.events.v1`` and ``fibric.actions.v1``: one entity's records share a
    partition, so they stay in order (single-flight for actions)."""
    return f"{tenant_id}:{entity}".encode()


def action_key(a: Any) -> bytes:
    return entity_key(a.tenant_id, a.entity_key)


def ledger_value(kind: str, obj: Any) -> bytes:
    """A ``LedgerRecord`` (``{"kind": …, "row": …}``) from a pydantic model, serialised once."""
    assert kind in LEDGER_KINDS, kind
    return b'{"kind":"' + kind.encode() + b'","row":' + obj.model_dump_json().encode() + b"}"


def ledger_value_of_row(kind: str, row: dict[str, Any]) -> bytes:
    """A ``LedgerRecord`` from an already-JSON row (a receipt re-emitted from executor state)."""
    assert kind in LEDGER_KINDS, kind
    return orjson.dumps({"kind": kind, "row": row})


def ledger_key(tenant_id: str) -> bytes:
    return tenant_id.encode()
