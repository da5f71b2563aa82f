"""The one event -> envelope copy (schemas/envelope.py): ``Event.envelope_json`` is exactly the
validated ``EventEnvelope``'s JSON dump of the same fields, and ``EventEnvelope.to_event`` the
way back, so POST /v1/events and ingest agree on every field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from schemas.envelope import Event, EventEnvelope

BASE = {
    "id": "ev_01M8VPG6WSZ5VA1WWDJ9APP3RS",
    "tenant_id": "t_acme",
    "livemode": False,
    "source": "magento",
    "event_type": "order.created",
    "correlation_id": "co_1",
    "payload": {"order": "SO-1", "lines": [{"sku": "A", "qty": 2}], "note": None},
}


@pytest.mark.parametrize(
    "extra",
    [
        {"created_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)},
        {"created_at": datetime(2026, 1, 2, 3, 4, 5, 120, tzinfo=timezone(timedelta(hours=2)))},
        {
            "created_at": datetime.now(UTC),
            "reseller_id": "r_1",
            "workspace_id": "ws",
            "entity_key": "SO-1",
            "idempotency_key": "magento:SO-1",
            "request_id": "req_1",
            "agent_id": "ag",
            "session_id": "se",
            "livemode": True,
        },
    ],
)
def test_envelope_json_is_the_validated_envelope(extra):
    ev = Event(**{**BASE, **extra})
    wire = ev.envelope_json()
    model = EventEnvelope(
        event_id=ev.id,
        **{k: v for k, v in ev.model_dump().items() if k not in ("id", "object", "created_at")},
        received_at=ev.created_at,
    )
    assert orjson.dumps(wire) == orjson.dumps(model.model_dump(mode="json", exclude_none=True))
    assert ev.to_envelope() == model
    # and back: the envelope becomes the same event
    back = model.to_event(ev.id, ev.correlation_id, model.received_at)
    assert back.model_dump() == {**ev.model_dump(), "created_at": ev.created_at}
