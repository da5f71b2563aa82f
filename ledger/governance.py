"""Governance reads over ClickHouse (decisions §38): the audit trail of config changes
(``config_log``), config versions missing from a config view (a compacted config topic keeps
only each object's latest record; ``config_log`` keeps them all), and the governance report and
approval statistics (``receipts``). Every query takes the tenant scope first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agents.governance import AUDITED_KINDS, UNAUDITED_COMMANDS
from ledger.store import PAGE_SETTINGS, LedgerStore, Page, Scope, _utc
from schemas.config import ConfigRecord

_TS = "DateTime64(6, 'UTC')"
# the record's mode: every audited object carries ``livemode``, except an API key (``mode``)
_MODE = (
    "if(kind = 'api_key', JSONExtractString(record, 'data', 'mode') = {mode:String}, "
    "JSONExtractBool(record, 'data', 'livemode') = {m:Bool})"
)


@dataclass(frozen=True, slots=True)
class AuditFilters:
    kind: str | None = None  # config record kind (operator, api_key …)
    object_id: str | None = None
    action: str | None = None  # command name (operator.update …)
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _audit_where(scope: Scope, f: AuditFilters, params: dict[str, Any]) -> list[str]:
    params.update(
        t=scope.tenant_id,
        m=scope.livemode,
        mode="live" if scope.livemode else "test",
        kinds=[f.kind] if f.kind else sorted(AUDITED_KINDS),
        quiet=sorted(UNAUDITED_COMMANDS),
    )
    clauses = [
        "tenant_id = {t:String}",
        "kind IN {kinds:Array(String)}",
        _MODE,
        "NOT arrayExists(q -> startsWith(JSONExtractString(record, 'note'), q), "
        "{quiet:Array(String)})",
    ]
    if f.object_id is not None:
        params["oid"] = f.object_id
        clauses.append("JSONExtractString(record, 'data', 'id') = {oid:String}")
    if f.action is not None:
        params["act"] = f.action
        clauses.append(
            "(JSONExtractString(record, 'note') = {act:String} OR "
            "startsWith(JSONExtractString(record, 'note'), concat({act:String}, ':')) OR "
            "startsWith(JSONExtractString(record, 'note'), concat({act:String}, ' ')))"
        )
    if f.actor is not None:
        params["actor"] = f.actor
        clauses.append("actor = {actor:String}")
    if f.since is not None:
        params["since"] = f.since
        clauses.append(f"at >= {{since:{_TS}}}")
    if f.until is not None:
        params["until"] = f.until
        clauses.append(f"at < {{until:{_TS}}}")
    return clauses


async def audit_log(
    store: LedgerStore,
    scope: Scope,
    f: AuditFilters,
    limit: int,
    after: tuple[datetime, str] | None,
) -> Page:
    """Audited config records of ``scope``, newest first, keyset-paged on (at, id)."""
    params: dict[str, Any] = {"n": limit + 1}
    clauses = _audit_where(scope, f, params)
    if after is not None:
        params["after_ts"], params["after_id"] = after
        clauses.append(f"(at, id) < ({{after_ts:{_TS}}}, {{after_id:String}})")
    rows = await store.query(
        f"SELECT record FROM config_log WHERE {' AND '.join(clauses)} "
        "ORDER BY at DESC, id DESC LIMIT 1 BY id LIMIT {n:UInt32}",
        params,
        PAGE_SETTINGS,
    )
    items = [ConfigRecord.model_validate_json(r[0]) for r in rows]
    more = len(items) > limit
    items = items[:limit]
    last = (_utc(items[-1].at), items[-1].id) if items else None
    return Page(items, more, last)


async def config_versions(
    store: LedgerStore, tenant_id: str, kind: str, object_id: str
) -> list[ConfigRecord]:
    """Every stored config record of one object, oldest first."""
    rows = await store.query(
        "SELECT record FROM config_log WHERE tenant_id = {t:String} AND kind = {k:String} "
        "AND JSONExtractString(record, 'data', 'id') = {oid:String} "
        "ORDER BY at, id LIMIT 1 BY id",
        {"t": tenant_id, "k": kind, "oid": object_id},
    )
    return [ConfigRecord.model_validate_json(r[0]) for r in rows]


# ---- the governance report over receipts ------------------------------------------------------
def _window(scope: Scope, since: datetime, until: datetime, operator_id: str | None):
    params: dict[str, Any] = {"t": scope.tenant_id, "m": scope.livemode, "s": since, "u": until}
    where = (
        "tenant_id = {t:String} AND livemode = {m:Bool} "
        f"AND created_at >= {{s:{_TS}}} AND created_at < {{u:{_TS}}}"
    )
    if operator_id is not None:
        params["op"] = operator_id
        where += " AND operator_id = {op:String}"
    return where, params


async def dispositions(
    store: LedgerStore, scope: Scope, since: datetime, until: datetime, operator_id: str | None
) -> list[dict[str, Any]]:
    """Receipts of the window grouped by operator, tool, decision and outcome (each receipt
    once, whatever ReplacingMergeTree has not merged yet)."""
    where, params = _window(scope, since, until, operator_id)
    rows = await store.query(
        "SELECT operator_id, any(operator_name), tool, decision, outcome, count(), "
        "sum(ifNull(value, 0)) FROM (SELECT id, operator_id, operator_name, tool, decision, "
        f"outcome, value FROM receipts WHERE {where} LIMIT 1 BY id) "
        "GROUP BY operator_id, tool, decision, outcome "
        "ORDER BY operator_id, tool, decision, outcome",
        params,
    )
    keys = ("operator_id", "operator_name", "tool", "decision", "outcome", "count", "value_sum")
    return [dict(zip(keys, r, strict=True)) for r in rows]


# One row per plan that asked for approval in the window: when it asked (its first
# pending_approval receipt), how it was decided, by whom and when. A decision's time is its first
# receipt carrying an approver (a veto; or an approved action's result, less the connector call's
# own latency); an expiry has no approver.
_PLAN_FOLD = f"""
SELECT plan_id, any(operator_id) AS op_id, any(operator_name) AS op_name,
  toUnixTimestamp64Milli(minIf(created_at, outcome = 'pending_approval')) AS asked_ms,
  multiIf(countIf(outcome = 'vetoed') > 0, 'vetoed',
          countIf(approver IS NOT NULL AND outcome NOT IN ('pending_approval', 'expired')) > 0,
          'approved', countIf(outcome = 'expired') > 0, 'expired', 'pending') AS state,
  minIf(toFloat64(toUnixTimestamp64Milli(created_at)) - ifNull(latency_ms, 0),
        approver IS NOT NULL AND outcome NOT IN ('pending_approval', 'expired')) AS decided_ms,
  anyIf(approver, approver IS NOT NULL AND outcome NOT IN ('pending_approval', 'expired'))
    AS decided_by
