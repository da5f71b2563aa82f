"""Cadence runs: which cron slots of an operator's ``schedule`` fell in a time window, and the
envelope that starts such a run. Pure and deterministic: a slot always yields the same event id
and idempotency key, so two workers that both notice a slot produce one run."""

from __future__ import annotations

from datetime import datetime

from croniter import croniter

from schemas.envelope import EventEnvelope
from schemas.ids import derived_id
from schemas.operator import Operator

SCHEDULE_EVENT_TYPE = "schedule.tick"
# A scheduler that was down longer than this does not replay every missed slot, only the last.
MAX_SLOTS_PER_SCAN = 1


def due_slots(schedule: str, after: datetime, until: datetime) -> list[datetime]:
    """Cron slots in (after, until], newest last, at most MAX_SLOTS_PER_SCAN."""
    it = croniter(schedule, after)
    slots = []
    while True:
        slot = it.get_next(datetime)
        if slot > until:
            break
        slots.append(slot)
    return slots[-MAX_SLOTS_PER_SCAN:]


def run_envelope(op: Operator, slot: datetime) -> EventEnvelope:
    ms = int(slot.timestamp() * 1000)
    run_id = derived_id("run", ms, op.id, "schedule")
    return EventEnvelope(
        event_id=derived_id("ev", ms, op.id, "schedule"),
        tenant_id=op.tenant_id,
        livemode=op.livemode,
        source="cron",
        event_type=SCHEDULE_EVENT_TYPE,
        payload={"run_id": run_id, "operator_id": op.id, "scheduled_for": slot.isoformat()},
        agent_id=op.id,
        session_id=run_id,
        entity_key=f"operator:{op.id}",
        idempotency_key=f"schedule:{op.id}:{ms}",
        received_at=slot,
    )
