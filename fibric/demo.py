"""``fibric up --demo``: a populated tenant a new user can explore in a minute.

After the stack is ready it starts the bundled fake Magento store (connectors/fakes/magento.py),
creates the ``demo`` tenant and an admin key, installs cn-magento against the fake, creates the
``order-risk`` operator with the documented playbook (README, "The governed loop"), and streams a
few hundred order events so plans, holds, blocks, dedups, approvals-in-waiting and receipts exist.
"""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from fibric.admin import Admin
from fibric.errors import CliError
from schemas.settings import Settings

DEMO_TENANT = "demo"
DEMO_EVENTS = 300
DEMO_ORDERS = 60
SEED = 1337

# The playbook documented in the README: hold risky orders at once (ceiling 500 on the order
# total), release them when payment is captured, and tell the customer about a delay (every
# notification waits for a human: ALERT).
ORDER_RISK_PLAYBOOK: list[dict[str, Any]] = [
    {
        "when": "order.created",
        "if": [{"field": "payload.risk_score", "op": "gte", "value": 70}],
        "then": [
            {
                "tool": "order.hold",
                "args": {"order_id": "{{payload.order_id}}"},
                "value": "{{payload.total}}",
                "entity_key": "order:{{payload.order_id}}",
                "idempotency_key": "hold:{{payload.order_id}}",
            }
        ],
        "reasoning": "Risk score {{payload.risk_score}} is at or above 70: hold order {{payload.order_id}}.",
    },
    {
        "when": "payment.captured",
        "then": [
            {
                "tool": "order.release",
                "args": {"order_id": "{{payload.order_id}}"},
                "entity_key": "order:{{payload.order_id}}",
                "idempotency_key": "release:{{payload.order_id}}",
            }
        ],
        "reasoning": "Payment captured for order {{payload.order_id}}: release the hold.",
    },
    {
        "when": "order.delayed",
        "then": [
            {
                "tool": "order.notify",
                "args": {"order_id": "{{payload.order_id}}", "comment": "{{payload.message}}"},
                "entity_key": "order:{{payload.order_id}}",
                "idempotency_key": "delay:{{payload.order_id}}",
            }
        ],
        "reasoning": "Order {{payload.order_id}} will miss its ship date: tell the customer.",
    },
]
ORDER_RISK = {
    "name": "order-risk",
    "outcome": "No order misses its promised ship date without a hold and a reason on the record.",
    "capabilities": ["order.read", "order.hold", "order.release", "order.notify"],
    "guardrails": [
        {"tool": "order.hold", "decision": "ALLOW", "max_value": 500},
        {"tool": "order.release", "decision": "ALLOW"},
        {"tool": "order.notify", "decision": "ALERT"},
    ],
    "schedule": "*/15 * * * *",
    "playbook": ORDER_RISK_PLAYBOOK,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_store() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "connectors.fakes.magento", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        process_group=0,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{url}/__fake__/state", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise CliError("the demo store did not start")


# What the demo's webhook endpoint hears: the plans held for a person, and their actions.
DEMO_WEBHOOK_TYPES = ["plan.awaiting_approval", "action.needs_approval"]


def start_receiver(settings: Settings) -> tuple[subprocess.Popen[bytes], str, Path]:
    """The demo's webhook receiver (fibric/demo_receiver.py); it prints to this terminal."""
    port = _free_port()
    secret_file = settings.ensure_home() / "demo-webhook.secret"
    secret_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fibric.demo_receiver", "--port", str(port)]
        + ["--secret-file", str(secret_file)],
        process_group=0,
    )
    return proc, f"http://127.0.0.1:{port}/fibric-webhooks", secret_file


