"""Shadow mode, the policy versions every receipt cites, and policy replay's reuse of the
executor's judge (decisions §37)."""

from __future__ import annotations

from bisect import bisect_left
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agents.executor import judge, receipt, vet
from agents.planning import build_plan
from agents.replay import Replayer, StoredVerdicts, csv_rows, thresholds
from schemas.connector import Connector
from schemas.guardrail import GuardrailPolicy, GuardrailRule, ReplayRequest
from schemas.operator import Guardrail, Operator
from schemas.plan import ExecutionPlan

NOW = datetime(2026, 7, 2, 15, 0, tzinfo=UTC)
CN = Connector(
    id="cn_1",
    tenant_id="t_1",
    livemode=False,
    listing="cn-magento",
    name="magento-us-store",
    kind="saas",
    capabilities=["order.read", "order.hold", "order.notify"],
    tools=[
        {"name": "order.read", "side_effect": False},
        {"name": "order.hold", "side_effect": True, "compensating_tool": "order.release"},
        {"name": "order.notify", "side_effect": True},
    ],
    auth={"type": "api_key", "hint": "mg_****41"},
    config={},
    status="connected",
    created_at=NOW,
    updated_at=NOW,
)
TOOLS = {t.name: t.side_effect for t in CN.tools}


def operator(guardrails=None, version=3, **kw) -> Operator:
    base = dict(
        id="op_1",
        tenant_id="t_1",
        livemode=False,
        name="order-risk",
        status="active",
        outcome="o",
        capabilities=["order.read", "order.hold", "order.notify"],
        guardrails=guardrails
        if guardrails is not None
        else [
            Guardrail(tool="order.hold", decision="ALLOW", max_value=500),
            Guardrail(tool="order.notify", decision="ALERT"),
        ],
        triggers=["order.**"],
        playbook=None,
        created_at=NOW,
        updated_at=NOW,
        version=version,
    )
    base.update(kw)
    return Operator(**base)


def policy(*rules, gid="grd_01", name="org-policy", mode="enforce", status="active", version=1):
    return GuardrailPolicy(
        id=gid,
        tenant_id="t_1",
        livemode=False,
        name=name,
        status=status,
        mode=mode,
        version=version,
        rules=[GuardrailRule.model_validate(r) for r in rules],
        created_at=NOW,
        updated_at=NOW,
    )


def vet_hold(policies, value=100.0, tool="order.hold"):
    return vet(operator(), CN, tool=tool, side_effect=TOOLS[tool], value=value, policies=policies)


# ---- shadow mode --------------------------------------------------------------------------------
def test_a_shadow_policy_never_changes_the_verdict_but_records_its_own():
    shadow = policy({"tool": "order.*", "decision": "BLOCK"}, gid="grd_02", mode="shadow")
    enforced = vet_hold([])
    v = vet_hold([shadow])
    assert (v.decision, v.rule, v.reason) == (enforced.decision, enforced.rule, enforced.reason)
    assert v.decision == "ALLOW"
    assert v.shadow_verdict is not None
    assert v.shadow_verdict["decision"] == "BLOCK"
    assert v.shadow_verdict["differs"] is True
    assert v.shadow_verdict["rule"]["guardrail_id"] == "grd_02"
    # no shadow rule in force: no shadow verdict at all
    assert enforced.shadow_verdict is None
    assert (
        vet_hold([policy({"decision": "BLOCK"}, mode="shadow", status="disabled")]).shadow_verdict
        is None
    )


def test_a_single_shadow_rule_in_an_enforced_policy():
    p = policy(
        {"tool": "order.hold", "max_value": 50, "decision": "ALLOW", "mode": "shadow"},
        {"tool": "order.notify", "decision": "BLOCK"},
    )
    v = vet_hold([p], value=100.0)
    assert v.decision == "ALLOW"  # the shadow ceiling does not apply
    assert v.shadow_verdict["decision"] == "BLOCK"
    assert v.shadow_verdict["rule"]["mode"] == "shadow"
    assert vet_hold([p], tool="order.notify").decision == "BLOCK"  # the enforced rule does
    agree = vet_hold([p], value=10.0)
    assert agree.shadow_verdict == {**agree.shadow_verdict, "decision": "ALLOW", "differs": False}


