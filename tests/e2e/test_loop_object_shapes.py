"""Plans, actions, receipts and receipt exports have the documented shape (spec §2.8, §2.9,
§2.11), and so do events, operators, connectors, API keys, lists and errors, through the
running stack: events → rules model → cn-magento → the fake Magento."""

from __future__ import annotations

import csv
import io

import orjson
import pyarrow.parquet as pq
import pytest

from tests.e2e.test_events_api import assert_error
from tests.e2e.test_governed_loop import HOLD, NOTIFY, Loop, fake  # noqa: F401 - fixture
from tests.e2e.test_kafka_pipeline import wait_for
from tests.spec_shapes import RFC3339, problems

pytestmark = pytest.mark.e2e


def _all(loop: Loop, path: str, **params) -> list[dict]:
    out, cursor = [], None
    while True:
        q = {"limit": 100, **params, **({"cursor": cursor} if cursor else {})}
        r = loop.c.get(path, params=q)
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["data"]
        if not page["has_more"]:
            return out
        cursor = page["next_cursor"]


def test_plans_actions_receipts_and_exports_have_the_documented_shape(stack, fake):  # noqa: F811
    loop = Loop(
        stack,
        fake,
        [
            {"when": "order.created", "then": [HOLD]},
            {"when": "order.note", "then": [NOTIFY]},
        ],
        [
            {"tool": "order.hold", "decision": "ALLOW", "max_value": 500},
            {"tool": "order.notify", "decision": "ALERT"},
        ],
    )
    fake.add_order(1)
    ok = loop.post("order.created", order_id="1", total=10)
    over = loop.post("order.created", order_id="2", total=900)
    held = loop.post("order.note", order_id="1", note="late", note_id="n1")
    loop.wait_receipts(3)  # applied, refused, pending_approval

    # ---- plans ----------------------------------------------------------------------------
    applied_plan = wait_for(
        lambda: (p := loop.plan_for(ok["id"]))["actions"][0]["outcome"] == "applied" and p,
        timeout=30,
    )
    refused_plan = loop.plan_for(over["id"])
    proposed_plan = loop.plan_for(held["id"])
    for plan in (applied_plan, refused_plan, proposed_plan):
        assert problems(plan, "execution_plan") == [], plan
    assert applied_plan["status"] == "executed" and applied_plan["disposed_at"]
    # a plan whose only line was blocked is disposed: documented `executed`, ours in detail
    assert (refused_plan["status"], refused_plan["status_detail"]) == ("executed", "refused")
    assert refused_plan["actions"][0]["verdict"]["decision"] == "BLOCK"
    assert proposed_plan["status"] == "proposed" and proposed_plan["disposed_at"] is None
    assert proposed_plan["proposed_at"] == proposed_plan["created_at"]
    hold = applied_plan["actions"][0]
    assert hold["verdict"]["tier"] == 1 and hold["verdict"]["rule"]["tool"] == "order.hold"
    assert hold["connector"] == loop.cn["id"] == hold["connector_id"]
    assert proposed_plan["actions"][0]["verdict"]["tier"] == 2  # order.notify: customer-visible

    # `status` filters on what is returned; undocumented statuses are refused
    executed = {p["id"] for p in _all(loop, "/v1/plans", status="executed")}
    assert {applied_plan["id"], refused_plan["id"]} <= executed
    assert proposed_plan["id"] not in executed
    assert {p["id"] for p in _all(loop, "/v1/plans", status="proposed")} == {proposed_plan["id"]}
    for status in ("approved", "refused", "executing"):
        err = assert_error(
            loop.c.get("/v1/plans", params={"status": status}), 400, "invalid_parameter"
        )
        assert err["param"] == "status"
    everything = _all(loop, "/v1/plans")
    assert {p["status"] for p in everything} <= {"proposed", "executed", "vetoed", "expired"}

    # approving answers with the documented status too
    r = loop.c.post(f"/v1/plans/{proposed_plan['id']}/approve", json={"approver": "ops"})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["status_detail"]) == ("executed", "approved")
    assert r.json()["disposed_at"] and problems(r.json(), "execution_plan") == []

    # ---- actions --------------------------------------------------------------------------
    actions = _all(loop, "/v1/actions", operator_id=loop.op["id"])
    assert len(actions) == 3
    for a in actions:
        assert problems(a, "action") == [], a
    one = loop.c.get(f"/v1/actions/{hold['id']}").json()
    assert problems(one, "action") == []
    assert one["reversible"] is True and one["outcome"] == "applied"
    assert one["receipt_id"] == one["receipt_ids"][-1] and one["disposed_at"]
    notify = next(a for a in actions if a["tool"] == "order.notify")
    assert notify["reversible"] is False  # no compensating tool

    # ---- receipts -------------------------------------------------------------------------
    receipts = wait_for(
        lambda: (rs := loop.receipts()) and sum(r["outcome"] == "applied" for r in rs) == 2 and rs,
        timeout=60,
    )
    for rc in receipts:
        assert problems(rc, "receipt") == [], rc
        assert rc["operator"] == rc["operator_name"] == "order-risk"
        assert rc["connector"] == rc["connector_id"] == loop.cn["id"]
        assert rc["at"] == rc["created_at"] and rc["reseller_id"] is None
        assert rc["verdict"]["decision"] == rc["decision"] and rc["verdict"]["rule"] == rc["rule"]
    applied = next(r for r in receipts if r["tool"] == "order.hold" and r["outcome"] == "applied")
    assert applied["verdict"]["tier"] == 1  # Appendix B: an order.hold ALLOW at tier 1
    assert loop.c.get(f"/v1/receipts/{applied['id']}").json() == applied

    # ---- unknown filters and foreign cursors ------------------------------------------------
    for path, bad in (
        ("/v1/receipts", "operator"),
        ("/v1/plans", "plan_status"),
        ("/v1/actions", "outcome"),
    ):
        err = assert_error(loop.c.get(path, params={bad: "x"}), 400, "invalid_parameter")
        assert err["param"] == bad and bad in err["message"]
    cursors = {}
    for path in ("/v1/plans", "/v1/actions", "/v1/receipts"):
        page = loop.c.get(path, params={"limit": 1}).json()
        assert page["has_more"] and page["next_cursor"].startswith("cur_")
        cursors[path] = page["next_cursor"]
        assert loop.c.get(path, params={"cursor": page["next_cursor"]}).status_code == 200
    for mine, cur in cursors.items():
        for other in cursors:
            if other != mine:
                err = assert_error(loop.c.get(other, params={"cursor": cur}), 400, "invalid_cursor")
                assert err["param"] == "cursor"

    # ---- exports: each row is the receipt object --------------------------------------------
    by_id = {r["id"]: r for r in loop.receipts()}
    bodies = {}
    for fmt in ("jsonl", "csv", "parquet"):
        job = loop.c.post(
            "/v1/receipts/exports", json={"format": fmt, "operator_id": loop.op["id"]}
        ).json()
        done = wait_for(
            lambda j=job: (
                (d := loop.c.get(f"/v1/exports/{j['id']}").json())["status"] == "complete" and d
            ),
            timeout=30,
        )
        assert done["row_count"] == len(by_id)
        bodies[fmt] = loop.c.get(done["url"].replace(stack.base_url, "")).content
    rows = [orjson.loads(line) for line in bodies["jsonl"].splitlines()]
    assert {r["id"]: r for r in rows} == by_id  # JSON lines of the same object
    table = list(csv.reader(io.StringIO(bodies["csv"].decode())))
    header, cells = table[0], table[1:]
    assert header == list(rows[0]) and len(cells) == len(by_id)
    assert b"\\N" not in bodies["csv"]
    for line in cells:
        row = dict(zip(header, line, strict=True))
        rc = by_id[row["id"]]
        for col in ("created_at", "at", "proposed_at"):
            assert RFC3339.match(row[col]), (col, row[col])
        for col, v in rc.items():
            if v is None:
                assert row[col] == "", col  # null is an empty cell
        assert orjson.loads(row["verdict"]) == rc["verdict"]
        assert row["livemode"] == "false"
    pt = pq.read_table(io.BytesIO(bodies["parquet"]))
    assert pt.column_names == header and pt.num_rows == len(by_id)
    first = pt.to_pylist()[0]
    assert first["verdict"]["tier"] == by_id[first["id"]]["verdict"]["tier"]


