"""A fake Magento 2 store: a real HTTP server speaking the subset of Magento's REST API that
cn-magento uses, written from Magento's public REST documentation and order model rules.

- ``GET  /rest[/<store>]/V1/orders/{id}`` — ``{id}`` is the numeric entity id: the order, or
  404 ``NoSuchEntityException`` body; anything but an integer (an order number such as
  ``SO-10884``) is Magento's 400 type error ("The "SO-10884" value's type is invalid...").
  The same holds for every ``/orders/{id}/...`` route.
- ``GET  /rest[/<store>]/V1/orders?searchCriteria[...]`` — ``{"items", "search_criteria",
  "total_count"}``; filter groups AND, filters inside a group OR; eq/neq/in/nin/like/gt/lt/
  gteq/lteq; page size, current page, sort orders. Keys in Magento's documented snake_case
  (``filter_groups``, ``condition_type``) or camelCase (``filterGroups``, ``conditionType``),
  as its REST layer reads both. Find an order by its number with
  ``searchCriteria[filter_groups][0][filters][0][field]=increment_id`` (``[value]``,
  ``[condition_type]=eq``). No ``searchCriteria`` -> 400.
- ``POST .../orders/{id}/hold`` — ``true``; only from holdable states (not canceled,
  payment_review, complete, closed, holded), else 400 "A hold action is not available.".
  Saves ``hold_before_state``/``hold_before_status`` and moves to ``holded``.
- ``POST .../orders/{id}/unhold`` — ``true``; only from ``holded``, else 400 "You cannot remove
  the hold."; restores the state and status saved by hold.
- ``POST .../orders/{id}/comments`` — body ``{"statusHistory": {...}}`` appended to
  ``status_histories`` (newest first); ``true``. ``GET`` lists them.
- Every REST route needs ``Authorization: Bearer <token>``; otherwise 401 with Magento's
  ``{"message": "The consumer isn't authorized to access %resources.", "parameters": ...}``.

Test controls: request ``counters`` (e.g. ``count("order.hold")``), ``fail_status`` (e.g. 503),
``hang_s`` (hold every REST request up to that long, for timeout tests), ``delay_s`` (every
REST request), ``write_delay_s`` (POST/PUT only: a store's write latency), an in-flight gauge
(``max_in_flight``) and its per-order twin (``max_in_flight_per_order``: 2 means two requests
on one order overlapped). Over HTTP for other processes: ``GET /__fake__/state``,
``POST /__fake__/mode`` ``{"fail_status", "hang_s", "delay_s", "write_delay_s"}``,
``POST /__fake__/reset``,
``POST /__fake__/orders`` (add an order: ``entity_id``, optional ``increment_id`` such as
``SO-10884`` (default ``{entity_id:09d}``, Magento's shape), ``state``, ``status``,
``customer_email``, ``grand_total``, ``store_id``; an increment id another order of the same
store has -> 409, as Magento keeps (increment_id, store_id) unique),
``GET /__fake__/orders/{entity_id}``, ``GET /__fake__/requests`` (the last REST requests,
``requests()`` in process). Run by hand: ``python -m connectors.fakes.magento --port N``.

Never use this outside tests and benchmarks: it keeps everything in memory and trusts its input.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

DEFAULT_TOKEN = "mg_live_9f4c2e8b1a41"  # the token in seed 001's install example
# Longest a "hang" holds a request; tests release it sooner by stopping the server.
MAX_HANG_S = 120.0
HANG_POLL_S = 0.05
# REST requests remembered for ``requests()`` (tests check what a connector sent, e.g. the exact
# searchCriteria spelling); bounded so a benchmark's millions of calls cost nothing.
RECENT_REQUESTS = 200

NOT_HOLDABLE = {"canceled", "payment_review", "complete", "closed", "holded"}
NOT_FOUND_MSG = "The entity that was requested doesn't exist. Verify the entity and try again."
UNAUTHORIZED_MSG = "The consumer isn't authorized to access %resources."
REQUIRED_MSG = '"%fieldName" is required. Enter and try again.'

REST_RE = re.compile(r"^/rest(?:/(?P<store>[a-z0-9_]+))?/V1(?P<path>/.*)$")
ORDER_RE = re.compile(r"^/orders/(?P<id>[^/]+)(?P<action>/hold|/unhold|/comments)?$")
# Magento's REST layer reads searchCriteria keys in snake_case (its documentation's spelling:
# ``filter_groups``, ``condition_type``, ``page_size``) or camelCase (``filterGroups``,
# ``conditionType``, ``pageSize``): it converts them to the same setters. Both are accepted.
CRITERIA_RE = re.compile(
    r"^searchCriteria\[(?:filter_groups|filterGroups)\]\[(\d+)\]\[filters\]\[(\d+)\]"
    r"\[(field|value|condition_type|conditionType)\]$"
)
SORT_RE = re.compile(
    r"^searchCriteria\[(?:sort_orders|sortOrders)\]\[(\d+)\]\[(field|direction)\]$"
)
PAGE_SIZE_KEYS = ("searchCriteria[pageSize]", "searchCriteria[page_size]")
CURRENT_PAGE_KEYS = ("searchCriteria[currentPage]", "searchCriteria[current_page]")
# Route ids are ``int`` in Magento's service contracts (OrderRepositoryInterface::get(int $id));
# anything else in the path is refused by its type check with a 400, before any lookup.
ENTITY_ID_RE = re.compile(r"^[0-9]{1,20}$")
TYPE_MSG = (
    'The "{value}" value\'s type is invalid. The "int" type was expected. Verify and try again.'
)
DUPLICATE_INCREMENT_MSG = "increment_id {value} is already the number of order {other}"
# What the fake accepts as an order number when seeding (sales_order.increment_id: varchar(50)).
INCREMENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,50}$")

# ACL resource Magento names in its 401 body, per route.
RESOURCES = {
    "order.get": "Magento_Sales::actions_view",
    "order.search": "Magento_Sales::actions_view",
    "order.hold": "Magento_Sales::hold",
    "order.unhold": "Magento_Sales::unhold",
    "order.comment": "Magento_Sales::comment",
    "comments.list": "Magento_Sales::actions_view",
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


def make_order(
    entity_id: int,
    *,
    state: str = "processing",
    status: str | None = None,
    email: str | None = None,
    increment_id: str | None = None,
    grand_total: float = 129.0,
) -> dict[str, Any]:
    """An order shaped like Magento's ``SalesDataOrderInterface`` JSON."""
    ts = _now()
    return {
        "entity_id": entity_id,
        "increment_id": increment_id or f"{entity_id:09d}",
        "state": state,
        "status": status or {"new": "pending"}.get(state, state),
        "customer_email": email or f"customer{entity_id}@example.com",
        "customer_firstname": "Ada",
        "customer_lastname": f"Customer{entity_id}",
        "customer_is_guest": 0,
        "store_id": 1,
        "base_currency_code": "USD",
        "order_currency_code": "USD",
        "grand_total": grand_total,
        "base_grand_total": grand_total,
        "subtotal": grand_total - 9.0,
        "shipping_amount": 9.0,
        "created_at": ts,
        "updated_at": ts,
        "items": [
            {
                "item_id": entity_id * 10 + 1,
                "order_id": entity_id,
                "sku": "MH01-XS-Black",
                "name": "Chaz Kangeroo Hoodie",
                "qty_ordered": 2,
                "price": (grand_total - 9.0) / 2,
                "row_total": grand_total - 9.0,
                "product_type": "simple",
            }
        ],
        "payment": {"method": "checkmo"},
        "status_histories": [],
        "extension_attributes": {},
    }


