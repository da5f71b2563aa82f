"""S9 scale-out: S1 (Kafka-native ingest) and S3 (governed actions) with one worker, then with
two, on the same stack: the second worker is a ``fibric worker`` process joining the group as a
second replica would in production. Scaling efficiency = the two-worker figure over the
one-worker figure (2.0 would be perfect; on a 2-core machine the broker, the api and the load
generator share those cores with the workers).

The one-worker figures are taken from S1 and S3 when they were measured moments earlier on the
same stack (``--quick``); otherwise S9 measures them itself first. The bench operator is paused
while S1 loads run (its playbook would otherwise turn every ``order.created`` into a plan) and
resumed for S3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from benchmarks import loop
from benchmarks.common import log
from benchmarks.s1 import run_s1
from benchmarks.stack import BenchStack


def _operator(stack: BenchStack, action: str) -> None:
    op = getattr(stack, "loop_operator", None)
    if op is None:
        return
    r = httpx.post(
        f"{stack.base_url}/v1/operators/{op}/{action}",
        headers={"Authorization": f"Bearer {stack.secret}"},
        json={},
        timeout=60,
    )
    if r.status_code >= 300:
        raise RuntimeError(f"S9: {action} operator answered {r.status_code}: {r.text[:300]}")


def _s1(stack: BenchStack, out: Path, events: int, warmup: int) -> dict[str, Any]:
    _operator(stack, "pause")
    try:
        return run_s1(stack, out, events, warmup, confirm=False, profile=False)
    finally:
        _operator(stack, "resume")


def run_s9(
    stack: BenchStack,
    out: Path,
    *,
    s1_events: int,
    s1_warmup: int,
    s3_actions: int,
    one_worker: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    if not stack.tenant_id:
        stack.create_tenant()
    loop.ensure_setup(stack)
    one = dict(one_worker or {})
    workers = len(stack.worker_pids)
    if workers > 2 or (workers == 2 and len(one) < 2):
        raise RuntimeError(f"S9 starts from one worker; the stack has {stack.worker_pids}")
    if "S1" not in one:
        log("S9: S1 with 1 worker")
        one["S1"] = _s1(stack, out, s1_events, s1_warmup)
    if "S3" not in one:
        log("S9: S3 with 1 worker")
        one["S3"] = loop.run_s3(stack, s3_actions)
    if workers == 1:
        log("S9: adding a second worker")
        stack.add_worker()
    else:  # started during S8 (--quick), to overlap its join with S8's reads
        stack.wait_workers(2)
    log("S9: S1 with 2 workers")
    two_s1 = _s1(stack, out, s1_events, s1_warmup)
    log("S9: S3 with 2 workers")
    two_s3 = loop.run_s3(stack, s3_actions)

    def ratio(a: Any, b: Any) -> float | None:
        return round(a / b, 3) if a and b else None

    s1a, s1b = one["S1"].get("events_per_s"), two_s1.get("events_per_s")
    s3a, s3b = one["S3"].get("actions_per_s"), two_s3.get("actions_per_s")
    return {
        "s1_1w_events_per_s": s1a,
        "s1_2w_events_per_s": s1b,
        "s1_scaling": ratio(s1b, s1a),
        "s3_1w_actions_per_s": s3a,
        "s3_2w_actions_per_s": s3b,
        "s3_scaling": ratio(s3b, s3a),
        "s1_2w_cpu_cores": two_s1.get("cpu_cores"),
        "s1_2w_timeline": two_s1.get("timeline"),
        "s3_2w_outcomes": two_s3.get("outcomes"),
        "one_worker_from": "S1/S3 on this stack" if one_worker else "measured by S9",
        "partitions_by_worker": stack.ready_workers(),
    }