def test_the_other_objects_and_undone_at_through_the_running_api(stack, fake):  # noqa: F811
    """Event, operator, connector, api_key, export, list and error objects read from the api
    match the spec tables; an undone action reads ``undone_at`` once its undo applied."""
    loop = Loop(
        stack,
        fake,
        [{"when": "order.created", "then": [HOLD]}],
        [
            {"tool": "order.hold", "decision": "ALLOW", "max_value": 500},
            {"tool": "order.release", "decision": "ALLOW"},  # the undo is governed too
        ],
    )
    fake.add_order(7)
    ev = loop.post("order.created", order_id="7", total=10)
    assert problems(ev, "event") == []
    assert problems(loop.c.get(f"/v1/events/{ev['id']}").json(), "event") == []
    page = loop.c.get("/v1/events", params={"limit": 1}).json()
    assert problems(page, "list") == [] and all(problems(e, "event") == [] for e in page["data"])
    op = loop.c.get(f"/v1/operators/{loop.op['id']}").json()
    assert problems(op, "operator") == []
    cn = loop.c.get(f"/v1/connectors/{loop.cn['id']}").json()
    assert problems(cn, "connector") == [] and cn["installed_at"] == cn["created_at"]
    keys = loop.c.get("/v1/api_keys").json()
    assert keys["data"] and all(problems(k, "api_key") == [] for k in keys["data"])
    job = loop.c.post("/v1/receipts/exports", json={"format": "csv"}).json()
    assert problems(job, "export") == []
    err = assert_error(loop.c.post("/v1/receipts/exports"), 400, "missing_parameter")
    assert problems({"error": err}, "error") == []

    # undo the applied hold: the original reads undone_at once the undo's receipt is written
    hold = wait_for(
        lambda: (p := loop.plan_for(ev["id"]))["actions"][0]["outcome"] == "applied"
        and p["actions"][0],
        timeout=30,
    )
    assert hold["reversible"] is True and hold["undone_at"] is None
    r = loop.c.post(f"/v1/actions/{hold['id']}/undo")
    assert r.status_code == 202, r.text
    undo = r.json()
    assert undo["undo_of"] == hold["id"] and problems(undo, "action") == []
    undone = wait_for(
        lambda: (a := loop.c.get(f"/v1/actions/{hold['id']}").json())["undone_at"] and a,
        timeout=30,
    )
    assert RFC3339.match(undone["undone_at"]) and undone["undone_at"] >= hold["disposed_at"]
    listed = _all(loop, "/v1/actions", plan_id=hold["plan_id"])
    assert next(a for a in listed if a["id"] == hold["id"])["undone_at"] == undone["undone_at"]
    plan = loop.c.get(f"/v1/plans/{hold['plan_id']}").json()
    assert plan["actions"][0]["undone_at"] == undone["undone_at"]
