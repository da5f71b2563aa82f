"""Governance through the running stack (issue 12 items 5 and 7, decisions §38): operator and
guardrail versions (read, diff, rollback as a new version that the next plan is judged by), the
governance report and approval statistics over real receipts of approved and vetoed plans, and
the audit log of config and key changes; other tenants' ids are 404, scopes are enforced."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import client, create_operator, install_sandbox
from tests.e2e.test_crash_uniqueness import PLAYBOOK
from tests.e2e.test_events_api import assert_error
from tests.e2e.test_kafka_pipeline import wait_for

pytestmark = pytest.mark.e2e

HELD = [
    {"tool": "order.hold", "decision": "ALERT"},
    {"tool": "order.notify", "decision": "ALLOW"},
]


def order(c, order_id: str) -> None:
    r = c.post(
        "/v1/events",
        json={
            "source": "shop",
            "event_type": "order.created",
            "entity_key": f"order:{order_id}",
            "payload": {"order_id": order_id},
        },
    )
    assert r.status_code == 201, r.text


def proposed_plan(c, op_id: str, seen: set[str]) -> dict:
    def find():
        r = c.get("/v1/plans", params={"operator_id": op_id, "status": "proposed", "limit": 100})
        return next((p for p in r.json()["data"] if p["id"] not in seen), None)

    plan = wait_for(find)
    seen.add(plan["id"])
    return plan


def audit(c, **params) -> list[dict]:
    r = c.get("/v1/audit_log", params={"limit": 100, **params})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def own_tenant(stack) -> dict[str, str]:
    """A fresh tenant with an admin and a live key from the CLI (each call is a process start),
    and read-only and ingest keys made over the API."""
    slug = f"gov-{uuid.uuid4().hex[:8]}"
    t = stack.cli("admin", "tenant", "create", slug, "--json")
    keys = {
        "admin": stack.cli("admin", "key", "create", "--tenant", slug, "--json")["secret"],
        "live": stack.cli(
            "admin", "key", "create", "--tenant", t["id"], "--mode", "live", "--json"
        )["secret"],
    }
    with client(stack, keys["admin"]) as c:
        for role in ("read_only", "ingest"):
            r = c.post("/v1/api_keys", json={"name": role, "role": role})
            assert r.status_code == 201, r.text
            keys[role] = r.json()["secret"]
    return keys


def test_versions_rollback_report_approvals_and_audit_log(stack, globex):
    keys = own_tenant(stack)
    c = client(stack, keys["admin"])
    o = client(stack, globex.keys["admin"])  # another tenant (only read, never changed here)
    ro = client(stack, keys["read_only"])
    ingest = client(stack, keys["ingest"])
    install_sandbox(c)
    op = create_operator(c, "gov-holds", ["order.hold", "order.notify"], HELD, PLAYBOOK)
    oid = op["id"]

    # ---- operator versions: update, read, diff, rollback --------------------------------------
    r = c.patch(f"/v1/operators/{oid}", json={"guardrails": [HELD[1]], "outcome": "v2 outcome"})
    assert r.status_code == 200 and r.json()["version"] == 2, r.text
    vs = c.get(f"/v1/operators/{oid}/versions").json()
    assert vs["object"] == "list" and [v["version"] for v in vs["data"]] == [2, 1]
    assert vs["data"][1]["guardrails"] == HELD and vs["data"][1]["object"] == "operator"
    page = c.get(f"/v1/operators/{oid}/versions", params={"limit": 1}).json()
    assert page["has_more"] and [v["version"] for v in page["data"]] == [2]
    rest = c.get(
        f"/v1/operators/{oid}/versions", params={"limit": 1, "cursor": page["next_cursor"]}
    )
    assert [v["version"] for v in rest.json()["data"]] == [1]
    v1 = c.get(f"/v1/operators/{oid}/versions/1").json()
    assert (v1["version"], v1["outcome"], v1["id"]) == (1, op["outcome"], oid)
    assert_error(c.get(f"/v1/operators/{oid}/versions/7"), 404, "not_found")
    assert c.get(f"/v1/operators/{oid}/versions/x").status_code in (400, 404)
    assert_error(c.get(f"/v1/operators/{oid}/versions/0"), 400, "invalid_parameter")
    d = c.get(f"/v1/operators/{oid}/versions/2/diff").json()
    assert (d["object"], d["object_type"], d["version"], d["against"]) == (
        "version_diff",
        "operator",
        2,
        1,
    )
    changed = {ch["field"]: (ch["op"], ch["before"], ch["after"]) for ch in d["changes"]}
    assert changed["outcome"] == ("changed", op["outcome"], "v2 outcome")
    assert changed["guardrails[0].tool"] == ("changed", "order.hold", "order.notify")
    assert changed["guardrails[1]"] == ("removed", HELD[1], None)
    r = c.post(f"/v1/operators/{oid}/versions/1/rollback")
    assert r.status_code == 200, r.text
    rolled = r.json()
    assert (rolled["version"], rolled["guardrails"], rolled["outcome"]) == (3, HELD, op["outcome"])
    assert c.get(f"/v1/operators/{oid}").json()["version"] == 3
    assert (
        c.get(f"/v1/operators/{oid}/versions/3/diff", params={"against": 1}).json()["changes"] == []
    )
    assert_error(
        c.get(f"/v1/operators/{oid}/versions/3/diff", params={"against": "9"}), 404, "not_found"
    )

    # ---- the loop under the rolled-back version: one plan approved, one vetoed ------------------
    seen: set[str] = set()
    order(c, "81001")
    p1 = proposed_plan(c, oid, seen)
    assert p1["guardrail_version"] == 3  # judged by the rollback's new version
    ok = c.post(f"/v1/plans/{p1['id']}/approve", json={"approver": "ops@example.com"})
    assert ok.status_code == 200, ok.text
    order(c, "81002")
    p2 = proposed_plan(c, oid, seen)
    assert c.post(f"/v1/plans/{p2['id']}/veto", json={"approver": "lead"}).status_code == 200

    def report_done():
        rep = c.get("/v1/governance/report").json()
        return rep if rep["by_outcome"].get("vetoed") and rep["by_outcome"].get("applied") else None

    rep = wait_for(report_done)
    assert rep["object"] == "governance_report" and rep["livemode"] is False
    assert rep["approvals"]["requested"] == 2
    assert (rep["approvals"]["approved"], rep["approvals"]["vetoed"]) == (1, 1)
    assert rep["veto_rate"] == 0.5 and rep["approvals"]["latency_ms"]["count"] == 2
    assert rep["approvals"]["latency_ms"]["p50"] >= 0
    assert rep["by_operator"][0]["operator_id"] == oid
    assert rep["receipts"] == sum(x["count"] for x in rep["dispositions"])
    assert rep["budgets"]["available"] is True and rep["budgets"]["data"] == []  # none yet
    ap = c.get("/v1/governance/approvals", params={"operator_id": oid}).json()
    assert ap["object"] == "approval_statistics" and ap["operator_id"] == oid
    assert {a["approver"]: (a["approved"], a["vetoed"]) for a in ap["by_approver"]} == {
        "ops@example.com": (1, 0),
        "lead": (0, 1),
    }
    assert ap["by_operator"][0]["requested"] == 2
    assert_error(
        c.get(
            "/v1/governance/report",
            params={"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
        ),
        400,
        "invalid_parameter",
    )
    assert_error(c.get("/v1/governance/report", params={"bogus": "1"}), 400, "invalid_parameter")

    # ---- guardrail versions: read, diff, rollback; the next plan judged by it -------------------
    g = c.post(
        "/v1/guardrails",
        json={
            "name": "gov-block",
            "rules": [{"tool": "order.hold", "decision": "BLOCK"}],
            "budgets": [{"tool": "order.notify", "window_seconds": 3600, "max_count": 100}],
        },
    ).json()
    gid = g["id"]
    r = c.patch(f"/v1/guardrails/{gid}", json={"status": "disabled"})
    assert r.status_code == 200 and r.json()["version"] == 2
    assert c.get(f"/v1/guardrails/{gid}/versions/1").json()["status"] == "active"
    gd = c.get(f"/v1/guardrails/{gid}/versions/2/diff").json()
    assert [(x["field"], x["before"], x["after"]) for x in gd["changes"]] == [
        ("status", "active", "disabled")
    ]
    r = c.post(f"/v1/guardrails/{gid}/versions/1/rollback")
    assert r.status_code == 200 and (r.json()["version"], r.json()["status"]) == (3, "active")
    order(c, "81003")

    def blocked():
        rs = c.get("/v1/receipts", params={"operator_id": oid, "decision": "BLOCK"}).json()["data"]
        return rs or None

    rc = wait_for(blocked)[0]
    assert (rc["rule"]["guardrail_id"], rc["rule"]["guardrail_version"]) == (gid, 3)

    def notified():  # order.notify ran for 81001 (approved) and 81003: the budget counted both
        data = c.get("/v1/governance/report").json()["budgets"]["data"]
        return data if data and data[0]["consumed_count"] == 2 else None

    (b,) = wait_for(notified)
    assert (b["guardrail_id"], b["guardrail_version"], b["index"]) == (gid, 3, 0)
    assert (b["max_count"], b["exhausted_blocked"], b["exhausted_alerted"]) == (100, 0, 0)

    # ---- API keys: created and revoked over the API, both in the audit log ----------------------
    k = c.post("/v1/api_keys", json={"name": "temp", "role": "read_only"}).json()
    assert c.post(f"/v1/api_keys/{k['id']}/revoke").status_code == 200

    def audited():
        es = audit(c)
        actions = {e["action"] for e in es}
        want = {"operator.rollback", "guardrail.rollback", "key.create", "key.revoke"}
        return es if want <= actions else None

    entries = wait_for(audited)
    assert all(e["object"] == "audit_log_entry" and e["livemode"] is False for e in entries)
    me = c.get("/v1/api_keys", params={"limit": 100}).json()["data"]
    by = {(e["action"], e["object_id"]): e for e in entries}
    rb = by[("operator.rollback", oid)]
    assert (rb["verb"], rb["object_type"], rb["version"]) == ("rollback", "operator", 3)
    assert rb["actor_key_id"] in {x["id"] for x in me} and rb["actor"] == rb["actor_key_id"]
    assert by[("key.revoke", k["id"])]["verb"] == "revoke"
    assert by[("guardrail.rollback", gid)]["version"] == 3
    assert ("operator.create", oid) in by and ("operator.update", oid) in by
    assert not any(e["action"] in ("key.touch", "operator.record_run") for e in entries)
    assert all("secret" not in str(e) and "ciphertext" not in str(e) for e in entries)
    only = audit(c, object_type="operator", object_id=oid)
    assert [e["version"] for e in only] == [3, 2, 1]
    first = c.get("/v1/audit_log", params={"limit": 2}).json()
    nxt = c.get("/v1/audit_log", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [e["id"] for e in first["data"] + nxt["data"]] == [e["id"] for e in entries[:4]]
    assert_error(
        c.get("/v1/audit_log", params={"cursor": first["next_cursor"], "object_type": "operator"}),
        400,
        "invalid_cursor",
    )
    assert_error(c.get("/v1/audit_log", params={"object_type": "vault"}), 400, "invalid_parameter")

    # ---- tenancy and scopes -----------------------------------------------------------------------
    for resp in (
        o.get(f"/v1/operators/{oid}/versions"),
        o.get(f"/v1/operators/{oid}/versions/1"),
        o.get(f"/v1/operators/{oid}/versions/2/diff"),
        o.post(f"/v1/operators/{oid}/versions/1/rollback"),
        o.get(f"/v1/guardrails/{gid}/versions/1"),
        o.get(f"/v1/guardrails/{gid}/versions/2/diff"),
        o.post(f"/v1/guardrails/{gid}/versions/1/rollback"),
    ):
        assert_error(resp, 404, "not_found")
    assert o.get("/v1/governance/report", params={"operator_id": oid}).json()["receipts"] == 0
    assert o.get("/v1/governance/approvals", params={"operator_id": oid}).json()["requested"] == 0
    theirs = {e["object_id"] for e in audit(o)}
    assert oid not in theirs and gid not in theirs and k["id"] not in theirs
    live = client(stack, keys["live"])
    assert all(e["livemode"] for e in audit(live)) and oid not in {
        e["object_id"] for e in audit(live)
    }
    assert ro.get(f"/v1/operators/{oid}/versions/1").status_code == 200
    assert ro.get("/v1/governance/report").status_code == 200
    assert_error(ro.post(f"/v1/operators/{oid}/versions/1/rollback"), 403, "insufficient_scope")
    assert_error(ro.post(f"/v1/guardrails/{gid}/versions/1/rollback"), 403, "insufficient_scope")
    for path in ("/v1/governance/report", "/v1/governance/approvals", "/v1/audit_log"):
        assert_error(ingest.get(path), 403, "insufficient_scope")
    for x in (c, o, ro, ingest, live):
        x.close()
