"""The pure executor core: decisions per action, and whole batches through ``simulate``."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.executor import (
    CallResult,
    Dispose,
    Invoke,
    KeyState,
    Reemit,
    conclude,
    decide,
    simulate,
    state_key,
)
from schemas.plan import ActionRecord, Verdict

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
TERMINAL = {"applied", "refused", "deduplicated", "failed", "undone"}


def action(i: int, entity: str = "order:1", key: str = "hold:1", **kw) -> ActionRecord:
    base = dict(
        id=f"act_{i:026d}",
        plan_id="pl_1",
        tenant_id="t_1",
        livemode=False,
        operator_id="op_1",
        operator_name="o",
        guardrail_version=1,
        event_id="ev_1",
        correlation_id="co_1",
        connector_id="cn_1",
        connector_name="shop",
        tool="order.hold",
        side_effect=True,
        args={"order_id": "1"},
        value=None,
        entity_key=entity,
        idempotency_key=key,
        verdict=Verdict(decision="ALLOW", rule=None, reason="ok"),
        proposed_at=NOW,
    )
    base.update(kw)
    return ActionRecord(**base)


def test_block_is_refused_without_state():
    a = action(1, verdict=Verdict(decision="BLOCK", rule=None, reason="no rule"))
    d = decide(a, None, NOW)
    assert isinstance(d, Dispose) and d.receipt.outcome == "refused" and d.state is None


def test_first_side_effect_writes_an_intent_then_done_with_its_receipt():
    a = action(1)
    d = decide(a, None, NOW)
    assert isinstance(d, Invoke) and d.intent.status == "intent"
    done = conclude(a, CallResult(ok=True, content={"held": True}), NOW)
    assert done.receipt.outcome == "applied"
    assert done.state.status == "done" and done.state.receipt["id"] == done.receipt.id


def test_repeat_key_is_dedup_with_the_original_result():
    seen = KeyState(action_id="act_x", status="done", at_ms=1, result={"held": True})
    d = decide(action(2), seen, NOW)
    assert isinstance(d, Dispose) and d.receipt.outcome == "deduplicated"
    assert d.receipt.result == {"held": True} and d.receipt.decision == "DEDUP"


def test_replayed_action_reemits_its_receipt_and_runs_nothing():
    a = action(1)
    done = conclude(a, CallResult(ok=True), NOW)
    d = decide(a, done.state, NOW)
    assert isinstance(d, Reemit) and d.receipt["id"] == done.receipt.id


def test_intent_without_result_reinvokes_only_when_safe():
    seen = KeyState(action_id="act_x", status="intent", at_ms=1)
    assert isinstance(decide(action(1), seen, NOW, reinvoke_safe=True), Invoke)
    d = decide(action(1), seen, NOW, reinvoke_safe=False)
    assert isinstance(d, Dispose) and d.receipt.outcome == "failed"
    assert d.receipt.reason == "outcome_unknown" and d.state.status == "failed"


def test_unavailable_connector_fails_and_a_later_action_may_retry_the_key():
    d = decide(action(1), None, NOW, connector_problem="pending authorization")
    assert d.receipt.outcome == "failed" and d.receipt.error["code"] == "connector_unavailable"
    assert isinstance(decide(action(2), d.state, NOW), Invoke)


def test_timeout_is_outcome_unknown():
    d = conclude(action(1), CallResult(ok=False, error_code="timeout"), NOW)
    assert d.receipt.reason == "outcome_unknown" and d.state.status == "failed"


def test_read_tools_write_no_state():
    a = action(1, side_effect=False, tool="order.get")
    d = decide(a, None, NOW)
    assert isinstance(d, Invoke) and d.intent is None
    assert conclude(a, CallResult(ok=True), NOW).state is None


def test_state_round_trips_through_json():
    st_ = conclude(action(1), CallResult(ok=True, content=[1]), NOW).state
    assert KeyState.from_json(st_.to_json()) == st_


# ---- whole batches ----------------------------------------------------------------------------
actions_st = st.lists(
    st.tuples(
        st.sampled_from(["order:1", "order:2", "order:3"]),  # entity
        st.sampled_from(["k1", "k2"]),  # idempotency key (scoped per entity)
        st.sampled_from(["ALLOW", "ALLOW", "BLOCK"]),
        st.booleans(),  # tool call succeeds
        st.booleans(),  # side effect
    ),
    min_size=1,
    max_size=30,
)


def _batch(spec):
    batch, results = [], {}
    for i, (entity, key, decision, ok, side_effect) in enumerate(spec):
        a = action(
            i,
            entity=entity,
            key=key,
            side_effect=side_effect,
            verdict=Verdict(decision=decision, rule=None, reason=decision.lower()),
        )
        batch.append(a)
        results[a.id] = CallResult(ok=ok, error_code=None if ok else "upstream_error")
    return batch, results


@settings(max_examples=200, deadline=None)
@given(actions_st, st.booleans())
def test_properties_of_a_batch(spec, replay):
    batch, results = _batch(spec)
    first = simulate(batch, {}, results, NOW)
    # determinism: same input, same output
    assert simulate(batch, {}, results, NOW) == first
    # exactly one terminal receipt per action
    per_action = Counter(r["action_id"] for r in first.receipts)
    assert per_action == Counter(a.id for a in batch)
    assert all(r["outcome"] in TERMINAL for r in first.receipts)
    # never two applied receipts for one key
    applied = Counter(
        (r["tenant_id"], r["entity_key"], r["idempotency_key"])
        for r in first.receipts
        if r["outcome"] == "applied" and batch[int(r["action_id"][4:])].side_effect
    )
    assert all(n == 1 for n in applied.values())
    # single-flight: each entity's actions are disposed in arrival order
    order = defaultdict(list)
    for r in first.receipts:
        order[r["entity_key"]].append(r["action_id"])
    for entity, ids in order.items():
        assert ids == [a.id for a in batch if a.entity_key == entity]
    if replay:
        # the whole batch replayed after a crash (state kept): nothing is invoked again and
        # every receipt is the same one (same ids, the ledger stores each once)
        again = simulate(batch, first.states, results, NOW)
        side_effect_ids = {a.id for a in batch if a.side_effect}
        assert not side_effect_ids & set(again.invoked)
        by_id = {r["id"] for r in first.receipts}
        assert {r["id"] for r in again.receipts if r["action_id"] in side_effect_ids} <= by_id


@settings(max_examples=100, deadline=None)
@given(actions_st)
def test_a_key_applied_in_one_batch_is_dedup_in_the_next(spec):
    batch, results = _batch(spec)
    first = simulate(batch, {}, results, NOW)
    later = [
        action(1000 + i, entity=a.entity_key, key=a.idempotency_key)
        for i, a in enumerate(batch)
        if a.side_effect
    ]
    second = simulate(later, first.states, {}, NOW)
    done = {k for k, s in first.states.items() if s.status == "done"}
    for r in second.receipts:
        a = next(x for x in later if x.id == r["action_id"])
        if state_key(a) in done:
            assert r["outcome"] == "deduplicated"