def seed_orders() -> dict[int, dict[str, Any]]:
    orders = {
        1: make_order(1, state="processing"),
        2: make_order(2, state="new"),
        3: make_order(3, state="complete"),
        4: make_order(4, state="holded"),
        5: make_order(5, state="canceled"),
    }
    orders[4]["hold_before_state"] = "processing"
    orders[4]["hold_before_status"] = "processing"
    return orders


# ---- search criteria (pure) ------------------------------------------------------------------
def parse_search_criteria(query: list[tuple[str, str]]) -> dict[str, Any] | None:
    """Magento's bracketed ``searchCriteria`` query into its snake_case echo form."""
    if not any(k.startswith("searchCriteria") for k, _ in query):
        return None
    groups: dict[int, dict[int, dict[str, str]]] = {}
    sorts: dict[int, dict[str, str]] = {}
    page_size = current_page = None
    for k, v in query:
        if m := CRITERIA_RE.match(k):
            g, f, attr = int(m[1]), int(m[2]), m[3]
            attr = "condition_type" if attr == "conditionType" else attr
            groups.setdefault(g, {}).setdefault(f, {})[attr] = v
        elif m := SORT_RE.match(k):
            sorts.setdefault(int(m[1]), {})[m[2]] = v
        elif k in PAGE_SIZE_KEYS:
            page_size = int(v)
        elif k in CURRENT_PAGE_KEYS:
            current_page = int(v)
    out: dict[str, Any] = {
        "filter_groups": [
            {
                "filters": [
                    {
                        "field": f.get("field"),
                        "value": f.get("value"),
                        "condition_type": f.get("condition_type", "eq"),
                    }
                    for _, f in sorted(filters.items())
                ]
            }
            for _, filters in sorted(groups.items())
        ]
    }
    if sorts:
        out["sort_orders"] = [
            {"field": s.get("field"), "direction": s.get("direction", "ASC")}
            for _, s in sorted(sorts.items())
        ]
    if page_size is not None:
        out["page_size"] = page_size
    if current_page is not None:
        out["current_page"] = current_page
    return out


