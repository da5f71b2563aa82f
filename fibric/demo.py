"""``fibric up --demo``: a populated tenant a new user can explore in a minute.

Before the stack starts it starts the bundled stand-ins (connectors/fakes/: a Magento store, a
Kustomer org, an OAuth 2.0 authorization server and Amazon Connect behind it), so they come up
while the stack does and the stack's OAuth setting can point at the local authorization server.
Once the stack is ready it creates the ``demo`` tenant and an admin key, installs cn-magento,
cn-kustomer and cn-amazon-connect against the stand-ins (completing Amazon Connect's OAuth dance
itself: the local server consents at once), creates the ``order-risk`` operator with the
documented playbook (README, "The governed loop"), and streams a few hundred order events so
plans, holds, blocks, dedups, approvals-in-waiting and receipts exist.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from connectors.fakes.amazon_connect import DEFAULT_INSTANCE
from connectors.fakes.kustomer import DEFAULT_TOKEN as KUSTOMER_DEMO_TOKEN
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


# The demo's OAuth client at its local stand-in authorization server: a registration of a fake
# that lives as long as the demo, not a credential of anything real.
DEMO_OAUTH_CLIENT = "fibric-demo"
DEMO_OAUTH_SECRET = "fibric-demo-oauth-client"
# Starting a stand-in is a Python start-up (~0.3 s); they start in parallel with the stack.
FAKE_START_TIMEOUT_S = 20.0


def _spawn(module: str, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        process_group=0,
    )
    return proc, f"http://127.0.0.1:{port}"


def _wait_up(proc: subprocess.Popen[bytes], url: str, what: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            httpx.get(f"{url}/__fake__/state", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise CliError(f"the demo's {what} did not start")


@dataclass
class DemoFakes:
    """The demo's local stand-ins (connectors/fakes/): a Magento store, a Kustomer org, an
    OAuth 2.0 authorization server and the Amazon Connect API behind it."""

    procs: list[subprocess.Popen[bytes]]
    store: str
    kustomer: str
    oauth: str
    connect: str

    def env(self, settings: Settings) -> dict[str, str]:
        """The stack's setting that points cn-amazon-connect's OAuth dance at the stand-in
        (decisions §43: endpoints are deployment settings); other providers are kept."""
        providers = dict(settings.oauth_providers)
        providers["cn-amazon-connect"] = {
            "authorize_url": f"{self.oauth}/authorize",
            "token_url": f"{self.oauth}/token",
            "client_id": DEMO_OAUTH_CLIENT,
            "client_secret": DEMO_OAUTH_SECRET,
        }
        return {"FIBRIC_OAUTH_PROVIDERS": json.dumps(providers)}

    def wait_ready(self) -> None:
        deadline = time.monotonic() + FAKE_START_TIMEOUT_S
        names = ("store", "Kustomer stand-in", "OAuth server", "Amazon Connect stand-in")
        urls = (self.store, self.kustomer, self.oauth, self.connect)
        for proc, url, what in zip(self.procs, urls, names, strict=True):
            _wait_up(proc, url, what, deadline)


def start_fakes() -> DemoFakes:
    """Start every stand-in at once (not waiting: they come up while the stack starts)."""
    store, store_url = _spawn("connectors.fakes.magento")
    kus, kus_url = _spawn("connectors.fakes.kustomer")
    auth, auth_url = _spawn(
        "connectors.fakes.oauth_server", "--client", f"{DEMO_OAUTH_CLIENT}:{DEMO_OAUTH_SECRET}"
    )
    # the Amazon Connect stand-in asks the authorization server whether a token is active
    connect, connect_url = _spawn(
        "connectors.fakes.amazon_connect", "--introspect-url", f"{auth_url}/introspect"
    )
    return DemoFakes([store, kus, auth, connect], store_url, kus_url, auth_url, connect_url)


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


def _install(c: httpx.Client, body: dict[str, Any], *, replace: bool) -> dict[str, Any]:
    """Install a demo connector; a rerun on the same home finds last run's, which points at
    stand-ins that are gone (new ports): it is replaced when nothing depends on it."""
    r = c.post("/v1/connectors", json=body)
    if r.status_code == 409 and replace:
        for cn in c.get("/v1/connectors", params={"limit": 100}).json()["data"]:
            if cn["name"] == body["name"]:
                c.delete(f"/v1/connectors/{cn['id']}")
        r = c.post("/v1/connectors", json=body)
    if r.status_code not in (201, 409):
        raise CliError(f"demo: installing {body['listing']} failed: {r.text[:200]}")
    return dict(r.json())


def authorize(c: httpx.Client, connector: dict[str, Any]) -> dict[str, Any]:
    """The OAuth 2.0 dance a person does in a browser, done here against the local stand-in
    (which consents at once): follow the authorize URL to its redirect, then the redirect to
    Fibric's callback (no API key: the signed state authenticates it)."""
    url = connector.get("authorize_url")
    if not url:
        return connector
    consent = httpx.get(url, follow_redirects=False, timeout=10)
    location = consent.headers.get("location")
    if consent.status_code != 302 or not location:
        raise CliError(f"demo: the OAuth stand-in did not redirect ({consent.status_code})")
    done = httpx.get(location, timeout=30)
    if done.status_code != 200:
        raise CliError(f"demo: completing the OAuth dance failed: {done.text[:200]}")
    return dict(done.json())


