"""Governance costs (issue 12 performance, decisions §36).

``policy`` (in-process, no stack): µs per action for the one judge (``agents.executor.vet``)
with 1, 10 and 100 tenant guardrail rules (one policy; the rules' globs are of the shapes
tenants write: a tool glob, an operator glob, a connector), next to the operator's rules
alone; and µs per action for the executor's budget step (``agents.budget.counting`` +
``charge``, the pure part of a reservation) with 1 and 10 budgets counting it.

``S4G`` (the loop stack): S4 (refusals and replays) and S3 (governed side effects, each one
reserved in a budget) measured twice in the same run — without tenant policies, then with a
10-rule tenant policy and 3 budgets that count every hold and notification (caps far above the
run, so nothing is refused and the work is the same) — reported as same-run ratios (target
S4 with ≥ 0.8 × S4 without).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx

from agents import budget
from agents.executor import vet
from benchmarks.common import log
from schemas.connector import Connector
from schemas.guardrail import GuardrailBudget, GuardrailPolicy, GuardrailRule
from schemas.operator import Guardrail, Operator

RULE_COUNTS = (1, 10, 100)
BUDGET_COUNTS = (1, 10)
# Each figure is the best of REPEATS slices of about CELL_S: stable, and well under 2 s in all.
CELL_S = 0.05
REPEATS = 3
_AT = datetime(2026, 1, 1, tzinfo=UTC)


def rules(n: int) -> list[GuardrailRule]:
    """``n`` rules that the judged action has to be checked against, the last one matching."""
    shapes = [
        {"tool": "refund.*", "decision": "ALERT"},
        {"operator": "billing-*", "tool": "invoice.**", "decision": "BLOCK"},
        {"connector": "stripe", "max_value": 500, "decision": "ALLOW"},
        {"tool": "customer.*.delete", "decision": "BLOCK"},
    ]
    out = [GuardrailRule.model_validate(shapes[i % len(shapes)]) for i in range(n - 1)]
    out.append(GuardrailRule.model_validate({"tool": "order.*", "decision": "ALLOW"}))
    return out


def policy(n_rules: int, n_budgets: int = 0) -> GuardrailPolicy:
    return GuardrailPolicy(
        id="grd_01J0000000000000000000BENCH",
        tenant_id="t_bench",
        livemode=False,
        name="bench",
        rules=rules(n_rules) if n_rules else [],
        budgets=[
            GuardrailBudget(tool="order.*", window_seconds=3600, max_count=10**9)
            for _ in range(n_budgets)
        ],
        created_at=_AT,
        updated_at=_AT,
    )


def _operator() -> Operator:
    return Operator.model_validate(
        {
            "id": "op_bench",
            "tenant_id": "t_bench",
            "livemode": False,
            "name": "fraud-guard",
            "status": "active",
            "triggers": ["order.created"],
            "outcome": "bench",
            "capabilities": ["order.hold"],
            "guardrails": [Guardrail(tool="order.hold", decision="ALLOW").model_dump()],
            "playbook": [],
            "created_at": _AT,
            "updated_at": _AT,
        }
    )


def _us(fn: Any) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        n, t0 = 0, time.perf_counter()
        while (el := time.perf_counter() - t0) < CELL_S:
            for _ in range(50):
                fn()
            n += 50
        best = min(best, el / n * 1e6)
    return round(best, 2)


def run_policy() -> dict[str, Any]:
    op = _operator()
    cn = Connector.model_construct(id="cn_bench", name="shop", listing="cn-sandbox-orders")
    out: dict[str, Any] = {}

    def judge(policies: list[GuardrailPolicy]) -> Any:
        return lambda: vet(
            op, cn, tool="order.hold", side_effect=True, value=10.0, policies=policies
        )

    out["us_operator_rules_only"] = _us(judge([]))
    for n in RULE_COUNTS:
        p = [policy(n)]
        assert judge(p)().decision == "ALLOW"
        out[f"us_{n}_rules"] = _us(judge(p))
    for n in BUDGET_COUNTS:
        p = [policy(0, n)]
        state: dict[str, budget.BudgetState] = {}
        now = [int(time.time() * 1000)]

        def step(p: list[GuardrailPolicy] = p, state: dict = state, now: list = now) -> None:
            counted = budget.counting(
                p,
                tenant_id="t_bench",
                livemode=False,
                operator_id="op_bench",
                operator_name="fraud-guard",
                connector_id="cn_bench",
                connector_names=("cn_bench", "shop", "cn-sandbox-orders"),
                tool="order.hold",
                entity_key="order:1",
            )
            now[0] += 1
            c = budget.charge(f"act{now[0]}", 10.0, counted, state, {}, now[0])
            for c_ in counted:  # settle, as the executor does with the receipt
                state[c_.key] = budget.commit(c.updates[c_.key], f"act{now[0]}", c_.limits)

        out[f"us_budget_{n}"] = _us(step)
    base = out["us_operator_rules_only"]
    for k in [k for k in out if k != "us_operator_rules_only"]:
        # the same-run figure: how many times the operator-rules-only judge (load cancels out)
        out[k.replace("us_", "x_", 1)] = round(out[k] / base, 2) if base else None
    log(
        "policy: µs per action "
        + ", ".join(f"{k.removeprefix('us_')}={v}" for k, v in out.items())
    )
    return out


# ---- S4 / S3 with and without tenant policies and budgets, one stack, one run ------------------
GOVERNED = {
    "name": "bench-governance",
    # 10 rules a tenant might have; none blocks what the benchmark's operator does
    "rules": [r.public() for r in rules(10)[:-1]]
    + [{"tool": "order.**", "operator": "bench-*", "decision": "ALLOW"}],
    "budgets": [
        {"tool": "order.*", "window_seconds": 3600, "max_count": 10**9},
        {"tool": "order.hold", "per": ["operator"], "window_seconds": 86400, "max_value": 1e15},
        {"per": ["entity"], "window_seconds": 600, "max_count": 10**6},
    ],
}


def run_s4_governed(stack: Any, dispositions: int, actions: int) -> dict[str, Any]:
    from benchmarks import loop

    loop.ensure_setup(stack)
    out: dict[str, Any] = {}
    with httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.secret}"}, timeout=60
    ) as c:
        for mode in ("without", "with"):
            if mode == "with":
                r = c.post("/v1/guardrails", json=GOVERNED)
                r.raise_for_status()
                gid = r.json()["id"]
                time.sleep(2.0)  # the workers' config views apply the policy
            s4 = loop.run_s4(stack, dispositions)
            s3 = loop.run_s3(stack, actions)
            out[f"s4_{mode}_per_s"] = s4.get("dispositions_per_s")
            out[f"s3_{mode}_per_s"] = s3.get("actions_per_s")
            out[f"s3_{mode}_cpu_us"] = s3.get("cpu_us_per_item")
        c.delete(f"/v1/guardrails/{gid}")
    for s in ("s4", "s3"):
        a, b = out.get(f"{s}_with_per_s"), out.get(f"{s}_without_per_s")
        out[f"{s}_ratio"] = round(a / b, 3) if a and b else None
    log(f"S4G: {out}")
    return out
