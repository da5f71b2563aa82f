"""The governance report and approval statistics (decisions §38), computed in ClickHouse over
the tenant's receipts and config_log for one window, scoped to the caller's tenant and mode."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agents.governance import approval_counts, budgets_consumed, summarise_dispositions
from api.auth import AuthContext
from api.state import ApiState
from ledger.governance import approvals, budget_hits, dispositions, executions

BUDGETS_DETAIL = (
    "Every budget of the tenant's active guardrail policies: the executions it counts in this "
    "window (all its scope values summed; its own sliding window is what the executor enforces) "
    "and the actions its exhaustion refused or let run over a soft cap."
)
# the approval figures the report repeats from the approval statistics
REPORT_APPROVAL_FIELDS = (
    "requested",
    "approved",
    "vetoed",
    "expired",
    "pending",
    "veto_rate",
    "latency_ms",
)


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


async def approval_statistics(
    state: ApiState, auth: AuthContext, since: datetime, until: datetime, operator_id: str | None
) -> dict[str, Any]:
    got = await approvals(state.store, auth.scope, since, until, operator_id)
    return {
        **approval_counts(got["overall"]),
        "object": "approval_statistics",
        "livemode": auth.key.livemode,
        "since": _iso(since),
        "until": _iso(until),
        "operator_id": operator_id,
        "by_operator": [
            {
                "operator_id": r["operator_id"],
                "operator_name": r["operator_name"],
                **approval_counts(r),
            }
            for r in got["by_operator"]
        ],
        "by_approver": [
            {"approver": r["approver"], **approval_counts(r)} for r in got["by_approver"]
        ],
    }


async def budgets_section(
    state: ApiState, auth: AuthContext, since: datetime, until: datetime
) -> list[dict[str, Any]]:
    policies = state.view.guardrails_of(auth.tenant.id, auth.key.livemode)
    if not any(p.budgets for p in policies):
        return []
    names = {
        c.id: (c.id, c.name, c.listing)
        for c in state.view.connectors_of(auth.tenant.id, auth.key.livemode)
    }
    runs = await executions(state.store, auth.scope, since, until)
    hits = await budget_hits(state.store, auth.scope, since, until)
    return budgets_consumed(policies, runs, hits, names)


async def report(
    state: ApiState, auth: AuthContext, since: datetime, until: datetime, operator_id: str | None
) -> dict[str, Any]:
    rows = await dispositions(state.store, auth.scope, since, until, operator_id)
    summary = summarise_dispositions(rows)
    appr = await approval_statistics(state, auth, since, until, operator_id)
    return {
        "object": "governance_report",
        "livemode": auth.key.livemode,
        "since": _iso(since),
        "until": _iso(until),
        "operator_id": operator_id,
        **summary,
        "dispositions": rows,
        "veto_rate": appr["veto_rate"],
        "approvals": {k: appr[k] for k in REPORT_APPROVAL_FIELDS},
        "budgets": {
            "available": True,
            "detail": BUDGETS_DETAIL,
            "data": await budgets_section(state, auth, since, until),
        },
    }
