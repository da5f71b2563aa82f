"""The governance queries (ledger/governance.py) against the real ledger schema (chDB): the
report's dispositions, the approval statistics (per-plan fold, exact p50/p95 against a Python
reference), the audit trail's filters and mode wall, and config versions by object id."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest

from agents.governance import approval_counts, exact_quantile, summarise_dispositions
from ledger.governance import (
    AuditFilters,
    approvals,
    audit_log,
    budget_hits,
    config_versions,
    dispositions,
    executions,
)
from ledger.store import CONFIG_COLUMNS, RECEIPT_COLUMNS, LedgerStore, Scope, receipt_row
from ledger.tables import TABLES
from schemas.config import ConfigRecord
from schemas.plan import Receipt

pytestmark = pytest.mark.integration

T = "t_gov"
T0 = datetime(2026, 7, 2, 12, 0, tzinfo=UTC)
SCOPE = Scope(T, False)


def rc(
    i, plan, decision, outcome, tool="order.hold", *, at, approver=None, latency=None, op="op_1"
):
    return Receipt(
        id=f"rc_{i:026d}",
        tenant_id=T,
        livemode=False,
        operator_id=op,
        operator_name=f"name-{op}",
        guardrail_version=1,
        event_id=None,
        plan_id=plan,
        action_id=f"act_{plan}_{tool}",
        correlation_id="co",
        connector_id="cn_1",
        connector_name="m",
        tool=tool,
        entity_key="order:1",
        idempotency_key=f"k{i}",
        value=5.0,
        decision=decision,
        outcome=outcome,
        rule=None,
        reason="r",
        approver=approver,
        latency_ms=latency,
        created_at=at,
    )


def build_receipts(seed: int = 7):
    """Plans asking for approval, decided at known latencies, plus plain dispositions."""
    rnd = random.Random(seed)
    out, expected, i = [], {"approved": [], "vetoed": [], "expired": 0, "pending": 0}, 0
    for p in range(40):
        plan, asked = f"pl_{p}", T0 + timedelta(seconds=p * 10)
        op = "op_1" if p % 3 else "op_2"
        i += 1
        out.append(rc(i, plan, "ALERT", "pending_approval", at=asked, op=op))
        kind = rnd.choice(["approved", "vetoed", "expired", "pending"])
        wait_ms = rnd.randint(100, 90_000)
        decided = asked + timedelta(milliseconds=wait_ms)
        if kind == "approved":
            call = float(rnd.randint(1, 50))
            i += 1
            out.append(
                rc(
                    i,
                    plan,
                    "ALERT",
                    "applied",
                    at=decided + timedelta(milliseconds=call),
                    approver="ops@x",
                    latency=call,
                    op=op,
                )
            )
            expected["approved"].append(wait_ms)
        elif kind == "vetoed":
            i += 1
            out.append(rc(i, plan, "ALERT", "vetoed", at=decided, approver="lead@x", op=op))
            expected["vetoed"].append(wait_ms)
        elif kind == "expired":
            i += 1
            out.append(rc(i, plan, "ALERT", "expired", at=decided, op=op))
            expected["expired"] += 1
        else:
            expected["pending"] += 1
    for k in range(30):  # plain dispositions, some refused by an exhausted budget
        i += 1
        decision, outcome = rnd.choice([("ALLOW", "applied"), ("BLOCK", "refused")])
        tool = rnd.choice(["order.hold", "order.cancel", "refund.issue"])
        r = rc(i, f"pl_x{k}", decision, outcome, tool, at=T0 + timedelta(seconds=k))
        if decision == "BLOCK" and k % 2:
            r.rule = {"rule": "budget_exhausted", "guardrail_id": "grd_b", "budget": k % 4 // 2}
        out.append(r)
    return out, expected


def cfg(i, kind, data, note, actor="key_a", at_s=0):
    return ConfigRecord(
        id=f"cfg_{i:04d}",
        kind=kind,
        tenant_id=T,
        version=data.get("version", 1),
        data=data,
        actor=actor,
        note=note,
        at=T0 + timedelta(seconds=at_s),
    )


CONFIG = [
    cfg(1, "operator", {"id": "op_1", "livemode": False, "version": 1}, "operator.create", at_s=1),
    cfg(
        2, "operator", {"id": "op_1", "livemode": False, "version": 2}, "operator.update: x", at_s=2
    ),
    cfg(
        3,
        "operator",
        {"id": "op_1", "livemode": False, "version": 2},
        "operator.record_run",
        at_s=3,
    ),
    cfg(4, "operator", {"id": "op_9", "livemode": True, "version": 1}, "operator.create", at_s=4),
    cfg(5, "api_key", {"id": "key_b", "mode": "test"}, "key.create: key_b n admin", at_s=5),
    cfg(6, "api_key", {"id": "key_b", "mode": "test"}, "key.touch: key_b", at_s=6),
    cfg(7, "api_key", {"id": "key_l", "mode": "live"}, "key.create: key_l", at_s=7),
    cfg(8, "vault", {"connector_id": "cn_1", "ciphertext": "zz"}, "vault", at_s=8),
    cfg(
        9,
        "operator",
        {"id": "op_1", "livemode": False, "version": 3},
        "operator.rollback: to v1",
        at_s=9,
    ),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = LedgerStore(f"chdb://{tmp_path_factory.mktemp('gov')}/ch")
    s.open()
    receipts, expected = build_receipts()
    # twice: an unmerged duplicate must not count twice
    rows = [receipt_row(r) for r in receipts]
    s._client.insert("receipts", rows + rows[:5], column_names=list(RECEIPT_COLUMNS))
    spec = TABLES["config"]
    s._client.insert(
        "config_log", [spec.to_row(c) for c in CONFIG], column_names=list(CONFIG_COLUMNS)
    )
    s.receipts, s.expected = receipts, expected
    yield s
    s.close()


def run(coro):
    return asyncio.run(coro)


def test_dispositions_count_each_receipt_once_and_summarise(store):
    rows = run(dispositions(store, SCOPE, T0, T0 + timedelta(days=1), None))
    summary = summarise_dispositions(rows)
    assert summary["receipts"] == len(store.receipts)
    blocked: dict[str, int] = {}
    for r in store.receipts:
        if r.decision == "BLOCK":
            blocked[r.tool] = blocked.get(r.tool, 0) + 1
    top = sorted(blocked.items(), key=lambda kv: (-kv[1], kv[0]))
    assert [(b["tool"], b["count"]) for b in summary["top_blocked_tools"]] == top
    assert sum(r["value_sum"] for r in rows) == pytest.approx(5.0 * len(store.receipts))
    only = run(dispositions(store, SCOPE, T0, T0 + timedelta(days=1), "op_2"))
    assert {r["operator_id"] for r in only} == {"op_2"}
    # the tenancy wall and the mode
    assert run(dispositions(store, Scope("t_other", False), T0, T0 + timedelta(days=1), None)) == []
    assert run(dispositions(store, Scope(T, True), T0, T0 + timedelta(days=1), None)) == []


def test_approval_statistics_match_a_python_reference(store):
    got = run(approvals(store, SCOPE, T0, T0 + timedelta(days=1), None))
    ov = approval_counts(got["overall"])
    exp = store.expected
    decided = exp["approved"] + exp["vetoed"]
    assert ov["requested"] == 40
    assert (ov["approved"], ov["vetoed"], ov["expired"], ov["pending"]) == (
        len(exp["approved"]),
        len(exp["vetoed"]),
        exp["expired"],
        exp["pending"],
    )
    assert ov["veto_rate"] == round(len(exp["vetoed"]) / len(decided), 4)
    assert ov["latency_ms"]["p50"] == pytest.approx(exact_quantile(decided, 0.5), abs=1)
    assert ov["latency_ms"]["p95"] == pytest.approx(exact_quantile(decided, 0.95), abs=1)
    assert ov["latency_ms"]["max"] == pytest.approx(max(decided), abs=1)
    assert sum(o["requested"] for o in got["by_operator"]) == 40
    approvers = {a["approver"]: a for a in got["by_approver"]}
    assert approvers["ops@x"]["approved"] == len(exp["approved"])
    assert approvers["lead@x"]["vetoed"] == len(exp["vetoed"])
    # a window that holds no request: zeros and no rates
    empty = approval_counts(
        run(approvals(store, SCOPE, T0 - timedelta(days=2), T0 - timedelta(days=1), None))[
            "overall"
        ]
    )
    assert empty["requested"] == 0 and empty["veto_rate"] is None
    assert empty["latency_ms"]["p50"] is None


def test_audit_log_filters_quiet_commands_the_vault_and_the_other_mode(store):
    page = run(audit_log(store, SCOPE, AuditFilters(), 100, None))
    assert [r.id for r in page.items] == ["cfg_0009", "cfg_0005", "cfg_0002", "cfg_0001"]
    live = run(audit_log(store, Scope(T, True), AuditFilters(), 100, None))
    assert [r.id for r in live.items] == ["cfg_0007", "cfg_0004"]
    first = run(audit_log(store, SCOPE, AuditFilters(), 2, None))
    assert first.has_more and [r.id for r in first.items] == ["cfg_0009", "cfg_0005"]
    rest = run(audit_log(store, SCOPE, AuditFilters(), 2, first.last_key))
    assert [r.id for r in rest.items] == ["cfg_0002", "cfg_0001"] and not rest.has_more
    f = AuditFilters(kind="operator", object_id="op_1", action="operator.rollback")
    assert [r.id for r in run(audit_log(store, SCOPE, f, 10, None)).items] == ["cfg_0009"]
    f = AuditFilters(action="operator.create")
    assert [r.id for r in run(audit_log(store, SCOPE, f, 10, None)).items] == ["cfg_0001"]
    assert run(audit_log(store, Scope("t_other", False), AuditFilters(), 10, None)).items == []


def test_config_versions_by_object_id(store):
    recs = run(config_versions(store, T, "operator", "op_1"))
    assert [r.id for r in recs] == ["cfg_0001", "cfg_0002", "cfg_0003", "cfg_0009"]
    assert run(config_versions(store, "t_other", "operator", "op_1")) == []


def test_budget_executions_and_exhaustions(store):
    day = T0 + timedelta(days=1)
    runs = run(executions(store, SCOPE, T0, day))
    applied = [r for r in store.receipts if r.outcome == "applied"]
    assert sum(n for *_, n, _ in runs) == len(applied)
    assert sum(v for *_, v in runs) == pytest.approx(5.0 * len(applied))
    hits = run(budget_hits(store, SCOPE, T0, day))
    want: dict[tuple[str, int, str], int] = {}
    for r in store.receipts:
        if r.rule and r.rule.get("rule") == "budget_exhausted":
            k = (r.rule["guardrail_id"], r.rule["budget"], r.decision)
            want[k] = want.get(k, 0) + 1
    assert want and {(g, i, d): n for g, i, d, n in hits} == want
    assert run(budget_hits(store, Scope("t_other", False), T0, day)) == []
