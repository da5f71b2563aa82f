"""Tenant guardrail policies: the precedence of ``agents.executor.judge`` over operator and tenant
rules, glob scoping, ceilings, and the ``guardrail.*`` control commands (decisions §35)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agents.executor import judge
from agents.guardrail_control import decide
from agents.policy import evaluate
from schemas.commands import Command
from schemas.guardrail import EvaluateRequest, GuardrailPolicy, GuardrailRule
from schemas.operator import Guardrail
from streams.config_view import ConfigView

NOW = datetime(2026, 7, 2, 15, 0, tzinfo=UTC)
CONNECTOR = ("cn_01", "magento-eu", "magento")


def policy(*rules: dict, status: str = "active", name: str = "org-policy", version: int = 1):
    return GuardrailPolicy(
        id="grd_01",
        tenant_id="t_1",
        livemode=False,
        name=name,
        status=status,
        version=version,
        rules=[GuardrailRule.model_validate(r) for r in rules],
        created_at=NOW,
        updated_at=NOW,
    )


def run(own, policies, tool="order.hold", value=None, side_effect=True, operator="order-risk"):
    return judge(
        [Guardrail.model_validate(g) for g in own],
        policies,
        operator_name=operator,
        tool=tool,
        side_effect=side_effect,
        value=value,
        connector_names=CONNECTOR,
    )


# ---- precedence ---------------------------------------------------------------------------------
def test_a_tenant_block_wins_over_an_operator_allow_and_cites_policy_and_version():
    v = run(
        [{"tool": "order.hold", "decision": "ALLOW"}],
        [policy({"tool": "order.*", "decision": "BLOCK"}, version=3)],
    )
    assert v.decision == "BLOCK"
    assert v.rule == {
        "guardrail_id": "grd_01",
        "guardrail": "org-policy",
        "guardrail_version": 3,
        "index": 0,
        "tool": "order.*",
        "decision": "BLOCK",
    }


def test_a_tenant_block_wins_even_for_read_tools_and_over_an_alert():
    p = [policy({"tool": "order.hold", "decision": "BLOCK"})]
    assert run([{"decision": "ALERT"}], p).decision == "BLOCK"
    assert run([], p, side_effect=False).decision == "BLOCK"
    # a tenant ALLOW/ALERT/ceiling does not gate a read (spec §4.1)
    reads = [policy({"tool": "order.hold", "max_value": 1, "decision": "ALERT"})]
    assert run([], reads, side_effect=False).decision == "ALLOW"


def test_default_closed_is_unchanged_when_no_rule_matches():
    v = run(
        [{"tool": "order.notify", "decision": "ALLOW"}],
        [policy({"tool": "refund.*", "decision": "ALLOW"})],
    )
    assert v.decision == "BLOCK" and v.rule is None


def test_union_a_tenant_allow_or_alert_covers_an_action_the_operator_does_not():
    assert run([], [policy({"tool": "order.hold", "decision": "ALLOW"})]).decision == "ALLOW"
    v = run([], [policy({"tool": "order.hold", "decision": "ALERT"})])
    assert v.decision == "ALERT" and v.rule["guardrail_id"] == "grd_01"


def test_a_tenant_alert_escalates_an_operator_allow():
    v = run([{"decision": "ALLOW"}], [policy({"tool": "order.hold", "decision": "ALERT"})])
    assert v.decision == "ALERT" and v.rule["guardrail"] == "org-policy"


def test_an_operator_ceiling_still_blocks_when_a_tenant_rule_allows():
    own = [{"tool": "order.hold", "max_value": 10, "decision": "ALLOW"}]
    v = run(own, [policy({"tool": "order.hold", "decision": "ALLOW"})], value=50)
    assert v.decision == "BLOCK" and "guardrail_id" not in (v.rule or {})


def test_tenant_max_value_blocks_above_the_ceiling_and_without_a_value():
    p = [policy({"tool": "refund.issue", "max_value": 250, "decision": "ALLOW"})]
    own = [{"tool": "refund.issue", "decision": "ALLOW"}]
    assert run(own, p, tool="refund.issue", value=250).decision == "ALLOW"
    over = run(own, p, tool="refund.issue", value=251)
    assert over.decision == "BLOCK" and over.rule["max_value"] == 250
    assert "251 exceeds max_value 250" in over.reason
    assert run(own, p, tool="refund.issue", value=None).decision == "BLOCK"


def test_disabled_and_deleted_policies_are_skipped():
    off = policy({"decision": "BLOCK"}, status="disabled")
    gone = policy({"decision": "BLOCK"}).model_copy(update={"deleted": True})
    own = [{"decision": "ALLOW"}]
    assert run(own, [off]).decision == "ALLOW"
    assert run(own, [gone]).decision == "ALLOW"


# ---- glob scoping ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rule", "blocked"),
    [
        ({"operator": "order-*"}, True),
        ({"operator": "backlog-*"}, False),
        ({"connector": "magento"}, True),  # listing
        ({"connector": "magento-*"}, True),  # instance name
        ({"connector": "cn_01"}, True),  # instance id
        ({"connector": "kustomer"}, False),
        ({"tool": "order.*"}, True),
        ({"tool": "**"}, True),
        ({"tool": "refund.*"}, False),
        ({"operator": "order-risk", "tool": "order.hold", "connector": "magento"}, True),
        ({"operator": "order-risk", "tool": "order.notify"}, False),
    ],
)
def test_rules_are_scoped_by_operator_connector_and_tool_globs(rule, blocked):
    v = run([{"decision": "ALLOW"}], [policy({**rule, "decision": "BLOCK"})])
    assert (v.decision == "BLOCK") is blocked


@pytest.mark.parametrize("bad", ["order..hold", "order.**x", "a b", "", "x" * 201])
def test_rule_globs_are_validated(bad):
    with pytest.raises(ValidationError):
        GuardrailRule.model_validate({"tool": bad, "decision": "BLOCK"})


def test_rule_decision_and_max_value_are_validated():
    for bad in (
        {"decision": "DEDUP"},
        {"decision": "ALLOW", "max_value": -1},
        {"decision": "ALLOW", "max_value": True},
    ):
        with pytest.raises(ValidationError):
            GuardrailRule.model_validate(bad)


def test_evaluate_takes_exactly_one_of_action_or_plan():
    ok = EvaluateRequest.model_validate({"operator": "op", "action": {"tool": "order.hold"}})
    assert [a.tool for a in ok.actions()] == ["order.hold"]
    for bad in (
        {"operator": "op"},
        {
            "operator": "op",
            "action": {"tool": "order.hold"},
            "plan": {"actions": [{"tool": "order.hold"}]},
        },
    ):
        with pytest.raises(ValidationError):
            EvaluateRequest.model_validate(bad)


# ---- the property: no tenant guardrails => the same verdicts ----------------------------------------
guardrail_st = st.fixed_dictionaries(
    {"decision": st.sampled_from(["ALLOW", "ALERT"])},
    optional={
        "tool": st.sampled_from(["order.hold", "order.notify", "refund.issue"]),
        "connector": st.sampled_from(["cn_01", "magento", "kustomer"]),
        "max_value": st.sampled_from([0, 10, 250.5]),
    },
)
tool_st = st.sampled_from(["order.hold", "order.notify", "refund.issue"])
value_st = st.one_of(st.none(), st.floats(min_value=0, max_value=1000, allow_nan=False))


@settings(max_examples=300, deadline=None)
@given(st.lists(guardrail_st, max_size=6), tool_st, value_st, st.booleans(), st.booleans())
def test_no_tenant_guardrails_gives_exactly_the_operator_verdict(
    own, tool, value, side_effect, disabled_only
):
    guardrails = [Guardrail.model_validate(g) for g in own]
    before = evaluate(
        guardrails, tool=tool, side_effect=side_effect, value=value, connector_names=CONNECTOR
    )
    # no policies at all, or only disabled ones, or only ones whose globs match nothing
    policies = (
        [policy({"decision": "BLOCK"}, status="disabled")]
        if disabled_only
        else [policy({"tool": "nothing.matches", "decision": "BLOCK"})]
    )
    for ps in ([], policies):
        after = run(own, ps, tool=tool, value=value, side_effect=side_effect)
        assert after == before


@settings(max_examples=200, deadline=None)
@given(st.lists(guardrail_st, max_size=4), st.lists(guardrail_st, max_size=4), tool_st, value_st)
def test_a_matching_tenant_block_always_blocks(own, tenant_rules, tool, value):
    p = policy(*tenant_rules, {"tool": tool, "decision": "BLOCK"})
    assert run(own, [p], tool=tool, value=value).decision == "BLOCK"


# ---- control commands --------------------------------------------------------------------------
_seq = itertools.count()


def new_id(prefix: str) -> str:
    return f"{prefix}_{next(_seq):026d}"


class Control:
    def __init__(self) -> None:
        self.view = ConfigView("unused:9092")
        self.records = []
        self.tenant = self.ok("tenant.create", None, slug="acme")["id"]

    def run(self, type_, tenant_id="__default__", livemode=False, **args):
        cmd = Command(
            id=new_id("cmd"),
            reply_to="test",
            type=type_,
            tenant_id=self.tenant if tenant_id == "__default__" else tenant_id,
            livemode=livemode,
            actor="key_test",
            args=args,
            at=NOW,
        )
        d = decide(self.view, cmd, NOW, new_id)
        for rec in d.records:
            self.records.append(rec)
            self.view.apply_record(rec)
        return d.reply

    def ok(self, type_, tenant_id="__default__", **args):
        reply = self.run(type_, tenant_id, **args)
        assert reply.ok, reply.error
        return reply.result


BODY = {"name": "no-refunds", "rules": [{"tool": "refund.*", "decision": "BLOCK"}]}


def test_create_update_delete_version_every_change_and_audit_it():
    c = Control()
    g = c.ok("guardrail.create", guardrail=BODY)
    assert g["id"].startswith("grd_") and g["version"] == 1 and g["status"] == "active"
    assert c.view.guardrails_of(c.tenant, False)[0].id == g["id"]
    u = c.ok("guardrail.update", guardrail_id=g["id"], changes={"status": "disabled"})
    assert u["version"] == 2 and u["status"] == "disabled"
    same = c.ok("guardrail.update", guardrail_id=g["id"], changes={"status": "disabled"})
    assert same["version"] == 2  # no change, no version
    c.ok("guardrail.update", guardrail_id=g["id"], changes={"rules": [{"decision": "ALLOW"}]})
    assert sorted(c.view.guardrail_versions[g["id"]]) == [1, 2, 3]
    assert c.view.guardrail_versions[g["id"]][1].rules[0].tool == "refund.*"
    c.ok("guardrail.delete", guardrail_id=g["id"])
    assert c.view.guardrails_of(c.tenant, False) == []
    kinds = [(r.kind, r.version, r.actor) for r in c.records if r.kind == "guardrail_policy"]
    assert kinds == [("guardrail_policy", v, "key_test") for v in (1, 2, 3, 4)]
    assert c.records[-1].note.startswith(f"guardrail.delete: {g['id']} no-refunds v4")


def test_names_are_unique_and_immutable_and_other_tenants_or_modes_read_404():
    c = Control()
    g = c.ok("guardrail.create", guardrail=BODY)
    dup = c.run("guardrail.create", guardrail=BODY)
    assert dup.error.status == 409 and dup.error.code == "state_conflict"
    ren = c.run("guardrail.update", guardrail_id=g["id"], changes={"name": "other"})
    assert ren.error.status == 400
    other = c.ok("tenant.create", None, slug="globex")["id"]
    for reply in (
        c.run("guardrail.update", other, guardrail_id=g["id"], changes={"status": "disabled"}),
        c.run("guardrail.delete", other, guardrail_id=g["id"]),
        c.run("guardrail.delete", livemode=True, guardrail_id=g["id"]),
    ):
        assert reply.error.status == 404 and reply.error.code == "not_found"
    # the same name in live mode is another policy
    assert c.ok("guardrail.create", livemode=True, guardrail=BODY)["livemode"] is True


def test_invalid_rules_from_a_command_are_a_400_naming_rules():
    c = Control()
    r = c.run(
        "guardrail.create",
        guardrail={"name": "bad", "rules": [{"tool": "a..b", "decision": "BLOCK"}]},
    )
    assert r.error.status == 400 and r.error.details.get("param") == "rules"


def test_a_huge_whole_max_value_stays_a_float_in_the_public_rule():
    # 1e149 is a whole number, but as an int it would not serialise (orjson: int64 at most)
    assert GuardrailRule(max_value=1e149, decision="ALLOW").public()["max_value"] == 1e149
    assert isinstance(GuardrailRule(max_value=1e149, decision="ALLOW").public()["max_value"], float)
    assert GuardrailRule(max_value=250.0, decision="ALLOW").public()["max_value"] == 250
    assert isinstance(GuardrailRule(max_value=250.0, decision="ALLOW").public()["max_value"], int)
