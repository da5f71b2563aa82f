"""cn-magento: an MCP server for Magento 2's REST API (``python -m connectors.servers.magento``).

Talks to ``config.base_url`` + ``/rest/V1`` with the integration access token as
``Authorization: Bearer <token>`` (``credentials.key``). Tools:

- ``order.read`` — GET ``/V1/orders/{id}``, or a ``searchCriteria`` search by increment id;
  with no identifier, the newest order (a cheap live read, what a connection test runs).
- ``order.hold`` / ``order.release`` — POST ``/V1/orders/{id}/hold`` / ``/unhold``
  (``order.release`` is the compensating tool of ``order.hold``).
- ``order.notify`` — POST ``/V1/orders/{id}/comments`` with a customer-notified comment.
- ``connector.check`` — an authenticated one-row order search: 401/403 -> auth_failed.

Side-effecting tools take ``idempotency_key`` (applied at most once, see ``server.py``) and
``dry_run`` (reads the target order, writes nothing). This module must never log or return the
token, and never follows redirects with it.
"""

from __future__ import annotations

import re
from typing import Any

from connectors.errors import ConnectorError, ConnectorErrorCode
from connectors.server import ConnectorEnv, FibricServer, credential_secret, serve
from connectors.upstream import UPSTREAM_MAX_CONNECTIONS, Upstream

LISTING_ID = "cn-magento"
# Magento refuses hold() in these states (Magento\Sales\Model\Order::canHold).
NOT_HOLDABLE_STATES = frozenset({"canceled", "payment_review", "complete", "closed", "holded"})
HOLDED_STATE = "holded"
# Entity ids are integers; increment ids are short store-defined strings. Both end up in a URL
# path or query, so anything else is refused before it reaches Magento.
ENTITY_ID_RE = re.compile(r"^[0-9]{1,20}$")
INCREMENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,50}$")
# Status-history comments are short notes to a customer; Magento stores TEXT, we keep it sane.
MAX_COMMENT_CHARS = 4000
# How many history entries and items order.read returns (a planner needs context, not bulk).
MAX_HISTORY = 20
MAX_ITEMS = 50


# ---- pure helpers ---------------------------------------------------------------------------
def rest_prefix(base_url: str) -> str:
    """``/rest/V1`` unless the configured base URL already ends in ``/rest``."""
    return "/V1" if base_url.rstrip("/").endswith("/rest") else "/rest/V1"


def search_params(
    field: str, value: str, *, condition: str = "eq", page_size: int | None = None
) -> list[tuple[str, str]]:
    """Magento ``searchCriteria`` query parameters for one filter."""
    f = "searchCriteria[filterGroups][0][filters][0]"
    params = [(f"{f}[field]", field), (f"{f}[value]", value), (f"{f}[conditionType]", condition)]
    if page_size is not None:
        params.append(("searchCriteria[pageSize]", str(page_size)))
    return params


def newest_order_params() -> list[tuple[str, str]]:
    return [
        ("searchCriteria[pageSize]", "1"),
        ("searchCriteria[currentPage]", "1"),
        ("searchCriteria[sortOrders][0][field]", "created_at"),
        ("searchCriteria[sortOrders][0][direction]", "DESC"),
    ]


def summarize_order(order: dict[str, Any]) -> dict[str, Any]:
    """The part of a Magento order a planner needs (ids, state, customer, totals, history)."""
    state = order.get("state")
    keep = (
        "entity_id",
        "increment_id",
        "state",
        "status",
        "hold_before_state",
        "hold_before_status",
        "customer_email",
        "customer_firstname",
        "customer_lastname",
        "grand_total",
        "order_currency_code",
        "created_at",
        "updated_at",
    )
    out: dict[str, Any] = {k: order.get(k) for k in keep if k in order}
    out["on_hold"] = state == HOLDED_STATE
    out["holdable"] = state not in NOT_HOLDABLE_STATES
    out["items"] = [
        {k: item.get(k) for k in ("sku", "name", "qty_ordered", "price") if k in item}
        for item in (order.get("items") or [])[:MAX_ITEMS]
    ]
    out["status_histories"] = [
        {
            k: h.get(k)
            for k in (
                "comment",
                "status",
                "is_customer_notified",
                "is_visible_on_front",
                "created_at",
            )
            if k in h
        }
        for h in (order.get("status_histories") or [])[:MAX_HISTORY]
    ]
    return out


