"""Shadow guardrails and policy replay through the running stack (issue 12 items 1, 3, 4;
decisions §37): a shadow BLOCK policy judges real traffic without stopping it and its would-be
verdict is on every receipt, which also cites each policy version that judged; a replay of the
window re-judges the stored actions from ClickHouse, counts the flips per operator and tool with
example plan ids, exports them as CSV, changes nothing, and is another tenant's 404."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import client, create_operator, install_sandbox, new_tenant
from tests.e2e.test_crash_uniqueness import GUARDRAILS, PLAYBOOK
from tests.e2e.test_events_api import assert_error
from tests.e2e.test_kafka_pipeline import wait_for
from tests.e2e.test_tenant_guardrails import order, receipts_of, settled

pytestmark = pytest.mark.e2e

TRY_BLOCK = {
    "name": "try-no-holds",
    "mode": "shadow",
    "rules": [{"tool": "order.hold", "operator": "replay-*", "decision": "BLOCK"}],
}


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def finished(c, replay_id: str) -> dict:
    def done():
        r = c.get(f"/v1/guardrails/replays/{replay_id}")
        assert r.status_code == 200, r.text
        return r.json() if r.json()["status"] != "running" else None

    return wait_for(done, timeout=60)


def test_shadow_verdicts_on_receipts_and_a_replay_of_the_window(stack):
    tenant = new_tenant(stack, f"rpl-{uuid.uuid4().hex[:8]}")
    other = new_tenant(stack, f"rpl-{uuid.uuid4().hex[:8]}")
    c = client(stack, tenant.keys["admin"])
    install_sandbox(c)
    op = create_operator(c, "replay-holds", ["order.hold", "order.notify"], GUARDRAILS, PLAYBOOK)
    r = c.post("/v1/guardrails", json=TRY_BLOCK)
    assert r.status_code == 201, r.text
    g = r.json()
    assert g["mode"] == "shadow" and "mode" not in g["rules"][0]  # the policy is shadow
    since = _iso(datetime.now(UTC) - timedelta(seconds=5))

    # real traffic: the shadow BLOCK stops nothing, every receipt records what it would do
    for n in ("81001", "81002", "81003"):
        order(c, n)
    rs = settled(c, op["id"], 6)
    assert len(rs) == 6 and {x["outcome"] for x in rs} == {"applied"}
    cited = [
        {"kind": "operator", "id": op["id"], "name": "replay-holds", "version": op["version"]},
        {
            "kind": "guardrail_policy",
            "id": g["id"],
            "name": g["name"],
            "version": 1,
            "mode": "shadow",
        },
    ]
    for x in rs:
        assert x["policy_versions"] == cited, x
        sv = x["shadow_verdict"]
        if x["tool"] == "order.hold":
            assert (sv["decision"], sv["differs"]) == ("BLOCK", True)
            assert (sv["rule"]["guardrail_id"], sv["rule"]["guardrail_version"]) == (g["id"], 1)
        else:
            assert (sv["decision"], sv["differs"]) == ("ALLOW", False)
    hold_plans = {x["plan_id"] for x in rs if x["tool"] == "order.hold"}

    # replay the window with the shadow policy enforced: the three holds would flip to BLOCK
    r = c.post("/v1/guardrails/replays", json={"since": since, "guardrail": g["id"]})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["id"].startswith("grr_") and job["object"] == "guardrail_replay"
    assert job["status"] == "running" and job["policies"] == [cited[1]]
    done = finished(c, job["id"])
    assert done["status"] == "complete", done
    assert (done["judged"], done["flipped"], done["skipped"]) == (6, 3, 0)
    assert done["flips"] == {"ALLOW->BLOCK": 3} and done["rows_scanned"] == 6
    hold, notify = done["results"]
    assert (hold["operator_id"], hold["operator"], hold["tool"]) == (
        op["id"],
        "replay-holds",
        "order.hold",
    )
    assert hold["transitions"] == {"ALLOW->BLOCK": 3} and hold["flipped"] == 3
    assert set(hold["examples"]["ALLOW->BLOCK"]) == hold_plans
    assert notify["tool"] == "order.notify" and notify["transitions"] == {"ALLOW->ALLOW": 3}

    # a candidate set, one operator (by name) and a tool glob: notify would need approval
    r = c.post(
        "/v1/guardrails/replays",
        json={
            "since": since,
            "until": _iso(datetime.now(UTC) + timedelta(seconds=1)),
            "operator": "replay-holds",
            "tool": "order.*",
            "guardrails": [
                {"name": "ask-first", "rules": [{"tool": "order.notify", "decision": "ALERT"}]}
            ],
        },
    )
    assert r.status_code == 202, r.text
    second = finished(c, r.json()["id"])
    assert second["status"] == "complete" and second["flips"] == {"ALLOW->ALERT": 3}
    assert second["candidate"] == {"guardrails": ["ask-first"]}

    # the result exports as CSV: one row per operator, tool and transition
    r = c.get(f"/v1/guardrails/replays/{job['id']}/export", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["operator_id", "operator", "tool", "from", "to", "count", "example_plan_ids"]
    flip = next(x for x in rows[1:] if x[2] == "order.hold")
    assert flip[3:6] == ["ALLOW", "BLOCK", "3"] and set(flip[6].split()) == hold_plans
    jl = c.get(f"/v1/guardrails/replays/{job['id']}/export", params={"format": "jsonl"})
    assert jl.status_code == 200 and len(jl.text.splitlines()) == 2

    # a replay changes nothing: same receipts, the policy still shadow at version 1
    assert len(receipts_of(c, op["id"])) == 6
    assert (c.get(f"/v1/guardrails/{g['id']}").json()["version"]) == 1

    # bad input answers the error envelope
    assert_error(c.post("/v1/guardrails/replays", json={"since": since}), 400, "invalid_parameter")
    later = {"since": _iso(datetime.now(UTC) + timedelta(days=1)), "guardrail": g["id"]}
    assert_error(c.post("/v1/guardrails/replays", json=later), 400, "invalid_parameter")
    missing = {"since": since, "guardrail": f"{g['id']}@9"}
    assert_error(c.post("/v1/guardrails/replays", json=missing), 404, "not_found")
    assert_error(
        c.get(f"/v1/guardrails/replays/{job['id']}/export", params={"format": "xml"}),
        400,
        "invalid_parameter",
    )
    assert_error(c.get("/v1/guardrails/replays/grr_01M84AJB4RA9TX61DER03S1XK0"), 404, "not_found")

    # tenancy: another tenant cannot read the job, its export, nor replay this tenant's policy
    o = client(stack, other.keys["admin"])
    assert_error(o.get(f"/v1/guardrails/replays/{job['id']}"), 404, "not_found")
    assert_error(o.get(f"/v1/guardrails/replays/{job['id']}/export"), 404, "not_found")
    theirs = o.post("/v1/guardrails/replays", json={"since": since, "guardrail": g["id"]})
    assert_error(theirs, 404, "not_found")
    # and its own replay of the same window finds none of this tenant's actions
    r = o.post("/v1/guardrails/replays", json={"since": since, "guardrails": []})
    assert r.status_code == 202, r.text
    assert finished(o, r.json()["id"])["judged"] == 0
    # a read-only key may replay (it changes nothing); an ingest key may not
    ro = client(stack, tenant.keys["read_only"])
    assert ro.get(f"/v1/guardrails/replays/{job['id']}").status_code == 200
    ing = client(stack, tenant.keys["ingest"])
    assert_error(ing.get(f"/v1/guardrails/replays/{job['id']}"), 403, "insufficient_scope")
