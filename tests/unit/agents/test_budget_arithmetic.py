"""Budget arithmetic (agents/budget.py, decisions §36): never over-spent, release restores, the
window slides (never shorter than configured), reservations are idempotent, a charge is all or
nothing across the budgets that count an action."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agents import budget
from agents.budget import EMPTY, BudgetState, Limits
from schemas.guardrail import GuardrailBudget, GuardrailPolicy

WINDOW = 60_000
NOW0 = 1_700_000_000_000

limits_st = st.builds(
    Limits,
    window_ms=st.sampled_from([60_000, 3_600_000]),
    max_count=st.one_of(st.none(), st.integers(1, 4)),
    max_value=st.one_of(st.none(), st.floats(0, 500, allow_nan=False)),
).filter(lambda lim: lim.max_count is not None or lim.max_value is not None)

op_st = st.one_of(
    st.tuples(
        st.just("reserve"),
        st.integers(0, 2),  # partition
        # time steps: any, plus ones that land right at the edge of a 1 min window
        # (negative: a clock going back)
        st.one_of(
            st.integers(-5_000, 40_000),
            st.sampled_from([0, 1, 333, 59_001, 59_500, 59_999, 60_000]),
        ),
        st.one_of(st.none(), st.floats(0, 200, allow_nan=False)),
    ),
    st.tuples(st.just("commit"), st.integers(0, 40), st.just(0), st.none()),
    st.tuples(st.just("release"), st.integers(0, 40), st.just(0), st.none()),
)


def _live_ok(live: dict[str, tuple[int, float]], lim: Limits) -> bool:
    """Every window of length ``window_ms`` (it suffices to end them at entry times) holds at
    most the caps of the entries reserved and not released."""
    for t, _ in live.values():
        inside = [v for at, v in live.values() if t - lim.window_ms < at <= t]
        if lim.max_count is not None and len(inside) > lim.max_count:
            return False
        if lim.max_value is not None and sum(inside) > lim.max_value + 1e-6:
            return False
    return True


@settings(max_examples=150, deadline=None)
@given(lim=limits_st, ops=st.lists(op_st, max_size=60))
# a committed execution, then one just inside its window, on another partition
@example(
    lim=Limits(60_000, 1, None),
    ops=[("reserve", 0, 333, None), ("commit", 0, 0, None), ("reserve", 1, 59_999, None)],
)
def test_never_over_spent_across_partitions(lim: Limits, ops: list) -> None:
    states = [EMPTY, EMPTY, EMPTY]
    now = NOW0
    live: dict[str, tuple[int, float]] = {}  # granted, not released: id -> (reserved at, amount)
    ids: list[str] = []
    for i, (kind, arg, step, amount) in enumerate(ops):
        if kind == "reserve":
            now += step
            aid = f"act{i}"
            p = arg
            others = [s for q, s in enumerate(states) if q != p]
            new, ok = budget.reserve(states[p], others, aid, amount, now, lim)
            if ok:
                states[p] = new
                live[aid] = (new.reserved[aid][0], float(amount or 0.0))
                ids.append(aid)
            else:
                assert new == states[p]  # a refusal changes nothing
        elif ids:
            aid = ids[arg % len(ids)]
            for p, s in enumerate(states):
                if kind == "commit":
                    states[p] = budget.commit(s, aid, lim)
                else:
                    states[p] = budget.release(s, aid)
            if kind == "release":
                live.pop(aid, None)
        assert _live_ok(live, lim)


@settings(max_examples=200, deadline=None)
@given(
    lim=limits_st,
    prior=st.lists(st.floats(0, 50, allow_nan=False), max_size=6),
    amount=st.floats(0, 50, allow_nan=False),
    later=st.integers(0, 30_000),
)
def test_release_restores(lim: Limits, prior: list[float], amount: float, later: int) -> None:
    s = EMPTY
    for i, v in enumerate(prior):
        s, _ = budget.reserve(s, [], f"p{i}", v, NOW0 + i, lim, force=True)
        s = budget.commit(s, f"p{i}", lim)
    now = NOW0 + len(prior) + later
    before = budget.left([s], now, lim)
    s2, ok = budget.reserve(s, [], "x", amount, now, lim)
    if ok:
        assert budget.left([s2], now, lim) != before or (lim.max_count is None and amount == 0)
    assert budget.left([budget.release(s2, "x")], now, lim) == before


@settings(max_examples=200, deadline=None)
@given(lim=limits_st, offset=st.integers(0, 10_000_000), amount=st.floats(0, 10))
def test_window_slides_never_shorter(lim: Limits, offset: int, amount: float) -> None:
    s, _ = budget.reserve(EMPTY, [], "a", amount, NOW0, lim, force=True)
    for state in (s, budget.commit(s, "a", lim)):  # reserved, then committed
        n, _, _, _ = budget.left([state], NOW0 + offset, lim)
        if offset < lim.window_ms:
            assert n == 1  # still inside its window: it counts
        if offset >= lim.window_ms + lim.bucket_ms:
            assert n == 0  # the window slid past it (at most one bucket late)


@settings(max_examples=100, deadline=None)
@given(lim=limits_st, amount=st.one_of(st.none(), st.floats(0, 100, allow_nan=False)))
def test_reserve_is_idempotent(lim: Limits, amount: float | None) -> None:
    s, ok = budget.reserve(EMPTY, [], "a", amount, NOW0, lim)
    again, ok2 = budget.reserve(s, [], "a", amount, NOW0 + 5, lim)
    assert ok == ok2 or not ok
    if ok:
        assert again == s


def test_caps_count_and_value_and_no_value() -> None:
    lim = Limits(WINDOW, max_count=2, max_value=100.0)
    s, ok = budget.reserve(EMPTY, [], "a", 60, NOW0, lim)
    assert ok
    _, ok = budget.reserve(s, [], "b", 50, NOW0 + 1, lim)
    assert not ok  # 110 > 100
    s, ok = budget.reserve(s, [], "b", 40, NOW0 + 1, lim)
    assert ok
    _, ok = budget.reserve(s, [], "c", 0, NOW0 + 2, lim)
    assert not ok  # a third execution
    assert budget.left([s], NOW0 + 2, lim) == (2, 100.0, 0, 0.0)
    _, ok = budget.reserve(EMPTY, [], "d", None, NOW0, lim)
    assert not ok  # no value against a value cap
    assert budget.reserve(EMPTY, [], "d", None, NOW0, Limits(WINDOW, max_count=1))[1]


def test_state_json_round_trip() -> None:
    lim = Limits(WINDOW, max_count=5)
    s, _ = budget.reserve(EMPTY, [], "a", 3.5, NOW0, lim)
    s, _ = budget.reserve(s, [], "b", 1, NOW0 + 10, lim)
    s = budget.commit(s, "a", lim)
    assert BudgetState.from_json(s.to_json()) == s


@pytest.mark.parametrize(
    ("outcome", "code", "how"),
    [
        ("applied", None, "commit"),
        ("undone", None, "commit"),
        ("failed", "timeout", "commit"),
        ("failed", "executor_error", "commit"),
        ("failed", "upstream_error", "release"),
        ("failed", "connector_unavailable", "release"),
    ],
)
def test_settlement(outcome: str, code: str | None, how: str) -> None:
    assert budget.settlement(outcome, code) == how


def _policy(*budgets: dict, status: str = "active") -> GuardrailPolicy:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return GuardrailPolicy(
        id="grd_01HZZZZZZZZZZZZZZZZZZZZZZZ",
        tenant_id="ten_1",
        livemode=False,
        name="caps",
        status=status,  # type: ignore[arg-type]
        rules=[],
        budgets=[GuardrailBudget.model_validate(b) for b in budgets],
        created_at=at,
        updated_at=at,
    )


def _counting(policies: list[GuardrailPolicy], tool: str, entity: str) -> list[budget.Counted]:
    return budget.counting(
        policies,
        tenant_id="ten_1",
        livemode=False,
        operator_id="op_1",
        operator_name="fraud-guard",
        connector_id="cn_1",
        connector_names=["cn_1", "shop", "magento"],
        tool=tool,
        entity_key=entity,
    )


def test_counting_scopes_and_globs() -> None:
    p = _policy(
        {"tool": "order.hold", "window_seconds": 3600, "max_count": 20},
        {"tool": "order.*", "per": ["entity"], "window_seconds": 60, "max_count": 1},
        {"connector": "other", "window_seconds": 60, "max_count": 1},
    )
    a = _counting([p], "order.hold", "order:1")
    b = _counting([p], "order.hold", "order:2")
    assert [c.index for c in a] == [0, 1]
    assert a[0].key == b[0].key and a[0].spans_entities  # one tenant-wide budget
    assert a[1].key != b[1].key and not a[1].spans_entities  # one per entity
    assert a[1].scope == {"entity": "order:1"}
    assert [c.index for c in _counting([p], "order.notify", "order:1")] == [1]
    assert (
        _counting([_policy(p.budgets[0].model_dump(), status="disabled")], "order.hold", "x") == []
    )
    assert a[0].rule()["rule"] == "budget_exhausted" and a[0].rule()["guardrail_id"] == p.id


def test_charge_is_all_or_nothing_and_alert_counts() -> None:
    p = _policy(
        {"tool": "order.hold", "window_seconds": 3600, "max_count": 5},
        {"tool": "order.hold", "window_seconds": 3600, "max_count": 1},
    )
    counted = _counting([p], "order.hold", "order:1")
    first = budget.charge("a1", None, counted, {}, {}, NOW0)
    assert first.refused is None and set(first.updates) == {c.key for c in counted}
    second = budget.charge("a2", None, counted, first.updates, {}, NOW0 + 1)
    assert second.refused is counted[1] and second.updates == {}  # nothing reserved anywhere
    soft = _policy(
        {"tool": "order.hold", "window_seconds": 60, "max_count": 1, "on_exhausted": "ALERT"}
    )
    sc = _counting([soft], "order.hold", "order:1")
    s1 = budget.charge("a1", None, sc, {}, {}, NOW0)
    s2 = budget.charge("a2", None, sc, s1.updates, {}, NOW0 + 1)
    assert s2.refused is None and s2.over == (sc[0],)
    assert budget.left(list(s2.updates.values()), NOW0 + 1, sc[0].limits)[0] == 2


def test_budget_config_validation() -> None:
    with pytest.raises(ValueError, match="max_count, max_value"):
        GuardrailBudget.model_validate({"window_seconds": 60})
    with pytest.raises(ValueError):
        GuardrailBudget.model_validate({"window_seconds": 10, "max_count": 1})
    with pytest.raises(ValueError, match="at most once"):
        GuardrailBudget.model_validate(
            {"window_seconds": 60, "max_count": 1, "per": ["tool", "tool"]}
        )
    b = GuardrailBudget.model_validate({"window_seconds": 86400, "max_value": 2000})
    assert b.public() == {
        "per": [],
        "window_seconds": 86400,
        "max_count": None,
        "max_value": 2000,
        "on_exhausted": "BLOCK",
    }


# ---- rebuilding spend from the ledger (decisions §49) ------------------------------------------
spend_st = st.lists(
    st.tuples(st.integers(0, 7_200_000), st.floats(0, 200, allow_nan=False)), max_size=40
)


@settings(max_examples=200, deadline=None)
@given(lim=limits_st, spends=spend_st, later=st.integers(0, 3_600_000))
def test_rebuilt_equals_what_commit_left(
    lim: Limits, spends: list[tuple[int, float]], later: int
) -> None:
    """The state rebuilt from stored executions counts exactly what reserving and committing
    each of them left, at any later time."""
    spends = sorted(spends)
    s = EMPTY
    for i, (at, v) in enumerate(spends):
        s, _ = budget.reserve(s, [], f"a{i}", v, NOW0 + at, lim, force=True)
        s = budget.commit(s, f"a{i}", lim)
    now = NOW0 + (spends[-1][0] if spends else 0) + later
    r = budget.rebuilt([(NOW0 + at, v) for at, v in spends], now, lim)
    assert r.restored and not r.reserved
    got, want = budget.spent(r, now, lim), budget.spent(s, now, lim)
    assert got[0] == want[0] and abs(got[1] - want[1]) < 1e-6
    assert BudgetState.from_json(r.to_json()) == r


@settings(max_examples=200, deadline=None)
@given(lim=limits_st, spends=spend_st, cut=st.integers(0, 40), held=st.integers(0, 3))
def test_merge_never_under_counts(
    lim: Limits, spends: list[tuple[int, float]], cut: int, held: int
) -> None:
    """A worker's record (some executions committed, ``held`` still reserved) merged with the
    ledger's rebuild of a prefix of them counts at least as much as either, and exactly the
    worker's own count when the ledger saw nothing it did not."""
    spends = sorted(spends)
    s = EMPTY
    for i, (at, v) in enumerate(spends):
        s, _ = budget.reserve(s, [], f"a{i}", v, NOW0 + at, lim, force=True)
        if i < len(spends) - held:
            s = budget.commit(s, f"a{i}", lim)
    committed = spends[: max(0, len(spends) - held)]
    now = NOW0 + (spends[-1][0] if spends else 0)
    r = budget.rebuilt([(NOW0 + at, v) for at, v in committed[:cut]], now, lim)
    m = budget.merge(s, r)
    assert m.reserved == s.reserved and not m.restored
    n_m, v_m = budget.spent(m, now, lim)
    assert n_m >= budget.spent(r, now, lim)[0]
    n_s, v_s = budget.spent(s, now, lim)
    assert n_m == n_s and abs(v_m - v_s) < 1e-6