FROM (
  SELECT id, plan_id, operator_id, operator_name, outcome, approver, created_at, latency_ms
  FROM receipts
  WHERE tenant_id = {{t:String}} AND livemode = {{m:Bool}} AND created_at >= {{s:{_TS}}}
    AND plan_id IN (SELECT plan_id FROM receipts WHERE @WINDOW@
                    AND outcome = 'pending_approval')
  LIMIT 1 BY id
)
GROUP BY plan_id
"""

_APPROVAL_AGG = """
SELECT @KEYS@ count() AS requested, countIf(state = 'approved') AS approved,
  countIf(state = 'vetoed') AS vetoed, countIf(state = 'expired') AS expired,
  quantileExactIf(0.5)(latency, decided) AS p50, quantileExactIf(0.95)(latency, decided) AS p95,
  avgIf(latency, decided) AS mean, maxIf(latency, decided) AS max
FROM (SELECT *, state IN ('approved', 'vetoed') AS decided,
             greatest(decided_ms - asked_ms, 0) AS latency FROM (@FOLD@))
@WHERE@ @GROUP@
"""
APPROVAL_FIELDS = ("requested", "approved", "vetoed", "expired", "p50", "p95", "mean", "max")


async def approvals(
    store: LedgerStore, scope: Scope, since: datetime, until: datetime, operator_id: str | None
) -> dict[str, Any]:
    """Approval statistics of the plans that asked for approval in the window: overall, by
    operator, and by approver (decided plans only)."""
    where, params = _window(scope, since, until, operator_id)
    fold = _PLAN_FOLD.replace("@WINDOW@", where)

    async def agg(
        keys: Sequence[str], names: Sequence[str], only_decided: bool
    ) -> list[dict[str, Any]]:
        sql = (
            _APPROVAL_AGG.replace("@FOLD@", fold)
            .replace("@KEYS@", "".join(f"{k}, " for k in keys))
            .replace("@WHERE@", "WHERE decided" if only_decided else "")
            .replace("@GROUP@", f"GROUP BY {', '.join(keys)} ORDER BY {keys[0]}" if keys else "")
        )
        rows = await store.query(sql, params)
        return [dict(zip((*names, *APPROVAL_FIELDS), r, strict=True)) for r in rows]

    overall = await agg((), (), False)
    by_operator = await agg(("op_id", "op_name"), ("operator_id", "operator_name"), False)
    by_approver = await agg(("decided_by",), ("approver",), True)
    return {"overall": overall[0], "by_operator": by_operator, "by_approver": by_approver}


# ---- budgets consumed (decisions §36, §38) ------------------------------------------------------
async def executions(
    store: LedgerStore, scope: Scope, since: datetime, until: datetime
) -> list[tuple[str, str, str, int, float]]:
    """Executions stored in the window (applied or undone receipts: what a budget counts), as
    (operator name, connector id, tool, count, summed value)."""
    where, params = _window(scope, since, until, None)
    rows = await store.query(
        "SELECT operator_name, ifNull(connector_id, ''), ifNull(tool, ''), count(), "
        "sum(ifNull(value, 0)) FROM (SELECT id, operator_name, connector_id, tool, value "
        f"FROM receipts WHERE {where} AND outcome IN ('applied', 'undone') LIMIT 1 BY id) "
        "GROUP BY 1, 2, 3",
        params,
    )
    return [(str(a), str(b), str(c), int(n), float(v)) for a, b, c, n, v in rows]


async def budget_hits(
    store: LedgerStore, scope: Scope, since: datetime, until: datetime
) -> list[tuple[str, int, str, int]]:
    """Receipts of the window decided by an exhausted budget, as (policy id, budget index,
    decision, count): BLOCK = refused, ALERT = ran over a soft cap."""
    where, params = _window(scope, since, until, None)
    rows = await store.query(
        "SELECT JSONExtractString(rule, 'guardrail_id'), JSONExtractInt(rule, 'budget'), "
        "decision, count() FROM (SELECT id, rule, decision FROM receipts "
        f"WHERE {where} AND rule IS NOT NULL AND JSONExtractString(rule, 'rule') = "
        "'budget_exhausted' LIMIT 1 BY id) GROUP BY 1, 2, 3",
        params,
    )
    return [(str(g), int(i), str(d), int(n)) for g, i, d, n in rows]