def install_support_connectors(c: httpx.Client, fakes: DemoFakes) -> None:
    """cn-kustomer against the Kustomer stand-in, cn-amazon-connect against the Amazon Connect
    stand-in, its OAuth dance completed against the local authorization server."""
    _install(
        c,
        {
            "listing": "cn-kustomer",
            "name": "kustomer-demo",
            "auth": {"type": "api_key", "key": KUSTOMER_DEMO_TOKEN},
            "config": {"base_url": fakes.kustomer},
        },
        replace=True,
    )
    connect = _install(
        c,
        {
            "listing": "cn-amazon-connect",
            "name": "amazon-connect-demo",
            "auth": {"type": "oauth2"},
            "config": {"instance_id": DEFAULT_INSTANCE, "api_base_url": fakes.connect},
        },
        replace=True,
    )
    authorize(c, connect)


def populate(
    settings: Settings,
    store_url: str,
    receiver: tuple[str, Path] | None = None,
    fakes: DemoFakes | None = None,
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
        if fakes is not None:
            install_support_connectors(c, fakes)
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
        outcomes = settled_outcomes(c)
        proposed = c.get("/v1/plans", params={"status": "proposed", "limit": 3}).json()["data"]
        connectors = [
            (cn["listing"], cn["name"], cn["status"])
            for cn in c.get("/v1/connectors", params={"limit": 100}).json()["data"]
        ]
    return {
        "connectors": sorted(connectors),
        "key": secret,
        "outcomes": outcomes,
        "awaiting_approval": [p["id"] for p in proposed],
        "store": store_url,
        "webhook": receiver[0] if receiver else None,
    }


# The summary waits for the pipeline to work through the events it streamed: until the receipts
# stop growing for a moment (a few seconds on an idle machine; longer on a busy one, bounded).
SETTLE_POLL_S = 1.0
SETTLE_QUIET_POLLS = 3
SETTLE_MAX_S = 90.0


def outcomes_now(c: httpx.Client) -> dict[str, int]:
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
            return outcomes
        cursor = page["next_cursor"]


def settled_outcomes(c: httpx.Client) -> dict[str, int]:
    """The receipts' outcomes once their number stopped changing (a fixed pause under-counts
    on a loaded machine and over-waits on an idle one)."""
    deadline = time.monotonic() + SETTLE_MAX_S
    last, quiet = -1, 0
    while True:
        time.sleep(SETTLE_POLL_S)
        outcomes = outcomes_now(c)
        total = sum(outcomes.values())
        quiet = quiet + 1 if total == last and total > 0 else 0
        last = total
        if quiet >= SETTLE_QUIET_POLLS or time.monotonic() > deadline:
            return outcomes


def summary(result: dict[str, Any], base_url: str) -> str:
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(result["outcomes"].items()))
    lines = [
        f"fibric: demo tenant '{DEMO_TENANT}' is populated (fake Magento at {result['store']})",
        f"fibric: receipts so far: {outcomes}",
        "fibric: connectors: "
        + ", ".join(f"{lst} {name} {status}" for lst, name, status in result["connectors"]),
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