rule_st = st.fixed_dictionaries(
    {"decision": st.sampled_from(["ALLOW", "ALERT", "BLOCK"])},
    optional={
        "tool": st.sampled_from(["order.hold", "order.*", "order.notify"]),
        "max_value": st.sampled_from([0, 50, 250.5]),
        "mode": st.sampled_from(["enforce", "shadow"]),
    },
)
tool_st = st.sampled_from(["order.read", "order.hold", "order.notify"])
value_st = st.one_of(st.none(), st.floats(min_value=0, max_value=1000, allow_nan=False))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(rule_st, min_size=1, max_size=5),
    st.lists(rule_st, min_size=1, max_size=5),
    tool_st,
    value_st,
)
def test_shadow_rules_never_affect_execution(enforced_rules, shadow_rules, tool, value):
    """The enforced verdict with shadow rules in force is exactly the verdict without them,
    and the shadow verdict is the verdict with every rule enforced."""
    base = policy(*[{**r, "mode": "enforce"} for r in enforced_rules])
    shadow = policy(*shadow_rules, gid="grd_02", name="try-it", mode="shadow")
    without = vet_hold([base], value=value, tool=tool)
    with_shadow = vet_hold([base, shadow], value=value, tool=tool)
    assert (with_shadow.decision, with_shadow.rule, with_shadow.reason) == (
        without.decision,
        without.rule,
        without.reason,
    )
    as_enforced = [base, shadow.model_copy(update={"mode": "enforce"})]
    allin = vet_hold(
        [
            p.model_copy(
                update={"rules": [r.model_copy(update={"mode": "enforce"}) for r in p.rules]}
            )
            for p in as_enforced
        ],
        value=value,
        tool=tool,
    )
    assert with_shadow.shadow_verdict["decision"] == allin.decision


# ---- the versions a receipt cites ----------------------------------------------------------------
def test_every_receipt_cites_operator_and_each_policy_version_in_force():
    ps = [
        policy({"tool": "order.notify", "decision": "BLOCK"}, version=4),
        policy({"decision": "BLOCK"}, gid="grd_02", name="off", status="disabled", version=2),
        policy({"decision": "BLOCK"}, gid="grd_03", name="trial", mode="shadow", version=7),
    ]
    built = build_plan(
        event=_event(),
        operator=operator(),
        connectors=[CN],
        proposal=ExecutionPlan.model_validate(
            {
                "actions": [
                    {
                        "tool": "order.hold",
                        "value": 10,
                        "entity_key": "o1",
                        "idempotency_key": "k1",
                    },
                    {"tool": "order.notify", "entity_key": "o1", "idempotency_key": "k2"},
                ]
            }
        ),
        refusal=None,
        now=NOW,
        policies=ps,
    )
    cited = [
        {"kind": "operator", "id": "op_1", "name": "order-risk", "version": 3},
        {
            "kind": "guardrail_policy",
            "id": "grd_01",
            "name": "org-policy",
            "version": 4,
            "mode": "enforce",
        },
        {
            "kind": "guardrail_policy",
            "id": "grd_03",
            "name": "trial",
            "version": 7,
            "mode": "shadow",
        },
    ]
    assert [a.verdict.policy_versions for a in built.plan.actions] == [cited, cited]
    (blocked,) = built.receipts
    assert blocked.policy_versions == cited
    assert blocked.shadow_verdict["decision"] == "BLOCK"
    applied = receipt(built.dispatch[0], "ALLOW", "applied", "ok", NOW)
    assert applied.policy_versions == cited
    assert applied.shadow_verdict["differs"] is True


def _event():
    from schemas.envelope import Event

    return Event(
        id="ev_01M84AJB4RA9TX61DER03S1XK0",
        tenant_id="t_1",
        livemode=False,
        source="magento",
        event_type="order.created",
        correlation_id="co_1",
        payload={},
        created_at=NOW,
    )


# ---- replay --------------------------------------------------------------------------------------
def stored(tool="order.hold", value=100.0, decision="ALLOW", count=1, version=3, plan="pl_1"):
    return StoredVerdicts(
        "op_1", version, "cn_1", "magento-us-store", tool, value, decision, count, [plan]
    )


def replayer(candidate, ops=None):
    ops = ops or [operator()]
    return Replayer(candidate, {(o.id, o.version): o for o in ops}, {"op_1": ops[-1]}, {"cn_1": CN})


