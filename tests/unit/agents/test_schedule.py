from datetime import UTC, datetime

from agents.ingest import Coordinates, admit
from agents.planning import routed_operators
from agents.schedule import due_slots, run_envelope
from schemas.operator import Operator

T0 = datetime(2026, 7, 2, 15, 0, 30, tzinfo=UTC)


def op(**kw) -> Operator:
    base = dict(
        id="op_1",
        tenant_id="t_1",
        livemode=False,
        name="order-risk",
        status="active",
        outcome="o",
        capabilities=["order.hold"],
        guardrails=[],
        triggers=["order.**"],
        schedule="*/15 * * * *",
        created_at=T0,
        updated_at=T0,
    )
    return Operator(**(base | kw))


def test_due_slots_are_the_cron_slots_in_the_window():
    assert due_slots("*/15 * * * *", T0, T0.replace(minute=14)) == []
    assert due_slots("*/15 * * * *", T0, T0.replace(minute=15, second=1)) == [
        T0.replace(minute=15, second=0)
    ]
    # a long outage replays only the latest slot
    assert due_slots("* * * * *", T0, T0.replace(hour=18)) == [T0.replace(hour=18, second=0)]


def test_a_slot_makes_one_deterministic_run_routed_only_to_its_operator():
    slot = T0.replace(minute=15, second=0)
    a, b = run_envelope(op(), slot), run_envelope(op(), slot)
    assert a == b and a.source == "cron" and a.payload["run_id"].startswith("run_")
    admitted = admit(a.model_dump_json().encode(), Coordinates("t", 0, 0, 1), lambda t: True)
    others = [op(), op(id="op_2", triggers=["**"]), op(id="op_3", status="paused")]
    assert [o.id for o in routed_operators(others, admitted.event)] == ["op_1"]