def validate_ids(order_id: str | None, increment_id: str | None) -> None:
    if order_id is not None and increment_id is not None:
        raise ConnectorError(
            ConnectorErrorCode.INVALID_ARGS, "give order_id or increment_id, not both"
        )
    if order_id is not None and not ENTITY_ID_RE.match(order_id):
        raise ConnectorError(ConnectorErrorCode.INVALID_ARGS, "order_id must be a numeric id")
    if increment_id is not None and not INCREMENT_ID_RE.match(increment_id):
        raise ConnectorError(ConnectorErrorCode.INVALID_ARGS, "increment_id is malformed")


def has_notified_comment(order: dict[str, Any], comment: str) -> bool:
    return any(
        h.get("comment") == comment and int(h.get("is_customer_notified") or 0) == 1
        for h in order.get("status_histories") or []
    )


# ---- the server -----------------------------------------------------------------------------
class Magento:
    """The Magento REST calls the tools share."""

    def __init__(self, env: ConnectorEnv) -> None:
        base_url = env.config.get("base_url")
        self.token = credential_secret(env.credentials)
        self.config_error: str | None = None
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            self.config_error = "config.base_url must be an http(s) URL"
            base_url = "http://invalid.invalid"
        self.prefix = rest_prefix(base_url)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = Upstream(base_url, headers, livemode=env.livemode)

    def _ready(self) -> None:
        if self.config_error:
            raise ConnectorError(ConnectorErrorCode.INVALID_ARGS, self.config_error)
        if not self.token:
            raise ConnectorError(
                ConnectorErrorCode.AUTH_FAILED, "no access token in the credentials"
            )

    async def get_order(self, entity_id: str) -> dict[str, Any]:
        self._ready()
        return await self.http.request("GET", f"{self.prefix}/orders/{entity_id}")

    async def search(self, params: list[tuple[str, str]]) -> dict[str, Any]:
        self._ready()
        return await self.http.request("GET", f"{self.prefix}/orders", params=params)

    async def find_by_increment(self, increment_id: str) -> dict[str, Any]:
        found = await self.search(search_params("increment_id", increment_id, page_size=1))
        items = found.get("items") or []
        if not items:
            raise ConnectorError(
                ConnectorErrorCode.NOT_FOUND, f"no order with increment id {increment_id}"
            )
        return items[0]

    async def load(self, order_id: str | None, increment_id: str | None) -> dict[str, Any]:
        validate_ids(order_id, increment_id)
        if order_id is not None:
            return await self.get_order(order_id)
        if increment_id is not None:
            return await self.find_by_increment(increment_id)
        raise ConnectorError(ConnectorErrorCode.INVALID_ARGS, "order_id or increment_id required")

    async def entity_id(self, order_id: str | None, increment_id: str | None) -> str:
        validate_ids(order_id, increment_id)
        if order_id is not None:
            return order_id
        return str((await self.load(None, increment_id))["entity_id"])

    async def post(self, path: str, body: Any = None) -> Any:
        self._ready()
        return await self.http.request("POST", f"{self.prefix}{path}", json=body)

    async def dry_run(
        self, action: str, order_id: str | None, increment_id: str | None
    ) -> dict[str, Any]:
        """Validate auth and reachability (and the target order, if named); write nothing."""
        if order_id is None and increment_id is None:
            found = await self.search(newest_order_params())
            return {
                "dry_run": True,
                "action": action,
                "reachable": True,
                "total_count": found.get("total_count"),
            }
        order = await self.load(order_id, increment_id)
        state = order.get("state")
        if action == "hold":
            would = state not in NOT_HOLDABLE_STATES
        elif action == "release":
            would = state == HOLDED_STATE
        else:
            would = True
        return {
            "dry_run": True,
            "action": action,
            "order_id": str(order.get("entity_id")),
            "increment_id": order.get("increment_id"),
            "state": state,
            "status": order.get("status"),
            "would_apply": would,
        }


def _action_result(action: str, order_id: str, increment_id: str | None, result: Any) -> dict:
    return {"action": action, "order_id": order_id, "increment_id": increment_id, "result": result}