def _sort_key(fld: str) -> Callable[[dict[str, Any]], Any]:
    return lambda o: _cmp_value(o.get(fld))


def _cmp_value(x: Any) -> Any:
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def filter_matches(order: dict[str, Any], f: dict[str, Any]) -> bool:
    actual = order.get(f["field"])
    value = f["value"]
    cond = f["condition_type"]
    a = "" if actual is None else str(actual)
    if cond == "eq":
        return a == value
    if cond == "neq":
        return a != value
    if cond == "in":
        return a in value.split(",")
    if cond == "nin":
        return a not in value.split(",")
    if cond == "like":
        pattern = "^" + re.escape(value).replace("%", ".*") + "$"
        return re.match(pattern, a, re.IGNORECASE) is not None
    ops = {"gt": "__gt__", "lt": "__lt__", "gteq": "__ge__", "lteq": "__le__"}
    if cond in ops and actual is not None:
        return bool(getattr(_cmp_value(actual), ops[cond])(_cmp_value(value)))
    return False


def search_orders(orders: list[dict[str, Any]], criteria: dict[str, Any]) -> dict[str, Any]:
    hits = [
        o
        for o in orders
        if all(
            any(filter_matches(o, f) for f in group["filters"])
            for group in criteria["filter_groups"]
            if group["filters"]
        )
    ]
    for s in reversed(criteria.get("sort_orders", [])):
        hits.sort(key=_sort_key(s["field"]), reverse=str(s["direction"]).upper() == "DESC")
    total = len(hits)
    size = criteria.get("page_size")
    if size:
        page = max(criteria.get("current_page") or 1, 1)
        hits = hits[(page - 1) * size : page * size]
    return {"items": hits, "search_criteria": criteria, "total_count": total}


