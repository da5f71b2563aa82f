"""Every SQL example in docs/analytics.md runs against the real ledger schema (chDB) and returns
what the data says."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger.store import RECEIPT_COLUMNS, LedgerStore, receipt_row
from schemas.plan import Receipt

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "analytics.md"
T = "t_analyst"


def examples() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)


def rc(
    i: int,
    decision: str,
    outcome: str,
    tool: str,
    approver: str | None = None,
    latency: float | None = None,
):
    now = datetime(2026, 7, 2, 12, 0, tzinfo=UTC) + timedelta(seconds=i)
    return Receipt(
        id=f"rc_{i:026d}",
        tenant_id=T,
        livemode=False,
        operator_id="op_1",
        operator_name="order-risk",
        guardrail_version=2,
        event_id=None,
        plan_id=f"pl_{i}",
        action_id=f"act_{i}",
        correlation_id="co",
        connector_id="cn_1",
        connector_name="m",
        tool=tool,
        entity_key="order:1",
        idempotency_key=f"k{i}",
        value=10.0,
        decision=decision,
        outcome=outcome,
        rule={"index": 0},
        reason="r",
        approver=approver,
        latency_ms=latency,
        created_at=now,
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = LedgerStore(f"chdb://{tmp_path_factory.mktemp('analyst')}/ch")
    s.open()
    rows = [
        rc(1, "ALLOW", "applied", "order.hold", latency=12.0),
        rc(2, "DEDUP", "deduplicated", "order.hold"),
        rc(3, "BLOCK", "refused", "order.cancel"),
        rc(4, "BLOCK", "refused", "order.cancel"),
        rc(5, "ALERT", "vetoed", "order.notify", approver="ops@example.com"),
        rc(6, "ALERT", "applied", "order.notify", approver="ops@example.com", latency=30.0),
    ]
    s._client.insert("receipts", [receipt_row(r) for r in rows], column_names=list(RECEIPT_COLUMNS))
    yield s
    s.close()


def test_the_doc_has_the_promised_examples():
    assert len(examples()) >= 4


@pytest.mark.parametrize("i", range(6))
def test_each_example_runs(store, i):
    sqls = examples()
    if i >= len(sqls):
        pytest.skip("fewer examples")
    rows = store._client.query(sqls[i], parameters={"tenant": T}).result_rows
    assert isinstance(rows, list)


def test_examples_return_the_expected_numbers(store):
    sqls = examples()
    by_day = store._client.query(sqls[0], parameters={"tenant": T}).result_rows
    assert sum(r[3] for r in by_day) == 6
    veto = store._client.query(sqls[1], parameters={"tenant": T}).result_rows
    assert veto[0][1] == 1 and veto[0][3] == 0.5
    blocked = store._client.query(sqls[2], parameters={"tenant": T}).result_rows
    assert blocked[0][:2] == ("order.cancel", 2)
    latency = dict(
        (r[0], r[1]) for r in store._client.query(sqls[3], parameters={"tenant": T}).result_rows
    )
    assert latency == {"order.hold": 1, "order.notify": 1}


# ---- the same examples through the analyst wall (ledger/analyst.py, decisions §42) ----------
OTHER = "t_other"


def _scope(tenant: str = T):
    from ledger.store import Scope

    return Scope(tenant_id=tenant, livemode=False)


def run(store, sql: str, tenant: str = T, max_rows: int = 1000, seconds: float = 10.0):
    import asyncio

    return asyncio.run(
        store.analyst_query(_scope(tenant), sql, max_rows, seconds, {"tenant": tenant})
    )


@pytest.fixture(scope="module")
def walled(store):
    """The store with a second tenant's receipts (and a live-mode one of ours) beside ours."""
    other = [rc(100 + i, "BLOCK", "refused", "order.cancel") for i in range(3)]
    for r in other:
        r.tenant_id = OTHER
    live = rc(200, "ALLOW", "applied", "order.hold")
    live.livemode = True
    store._client.insert(
        "receipts", [receipt_row(r) for r in [*other, live]], column_names=list(RECEIPT_COLUMNS)
    )
    return store


def test_every_example_runs_through_the_wall_with_the_same_numbers(walled):
    sqls = examples()
    for sql in sqls:
        out = run(walled, sql)
        assert [c["name"] for c in out["columns"]], sql
    by_day = run(walled, sqls[0])["rows"]
    assert sum(r[3] for r in by_day) == 6  # neither the other tenant's nor the live receipt
    blocked = run(walled, sqls[2])["rows"]
    assert blocked[0][:2] == ["order.cancel", 2] or tuple(blocked[0][:2]) == ("order.cancel", 2)


