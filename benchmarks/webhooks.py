"""Webhook deliveries per second to a local receiver, and receipt → delivery latency.

The dispatcher of the api role (api/deliveries.py) against real chDB and a receiver in its own
process (uvicorn, answering 200): receipts are handed to ``on_batch`` in sink-sized batches, as
the ledger sink does, and the run ends when every delivery has succeeded. Latency is each
delivery's successful attempt time minus its receipt's time (both recorded in ClickHouse).

    python -m benchmarks.webhooks [--deliveries 5000] [--batch 500] [--endpoints 1] [--rate 0]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from agents.secrets import SecretBox
from api.deliveries import WebhookDispatcher
from ledger.store import LedgerStore
from schemas.config import Tenant
from schemas.connector import VaultEntry
from schemas.ids import new_id
from schemas.plan import Receipt
from schemas.settings import Settings
from schemas.webhook import WebhookEndpoint

RECEIVER = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""


@dataclass
class View:
    webhooks: dict[str, WebhookEndpoint] = field(default_factory=dict)
    vault: dict[str, VaultEntry] = field(default_factory=dict)
    tenants: dict[str, Tenant] = field(default_factory=dict)
    connectors: dict[str, Any] = field(default_factory=dict)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _receipt(i: int, at: datetime) -> Receipt:
    return Receipt(
        id=new_id("rc"),
        tenant_id="t_bench",
        livemode=False,
        operator_id="op_1",
        operator_name="bench",
        guardrail_version=1,
        event_id=None,
        plan_id=f"pl_{i}",
        action_id=None,
        correlation_id="co_1",
        connector_id=None,
        connector_name=None,
        tool="order.hold",
        entity_key=f"order:{i}",
        idempotency_key=f"hold:{i}",
        value=None,
        decision="ALLOW",
        outcome="applied",
        rule=None,
        reason="bench",
        created_at=at,
    )


def start_receiver(home: str) -> tuple[subprocess.Popen, str]:
    port = _port()
    with open(f"{home}/receiver.py", "w") as f:
        f.write(RECEIVER)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "receiver:app", "--port", str(port)]
        + ["--log-level", "warning", "--app-dir", home],
    )
    url = f"http://127.0.0.1:{port}/hook"
    for _ in range(100):
        try:
            httpx.post(url, content=b"{}", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    return proc, url


async def run(
    home: str, url: str, n: int, batch: int, endpoints: int, rate: float
) -> dict[str, float]:
    store = LedgerStore(f"chdb://{home}/ch")
    store.open()
    box = SecretBox("bench")
    view = View()
    now = datetime.now(UTC)
    view.tenants["t_bench"] = Tenant(id="t_bench", slug="bench", name="bench", created_at=now)
    for _ in range(endpoints):
        ep = WebhookEndpoint(
            id=new_id("whk"),
            tenant_id="t_bench",
            livemode=False,
            url=url,
            types=["receipt.written"],
            secret_hint="whsec_…",
            created_at=now - timedelta(minutes=1),
            updated_at=now,
        )
        view.webhooks[ep.id] = ep
        sealed = box.seal({"secrets": [{"secret": "whsec_bench", "expires_at": None}]})
        view.vault[ep.id] = VaultEntry(connector_id=ep.id, tenant_id="t_bench", ciphertext=sealed)
    d = WebhookDispatcher(Settings(webhook_concurrency=8), store, view, box, commands=None)
    await d.start()
    total = n * endpoints
    started = time.perf_counter()
    derive_s = 0.0
    for lo in range(0, n, batch):
        at = datetime.now(UTC)
        rs = [_receipt(i, at) for i in range(lo, min(n, lo + batch))]
        t0 = time.perf_counter()
        await d.on_batch({"receipt": {r.id: r for r in rs}})
        derive_s += time.perf_counter() - t0
        if rate:  # paced: the next batch when the rate says so
            ahead = started + (lo + batch) / rate - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
    while True:
        if d.stats["succeeded"] >= total:
            break
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    await d.flush()
    rows = await store.query(
        "SELECT quantile(0.5)(lat), quantile(0.99)(lat) FROM (SELECT "
        "dateDiff('millisecond', occurred_at, last_attempt_at) AS lat "
        "FROM webhook_deliveries FINAL WHERE status = 'succeeded')"
    )
    await d.stop()
    store.close()
    p50, p99 = rows[0]
    return {
        "deliveries": total,
        "deliveries_per_s": round(total / elapsed, 1),
        "on_batch_ms_per_1000": round(derive_s / total * 1000 * 1000, 2),
        "latency_p50_ms": float(p50),
        "latency_p99_ms": float(p99),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deliveries", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--endpoints", type=int, default=1)
    ap.add_argument("--rate", type=float, default=0.0, help="receipts/s (0: one burst)")
    a = ap.parse_args()
    home = tempfile.mkdtemp(prefix="whbench")
    proc, url = start_receiver(home)
    try:
        print(asyncio.run(run(home, url, a.deliveries, a.batch, a.endpoints, a.rate)))
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
