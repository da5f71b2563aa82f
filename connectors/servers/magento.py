"""cn-magento: an MCP server for Magento 2's REST API (``python -m connectors.servers.magento``).

Talks to ``config.base_url`` + ``/rest/V1`` with the integration access token as
``Authorization: Bearer <token>`` (``credentials.key``). Tools:

- ``order.read`` — GET ``/V1/orders/{id}``, or a ``searchCriteria`` search by increment id;
  with no identifier, the newest order (a cheap live read, what a connection test runs).
- ``order.hold`` / ``order.release`` — POST ``/V1/orders/{id}/hold`` / ``/unhold``
  (``order.release`` is the compensating tool of ``order.hold``). ``order.hold`` takes an
  optional ``reason`` (``promise_risk | payment_review | address_mismatch``, spec §2.5).
- ``order.notify`` — POST ``/V1/orders/{id}/comments`` with a customer-notified comment.
- ``connector.check`` — an authenticated one-row order search: 401/403 -> auth_failed.

Naming the order. Every order tool takes exactly one of:

- ``order_id`` — what events carry and models propose: the store's order number (increment id,
  ``SO-10884``, ``000000123``) or Magento's numeric entity id. A canonical integer (``1042``: digits,
  no leading zero) is tried as an entity id first and, if no order has that id (404, nothing
  applied), as an order number; anything else is an order number, found with the search Magento
  documents (``GET /V1/orders?searchCriteria[filter_groups][0][filters][0][field]=increment_id
  &...[value]=<number>&...[condition_type]=eq``). So numeric entity ids cost no extra request,
  and Magento's own number shapes (``000000123``; ``2000000123`` for a second store view, far
  above any entity id) resolve as numbers. The one ambiguous case, a store numbering orders with
  bare integers in the range of its entity ids, is why the two explicit forms exist:
- ``increment_id`` — an order number, never an entity id.
- ``entity_id`` — Magento's entity id, used as is (no lookup).

A number two store views share (Magento keeps ``(increment_id, store_id)`` unique, not the
number alone) is refused rather than guessed.

Resolutions are cached per process (``Resolutions``): an order's entity id never changes.

Side-effecting tools take ``idempotency_key`` (applied at most once, see ``server.py``) and
``dry_run`` (reads the target order, writes nothing). This module must never log or return the
token, and never follows redirects with it.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import StrictInt

from connectors.errors import ConnectorError, ConnectorErrorCode
from connectors.server import ConnectorEnv, FibricServer, credential_secret, serve
from connectors.upstream import UPSTREAM_MAX_CONNECTIONS, Upstream

LISTING_ID = "cn-magento"
# Magento refuses hold() in these states (Magento\Sales\Model\Order::canHold).
NOT_HOLDABLE_STATES = frozenset({"canceled", "payment_review", "complete", "closed", "holded"})
HOLDED_STATE = "holded"
# Entity ids are integers; increment ids are short store-defined strings (sales_order.increment_id
# is varchar(50)). Both end up in a URL path or query, so anything else is refused before it
# reaches Magento.
ENTITY_ID_RE = re.compile(r"^[0-9]{1,20}$")
INCREMENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,50}$")
# An ``order_id`` is tried as an entity id only in this canonical form: "000000123" is Magento's
# default order-number shape, never meant as entity 123.
CANONICAL_ENTITY_RE = re.compile(r"^[1-9][0-9]{0,19}$")
# An order identifier as a tool takes it: a string, or an integer as webhook payloads carry entity
# ids (strict: ``true`` is not order 1).
IdArg = str | StrictInt
# Why an order is held (spec §2.5: validated values, not free text).
HoldReason = Literal["promise_risk", "payment_review", "address_mismatch"]
HOLD_REASONS: tuple[str, ...] = get_args(HoldReason)
# Order number -> entity id. A hit never goes stale (Magento never renumbers an order), so hits
# live long; the bound keeps a long-running server's memory flat (~100 bytes an entry).
RESOLVED_TTL_S = 3600.0
RESOLUTIONS_MAX = 10_000
# Search page for an order number: two rows, so a number shared by two store views is noticed.
RESOLVE_PAGE_SIZE = 2
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
    """Magento ``searchCriteria`` query parameters for one filter (camelCase keys, which
    Magento's REST layer reads like the snake_case ones)."""
    f = "searchCriteria[filterGroups][0][filters][0]"
    params = [(f"{f}[field]", field), (f"{f}[value]", value), (f"{f}[conditionType]", condition)]
    if page_size is not None:
        params.append(("searchCriteria[pageSize]", str(page_size)))
    return params


def order_number_params(
    number: str, *, page_size: int = RESOLVE_PAGE_SIZE
) -> list[tuple[str, str]]:
    """The search for the order numbered ``number``, spelled exactly as Magento's REST search
    documentation spells it: ``searchCriteria[filter_groups][0][filters][0][field]=increment_id``,
    ``...[value]=<number>``, ``...[condition_type]=eq``."""
    f = "searchCriteria[filter_groups][0][filters][0]"
    return [
        (f"{f}[field]", "increment_id"),
        (f"{f}[value]", number),
        (f"{f}[condition_type]", "eq"),
        ("searchCriteria[pageSize]", str(page_size)),
    ]


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


@dataclass(frozen=True)
class OrderRef:
    """How a call named its order: exactly one of the three identifiers (see the module doc)."""

    order_id: str | None = None  # an order number, or an entity id (a canonical integer first)
    increment_id: str | None = None  # order number only
    entity_id: str | None = None  # entity id only

    @property
    def label(self) -> str:
        return self.order_id or self.increment_id or self.entity_id or ""


def order_ref(
    order_id: str | int | None = None,
    increment_id: str | None = None,
    entity_id: str | int | None = None,
    *,
    required: bool = True,
) -> OrderRef | None:
    """Validate a call's order identifiers (pure). None when none is given and none is
    required; raises invalid_args on two identifiers or a malformed one."""
    given = {
        name: value
        for name, value in (
            ("order_id", order_id),
            ("increment_id", increment_id),
            ("entity_id", entity_id),
        )
        if value is not None
    }
    if len(given) > 1:
        raise ConnectorError(
            ConnectorErrorCode.INVALID_ARGS,
            f"give one of order_id, increment_id, entity_id, not {' and '.join(given)}",
        )
    if not given:
        if required:
            raise ConnectorError(
                ConnectorErrorCode.INVALID_ARGS,
                "order_id (the order number, e.g. SO-10884) is required",
            )
        return None
    name, raw = next(iter(given.items()))
    if isinstance(raw, bool):  # bool is an int: refuse True as "order 1"
        raise ConnectorError(ConnectorErrorCode.INVALID_ARGS, f"{name} must be a string")
    value = str(raw)
    if name == "entity_id":
        if not ENTITY_ID_RE.match(value):
            raise ConnectorError(ConnectorErrorCode.INVALID_ARGS, "entity_id must be a numeric id")
        return OrderRef(entity_id=value)
    if not INCREMENT_ID_RE.match(value):
        raise ConnectorError(
            ConnectorErrorCode.INVALID_ARGS,
            f"{name} must be an order number or entity id "
            "(1-50 letters, digits, '-' or '_'; e.g. SO-10884)",
        )
    return OrderRef(**{name: value})


def required_ref(
    order_id: str | int | None = None,
    increment_id: str | None = None,
    entity_id: str | int | None = None,
) -> OrderRef:
    ref = order_ref(order_id, increment_id, entity_id)
    assert ref is not None  # order_ref raises when a required identifier is missing
    return ref


def validate_ids(order_id: str | None, increment_id: str | None) -> None:
    """Check ``order_id``/``increment_id`` as :func:`order_ref` does (kept for callers)."""
    order_ref(order_id, increment_id, required=False)


def validate_reason(reason: str | None) -> None:
    if reason is not None and reason not in HOLD_REASONS:
        raise ConnectorError(
            ConnectorErrorCode.INVALID_ARGS, f"reason must be one of {', '.join(HOLD_REASONS)}"
        )


def pick_order(items: list[dict[str, Any]], total: Any, number: str) -> dict[str, Any] | None:
    """The one order a search by order number found; None if none. Two orders with one number
    (two store views with overlapping sequences) are refused: acting on either could be wrong."""
    count = total if isinstance(total, int) and not isinstance(total, bool) else len(items)
    if not items:
        return None
    if count > 1 or len(items) > 1:
        stores = sorted({str(o.get("store_id")) for o in items})
        raise ConnectorError(
            ConnectorErrorCode.INVALID_ARGS,
            f"order number {number} matches {max(count, len(items))} orders "
            f"(store ids {', '.join(stores)}); name the order by entity_id",
        )
    return items[0]


class Resolutions:
    """Order number -> entity id, per process, with expiry (pure; the clock is injectable)."""

    def __init__(
        self,
        *,
        max_entries: int = RESOLUTIONS_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, key: str) -> str | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        entity, expires = hit
        if self.clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entity

    def put(self, key: str, entity: str, ttl_s: float) -> None:
        self._entries[key] = (entity, self.clock() + ttl_s)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


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
        self.numbers = Resolutions()  # order number -> entity id

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

    async def find_by_number(self, number: str) -> dict[str, Any] | None:
        """The order whose order number (increment id) is ``number``, or None."""
        found = await self.search(order_number_params(number))
        order = pick_order(found.get("items") or [], found.get("total_count"), number)
        if order is not None:
            self.numbers.put(number, str(order["entity_id"]), RESOLVED_TTL_S)
        return order

    async def resolve(self, ref: OrderRef) -> Resolved:
        """Where the order ``ref`` names lives (the module doc gives the rules). A canonical
        integer ``order_id`` comes back ``as_entity`` (not looked up): the caller tries it as an
        entity id and asks :meth:`by_number` on a 404. Raises not_found for an order number no
        order has."""
        if ref.entity_id is not None:
            return Resolved(ref.entity_id, None, None, ref)
        number = ref.order_id if ref.order_id is not None else ref.increment_id
        assert number is not None
        if (entity := self.numbers.get(number)) is not None:
            return Resolved(entity, number, None, ref)
        if ref.order_id is not None and CANONICAL_ENTITY_RE.match(number):
            return Resolved(number, None, None, ref, as_entity=True)
        return await self.by_number(ref)

    async def by_number(self, ref: OrderRef) -> Resolved:
        """The order whose number is ``ref``'s; not_found if none."""
        order = await self.find_by_number(ref.label)
        if order is None:
            what = "order number or entity id" if ref.order_id is not None else "order number"
            raise ConnectorError(ConnectorErrorCode.NOT_FOUND, f"no order with {what} {ref.label}")
        return Resolved(str(order["entity_id"]), order.get("increment_id"), order, ref)

    async def _on_entity(self, ref: OrderRef, call: Any) -> tuple[Resolved, Any]:
        """Run ``call(entity_id)`` on the order ``ref`` names. A 404 on an ``order_id`` taken
        as an entity id (nothing was applied) retries once on the order with that number; a
        404 on a cached number drops it. Not-found errors name what the caller gave."""
        found = await self.resolve(ref)
        if found.order is not None and call == self.get_order:
            return found, found.order  # the search already read it
        try:
            return found, await call(found.entity_id)
        except ConnectorError as err:
            if err.code is not ConnectorErrorCode.NOT_FOUND or ref.entity_id is not None:
                raise self._missing(ref, err) from None
            if not found.as_entity:  # a cached number whose order is gone (deleted)
                self.numbers.forget(ref.label)
                raise self._missing(ref, err) from None
            entity_status = err.status
        try:
            found = await self.by_number(ref)
        except ConnectorError as missing:
            if missing.code is not ConnectorErrorCode.NOT_FOUND:
                raise
            # neither an entity id nor an order number: keep the store's 404
            raise ConnectorError(missing.code, missing.message, status=entity_status) from None
        if found.order is not None and call == self.get_order:
            return found, found.order
        try:
            return found, await call(found.entity_id)
        except ConnectorError as err:
            raise self._missing(ref, err) from None

    @staticmethod
    def _missing(ref: OrderRef, err: ConnectorError) -> ConnectorError:
        """A 404, said in the caller's terms."""
        if err.code is not ConnectorErrorCode.NOT_FOUND:
            return err
        if ref.entity_id is not None:
            what = f"entity id {ref.entity_id}"
        elif ref.order_id is not None:
            what = f"order number or entity id {ref.order_id}"
        else:
            what = f"order number {ref.increment_id}"
        return ConnectorError(
            ConnectorErrorCode.NOT_FOUND,
            f"no order with {what}",
            status=err.status,
            outcome_unknown=err.outcome_unknown,
        )

    async def load(self, ref: OrderRef) -> dict[str, Any]:
        """The full order ``ref`` names (one GET or one search when nothing is cached)."""
        _, order = await self._on_entity(ref, self.get_order)
        return order

    async def post(self, path: str, body: Any = None) -> Any:
        self._ready()
        return await self.http.request("POST", f"{self.prefix}{path}", json=body)

    async def write(
        self, ref: OrderRef, action: str, body: Any = None, **extra: Any
    ) -> dict[str, Any]:
        """POST ``/orders/{entity}/{action}`` for the order ``ref`` names: the tool result."""

        async def call(entity_id: str) -> Any:
            return await self.post(f"/orders/{entity_id}/{action}", body)

        found, result = await self._on_entity(ref, call)
        return _action_result(ACTIONS[action], found.entity_id, found.increment_id, result, extra)

    async def dry_run(self, action: str, ref: OrderRef | None) -> dict[str, Any]:
        """Validate auth and reachability (and the target order, if named); write nothing."""
        if ref is None:
            found = await self.search(newest_order_params())
            return {
                "dry_run": True,
                "action": action,
                "reachable": True,
                "total_count": found.get("total_count"),
            }
        order = await self.load(ref)
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


@dataclass(frozen=True)
class Resolved:
    """An order reference resolved: the entity id, the order number if known, the order if the
    lookup already read it, and whether a canonical integer ``order_id`` is being tried as an
    entity id (no lookup yet; a 404 sends it to the order-number search)."""

    entity_id: str
    increment_id: str | None
    order: dict[str, Any] | None
    ref: OrderRef
    as_entity: bool = False


# Magento's order action path segment -> the action name a tool result carries.
ACTIONS = {"hold": "hold", "unhold": "release", "comments": "notify"}


def _action_result(
    action: str,
    order_id: str,
    increment_id: str | None,
    result: Any,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A write's result: ``order_id`` is the entity id acted on, ``increment_id`` the order
    number when known (None when the call named the order by entity id)."""
    out = {"action": action, "order_id": order_id, "increment_id": increment_id, "result": result}
    out.update(extra or {})
    return out


# The argument every order tool describes the same way (models read it in the input schema).
ORDER_ID_DOC = (
    "order_id: the order number (increment id, e.g. SO-10884 or 000000123) as events carry it, "
    "or Magento's entity id (a plain integer is tried as an entity id first, then as an order "
    "number). increment_id: an order number only. entity_id: Magento's entity id only. Give one."
)


def build(env: ConnectorEnv) -> FibricServer:
    mg = Magento(env)
    server = FibricServer(
        LISTING_ID,
        state_dir=env.state_dir,
        instructions="Magento 2 orders: read, hold, release, notify the customer. " + ORDER_ID_DOC,
        # A batch's calls go to the store concurrently, as many as the HTTP pool holds.
        batch_concurrency=UPSTREAM_MAX_CONNECTIONS,
    )

    @server.check
    async def connector_check() -> dict[str, Any]:
        """Validate the access token with an authenticated one-row order search."""
        found = await mg.search(newest_order_params())
        return {"ok": True, "listing": LISTING_ID, "total_count": found.get("total_count")}

    @server.tool(
        "order.read",
        side_effect=False,
        capability="order.read",
        description="Read an order by its order number or entity id; with no identifier, the "
        "newest order (a cheap live read). " + ORDER_ID_DOC,
    )
    async def order_read(
        order_id: IdArg | None = None,
        increment_id: str | None = None,
        entity_id: IdArg | None = None,
    ) -> dict[str, Any]:
        ref = order_ref(order_id, increment_id, entity_id, required=False)
        if ref is None:
            found = await mg.search(newest_order_params())
            items = found.get("items") or []
            return {
                "order": summarize_order(items[0]) if items else None,
                "total_count": found.get("total_count"),
            }
        return {"order": summarize_order(await mg.load(ref))}

    async def reconcile_hold(
        order_id: IdArg | None = None,
        increment_id: str | None = None,
        entity_id: IdArg | None = None,
        reason: str | None = None,
        **_: Any,
    ) -> dict[str, Any] | None:
        order = await mg.load(required_ref(order_id, increment_id, entity_id))
        if order.get("state") != HOLDED_STATE:
            return None
        extra = {"reason": reason} if reason else None
        return _action_result(
            "hold", str(order["entity_id"]), order.get("increment_id"), True, extra
        )

    @server.tool(
        "order.hold",
        side_effect=True,
        capability="order.hold",
        compensating_tool="order.release",
        reconcile=reconcile_hold,
        description="Put an order on hold (POST /V1/orders/{id}/hold). reason (optional): "
        f"{' | '.join(HOLD_REASONS)}. " + ORDER_ID_DOC,
    )
    async def order_hold(
        idempotency_key: str,
        order_id: IdArg | None = None,
        increment_id: str | None = None,
        entity_id: IdArg | None = None,
        reason: HoldReason | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        validate_reason(reason)
        ref = order_ref(order_id, increment_id, entity_id, required=not dry_run)
        if dry_run:
            return await mg.dry_run("hold", ref)
        assert ref is not None
        return await mg.write(ref, "hold", **({"reason": reason} if reason else {}))

    async def reconcile_release(
        order_id: IdArg | None = None,
        increment_id: str | None = None,
        entity_id: IdArg | None = None,
        **_: Any,
    ) -> dict[str, Any] | None:
        order = await mg.load(required_ref(order_id, increment_id, entity_id))
        if order.get("state") == HOLDED_STATE:
            return None
        return _action_result("release", str(order["entity_id"]), order.get("increment_id"), True)

    @server.tool(
        "order.release",
        side_effect=True,
        capability="order.release",
        reconcile=reconcile_release,
        description="Release an order from hold (POST /V1/orders/{id}/unhold); undoes "
        "order.hold. " + ORDER_ID_DOC,
    )
    async def order_release(
        idempotency_key: str,
        order_id: IdArg | None = None,
        increment_id: str | None = None,
        entity_id: IdArg | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        ref = order_ref(order_id, increment_id, entity_id, required=not dry_run)
        if dry_run:
            return await mg.dry_run("release", ref)
        assert ref is not None
        return await mg.write(ref, "unhold")

    async def reconcile_notify(
        comment: str,
        order_id: IdArg | None = None,
        increment_id: str | None = None,
        entity_id: IdArg | None = None,
        **_: Any,
    ) -> dict[str, Any] | None:
        order = await mg.load(required_ref(order_id, increment_id, entity_id))
        if not has_notified_comment(order, comment):
            return None
        return _action_result("notify", str(order["entity_id"]), order.get("increment_id"), True)

    @server.tool(
        "order.notify",
        side_effect=True,
        capability="order.notify",
        reconcile=reconcile_notify,
        description="Add a status-history comment the customer is notified of and can see "
        "(POST /V1/orders/{id}/comments). " + ORDER_ID_DOC,
    )
    async def order_notify(
        idempotency_key: str,
        comment: str,
        order_id: IdArg | None = None,
        increment_id: str | None = None,
        entity_id: IdArg | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        if not comment.strip() or len(comment) > MAX_COMMENT_CHARS:
            raise ConnectorError(
                ConnectorErrorCode.INVALID_ARGS,
                f"comment must be 1..{MAX_COMMENT_CHARS} characters",
            )
        ref = order_ref(order_id, increment_id, entity_id, required=not dry_run)
        if dry_run:
            return await mg.dry_run("notify", ref)
        assert ref is not None
        body = {
            "statusHistory": {
                "comment": comment,
                "is_customer_notified": 1,
                "is_visible_on_front": 1,
            }
        }
        return await mg.write(ref, "comments", body)

    return server


def main() -> None:
    serve(build, LISTING_ID)


if __name__ == "__main__":
    main()