def populate(
    settings: Settings, store_url: str, receiver: tuple[str, Path] | None = None
) -> dict[str, Any]:
    async def tenant_and_key() -> str:
        async with Admin(settings) as admin:
            if admin.view.resolve_tenant(DEMO_TENANT) is None:
                await admin.create_tenant(DEMO_TENANT, "Demo Store Inc")
            _, secret = await admin.create_key(DEMO_TENANT, "admin", None, "test", "demo")
            return secret

    secret = asyncio.run(tenant_and_key())
    rng = random.Random(SEED)
    for i in range(1, DEMO_ORDERS + 1):
        httpx.post(
            f"{store_url}/__fake__/orders", json={"entity_id": 100 + i}, timeout=10
        ).raise_for_status()
    with httpx.Client(
        base_url=settings.api_base_url, headers={"Authorization": f"Bearer {secret}"}, timeout=30
    ) as c:
        cn = c.post(
            "/v1/connectors",
            json={
                "listing": "cn-magento",
                "name": "magento-demo-store",
                "auth": {"type": "api_key", "key": "mg_live_9f4c2e8b1a41"},
                "config": {"base_url": store_url},
            },
        )
        if cn.status_code not in (201, 409):
            raise CliError(f"demo: installing cn-magento failed: {cn.text[:200]}")
        op = c.post("/v1/operators", json=ORDER_RISK)
        if op.status_code not in (201, 409):
            raise CliError(f"demo: creating order-risk failed: {op.text[:200]}")
        if receiver is not None:
            url, secret_file = receiver
            hook = c.post("/v1/webhooks", json={"url": url, "types": DEMO_WEBHOOK_TYPES})
            if hook.status_code != 201:
                raise CliError(f"demo: creating the webhook endpoint failed: {hook.text[:200]}")
            secret_file.write_text(hook.json()["secret"])
            secret_file.chmod(0o600)
        held: list[int] = []
        for _ in range(DEMO_EVENTS):
            order = 100 + rng.randint(1, DEMO_ORDERS)
            kind = rng.random()
            if kind < 0.7 or not held:
                risk = rng.randint(0, 100)
                body = {
                    "source": "magento",
                    "event_type": "order.created",
                    "entity_key": f"order:{order}",
                    "payload": {
                        "order_id": str(order),
                        "total": rng.choice([49, 129, 240, 480, 720, 1290]),
                        "risk_score": risk,
                    },
                }
                if risk >= 70:
                    held.append(order)
            elif kind < 0.9:
                paid = held.pop(rng.randrange(len(held)))
                body = {
                    "source": "stripe",
                    "event_type": "payment.captured",
                    "entity_key": f"order:{paid}",
                    "payload": {"order_id": str(paid)},
                }
            else:
                body = {
                    "source": "warehouse",
                    "event_type": "order.delayed",
                    "entity_key": f"order:{order}",
                    "payload": {
                        "order_id": str(order),
                        "message": "Your order will ship two days late; sorry for the wait.",
                    },
                }
            c.post("/v1/events", json=body)
        time.sleep(3)
        outcomes: dict[str, int] = {}
        cursor = None
        while True:
            q: dict[str, Any] = {"limit": 100}
            if cursor:
                q["cursor"] = cursor
            page = c.get("/v1/receipts", params=q).json()
            for r in page["data"]:
                outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
            if not page["has_more"]:
                break
            cursor = page["next_cursor"]
        proposed = c.get("/v1/plans", params={"status": "proposed", "limit": 3}).json()["data"]
    return {
        "key": secret,
        "outcomes": outcomes,
        "awaiting_approval": [p["id"] for p in proposed],
        "store": store_url,
        "webhook": receiver[0] if receiver else None,
    }


def summary(result: dict[str, Any], base_url: str) -> str:
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(result["outcomes"].items()))
    lines = [
        f"fibric: demo tenant '{DEMO_TENANT}' is populated (fake Magento at {result['store']})",
        f"fibric: receipts so far: {outcomes}",
        f"fibric: try:  export FIBRIC_KEY={result['key']}",
        f'fibric:       curl -s {base_url}/v1/receipts?limit=5 -H "Authorization: Bearer $FIBRIC_KEY"',
    ]
    if result.get("webhook"):
        lines.append(
            f"fibric: webhooks: held plans are delivered, signed, to {result['webhook']}; "
            "each prints as 'fibric: webhook …'"
        )
    if result["awaiting_approval"]:
        pid = result["awaiting_approval"][0]
        lines.append(
            f"fibric:       curl -s -X POST {base_url}/v1/plans/{pid}/approve "
            "-H \"Authorization: Bearer $FIBRIC_KEY\" -H 'Content-Type: application/json' "
            '-d \'{"approver": "you@example.com"}\''
        )
    return "\n".join(lines)
