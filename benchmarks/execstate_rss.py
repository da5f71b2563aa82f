"""Worker memory against the number of idempotency keys the executor has ever seen.

The executor's seen-state lives in RocksDB (streams/execstate.py); lookups are per-batch
multi-gets, nothing is cached per key in Python. This writes N keys' terminal states (with
receipts, as the executor does) in batches of 2,000 and reads a batch back every round, then
reports the process RSS at 0, N/10 and N keys. ``python -m benchmarks.execstate_rss [N]``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from agents.executor import KeyState

BATCH = 2000  # the executor's batch size (streams/app.py EXECUTE_BATCH)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def receipt(i: int) -> dict:
    return {
        "id": f"rc_{i:026d}",
        "action_id": f"act_{i:026d}",
        "outcome": "applied",
        "tenant_id": "t_bench",
        "reason": "order.notify allowed by guardrail 0",
        "result": {"ok": True, "order_id": str(i)},
    }


def run(n: int) -> dict[str, float]:
    from streams.execstate import ExecStateStore

    with tempfile.TemporaryDirectory() as d:
        store = ExecStateStore(Path(d) / "execstate")
        out = {"rss_mib_at_0": round(rss_mib(), 1)}
        t0 = time.perf_counter()
        for lo in range(0, n, BATCH):
            keys = [
                (i % 8, f"t_bench\x1f0\x1forder:{i % 5000}\x1fnote:{i}")
                for i in range(lo, min(lo + BATCH, n))
            ]
            store.get_many(keys)
            store.write(
                [
                    (p, k, KeyState(f"act_{i}", "done", 1, receipts={f"act_{i}": receipt(i)}))
                    for i, (p, k) in zip(range(lo, lo + len(keys)), keys, strict=True)
                ]
            )
            if lo + BATCH == n // 10:
                out["rss_mib_at_10pct"] = round(rss_mib(), 1)
        out["rss_mib_at_n"] = round(rss_mib(), 1)
        out["keys"] = n
        out["write_read_us_per_key"] = round((time.perf_counter() - t0) / n * 1e6, 2)
        store.close()
    return out


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    r = run(n)
    print("execstate " + " ".join(f"{k}={v}" for k, v in r.items()))
