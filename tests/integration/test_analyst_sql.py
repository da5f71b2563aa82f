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
