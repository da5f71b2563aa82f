from datetime import UTC, datetime

import pytest

from agents.planning import build_plan, revet, routed_operators
from agents.rules_model import TemplateError, propose
from schemas.connector import Connector
from schemas.envelope import Event
from schemas.operator import Guardrail, Operator

NOW = datetime(2026, 7, 2, 15, 0, tzinfo=UTC)
PLAYBOOK = [
    {
        "when": "order.created",
        "if": [{"field": "payload.risk_score", "op": "gte", "value": 70}],
        "then": [
            {
                "tool": "order.hold",
                "args": {"order_id": "{{payload.order_id}}"},
                "value": "{{payload.total}}",
                "entity_key": "order:{{payload.order_id}}",
                "idempotency_key": "hold:{{payload.order_id}}",
            },
            {
                "tool": "order.notify",
                "args": {
                    "order_id": "{{payload.order_id}}",
                    "comment": "On hold: {{payload.order_id}}",
                },
                "entity_key": "order:{{payload.order_id}}",
                "idempotency_key": "notify:{{payload.order_id}}",
            },
        ],
        "reasoning": "Risk {{payload.risk_score}} is high.",
    }
]


def event(**payload) -> Event:
    body = {"order_id": "SO-1", "total": 120, "risk_score": 80, **payload}
    return Event(
        id="ev_01M84AJB4RA9TX61DER03S1XK0",
        tenant_id="t_1",
        livemode=False,
        source="magento",
        event_type="order.created",
        correlation_id="co_1",
        payload=body,
        created_at=NOW,
    )


def operator(guardrails=None, **kw) -> Operator:
    g = (
        guardrails
        if guardrails is not None
        else [
            Guardrail(tool="order.hold", decision="ALLOW", max_value=500),
            Guardrail(tool="order.notify", decision="ALERT"),
        ]
    )
    base = dict(
        id="op_1",
        tenant_id="t_1",
        livemode=False,
        name="order-risk",
        status="active",
        outcome="o",
        capabilities=["order.read", "order.hold", "order.notify"],
        guardrails=g,
        triggers=["order.**"],
        playbook=PLAYBOOK,
        created_at=NOW,
        updated_at=NOW,
        version=3,
    )
    base.update(kw)
    return Operator(**base)


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


def test_playbook_proposes_templated_actions_with_types_kept():
    plan = propose(PLAYBOOK, event())
    assert [a.tool for a in plan.actions] == ["order.hold", "order.notify"]
    assert plan.actions[0].value == 120 and plan.actions[0].entity_key == "order:SO-1"
    assert (
        plan.actions[1].args["comment"] == "On hold: SO-1" and plan.reasoning == "Risk 80 is high."
    )
    assert propose(PLAYBOOK, event(risk_score=10)).actions == []
    with pytest.raises(TemplateError):
        propose(
            [
                {**PLAYBOOK[0], "if": []}
                | {"then": [{**PLAYBOOK[0]["then"][0], "entity_key": "{{payload.nope}}"}]}
            ],
            event(),
        )


def test_routing_respects_status_triggers_and_tenancy():
    ops = [
        operator(),
        operator(id="op_2", status="paused"),
        operator(id="op_3", triggers=["customer.*"]),
        operator(id="op_4", tenant_id="t_2"),
        operator(id="op_5", livemode=True),
    ]
    assert [o.id for o in routed_operators(ops, event())] == ["op_1"]


def test_alert_holds_the_whole_plan():
    op = operator()
    built = build_plan(
        event=event(),
        operator=op,
        connectors=[CN],
        proposal=propose(PLAYBOOK, event()),
        refusal=None,
        now=NOW,
    )
    assert built.plan.status == "proposed" and built.plan.expires_at is not None
    assert built.dispatch == []
    assert [(r.decision, r.outcome) for r in built.receipts] == [("ALERT", "pending_approval")]
    hold = built.plan.actions[0]
    assert (
        hold.verdict.decision == "ALLOW"
        and hold.guardrail_version == 3
        and hold.connector_id == "cn_1"
    )
    assert hold.compensating_tool == "order.release"


def test_allow_dispatches_and_block_is_refused():
    op = operator(guardrails=[Guardrail(tool="order.hold", decision="ALLOW", max_value=100)])
    built = build_plan(
        event=event(),
        operator=op,
        connectors=[CN],
        proposal=propose(PLAYBOOK, event()),
        refusal=None,
        now=NOW,
    )
    # hold 120 > 100 → BLOCK; notify has no rule → BLOCK: nothing runs, plan refused
    assert built.plan.status == "refused" and built.dispatch == []
    assert {r.outcome for r in built.receipts} == {"refused"}
    op = operator(
        guardrails=[
            Guardrail(tool="order.hold", decision="ALLOW"),
            Guardrail(tool="order.notify", decision="ALLOW"),
        ]
    )
    built = build_plan(
        event=event(),
        operator=op,
        connectors=[CN],
        proposal=propose(PLAYBOOK, event()),
        refusal=None,
        now=NOW,
    )
    assert built.plan.status == "executing" and [a.tool for a in built.dispatch] == [
        "order.hold",
        "order.notify",
    ]


def test_invalid_proposals_refuse_the_plan_with_a_receipt():
    op = operator(capabilities=["order.read", "order.hold"])
    built = build_plan(
        event=event(),
        operator=op,
        connectors=[CN],
        proposal=propose(PLAYBOOK, event()),
        refusal=None,
        now=NOW,
    )
    assert (
        built.plan.status == "refused"
        and "outside the operator's capabilities" in built.plan.refusal
    )
    assert len(built.receipts) == 1 and built.receipts[0].action_id is None
    built = build_plan(
        event=event(),
        operator=operator(),
        connectors=[],
        proposal=propose(PLAYBOOK, event()),
        refusal=None,
        now=NOW,
    )
    assert "bound to no installed connector" in built.plan.refusal
    built = build_plan(
        event=event(),
        operator=operator(),
        connectors=[CN],
        proposal=None,
        refusal="bad JSON",
        now=NOW,
    )
    assert built.plan.refusal == "bad JSON"


def test_plans_are_deterministic():
    args = dict(
        event=event(),
        operator=operator(),
        connectors=[CN],
        proposal=propose(PLAYBOOK, event()),
        refusal=None,
        now=NOW,
    )
    assert build_plan(**args).plan == build_plan(**args).plan


def test_revet_uses_the_guardrails_in_force():
    built = build_plan(
        event=event(),
        operator=operator(),
        connectors=[CN],
        proposal=propose(PLAYBOOK, event()),
        refusal=None,
        now=NOW,
    )
    notify = built.plan.actions[1]
    assert revet(notify, operator(), [CN]).decision == "ALERT"
    assert revet(notify, operator(guardrails=[]), [CN]).decision == "BLOCK"  # rule since removed
    assert revet(notify, None, [CN]).decision == "BLOCK"