# ---- the server ------------------------------------------------------------------------------
class FakeMagento:
    """The store (orders, tokens, modes, counters) and its HTTP server on 127.0.0.1."""

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, tokens: set[str] | None = None
    ) -> None:
        self.host = host
        self.requested_port = port
        self.tokens = set(tokens or {DEFAULT_TOKEN})
        self.lock = threading.Lock()
        self.orders: dict[int, dict[str, Any]] = seed_orders()
        self.counters: Counter[str] = Counter()
        self.fail_status: int | None = None
        self.hang_s: float | None = None
        self.delay_s: float = 0.0
        self.write_delay_s: float = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.order_in_flight: Counter[str] = Counter()
        self.max_in_flight_per_order = 0
        self._release = threading.Event()
        self._next_history_id = 1
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_REQUESTS)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -----------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeMagento:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = _Server((self.host, self.requested_port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="fake-magento", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()  # unblock hung requests
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # ---- test controls -------------------------------------------------------------------
    def count(self, name: str) -> int:
        with self.lock:
            return self.counters[name]

    def requests(self) -> list[dict[str, Any]]:
        """The last REST requests, oldest first: ``{"method", "path", "query": [[k, v], ...]}``."""
        with self.lock:
            return copy.deepcopy(list(self.recent))

    def reset(self) -> None:
        with self.lock:
            self.orders = seed_orders()
            self.counters.clear()
            self.recent.clear()
            self.fail_status = None
            self.hang_s = None
            self.delay_s = 0.0
            self.write_delay_s = 0.0
            self.max_in_flight = self.in_flight
            self.max_in_flight_per_order = max(self.order_in_flight.values(), default=0)
            self._release.set()  # unblock anything still hanging

    def set_mode(
        self,
        *,
        fail_status: int | None = None,
        hang_s: float | None = None,
        delay_s: float = 0.0,
        write_delay_s: float = 0.0,
    ) -> None:
        with self.lock:
            self.fail_status = fail_status
            self.hang_s = hang_s
            self.delay_s = delay_s
            self.write_delay_s = write_delay_s
            if hang_s is None:
                self._release.set()
            else:
                self._release.clear()

    def add_order(self, order: dict[str, Any]) -> dict[str, Any]:
        """Add (or replace, by entity id) an order. Raises ValueError when another order
        already has its increment id: Magento keeps order numbers unique."""
        entity_id = int(order["entity_id"])
        with self.lock:
            other = self._numbered(str(order["increment_id"]), order.get("store_id"))
            if other is not None and other != entity_id:
                raise ValueError(
                    DUPLICATE_INCREMENT_MSG.format(value=order["increment_id"], other=other)
                )
            self.orders[entity_id] = order
        return order

    def _numbered(self, increment_id: str, store_id: Any) -> int | None:
        """Entity id of the order of store ``store_id`` numbered ``increment_id`` (lock held).
        Magento's unique key is (increment_id, store_id): two store views with overlapping
        sequences can share a number."""
        return next(
            (
                k
                for k, o in self.orders.items()
                if str(o["increment_id"]) == increment_id and o.get("store_id") == store_id
            ),
            None,
        )

    def order(self, entity_id: int) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.orders[entity_id])

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "counters": dict(self.counters),
                "fail_status": self.fail_status,
                "hang_s": self.hang_s,
                "delay_s": self.delay_s,
                "write_delay_s": self.write_delay_s,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "max_in_flight_per_order": self.max_in_flight_per_order,
                "orders": {
                    str(k): {
                        "increment_id": o["increment_id"],
                        "state": o["state"],
                        "status": o["status"],
                    }
                    for k, o in self.orders.items()
                },
            }

    # ---- Magento behaviour (called with the lock held) ------------------------------------
    def _get(self, raw_id: str) -> dict[str, Any] | None:
        try:
            return self.orders.get(int(raw_id))
        except ValueError:
            return None

    def hold(self, order: dict[str, Any]) -> tuple[int, Any]:
        if order["state"] in NOT_HOLDABLE:
            return 400, {"message": "A hold action is not available."}
        order["hold_before_state"] = order["state"]
        order["hold_before_status"] = order["status"]
        order["state"] = order["status"] = "holded"
        order["updated_at"] = _now()
        return 200, True

    def unhold(self, order: dict[str, Any]) -> tuple[int, Any]:
        if order["state"] != "holded":
            return 400, {"message": "You cannot remove the hold."}
        order["state"] = order.pop("hold_before_state", None) or "processing"
        order["status"] = order.pop("hold_before_status", None) or order["state"]
        order["updated_at"] = _now()
        return 200, True

    def add_comment(self, order: dict[str, Any], body: Any) -> tuple[int, Any]:
        history = body.get("statusHistory") if isinstance(body, dict) else None
        if not isinstance(history, dict):
            return 400, {"message": REQUIRED_MSG, "parameters": {"fieldName": "statusHistory"}}
        entry = {
            "comment": history.get("comment"),
            "created_at": _now(),
            "entity_id": self._next_history_id,
            "entity_name": "order",
            "is_customer_notified": int(history.get("is_customer_notified") or 0),
            "is_visible_on_front": int(history.get("is_visible_on_front") or 0),
            "parent_id": order["entity_id"],
            "status": history.get("status") or order["status"],
        }
        self._next_history_id += 1
        order["status_histories"].insert(0, entry)
        return 200, True


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: a burst of the connector's 32 pooled connections
    # overflowed it under load, and a connection the kernel dropped from the accept queue can end
    # in a reset mid-request (an upstream ReadError the test then counted as a failed hold).
    # nginx in front of a real store listens with 511.
    request_queue_size = 511
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    fake: FakeMagento
    protocol_version = "HTTP/1.1"  # keep-alive, like a real store behind nginx
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle + delayed ACK add
    # ~40 ms to every response.
    disable_nagle_algorithm = True
    server_version = "nginx"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: tests assert on logs, and this server sees bearer tokens

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return None
        try:
            return json.loads(self.rfile.read(length))
        except ValueError:
            return None

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        body = self._body() if method != "GET" else None
        if url.path.startswith("/__fake__/"):
            return self._admin(method, url.path, body)
        m = REST_RE.match(url.path)
        if not m:
            return self._send(404, {"message": "Request does not match any route."})
        route, order_id = self._route(method, m["path"])
        if route is None:
            return self._send(404, {"message": "Request does not match any route."})
        fake = self.fake
        query = parse_qsl(url.query)
        with fake.lock:
            fake.recent.append(
                {"method": method, "path": url.path, "query": [list(kv) for kv in query]}
            )
            fake.counters[route] += 1
            fake.counters["total"] += 1
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            key = order_id or ""
            fake.order_in_flight[key] += 1
            if order_id is not None:
                fake.max_in_flight_per_order = max(
                    fake.max_in_flight_per_order, fake.order_in_flight[key]
                )
            fail, hang, delay = fake.fail_status, fake.hang_s, fake.delay_s
            if method != "GET":
                delay += fake.write_delay_s
        try:
            if delay:
                time.sleep(delay)
            if hang:
                fake._release.wait(min(hang, MAX_HANG_S))
            if not self._authorized():
                with fake.lock:
                    fake.counters["unauthorized"] += 1
                return self._send(
                    401,
                    {"message": UNAUTHORIZED_MSG, "parameters": {"resources": RESOURCES[route]}},
                )
            if fail:
                return self._send(fail, {"message": "Service Temporarily Unavailable"})
            status, payload = self._handle(route, order_id, query, body)
            self._send(status, payload)
        finally:
            with fake.lock:
                fake.in_flight -= 1
                fake.order_in_flight[key] -= 1
                if not fake.order_in_flight[key]:
                    del fake.order_in_flight[key]

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization") or ""
        scheme, _, token = auth.partition(" ")
        return scheme.lower() == "bearer" and token.strip() in self.fake.tokens

    @staticmethod
    def _route(method: str, path: str) -> tuple[str | None, str | None]:
        if path.rstrip("/") == "/orders":
            return ("order.search" if method == "GET" else None), None
        m = ORDER_RE.match(path)
        if not m:
            return None, None
        action = m["action"]
        table = {
            ("GET", None): "order.get",
            ("POST", "/hold"): "order.hold",
            ("POST", "/unhold"): "order.unhold",
            ("POST", "/comments"): "order.comment",
            ("GET", "/comments"): "comments.list",
        }
        return table.get((method, action)), m["id"]

    def _handle(
        self, route: str, order_id: str | None, query: list[tuple[str, str]], body: Any
    ) -> tuple[int, Any]:
        fake = self.fake
        with fake.lock:
            if route == "order.search":
                criteria = parse_search_criteria(query)
                if criteria is None:
                    return 400, {
                        "message": REQUIRED_MSG,
                        "parameters": {"fieldName": "searchCriteria"},
                    }
                return 200, copy.deepcopy(search_orders(list(fake.orders.values()), criteria))
            raw_id = order_id or ""
            if not ENTITY_ID_RE.match(raw_id):
                # e.g. an order number ("SO-10884") where Magento wants the entity id
                return 400, {"message": TYPE_MSG.format(value=raw_id)}
            order = fake._get(raw_id)
            if order is None:
                return 404, {"message": NOT_FOUND_MSG}
            if route == "order.get":
                return 200, copy.deepcopy(order)
            if route == "order.hold":
                return fake.hold(order)
            if route == "order.unhold":
                return fake.unhold(order)
            if route == "order.comment":
                return fake.add_comment(order, body)
            items = copy.deepcopy(order["status_histories"])
            return 200, {
                "items": items,
                "search_criteria": {"filter_groups": []},
                "total_count": len(items),
            }

    def _admin(self, method: str, path: str, body: Any) -> None:
        fake = self.fake
        if method == "GET" and path == "/__fake__/state":
            return self._send(200, fake.snapshot())
        if method == "GET" and path == "/__fake__/requests":
            return self._send(200, fake.requests())
        if method == "POST" and path == "/__fake__/reset":
            fake.reset()
            return self._send(200, fake.snapshot())
        if method == "POST" and path == "/__fake__/mode":
            body = body or {}
            fake.set_mode(
                fail_status=body.get("fail_status"),
                hang_s=body.get("hang_s"),
                delay_s=float(body.get("delay_s") or 0.0),
                write_delay_s=float(body.get("write_delay_s") or 0.0),
            )
            return self._send(200, fake.snapshot())
        if method == "POST" and path == "/__fake__/orders" and isinstance(body, dict):
            entity_id = int(body.get("entity_id") or max(fake.orders, default=0) + 1)
            increment_id = body.get("increment_id")
            if increment_id is not None and not (
                isinstance(increment_id, str) and INCREMENT_ID_RE.match(increment_id)
            ):
                return self._send(400, {"message": "increment_id must be 1-50 of [A-Za-z0-9_-]"})
            order = make_order(
                entity_id,
                state=body.get("state", "processing"),
                status=body.get("status"),
                email=body.get("customer_email"),
                increment_id=increment_id,
                grand_total=float(body.get("grand_total") or 129.0),
            )
            order["store_id"] = int(body.get("store_id") or order["store_id"])
            try:
                return self._send(200, fake.add_order(order))
            except ValueError as exc:
                return self._send(409, {"message": str(exc)})
        m = re.match(r"^/__fake__/orders/(\d+)$", path)
        if method == "GET" and m:
            with fake.lock:
                found = fake.orders.get(int(m[1]))
                return self._send(200 if found else 404, copy.deepcopy(found))
        self._send(404, {"message": "unknown fake control route"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake Magento 2 REST API for Fibric tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--token", action="append", help=f"accepted bearer token (default {DEFAULT_TOKEN})"
    )
    args = parser.parse_args(argv)
    fake = FakeMagento(host=args.host, port=args.port, tokens=set(args.token or [DEFAULT_TOKEN]))
    fake.start()
    print(f"fake magento ready at {fake.url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    fake.stop()


if __name__ == "__main__":
    main()