def build(env: ConnectorEnv) -> FibricServer:
    mg = Magento(env)
    server = FibricServer(
        LISTING_ID,
        state_dir=env.state_dir,
        instructions="Magento 2 orders: read, hold, release, notify the customer.",
        # A batch's calls go to the store concurrently, as many as the HTTP pool holds.
        batch_concurrency=UPSTREAM_MAX_CONNECTIONS,
    )

    @server.check
    async def connector_check() -> dict[str, Any]:
        """Validate the access token with an authenticated one-row order search."""
        found = await mg.search(newest_order_params())
        return {"ok": True, "listing": LISTING_ID, "total_count": found.get("total_count")}

    @server.tool("order.read", side_effect=False, capability="order.read")
    async def order_read(
        order_id: str | None = None, increment_id: str | None = None
    ) -> dict[str, Any]:
        """Read an order by entity id (order_id) or increment id. With neither, the newest
        order (a cheap live read)."""
        if order_id is None and increment_id is None:
            found = await mg.search(newest_order_params())
            items = found.get("items") or []
            return {
                "order": summarize_order(items[0]) if items else None,
                "total_count": found.get("total_count"),
            }
        return {"order": summarize_order(await mg.load(order_id, increment_id))}

    async def reconcile_hold(
        order_id: str | None = None, increment_id: str | None = None, **_: Any
    ) -> dict[str, Any] | None:
        order = await mg.load(order_id, increment_id)
        if order.get("state") != HOLDED_STATE:
            return None
        return _action_result("hold", str(order["entity_id"]), order.get("increment_id"), True)

    @server.tool(
        "order.hold",
        side_effect=True,
        capability="order.hold",
        compensating_tool="order.release",
        reconcile=reconcile_hold,
    )
    async def order_hold(
        idempotency_key: str,
        order_id: str | None = None,
        increment_id: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Put an order on hold (POST /V1/orders/{id}/hold)."""
        if dry_run:
            return await mg.dry_run("hold", order_id, increment_id)
        entity = await mg.entity_id(order_id, increment_id)
        result = await mg.post(f"/orders/{entity}/hold")
        return _action_result("hold", entity, increment_id, result)

    async def reconcile_release(
        order_id: str | None = None, increment_id: str | None = None, **_: Any
    ) -> dict[str, Any] | None:
        order = await mg.load(order_id, increment_id)
        if order.get("state") == HOLDED_STATE:
            return None
        return _action_result("release", str(order["entity_id"]), order.get("increment_id"), True)

    @server.tool(
        "order.release",
        side_effect=True,
        capability="order.release",
        reconcile=reconcile_release,
    )
    async def order_release(
        idempotency_key: str,
        order_id: str | None = None,
        increment_id: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Release an order from hold (POST /V1/orders/{id}/unhold); undoes order.hold."""
        if dry_run:
            return await mg.dry_run("release", order_id, increment_id)
        entity = await mg.entity_id(order_id, increment_id)
        result = await mg.post(f"/orders/{entity}/unhold")
        return _action_result("release", entity, increment_id, result)

    async def reconcile_notify(
        comment: str, order_id: str | None = None, increment_id: str | None = None, **_: Any
    ) -> dict[str, Any] | None:
        order = await mg.load(order_id, increment_id)
        if not has_notified_comment(order, comment):
            return None
        return _action_result("notify", str(order["entity_id"]), order.get("increment_id"), True)

    @server.tool(
        "order.notify", side_effect=True, capability="order.notify", reconcile=reconcile_notify
    )
    async def order_notify(
        idempotency_key: str,
        comment: str,
        order_id: str | None = None,
        increment_id: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Add a status-history comment the customer is notified of and can see."""
        if not comment.strip() or len(comment) > MAX_COMMENT_CHARS:
            raise ConnectorError(
                ConnectorErrorCode.INVALID_ARGS,
                f"comment must be 1..{MAX_COMMENT_CHARS} characters",
            )
        if dry_run:
            return await mg.dry_run("notify", order_id, increment_id)
        entity = await mg.entity_id(order_id, increment_id)
        body = {
            "statusHistory": {
                "comment": comment,
                "is_customer_notified": 1,
                "is_visible_on_front": 1,
            }
        }
        result = await mg.post(f"/orders/{entity}/comments", body)
        return _action_result("notify", entity, increment_id, result)

    return server


def main() -> None:
    serve(build, LISTING_ID)


if __name__ == "__main__":
    main()