def test_naming_another_tenant_returns_nothing(walled):
    assert run(walled, f"SELECT count() FROM receipts WHERE tenant_id = '{OTHER}'")["rows"] == [[0]]
    # no filter at all still reads only the caller's tenant and mode
    rows = run(walled, "SELECT DISTINCT tenant_id, livemode FROM receipts")["rows"]
    assert rows == [[T, False]]
    # through a join, a subquery, a CTE, UNION and merge(): the same wall
    for sql in (
        "SELECT count() FROM receipts AS a INNER JOIN receipts AS b ON a.id = b.id "
        f"WHERE b.tenant_id = '{OTHER}'",
        f"SELECT count() FROM (SELECT * FROM receipts WHERE tenant_id = '{OTHER}')",
        f"WITH x AS (SELECT id FROM receipts WHERE tenant_id = '{OTHER}') SELECT count() FROM x",
        f"SELECT count() FROM merge(currentDatabase(), '^receipts$') WHERE tenant_id = '{OTHER}'",
    ):
        assert run(walled, sql)["rows"] == [[0]], sql
    # a setting inside a subquery does not move the tenant: still our six, not their three
    moved = f"SELECT count() FROM (SELECT * FROM receipts SETTINGS log_comment = 'fibric-sql:0:{OTHER}')"
    assert run(walled, moved)["rows"] == [[6]]
    # the other tenant sees its own three, none of ours
    assert run(walled, "SELECT count() FROM receipts", tenant=OTHER)["rows"] == [[3]]


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        ("INSERT INTO receipts (id) VALUES ('x')", "sql_refused"),
        ("ALTER TABLE receipts DELETE WHERE 1", "sql_refused"),
        ("DROP TABLE receipts", "sql_refused"),
        ("SELECT 1; DROP TABLE receipts", "sql_invalid"),
        ("SELECT count() FROM system.tables", "sql_refused"),
        ("SELECT * FROM information_schema.columns", "sql_refused"),
        ("SELECT name FROM schema_migrations", "sql_refused"),
        ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "sql_refused"),
        ("SELECT * FROM url('http://127.0.0.1:9/x', 'CSV', 'a String')", "sql_refused"),
        ("SELECT * FROM remote('127.0.0.1', default.receipts)", "sql_refused"),
        ("SELECT count() FROM receipts SETTINGS readonly = 0", "sql_refused"),
        ("SELECT count() FROM receipts SETTINGS max_result_rows = 0", "sql_refused"),
        (f"SELECT 1 SETTINGS log_comment = 'fibric-sql:0:{OTHER}'", "sql_refused"),
        ("SELECT 1 INTO OUTFILE '/tmp/fibric-analyst-out.csv'", "sql_invalid"),
        ("SELECT 1 FORMAT JSON", "sql_invalid"),
        ("SELEC 1", "sql_invalid"),
        ("SELECT number FROM numbers(5000)", "sql_limit_exceeded"),
        ("SELECT sleep(3)", "sql_limit_exceeded"),
    ],
)
def test_refusals_come_from_the_engine(walled, sql, code):
    from schemas.errors import FibricError

    with pytest.raises(FibricError) as exc:
        run(walled, sql, seconds=1.0)
    assert exc.value.code == code, exc.value.message
    assert not Path("/tmp/fibric-analyst-out.csv").exists()


def test_the_api_reads_every_tenant_as_before(walled):
    # the row policies bind only queries marked as analyst SQL; the api's own reads are unscoped
    n = walled._client.query("SELECT count() FROM receipts").result_rows[0][0]
    assert n == 10


def test_a_table_without_a_policy_closes_analyst_sql(walled):
    from schemas.errors import FibricError

    walled._client.command("CREATE TABLE IF NOT EXISTS zz_new (x UInt8) ENGINE = Memory")
    try:
        with pytest.raises(FibricError) as exc:
            run(walled, "SELECT 1")
        assert exc.value.code == "sql_unavailable"
    finally:
        walled._client.command("DROP TABLE zz_new")
    assert run(walled, "SELECT 1")["rows"] == [[1]]


def test_a_table_outside_the_ledger_set_is_refused_not_filtered(walled):
    from schemas.errors import FibricError

    walled._client.command(
        "INSERT INTO vault (tenant_id, connector_id, at, id, record) "
        f"VALUES ('{T}', 'cn_1', now64(), 'v1', 'sealed')"
    )
    with pytest.raises(FibricError) as exc:
        run(walled, "SELECT record FROM vault")
    assert exc.value.code == "sql_refused" and "default.vault" in exc.value.message
