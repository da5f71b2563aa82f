"""``replay``: policy replay's rate over 1M stored receipt rows in chDB (issue 12 performance).

A fresh chDB ledger (the api's migrations) gets N receipt rows of one tenant, written by
ClickHouse itself (``INSERT … SELECT FROM numbers(N)``: building a million receipts in Python
would time the generator, not the replay): three operators, three connector tools, values in
cents up to 5,000 (so most judge inputs are distinct), one action in eleven with a second
receipt (an ALERT held, then applied: the replay takes the first), and the operators' config
records in ``config_log``. The candidate set has ten rules (ceilings, ALERT, BLOCK over globs).

It then runs the replay exactly as the api's job does (``LedgerStore.rejudge`` feeding
``agents.replay.Replayer``, i.e. ``agents.executor.judge``): ClickHouse folds each action to its
first receipt and groups actions by judge input up to the candidate's value thresholds, and
the judge runs once per group. It reports receipt rows re-judged per second (wall and this
process's CPU: chDB runs in it), with where the time goes, measured in the same run: the
ClickHouse grouping query alone, and the judge alone. The same-run baseline is the naive replay:
every action judged on its own in Python (no grouping) over a 100,000-row sample, extrapolated to
N, plus the same query time. Target: N = 1M in well under a minute (30 s here).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agents.executor import judge
from agents.replay import Replayer, StoredVerdicts, thresholds
from ledger.store import LedgerStore, Scope
from schemas.config import ConfigRecord
from schemas.connector import Connector
from schemas.guardrail import GuardrailPolicy, GuardrailRule
from schemas.operator import Guardrail, Operator

TENANT = "t_replaybench"
T0 = datetime(2026, 11, 1, tzinfo=UTC)
TOOLS = ("order.hold", "order.notify", "refund.issue")
OPERATORS = ("order-risk", "refund-desk", "vip-care")
NAIVE_SAMPLE = 100_000
TARGET_S = 30.0


def _operator(i: int, name: str) -> Operator:
    return Operator(
        id=f"op_{i}",
        tenant_id=TENANT,
        livemode=False,
        name=name,
        status="active",
        outcome="o",
        capabilities=list(TOOLS),
        guardrails=[
            Guardrail(tool="order.hold", decision="ALLOW", max_value=4000),
            Guardrail(tool="order.notify", decision="ALLOW"),
            Guardrail(tool="refund.issue", decision="ALERT"),
        ],
        triggers=["order.**"],
        playbook=None,
        created_at=T0,
        updated_at=T0,
        version=1,
    )


def _connector() -> Connector:
    return Connector.model_validate(
        {
            "id": "cn_1",
            "tenant_id": TENANT,
            "livemode": False,
            "listing": "cn-magento",
            "name": "magento-eu",
            "kind": "saas",
            "capabilities": list(TOOLS),
            "tools": [{"name": t, "side_effect": True} for t in TOOLS],
            "auth": {"type": "api_key", "hint": "mg_****41"},
            "config": {},
            "status": "connected",
            "created_at": T0,
            "updated_at": T0,
        }
    )


def candidate() -> list[GuardrailPolicy]:
    rules = [
        {"tool": "order.hold", "max_value": 2500, "decision": "ALLOW"},
        {"tool": "order.hold", "operator": "vip-*", "decision": "ALERT"},
        {"tool": "refund.*", "max_value": 1000, "decision": "ALERT"},
        {"tool": "refund.issue", "operator": "order-*", "decision": "BLOCK"},
        {"tool": "order.notify", "connector": "magento-*", "decision": "ALLOW"},
        {"tool": "order.cancel", "decision": "BLOCK"},
        {"tool": "customer.**", "decision": "ALERT"},
        {"operator": "legacy-*", "decision": "BLOCK"},
        {"tool": "order.notify", "max_value": 4900, "decision": "ALLOW"},
        {"connector": "cn-stripe", "decision": "ALERT"},
    ]
    return [
        GuardrailPolicy(
            id="grd_candidate",
            tenant_id=TENANT,
            livemode=False,
            name="tighter",
            rules=[GuardrailRule.model_validate(r) for r in rules],
            created_at=T0,
            updated_at=T0,
        )
    ]


def _fill(store: LedgerStore, n: int) -> None:
    ops = [_operator(i, name) for i, name in enumerate(OPERATORS)]
    records = [
        ConfigRecord(
            id=f"cfg_{op.id}",
            kind="operator",
            tenant_id=TENANT,
            version=1,
            data=op.model_dump(mode="json"),
            at=T0,
        )
        for op in ops
    ]
    store._client.insert(  # noqa: SLF001 - the benchmark writes its fixture directly
        "config_log",
        [
            [r.tenant_id, r.at, r.id, r.kind, r.version, r.actor, r.model_dump_json()]
            for r in records
        ],
        column_names=["tenant_id", "at", "id", "kind", "version", "actor", "record"],
    )
    # action a = intDiv(n * 10, 11): one action in eleven has two adjacent receipts
    store._client.command(  # noqa: SLF001
        f"""
        INSERT INTO receipts (tenant_id, livemode, created_at, id, operator_id, operator_name,
            guardrail_version, event_id, plan_id, action_id, correlation_id, connector_id,
            connector_name, tool, entity_key, idempotency_key, value, decision, outcome, rule,
            reason, proposed_at)
        SELECT '{TENANT}', false,
            toDateTime64('2026-11-01 00:00:00', 6, 'UTC') + toIntervalMillisecond(number),
            concat('rc_', toString(number)),
            concat('op_', toString(a % 3)),
            ['order-risk', 'refund-desk', 'vip-care'][a % 3 + 1],
            1, NULL, concat('pl_', toString(intDiv(a, 2))), concat('act_', toString(a)),
            concat('co_', toString(a)), 'cn_1', 'magento-eu',
            ['order.hold', 'order.notify', 'refund.issue'][intDiv(a, 3) % 3 + 1],
            concat('order:', toString(a)), concat('k', toString(a)),
            (cityHash64(a) % 500000) / 100,
            if(intDiv(a, 3) % 3 = 2, 'ALERT', if(cityHash64(a) % 500000 > 400000 AND
               intDiv(a, 3) % 3 = 0, 'BLOCK', 'ALLOW')),
            if(n10 = 10, 'applied', 'refused'), NULL, 'bench',
            toDateTime64('2026-11-01 00:00:00', 6, 'UTC')
        FROM (SELECT number, intDiv(number * 10, 11) AS a, number % 11 AS n10
              FROM numbers({n}))
        """,
        settings={"max_partitions_per_insert_block": 0},
    )


async def _measure(store: LedgerStore, n: int) -> dict[str, Any]:
    scope = Scope(TENANT, False)
    filters: dict[str, Any] = {
        "since": T0,
        "until": T0 + timedelta(days=30),
        "operator": None,
        "tool": None,
    }
    ops = {(o.id, o.version): o for o in await store.operator_versions(scope)}
    cns = {"cn_1": _connector()}
    cand = candidate()
    filters["thresholds"] = thresholds(cand, ops.values())

    # the replay, as the api's job runs it
    rp = Replayer(cand, ops, {}, cns)
    t0, c0 = time.perf_counter(), time.process_time()
    scanned = await store.rejudge(scope, filters, rp)
    total_s, total_cpu = time.perf_counter() - t0, time.process_time() - c0
    result = rp.result()

    # where the time goes: the grouping queries alone, then the judge alone over the same groups
    t0 = time.perf_counter()
    groups: list[StoredVerdicts] = await store.replay_inputs(scope, filters, 0, 1)
    query_s = time.perf_counter() - t0
    fresh = Replayer(cand, ops, {}, cns)
    t0 = time.perf_counter()
    fresh.feed(groups)
    judge_s = time.perf_counter() - t0

    # the naive replay: every action judged on its own, no grouping (a 100k sample)
    rows = await store.query(
        "SELECT operator_id, tool, value FROM receipts WHERE tenant_id = {t:String} "
        "LIMIT {k:UInt32}",
        {"t": TENANT, "k": NAIVE_SAMPLE},
    )
    t0, c0 = time.perf_counter(), time.process_time()
    cn = cns["cn_1"]
    names = (cn.id, cn.name, cn.listing)
    for op_id, tool, value in rows:
        op = ops[(op_id, 1)]
        judge(
            op.guardrails,
            cand,
            operator_name=op.name,
            tool=tool,
            side_effect=True,
            value=value,
            connector_names=names,
            include_shadow=True,
        )
    naive_us = (time.perf_counter() - t0) / max(1, len(rows)) * 1e6
    naive_cpu_us = (time.process_time() - c0) / max(1, len(rows)) * 1e6
    naive_s = naive_us * n / 1e6
    return {
        "rows": n,
        "rows_scanned": scanned,
        "actions_judged": result["judged"],
        "distinct_inputs": result["distinct_inputs"],
        "flipped": result["flipped"],
        "flips": result["flips"],
        "elapsed_s": round(total_s, 2),
        "rows_per_s": round(scanned / total_s),
        "cpu_s": round(total_cpu, 2),  # this process (chDB runs in it), on a shared machine
        "groups": len(groups),
        "query_s": round(query_s, 2),
        "judge_s": round(judge_s, 2),
        "judge_us_per_distinct_input": round(judge_s / max(1, len(groups)) * 1e6, 2),
        "naive_judge_us_per_row": round(naive_us, 2),
        "naive_judge_cpu_us_per_row": round(naive_cpu_us, 2),
        "naive_judge_cpu_extrapolated_s": round(naive_cpu_us * n / 1e6, 2),
        "naive_extrapolated_s": round(naive_s + query_s, 2),
        "ratio_to_naive": round((naive_s + query_s) / total_s, 2),
        # CPU: the naive replay's judging alone (its query not even counted) over the whole job's
        "cpu_ratio_to_naive_at_least": round(naive_cpu_us * n / 1e6 / max(total_cpu, 1e-9), 2),
        "target_s": TARGET_S,
    }


def run_replay(n: int = 1_000_000) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="fibric-replay-bench-"))
    store = LedgerStore(f"chdb:///{home}/ch")
    try:
        store.open()
        t0 = time.perf_counter()
        _fill(store, n)
        fill_s = time.perf_counter() - t0
        out = asyncio.run(_measure(store, n))
        out["fill_s"] = round(fill_s, 2)
        return out
    finally:
        store.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    import sys

    import orjson

    n = 100_000 if "--quick" in sys.argv else 1_000_000
    print(orjson.dumps(run_replay(n), option=orjson.OPT_INDENT_2).decode())
