"""cn-sandbox-orders: a sandbox connector that simulates an order system's side effects.

Spec §1.3: sandbox connectors simulate side effects only, so a team can try an operator and its
guardrails without touching a real store, then rebind the capabilities to a real connector. State
(orders seen, holds, notifications) lives in a SQLite file under the connector's state dir; any
API key is accepted. Orders are created on first use in state ``processing``. The executor's
idempotency keys are honoured by the toolkit's journal like every Fibric connector.
Also the in-repo connector the governed-loop benchmarks drive (no network hop to an upstream).

Like an upstream that stores request ids, the sandbox records each effect's idempotency key in
the same transaction as the effect, so an attempt whose outcome is unknown (a crash, a timeout)
is reconciled, never re-applied. ``latency_ms`` in the config (tests and benchmarks only, not in
the listing) delays each effect's answer after it is applied: a slow upstream, and the window in
which a crash leaves an applied effect without a journaled result.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from typing import Any

from connectors.errors import ConnectorError, ConnectorErrorCode
from connectors.server import ConnectorEnv, FibricServer, serve

LISTING_ID = "cn-sandbox-orders"
MAX_COMMENT_CHARS = 2000
# Effects of one batch applied at once: the simulated store takes any number (they are in
# process), and with ``latency_ms`` the answers overlap as a real store's would.
BATCH_CONCURRENCY = 64


class Sandbox:
    def __init__(self, env: ConnectorEnv) -> None:
        env.state_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(env.state_dir / "sandbox.sqlite3", check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            # The simulated store commits without an fsync: a crashed process loses nothing (the
            # WAL is written before a commit returns), a power cut may lose the newest simulated
            # effects. An fsync here ran on the event loop for every effect and was half the
            # server's time in a batch; a real upstream's durability is on its side of the wire.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, state TEXT NOT NULL, "
                "holds INTEGER NOT NULL DEFAULT 0, releases INTEGER NOT NULL DEFAULT 0)"
            )
            self._db.execute("CREATE TABLE IF NOT EXISTS notes (order_id TEXT, comment TEXT)")
            # The idempotency key of every applied effect (PRIMARY KEY: applying one twice is
            # an error, never a silent second effect).
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, result TEXT NOT NULL)"
            )

    def _order(self, order_id: str) -> dict[str, Any]:
        if not order_id or len(order_id) > 64:
            raise ConnectorError(
                ConnectorErrorCode.INVALID_ARGS, "order_id is required (≤ 64 chars)"
            )
        self._db.execute(
            "INSERT OR IGNORE INTO orders (id, state) VALUES (?, 'processing')", (order_id,)
        )
        row = self._db.execute(
            "SELECT id, state, holds, releases FROM orders WHERE id = ?", (order_id,)
        ).fetchone()
        notes = self._db.execute(
            "SELECT COUNT(*) FROM notes WHERE order_id = ?", (order_id,)
        ).fetchone()[0]
        return {
            "order_id": row[0],
            "state": row[1],
            "holds": row[2],
            "releases": row[3],
            "notes": notes,
        }

    def read(self, order_id: str) -> dict[str, Any]:
        with self._lock, self._db:
            return self._order(order_id)

    def set_state(self, key: str, order_id: str, state: str, column: str) -> dict[str, Any]:
        with self._lock, self._db:
            self._order(order_id)
            self._db.execute(
                f"UPDATE orders SET state = ?, {column} = {column} + 1 WHERE id = ?",
                (state, order_id),
            )
            return self._effect(key, order_id)

    def note(self, key: str, order_id: str, comment: str) -> dict[str, Any]:
        with self._lock, self._db:
            self._order(order_id)
            self._db.execute(
                "INSERT INTO notes (order_id, comment) VALUES (?, ?)", (order_id, comment)
            )
            return self._effect(key, order_id)

    def _effect(self, key: str, order_id: str) -> dict[str, Any]:
        order = self._order(order_id)
        self._db.execute("INSERT INTO effects VALUES (?, ?)", (key, json.dumps(order)))
        return order

    def applied(self, key: str) -> dict[str, Any] | None:
        """The order as the effect with this key left it, or None if none was applied."""
        with self._lock:
            row = self._db.execute("SELECT result FROM effects WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])


def build(env: ConnectorEnv) -> FibricServer:
    box = Sandbox(env)
    latency_s = float(env.config.get("latency_ms") or 0) / 1000.0
    server = FibricServer(
        LISTING_ID,
        state_dir=env.state_dir,
        instructions="Sandbox orders: simulated holds, releases and notifications.",
        batch_concurrency=BATCH_CONCURRENCY,
    )

    async def answer(action: str, order: dict[str, Any]) -> dict[str, Any]:
        if latency_s:
            await asyncio.sleep(latency_s)
        return {"action": action, "order": order, "sandbox": True}

    def reconciler(action: str) -> Any:
        async def find(idempotency_key: str, **_: Any) -> dict[str, Any] | None:
            order = box.applied(idempotency_key)
            return None if order is None else {"action": action, "order": order, "sandbox": True}

        return find

    @server.check
    async def connector_check() -> dict[str, Any]:
        """Always reachable: the sandbox is local."""
        return {"ok": True, "listing": LISTING_ID, "sandbox": True}

    @server.tool("order.read", side_effect=False, capability="order.read")
    async def order_read(order_id: str = "sandbox-probe") -> dict[str, Any]:
        """Read a simulated order (created on first use)."""
        return {"order": box.read(order_id), "sandbox": True}

    @server.tool(
        "order.hold",
        side_effect=True,
        capability="order.hold",
        compensating_tool="order.release",
        reconcile=reconciler("hold"),
    )
    async def order_hold(
        idempotency_key: str, order_id: str = "sandbox-probe", dry_run: bool = False
    ) -> dict[str, Any]:
        """Simulate putting an order on hold."""
        if dry_run:
            return {"dry_run": True, "order": box.read(order_id)}
        return await answer("hold", box.set_state(idempotency_key, order_id, "holded", "holds"))

    @server.tool(
        "order.release",
        side_effect=True,
        capability="order.release",
        reconcile=reconciler("release"),
    )
    async def order_release(
        idempotency_key: str, order_id: str = "sandbox-probe", dry_run: bool = False
    ) -> dict[str, Any]:
        """Simulate releasing an order from hold."""
        if dry_run:
            return {"dry_run": True, "order": box.read(order_id)}
        return await answer(
            "release", box.set_state(idempotency_key, order_id, "processing", "releases")
        )

    @server.tool(
        "order.notify",
        side_effect=True,
        capability="order.notify",
        reconcile=reconciler("notify"),
    )
    async def order_notify(
        idempotency_key: str,
        comment: str = "sandbox notification",
        order_id: str = "sandbox-probe",
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Simulate notifying the customer with a comment."""
        if not comment.strip() or len(comment) > MAX_COMMENT_CHARS:
            raise ConnectorError(
                ConnectorErrorCode.INVALID_ARGS,
                f"comment must be 1..{MAX_COMMENT_CHARS} characters",
            )
        if dry_run:
            return {"dry_run": True, "order": box.read(order_id)}
        return await answer("notify", box.note(idempotency_key, order_id, comment))

    return server


def main() -> None:
    serve(build, LISTING_ID)


if __name__ == "__main__":
    main()
