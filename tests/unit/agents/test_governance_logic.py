"""Governance's pure logic (decisions §38): the field-level version diff (a property test: the
diff applied to the old version gives the new one), the rollback commands as the control agent
decides them, how config records read in the audit trail, and the report's arithmetic."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agents.governance import (
    GUARDRAIL_DIFF_FIELDS,
    OPERATOR_DIFF_FIELDS,
    apply_diff,
    approval_counts,
    audit_action,
    audit_verb,
    budgets_consumed,
    diff,
    exact_quantile,
    ratio,
    summarise_dispositions,
)
from agents.guardrail_control import decide
from schemas.commands import Command
from streams.config_view import ConfigView

NOW = datetime(2026, 7, 2, 15, 0, tzinfo=UTC)
_seq = itertools.count()
FIELDS = ("a", "b", "c", "d")


def new_id(prefix: str) -> str:
    return f"{prefix}_{next(_seq):026d}"


json_scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.text("xyz", max_size=2)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from("pqr"), inner),
    max_leaves=12,
)
docs = st.fixed_dictionaries({}, optional={f: json_values for f in FIELDS})


def on_fields(doc: dict) -> bytes:
    """The diffed fields as canonical JSON: JSON equality, where ``False`` and ``0`` differ (they
    are equal in Python, and the diff rightly reports one replacing the other)."""
    return orjson.dumps({f: doc.get(f) for f in FIELDS}, option=orjson.OPT_SORT_KEYS)


@settings(max_examples=300, deadline=None)
@given(docs, docs)
@example({"b": [False]}, {"b": [0]})  # the case Python's == hid (CI, 2026-12-03)
def test_applying_the_diff_to_the_old_version_gives_the_new_one(old, new):
    changes = diff(old, new, FIELDS)
    assert on_fields(apply_diff(old, changes)) == on_fields(new)
    assert (changes == []) == (on_fields(old) == on_fields(new))
    for c in changes:
        assert c["path"][0] in FIELDS and c["op"] in ("added", "removed", "changed")


@given(docs)
def test_a_version_against_itself_has_no_changes(doc):
    assert diff(doc, doc, FIELDS) == []


def test_field_names_and_ops_are_readable():
    old = {
        "guardrails": [{"tool": "order.hold", "decision": "ALLOW"}],
        "capabilities": ["order.hold"],
        "schedule": None,
        "status": "active",
    }
    new = {
        "guardrails": [
            {"tool": "order.hold", "decision": "ALERT", "max_value": 5},
            {"tool": "order.notify", "decision": "ALLOW"},
        ],
        "capabilities": ["order.hold"],
        "schedule": "0 * * * *",
        "status": "active",
    }
    got = {
        (c["field"], c["op"]): (c["before"], c["after"])
        for c in diff(old, new, OPERATOR_DIFF_FIELDS)
    }
    assert got == {
        ("guardrails[0].decision", "changed"): ("ALLOW", "ALERT"),
        ("guardrails[0].max_value", "added"): (None, 5),
        ("guardrails[1]", "added"): (None, {"tool": "order.notify", "decision": "ALLOW"}),
        ("schedule", "added"): (None, "0 * * * *"),
    }
    # 1 and 1.0, True and 1 are different JSON values
    assert diff({"a": 1}, {"a": 1.0}, ("a",))[0]["op"] == "changed"
    assert diff({"a": True}, {"a": 1}, ("a",))[0]["op"] == "changed"


# ---- rollback as the control agent decides it ----------------------------------------------
class Harness:
    def __init__(self) -> None:
        self.view = ConfigView("unused:9092")
        self.tenant = self.ok("tenant.create", None, slug="acme")["id"]

    def run(self, type_, tenant_id="__default__", **args):
        cmd = Command(
            id=new_id("cmd"),
            reply_to="test",
            type=type_,
            tenant_id=self.tenant if tenant_id == "__default__" else tenant_id,
            actor="key_test",
            args=args,
            at=NOW,
        )
        d = decide(self.view, cmd, NOW, new_id)
        for rec in d.records:
            self.view.apply_record(rec)
        return d

    def ok(self, type_, tenant_id="__default__", **args):
        d = self.run(type_, tenant_id, **args)
        assert d.reply.ok, d.reply.error
        return d.reply.result

    def install(self, caps):
        return self.ok(
            "connector.install",
            connector={
                "id": new_id("cn"),
                "listing": "cn-magento",
                "name": f"m-{next(_seq)}",
                "kind": "saas",
                "capabilities": list(caps),
                "tools": [{"name": c, "side_effect": True} for c in caps],
                "auth": {"type": "api_key", "hint": "x"},
                "config": {},
                "status": "connected",
            },
        )


def test_operator_rollback_is_a_new_version_with_the_old_config_and_the_current_status():
    h = Harness()
    cn = h.install(["order.hold", "order.notify"])
    op = h.ok(
        "operator.create",
        operator={
            "name": "risk",
            "outcome": "v1 outcome",
            "capabilities": ["order.hold"],
            "guardrails": [{"tool": "order.hold", "decision": "ALLOW"}],
        },
    )
    h.ok(
        "operator.update",
        operator_id=op["id"],
        changes={"outcome": "v2", "capabilities": ["order.hold", "order.notify"]},
    )
    h.ok("operator.pause", operator_id=op["id"])  # v3
    v1 = h.view.operator_versions[op["id"]][1]
    assert sorted(h.view.operator_versions[op["id"]]) == [1, 2, 3]
    d = h.run(
        "operator.rollback", operator_id=op["id"], version=1, target=v1.model_dump(mode="json")
    )
    assert d.reply.ok, d.reply.error
    r = d.reply.result
    assert (r["version"], r["outcome"], r["capabilities"], r["status"]) == (
        4,
        "v1 outcome",
        ["order.hold"],
        "paused",
    )
    assert d.records[0].note == "operator.rollback: to v1 capabilities, outcome"
    assert d.records[0].actor == "key_test"
    # a version that does not exist, or another operator's, reads 404
    for args in ({"version": 9}, {"version": 1, "target": {"id": "op_other"}}):
        e = h.run(
            "operator.rollback",
            operator_id=op["id"],
            **{"target": v1.model_dump(mode="json"), **args},
        )
        assert not e.reply.ok and e.reply.error.status == 404 and not e.records
    # capabilities no longer bound: refused like an update
    v2 = h.view.operator_versions[op["id"]][2]
    h.ok("operator.resume", operator_id=op["id"])
    h.ok("operator.update", operator_id=op["id"], changes={"capabilities": ["order.hold"]})
    h.install(["order.hold"])
    h.ok("connector.uninstall", connector_id=cn["id"])
    e = h.run(
        "operator.rollback", operator_id=op["id"], version=2, target=v2.model_dump(mode="json")
    )
    assert not e.reply.ok and e.reply.error.code == "capability_unbound"


def test_guardrail_rollback_restores_rules_description_and_status():
    h = Harness()
    g = h.ok(
        "guardrail.create",
        guardrail={"name": "no-holds", "rules": [{"tool": "order.hold", "decision": "BLOCK"}]},
    )
    h.ok(
        "guardrail.update",
        guardrail_id=g["id"],
        changes={"rules": [{"tool": "order.hold", "decision": "ALERT"}], "status": "disabled"},
    )
    versions = h.view.guardrail_versions[g["id"]]
    r = h.ok(
        "guardrail.rollback",
        guardrail_id=g["id"],
        version=1,
        target=versions[1].model_dump(mode="json"),
    )
    assert (r["version"], r["status"], r["rules"]) == (
        3,
        "active",
        [{"tool": "order.hold", "decision": "BLOCK"}],
    )
    assert h.view.guardrails[g["id"]].version == 3
    changes = diff(versions[2].public(), versions[3].public(), GUARDRAIL_DIFF_FIELDS)
    assert {c["field"] for c in changes} == {"rules[0].decision", "status"}
    other = h.ok("tenant.create", None, slug="globex")["id"]
    e = h.run(
        "guardrail.rollback",
        other,
        guardrail_id=g["id"],
        version=1,
        target=versions[1].model_dump(mode="json"),
    )
    assert not e.reply.ok and e.reply.error.status == 404


# ---- the audit trail and the report ----------------------------------------------------------
def test_audit_actions_and_verbs_come_from_the_record_note():
    assert (
        audit_action("guardrail.update: grd_1 x v3 rules", "guardrail_policy") == "guardrail.update"
    )
    assert audit_action("operator.resume (catch_up)", "operator") == "operator.resume"
    assert audit_action("operator.create", "operator") == "operator.create"
    assert audit_action(None, "connector") == "connector.update"
    assert [audit_verb(a) for a in ("connector.install", "connector.uninstall", "key.revoke")] == [
        "create",
        "delete",
        "revoke",
    ]
    assert audit_verb("connector.set_status") == "update"


rows = st.lists(
    st.fixed_dictionaries(
        {
            "operator_id": st.sampled_from(["op_1", "op_2", "op_3"]),
            "tool": st.sampled_from(["order.hold", "order.cancel", "refund.issue", None]),
            "decision": st.sampled_from(["ALLOW", "ALERT", "BLOCK", "DEDUP"]),
            "outcome": st.sampled_from(["applied", "refused", "vetoed"]),
            "count": st.integers(1, 1000),
        }
    ),
    max_size=30,
)


@given(rows)
def test_dispositions_totals_add_up_and_top_blocked_is_ordered(rs):
    for r in rs:
        r["operator_name"] = r["operator_id"].replace("op", "name")
    s = summarise_dispositions(rs, top=2)
    total = sum(r["count"] for r in rs)
    assert s["receipts"] == total == sum(s["by_decision"].values()) == sum(s["by_outcome"].values())
    assert sum(o["receipts"] for o in s["by_operator"]) == total
    blocked: dict[str, int] = {}
    for r in rs:
        if r["decision"] == "BLOCK" and r["tool"]:
            blocked[r["tool"]] = blocked.get(r["tool"], 0) + r["count"]
    want = sorted(blocked.items(), key=lambda kv: (-kv[1], kv[0]))[:2]
    assert [(b["tool"], b["count"]) for b in s["top_blocked_tools"]] == want


def test_approval_counts_rates_and_empty_windows():
    row = {
        "requested": 10,
        "approved": 6,
        "vetoed": 2,
        "expired": 1,
        "p50": 5.0,
        "p95": 9.0,
        "mean": 5.5,
        "max": 9.0,
    }
    c = approval_counts(row)
    assert (c["pending"], c["veto_rate"], c["latency_ms"]["count"]) == (1, 0.25, 8)
    nan = float("nan")
    empty = approval_counts(
        {
            "requested": 0,
            "approved": 0,
            "vetoed": 0,
            "expired": 0,
            "p50": nan,
            "p95": nan,
            "mean": nan,
            "max": 0,
        }
    )
    assert empty["veto_rate"] is None and empty["latency_ms"]["p95"] is None
    assert ratio(1, 3) == 0.3333 and ratio(0, 0) is None
    assert exact_quantile([4, 1, 3, 2], 0.5) == 3 and exact_quantile([1], 0.95) == 1
    assert exact_quantile([], 0.5) is None


def test_budgets_consumed_match_the_budget_globs_and_count_exhaustions():
    from schemas.guardrail import GuardrailPolicy

    gp = GuardrailPolicy.model_validate(
        {
            "id": "grd_1",
            "tenant_id": "t",
            "livemode": False,
            "name": "caps",
            "rules": [],
            "budgets": [
                {"tool": "order.*", "window_seconds": 3600, "max_count": 20},
                {"connector": "magento", "per": ["entity"], "window_seconds": 60, "max_value": 9},
            ],
            "created_at": NOW,
            "updated_at": NOW,
        }
    )
    off = gp.model_copy(update={"id": "grd_2", "status": "disabled"})
    runs = [
        ("risk", "cn_1", "order.hold", 3, 30.0),
        ("risk", "cn_2", "order.notify", 2, 0.0),
        ("risk", "cn_1", "refund.issue", 1, 5.0),
    ]
    names = {"cn_1": ("cn_1", "magento", "cn-magento"), "cn_2": ("cn_2", "slack", "cn-slack")}
    hits = [("grd_1", 0, "BLOCK", 4), ("grd_1", 1, "ALERT", 1), ("grd_9", 0, "BLOCK", 7)]
    got = budgets_consumed([gp, off], runs, hits, names)
    assert [(b["index"], b["consumed_count"], b["consumed_value"]) for b in got] == [
        (0, 5, 30.0),
        (1, 4, 35.0),
    ]
    assert [(b["exhausted_blocked"], b["exhausted_alerted"]) for b in got] == [(4, 0), (0, 1)]
    assert got[1]["per"] == ["entity"] and got[0]["guardrail"] == "caps"
    assert budgets_consumed([off], runs, hits, names) == []