@settings(max_examples=200, deadline=None)
@given(st.lists(rule_st, max_size=5), tool_st, value_st)
def test_replay_judges_with_the_executors_judge(rules, tool, value):
    """A replay's verdict is the executor's (vet) with the candidate enforced, and replaying the
    very set that judged finds no flip."""
    cand = [policy(*[{**r, "mode": "enforce"} for r in rules])] if rules else []
    expected = vet_hold(cand, value=value, tool=tool)
    r = replayer(cand)
    assert r.verdict(operator(), stored(tool=tool, value=value)) == expected.decision
    same = replayer(cand)
    same.feed([stored(tool=tool, value=value, decision=expected.decision, count=5)])
    assert same.result()["flipped"] == 0 and same.result()["judged"] == 5
    direct = judge(
        operator().guardrails,
        cand,
        operator_name="order-risk",
        tool=tool,
        side_effect=TOOLS[tool],
        value=value,
        connector_names=(CN.id, CN.name, CN.listing),
    )
    assert direct.decision == expected.decision


def test_replay_counts_flips_per_operator_and_tool_with_examples():
    cand = [policy({"tool": "order.hold", "max_value": 200, "decision": "ALLOW"}, mode="shadow")]
    r = replayer(cand)
    r.feed(
        [
            stored(value=100.0, count=4, plan="pl_a"),  # stays ALLOW
            stored(value=300.0, count=2, plan="pl_b"),  # over the candidate ceiling: BLOCK
            stored(value=400.0, count=1, plan="pl_c"),
            stored(tool="order.notify", value=None, decision="ALERT", count=3, plan="pl_d"),
            StoredVerdicts("op_gone", 1, "cn_1", None, "order.hold", 1.0, "ALLOW", 6, ["pl_e"]),
        ]
    )
    res = r.result()
    assert res["judged"] == 10 and res["flipped"] == 3 and res["skipped"] == 6
    assert res["flips"] == {"ALLOW->BLOCK": 3}
    hold, notify = res["results"]
    assert hold["tool"] == "order.hold" and hold["operator"] == "order-risk"
    assert hold["transitions"] == {"ALLOW->ALLOW": 4, "ALLOW->BLOCK": 3}
    assert hold["examples"] == {"ALLOW->BLOCK": ["pl_b", "pl_c"]}
    assert notify["transitions"] == {"ALERT->ALERT": 3} and notify["flipped"] == 0
    rows = csv_rows(res)
    assert rows[0] == ["operator_id", "operator", "tool", "from", "to", "count", "example_plan_ids"]
    assert ["op_1", "order-risk", "order.hold", "ALLOW", "BLOCK", 3, "pl_b pl_c"] in rows


def test_replay_uses_the_operator_version_that_judged():
    old = operator(guardrails=[Guardrail(tool="order.hold", decision="ALLOW")], version=2)
    new = operator(guardrails=[Guardrail(tool="order.hold", decision="ALERT")], version=3)
    r = replayer([], ops=[old, new])
    r.feed([stored(version=2, decision="ALLOW", count=2), stored(version=9, decision="ALLOW")])
    res = r.result()
    # v2 is known: no flip; v9 is missing from the history: judged with the current (v3) → ALERT
    assert res["results"][0]["transitions"] == {"ALLOW->ALERT": 1, "ALLOW->ALLOW": 2}
    assert res["operator_version_missing"] == 1


def test_replay_request_shape():
    ok = {"since": "2026-07-01T00:00:00Z", "guardrail": "grd_01M84AJB4RA9TX61DER03S1XK0@2"}
    assert ReplayRequest.model_validate(ok).guardrail.endswith("@2")
    for bad in (
        {"since": "2026-07-01T00:00:00Z"},  # no candidate
        {**ok, "guardrails": []},  # both
        {**ok, "guardrail": "grd_x@0"},
        {**ok, "tool": "order.***"},
    ):
        with pytest.raises(ValidationError):
            ReplayRequest.model_validate(bad)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(rule_st, max_size=5),
    tool_st,
    st.floats(min_value=0, max_value=1000, allow_nan=False),
    st.floats(min_value=0, max_value=1000, allow_nan=False),
)
def test_values_between_the_same_thresholds_get_the_same_decision(rules, tool, v1, v2):
    """Why the ledger may group stored actions by value class (decisions §37)."""
    cand = [policy(*[{**r, "mode": "enforce"} for r in rules])] if rules else []
    th = thresholds(cand, [operator()])
    if bisect_left(th, v1) == bisect_left(th, v2):
        r = replayer(cand)
        assert r.verdict(operator(), stored(tool=tool, value=v1)) == r.verdict(
            operator(), stored(tool=tool, value=v2)
        )
