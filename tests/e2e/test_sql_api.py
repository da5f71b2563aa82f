"""Analyst SQL through the running stack: ``POST /v1/sql`` and ``fibric sql`` against the
embedded ledger of a real ``fibric up``, tenant by tenant (decisions §42)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import Tenant, client
from tests.e2e.test_events_api import assert_error, event

pytestmark = pytest.mark.e2e

DOC = Path(__file__).resolve().parents[2] / "docs" / "analytics.md"


def tenant(stack, slug: str) -> Tenant:
    """A tenant with an admin key and a ledger:query key (granted explicitly: no role has it)."""
    t = stack.cli("admin", "tenant", "create", slug, "--json")
    keys = {
        label: stack.cli("admin", "key", "create", "--tenant", slug, *args, "--json")["secret"]
        for label, args in (("admin", ("--role", "admin")), ("sql", ("--scope", "ledger:query")))
    }
    return Tenant(t["id"], slug, keys)


@pytest.fixture(scope="module")
def two(stack):
    a = tenant(stack, f"sql-a-{uuid.uuid4().hex[:6]}")
    b = tenant(stack, f"sql-b-{uuid.uuid4().hex[:6]}")
    ids = {}
    for t, n in ((a, 2), (b, 1)):
        with client(stack, t.keys["admin"]) as c:
            for i in range(n):
                r = c.post("/v1/events", json=event(correlation_id=f"co-sql-{i}"))
                assert r.status_code == 201, r.text
                ids.setdefault(t.id, []).append(r.json()["id"])
    # the sink lands events in batches: wait until both tenants' events are stored
    for t, n in ((a, 2), (b, 1)):
        with client(stack, t.keys["sql"]) as c:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                r = c.post("/v1/sql", json={"query": "SELECT count() FROM events"})
                assert r.status_code == 200, r.text
                if r.json()["rows"] == [[n]]:
                    break
                time.sleep(0.3)
    return a, b, ids


def test_the_tenant_sees_its_own_rows_and_nothing_of_another(stack, two):
    a, b, ids = two
    with client(stack, a.keys["sql"]) as c:
        r = c.post("/v1/sql", json={"query": "SELECT id, tenant_id FROM events ORDER BY id"})
        assert r.status_code == 200, r.text
        res = r.json()
        assert res["object"] == "sql_result" and res["livemode"] is False
        assert [col["name"] for col in res["columns"]] == ["id", "tenant_id"]
        assert res["columns"][0]["type"] == "String"
        assert sorted(row[0] for row in res["rows"]) == sorted(ids[a.id])
        assert {row[1] for row in res["rows"]} == {a.id} and res["row_count"] == 2
        # naming the other tenant's id, or its event's id, returns nothing
        for q in (
            f"SELECT count() FROM events WHERE tenant_id = '{b.id}'",
            f"SELECT count() FROM events WHERE id = '{ids[b.id][0]}'",
            f"SELECT count() FROM config_log WHERE tenant_id = '{b.id}'",
        ):
            r = c.post("/v1/sql", json={"query": q})
            assert r.status_code == 200 and r.json()["rows"] == [[0]], (q, r.text)
        # {tenant:String} is the key's tenant
        r = c.post(
            "/v1/sql",
            json={"query": "SELECT count() FROM events WHERE tenant_id = {tenant:String}"},
        )
        assert r.json()["rows"] == [[2]]
    with client(stack, b.keys["sql"]) as c:
        r = c.post("/v1/sql", json={"query": "SELECT id FROM events"})
        assert r.json()["rows"] == [[ids[b.id][0]]]


def test_every_analytics_example_runs_through_the_api(stack, two):
    a, _, _ = two
    sqls = re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(sqls) >= 6
    with client(stack, a.keys["sql"]) as c:
        for q in sqls:
            r = c.post("/v1/sql", json={"query": q})
            assert r.status_code == 200, (q, r.text)
            assert r.json()["columns"], q


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("INSERT INTO events (id) VALUES ('x')", 403, "sql_refused"),
        ("ALTER TABLE receipts DELETE WHERE 1", 403, "sql_refused"),
        ("DROP TABLE events", 403, "sql_refused"),
        ("SELECT name FROM system.tables", 403, "sql_refused"),
        ("SELECT * FROM file('/etc/passwd', 'LineAsString')", 403, "sql_refused"),
        ("SELECT * FROM url('http://127.0.0.1:9/', 'CSV', 'a String')", 403, "sql_refused"),
        ("SELECT count() FROM events SETTINGS max_result_rows = 0", 403, "sql_refused"),
        ("SELECT 1; DROP TABLE events", 400, "sql_invalid"),
        ("SELECT number FROM numbers(20)", 422, "sql_limit_exceeded"),
    ],
)
def test_refusals_use_the_error_envelope(stack, two, query, status, code):
    a, _, _ = two
    with client(stack, a.keys["sql"]) as c:
        r = c.post("/v1/sql", json={"query": query, "max_rows": 10})
        err = assert_error(r, status, code)
        assert err["param"] == "query"


def test_scope_and_body_rules(stack, two):
    a, _, _ = two
    with client(stack, a.keys["admin"]) as c:  # admin holds every scope but ledger:query
        assert_error(c.post("/v1/sql", json={"query": "SELECT 1"}), 403, "insufficient_scope")
    with client(stack, a.keys["sql"]) as c:
        assert_error(
            c.post("/v1/sql", json={"query": "SELECT 1", "max_rows": 0}), 400, "invalid_parameter"
        )
        assert_error(c.post("/v1/sql", json={"query": ""}), 400, "invalid_parameter")
        assert_error(c.post("/v1/sql", json={"sql": "SELECT 1"}), 400, "missing_parameter")


def test_fibric_sql_prints_a_table_csv_and_json(stack, two, monkeypatch, capsys):
    from fibric.cli import main

    a, _, _ = two
    env = {**stack.env, "FIBRIC_API_KEY": a.keys["sql"], "FIBRIC_API_URL": stack.base_url}
    q = "SELECT tenant_id, count() AS n FROM events GROUP BY tenant_id"
    # the installed entry point once, as a process
    out = subprocess.run(
        [sys.executable, "-m", "fibric", "sql", q, "--format", "csv"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["tenant_id,n", f"{a.id},2"]
    # the other formats in-process (the same HTTP round trip to the running api)
    monkeypatch.setenv("FIBRIC_API_KEY", a.keys["sql"])
    monkeypatch.setenv("FIBRIC_API_URL", stack.base_url)
    capsys.readouterr()
    assert main(["sql", q, "--format", "json"]) == 0
    assert [json.loads(x) for x in capsys.readouterr().out.splitlines()] == [
        {"tenant_id": a.id, "n": 2}
    ]
    assert main(["sql", q]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["tenant_id", "n"] and lines[2].split() == [a.id, "2"]
    assert lines[-1].startswith("(1 row,")
    assert main(["sql", "DROP TABLE events"]) == 1
    assert "sql_refused" in capsys.readouterr().err
