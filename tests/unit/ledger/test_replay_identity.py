"""A row re-derived after a crash must be recognised as already stored (issue 15 item 7): the
planner dates a plan and its actions by their event, so a replay built at another moment is the
same rows; and the sink's id check spans every time a stored copy can have."""

from datetime import timedelta
from types import SimpleNamespace

from agents.planning import build_plan
from agents.rules_model import propose
from ledger.sink import CLOCK_SKEW, _id_check_range
from schemas.ids import derived_id, id_time
from tests.unit.agents.test_planning import CN, NOW, PLAYBOOK, event, operator


def test_a_replayed_plan_is_the_same_rows_whenever_it_is_built():
    ev, op = event(), operator()

    def build(now):
        return build_plan(
            event=ev,
            operator=op,
            connectors=[CN],
            proposal=propose(PLAYBOOK, ev),
            refusal=None,
            now=now,
        )

    first, replay = build(NOW + timedelta(seconds=1)), build(NOW + timedelta(minutes=7))
    assert first.plan.model_dump(exclude={"expires_at"}) == replay.plan.model_dump(
        exclude={"expires_at"}
    )
    assert first.plan.created_at == ev.created_at
    assert [a.proposed_at for a in first.plan.actions] == [ev.created_at] * 2
    assert [r.id for r in first.receipts] == [r.id for r in replay.receipts]
    # the approval window still runs from when the plan was really built
    assert replay.plan.expires_at - first.plan.expires_at == timedelta(minutes=6, seconds=59)


def test_the_id_check_range_holds_a_copy_stored_before_the_replay():
    proposed = NOW
    rc_id = derived_id("rc", int(proposed.timestamp() * 1000), "act_1", "applied")
    stored_at = NOW + timedelta(seconds=2)  # the original disposition
    replayed = SimpleNamespace(id=rc_id, created_at=NOW + timedelta(hours=3))  # after a restart
    lo, hi = _id_check_range([replayed], "created_at")
    assert lo <= stored_at <= hi
    assert lo == id_time(rc_id) - CLOCK_SKEW and hi == replayed.created_at + CLOCK_SKEW


def test_ids_without_an_embedded_time_fall_back_to_the_row_time():
    row = SimpleNamespace(id="not-one-of-ours", created_at=NOW)
    assert _id_check_range([row], "created_at") == (NOW - CLOCK_SKEW, NOW + CLOCK_SKEW)
