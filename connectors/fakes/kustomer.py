"""A fake Kustomer org: a real HTTP server speaking the part of Kustomer's REST API that
cn-kustomer uses, written from Kustomer's public API documentation (developer.kustomer.com:
core resources — customers, conversations, notes —, "Errors" and "Rate limiting").

Resources are JSON:API documents: ``{"data": {"type", "id", "attributes", "relationships",
"links"}}``; lists are ``{"data": [...], "meta": {"pageSize", "page"}, "links": {"self",
"first", "prev", "next"}}`` with ``page`` (from 1) and ``pageSize`` (1..100). Ids are 24-hex
object ids.

- ``GET  /v1/customers`` — the customers, newest first, paged.
- ``GET  /v1/customers/{id}`` — a customer (``name``, ``displayName``, ``emails``, ``phones``,
  ``externalId``, ``tags``, ``createdAt``, ``updatedAt``, ...), or 404.
- ``GET  /v1/conversations/{id}`` — a conversation (``name``, ``status``, ``channels``,
  ``noteCount``, ... and its ``customer`` relationship), or 404.
- ``GET  /v1/conversations/{id}/notes`` — the conversation's notes, newest first, paged.
- ``POST /v1/conversations/{id}/notes`` ``{"body", "userMentions"?}`` — an internal note
  (``body`` 1 to 10,240 characters; 201 with the note). ``POST /v1/notes`` with a
  ``conversation`` attribute does the same.

Errors (developer.kustomer.com/docs/concepts/errors): an ``errors`` array of ``{"code",
"message", "meta"}``, or the JSON:API form (``status``, ``code``, ``title``, ``detail``,
``source.pointer``, ``meta``) for an invalid attribute; 400 ``bad_request`` /
``invalid_attribute``, 401 ``unauthorized`` (no or a wrong ``Authorization: Bearer`` key), 404
``not_found``, 413 for a body over 100 kB, 429 ``rate_limit_exceeded``. Rate limiting
(developer.kustomer.com/docs/concepts/rate-limits, help.kustomer.com "API rate limits"): the
org's requests per minute (300: the legacy Professional plan) across every key, reported on
every answer in ``x-ratelimit-limit`` / ``x-ratelimit-remaining`` / ``x-ratelimit-reset`` (the
UTC epoch second the window resets); a 429 lasts until then (no ``Retry-After`` unless a test
sets ``retry_after_s``); note creation is also limited to 120 notes per minute per customer.

Test controls: ``counters`` (``count("note.create")``), ``fail_status`` (every API request
answers it, with ``html=True`` as an HTML error page such as a load balancer's), ``hang_s``
(hold every API request), ``apply_then_hang_s`` (a note is stored, then the answer is held: a
write whose outcome the caller cannot know), ``rate_limit`` / ``retry_after_s``. Over HTTP:
``GET /__fake__/state``, ``POST /__fake__/mode``, ``POST /__fake__/reset``,
``POST /__fake__/customers`` / ``POST /__fake__/conversations`` (seed objects). Run by hand:
``python -m connectors.fakes.kustomer --port N``.

Never use this outside tests and demos: it keeps everything in memory and trusts its input.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import secrets
import signal
import threading
import time
from collections import Counter, deque
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

DEFAULT_TOKEN = "kus_demo_7d1f0c2a9b3e"
# The org's API requests per minute (Kustomer's Professional plan); the window is 60 s.
RATE_LIMIT_PER_MINUTE = 300
RATE_WINDOW_S = 60.0
NOTES_PER_MINUTE_PER_CUSTOMER = 120
NOTE_MAX_CHARS = 10_240
MAX_BODY_BYTES = 100 * 1024  # "100kb for most endpoints"
MAX_PAGE_SIZE = 100
MAX_HANG_S = 120.0
HANG_POLL_S = 0.05
RECENT_REQUESTS = 200

OBJECT_ID_RE = re.compile(r"^[0-9a-f]{24}$")
CUSTOMER_RE = re.compile(r"^/v1/customers(?:/(?P<id>[^/]+))?$")
CONVERSATION_RE = re.compile(r"^/v1/conversations/(?P<id>[^/]+)(?P<notes>/notes)?$")

# Seeded objects: fixed ids so tests and the demo can name them.
ORG_ID = "5f0c9a2b1d3e4f5a6b7c8d9e"
SEED_CUSTOMERS = {
    "5f1a2b3c4d5e6f7a8b9c0d1e": ("Ada Lovelace", "ada@example.com", "+14155550101", "SO-10884"),
    "5f1a2b3c4d5e6f7a8b9c0d1f": ("Grace Hopper", "grace@example.com", "+14155550102", "SO-10885"),
}
SEED_CONVERSATIONS = {
    "6a1b2c3d4e5f6a7b8c9d0e1f": ("5f1a2b3c4d5e6f7a8b9c0d1e", "Where is my order SO-10884?"),
    "6a1b2c3d4e5f6a7b8c9d0e20": ("5f1a2b3c4d5e6f7a8b9c0d1f", "Change delivery address"),
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def object_id() -> str:
    return secrets.token_hex(12)


def error(status: int, code: str, title: str, detail: str, pointer: str | None = None) -> dict:
    """One error as Kustomer documents them (developer.kustomer.com/docs/concepts/errors, "Error
    shape"): "Most errors return an ``errors`` array. Each entry has a machine-readable
    ``code``, a human-readable ``message``, and optional ``meta``"; "some endpoints return the
    JSON:API error object instead, with ``status``, ``code``, ``title``, ``detail``, ``source``
    (pointing at the bad field) and ``meta``" — this fake answers that form for an invalid
    attribute (``pointer``), the common one otherwise."""
    if pointer is None:
        return {"errors": [{"code": code, "message": detail, "meta": {}}]}
    err = {
        "status": str(status),  # JSON:API: a string
        "code": code,
        "title": title,
        "detail": detail,
        "source": {"pointer": pointer},
        "meta": {},
    }
    return {"errors": [err]}


def make_customer(cid: str, name: str, email: str, phone: str, external_id: str) -> dict:
    ts = _now()
    return {
        "type": "customer",
        "id": cid,
        "attributes": {
            "name": name,
            "displayName": name,
            "emails": [{"type": "home", "email": email}],
            "phones": [{"type": "mobile", "phone": phone}],
            "externalId": external_id,
            "tags": [],
            "conversationCounts": {"all": 0, "open": 0},
            "createdAt": ts,
            "updatedAt": ts,
            "modifiedAt": ts,
        },
        "relationships": {"org": {"data": {"type": "org", "id": ORG_ID}}},
        "links": {"self": f"/v1/customers/{cid}"},
    }


def make_conversation(cid: str, customer_id: str, name: str) -> dict:
    ts = _now()
    return {
        "type": "conversation",
        "id": cid,
        "attributes": {
            "name": name,
            "channels": ["email"],
            "status": "open",
            "priority": 3,
            "messageCount": 1,
            "noteCount": 0,
            "tags": [],
            "createdAt": ts,
            "updatedAt": ts,
            "modifiedAt": ts,
        },
        "relationships": {
            "customer": {
                "data": {"type": "customer", "id": customer_id},
                "links": {"self": f"/v1/customers/{customer_id}"},
            },
            "org": {"data": {"type": "org", "id": ORG_ID}},
        },
        "links": {"self": f"/v1/conversations/{cid}"},
    }


def make_note(nid: str, conversation_id: str, customer_id: str, body: str, mentions: list) -> dict:
    ts = _now()
    return {
        "type": "note",
        "id": nid,
        "attributes": {
            "body": body,
            "userMentions": mentions,
            "createdAt": ts,
            "updatedAt": ts,
            "modifiedAt": ts,
        },
        "relationships": {
            "conversation": {
                "data": {"type": "conversation", "id": conversation_id},
                "links": {"self": f"/v1/conversations/{conversation_id}"},
            },
            "customer": {"data": {"type": "customer", "id": customer_id}},
            "org": {"data": {"type": "org", "id": ORG_ID}},
        },
        "links": {"self": f"/v1/notes/{nid}"},
    }


def page_of(items: list[dict], path: str, query: dict[str, list[str]]) -> tuple[int, dict]:
    """A JSON:API list page, or a 400 for a bad ``page``/``pageSize``."""
    try:
        page = int((query.get("page") or ["1"])[0])
        size = int((query.get("pageSize") or ["100"])[0])
    except ValueError:
        return 400, error(400, "bad_request", "Bad Request", "page and pageSize must be integers")
    if page < 1 or not 1 <= size <= MAX_PAGE_SIZE:
        return 400, error(
            400, "bad_request", "Bad Request", f"pageSize must be 1..{MAX_PAGE_SIZE}, page >= 1"
        )
    chunk = items[(page - 1) * size : page * size]
    more = len(items) > page * size

    def link(p: int) -> str:
        return f"{path}?page={p}&pageSize={size}"

    links = {
        "self": link(page),
        "first": link(1),
        "prev": link(page - 1) if page > 1 else None,
        "next": link(page + 1) if more else None,
    }
    return 200, {"data": chunk, "meta": {"pageSize": size, "page": page}, "links": links}


class FakeKustomer:
    """The org (customers, conversations, notes, keys, rate limits, modes) and its server."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens: set[str] | None = None,
        rate_limit: int = RATE_LIMIT_PER_MINUTE,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.tokens = set(tokens or {DEFAULT_TOKEN})
        self.default_rate_limit = rate_limit
        self.lock = threading.Lock()
        self._release = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self.reset()

    # ---- lifecycle -----------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeKustomer:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = _Server((self.host, self.requested_port), handler)
        threading.Thread(
            target=self._httpd.serve_forever, name="fake-kustomer", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # ---- state and test controls ---------------------------------------------------------
    def reset(self) -> None:
        with self.lock:
            self.customers: dict[str, dict] = {
                cid: make_customer(cid, *v) for cid, v in SEED_CUSTOMERS.items()
            }
            self.conversations: dict[str, dict] = {
                cid: make_conversation(cid, cust, name)
                for cid, (cust, name) in SEED_CONVERSATIONS.items()
            }
            self.notes: dict[str, dict] = {}
            self.counters: Counter[str] = Counter()
            self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_REQUESTS)
            self.fail_status: int | None = None
            self.html = False
            self.hang_s: float | None = None
            self.apply_then_hang_s: float | None = None
            self.rate_limit = self.default_rate_limit
            self.retry_after_s: int | None = None  # None: until the window resets
            self._window_start = time.monotonic()
            self._window_count = 0
            self._note_times: dict[str, deque[float]] = {}
        self._release.set()
        self._release = threading.Event()

    def set_mode(
        self,
        *,
        fail_status: int | None = None,
        html: bool = False,
        hang_s: float | None = None,
        apply_then_hang_s: float | None = None,
        rate_limit: int | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        with self.lock:
            self.fail_status, self.html = fail_status, html
            self.hang_s, self.apply_then_hang_s = hang_s, apply_then_hang_s
            self.rate_limit = self.default_rate_limit if rate_limit is None else rate_limit
            self.retry_after_s = retry_after_s
            self._window_start, self._window_count = time.monotonic(), 0
        if hang_s is None and apply_then_hang_s is None:
            self._release.set()
            self._release = threading.Event()

    def count(self, name: str) -> int:
        with self.lock:
            return self.counters[name]

    def requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return copy.deepcopy(list(self.recent))

    def add_customer(self, name: str, email: str, external_id: str | None = None) -> dict:
        c = make_customer(object_id(), name, email, "+14155550199", external_id or "")
        with self.lock:
            self.customers[c["id"]] = c
        return copy.deepcopy(c)

    def add_conversation(self, customer_id: str, name: str) -> dict:
        c = make_conversation(object_id(), customer_id, name)
        with self.lock:
            self.conversations[c["id"]] = c
        return copy.deepcopy(c)

    def notes_of(self, conversation_id: str) -> list[dict]:
        """The conversation's notes, oldest first (what an agent sees in the timeline)."""
        with self.lock:
            return [
                copy.deepcopy(n)
                for n in self.notes.values()
                if n["relationships"]["conversation"]["data"]["id"] == conversation_id
            ]

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "customers": len(self.customers),
                "conversations": len(self.conversations),
                "notes": copy.deepcopy(list(self.notes.values())),
                "counters": dict(self.counters),
            }

    # ---- the API (called with the lock held) ---------------------------------------------
    def rate(self) -> tuple[bool, dict[str, str]]:
        """Count one request against the org's window: (allowed, the rate-limit headers)."""
        now = time.monotonic()
        if now - self._window_start >= RATE_WINDOW_S:
            self._window_start, self._window_count = now, 0
        left = max(1, int(RATE_WINDOW_S - (now - self._window_start) + 0.999))
        allowed = self._window_count < self.rate_limit
        if allowed:
            self._window_count += 1
        # Header names: help.kustomer.com "API rate limits" ("your current rate limit
        # (x-ratelimit-limit) and remaining calls (x-ratelimit-remaining)") and
        # developer.kustomer.com/docs/concepts/rate-limits (the budget "refills at the reset time
        # shown in x-ratelimit-reset"): the reset is a time, UTC epoch seconds (as the
        # singer-io/tap-kustomer client, citing Kustomer's rate-limiting page, reads it), not a
        # number of seconds. Kustomer documents no Retry-After; one is sent only when a test
        # asks (``retry_after_s``: a gateway in front of the API may add it).
        headers = {
            "x-ratelimit-limit": str(self.rate_limit),
            "x-ratelimit-remaining": str(max(0, self.rate_limit - self._window_count)),
            "x-ratelimit-reset": str(int(time.time()) + left),
        }
        if not allowed and self.retry_after_s is not None:
            headers["Retry-After"] = str(self.retry_after_s)
        return allowed, headers

    def create_note(self, conversation_id: str, body: Any) -> tuple[int, dict]:
        conv = self.conversations.get(conversation_id)
        if conv is None:
            return 404, error(404, "not_found", "Not Found", "conversation not found")
        if not isinstance(body, dict):
            return 400, error(400, "bad_request", "Bad Request", "Invalid request body.")
        text = body.get("body")
        if not isinstance(text, str) or not 1 <= len(text) <= NOTE_MAX_CHARS:
            return 400, error(
                400,
                "invalid_attribute",
                "Invalid Attribute",
                f"body must be a string of 1 to {NOTE_MAX_CHARS} characters",
                "/data/attributes/body",
            )
        mentions = body.get("userMentions") or []
        if not isinstance(mentions, list) or len(mentions) > 20:
            return 400, error(
                400,
                "invalid_attribute",
                "Invalid Attribute",
                "userMentions takes at most 20 entries",
                "/data/attributes/userMentions",
            )
        customer_id = conv["relationships"]["customer"]["data"]["id"]
        now = time.monotonic()
        times = self._note_times.setdefault(customer_id, deque())
        while times and now - times[0] >= RATE_WINDOW_S:
            times.popleft()
        if len(times) >= NOTES_PER_MINUTE_PER_CUSTOMER:
            return 429, error(
                429,
                "rate_limit_exceeded",
                "Too Many Requests",
                "Note rate limit exceeded for this customer.",
            )
        times.append(now)
        note = make_note(object_id(), conversation_id, customer_id, text, mentions)
        self.notes[note["id"]] = note
        conv["attributes"]["noteCount"] += 1
        conv["attributes"]["updatedAt"] = conv["attributes"]["modifiedAt"] = _now()
        self.counters["note.create"] += 1
        return 201, {"data": copy.deepcopy(note)}


class _Server(ThreadingHTTPServer):
    request_queue_size = 511  # as connectors/fakes/magento.py: bursts must not be reset
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKustomer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "Kustomer"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # this server sees API keys

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        if isinstance(body, bytes):
            data, ctype = body, "text/html"
        else:
            data, ctype = json.dumps(body).encode(), "application/json; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _read_body(self) -> tuple[bool, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if len(raw) > MAX_BODY_BYTES:
            return False, None
        try:
            return True, json.loads(raw) if raw else None
        except ValueError:
            return True, ValueError

    def _hang(self, seconds: float, release: threading.Event) -> None:
        release.wait(min(seconds, MAX_HANG_S))

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        ok_size, body = self._read_body() if method == "POST" else (True, None)
        if url.path.startswith("/__fake__/"):
            return self._admin(method, url.path, body)
        fake = self.fake
        with fake.lock:
            fake.recent.append({"method": method, "path": url.path, "query": url.query})
            fake.counters["total"] += 1
            allowed, rl = fake.rate()
            fail, html, hang = fake.fail_status, fake.html, fake.hang_s
            apply_then_hang, release = fake.apply_then_hang_s, fake._release
        if not self._authorized():
            return self._send(
                401,
                error(401, "unauthorized", "Unauthorized", "Invalid or missing API token."),
                rl,
            )
        if not allowed:
            with fake.lock:
                fake.counters["rate_limited"] += 1
            return self._send(
                429,
                error(429, "rate_limit_exceeded", "Too Many Requests", "Rate limit exceeded."),
                rl,
            )
        if hang:
            self._hang(hang, release)
        if fail is not None:
            if html:
                page = (
                    f"<html><head><title>{fail} Service Temporarily Unavailable</title></head>"
                    f"<body><h1>{fail}</h1></body></html>"
                ).encode()
                return self._send(fail, page, rl)
            return self._send(fail, error(fail, "server_error", "Server Error", "Try again."), rl)
        if not ok_size:
            return self._send(
                413, error(413, "payload_too_large", "Request Entity Too Large", "Over 100kb."), rl
            )
        if body is ValueError:
            return self._send(400, error(400, "bad_request", "Bad Request", "Invalid JSON."), rl)
        status, out = self._route(method, url.path, parse_qs(url.query), body)
        if status == 201 and apply_then_hang:
            self._hang(apply_then_hang, release)  # stored; the caller hears nothing in time
        self._send(status, out, rl)

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization") or ""
        scheme, _, token = auth.partition(" ")
        return scheme.lower() == "bearer" and token in self.fake.tokens

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        fake = self.fake
        nf = error(404, "not_found", "Not Found", "Resource not found.")
        with fake.lock:
            if m := CUSTOMER_RE.match(path):
                if method != "GET":
                    return 404, nf
                if m["id"] is None:
                    fake.counters["customer.list"] += 1
                    items = sorted(
                        fake.customers.values(),
                        key=lambda c: c["attributes"]["createdAt"],
                        reverse=True,
                    )
                    return page_of(copy.deepcopy(items), "/v1/customers", query)
                fake.counters["customer.get"] += 1
                found = fake.customers.get(m["id"]) if OBJECT_ID_RE.match(m["id"]) else None
                return (200, {"data": copy.deepcopy(found)}) if found else (404, nf)
            if m := CONVERSATION_RE.match(path):
                cid = m["id"]
                if not m["notes"]:
                    if method != "GET":
                        return 404, nf
                    fake.counters["conversation.get"] += 1
                    found = fake.conversations.get(cid)
                    return (200, {"data": copy.deepcopy(found)}) if found else (404, nf)
                if cid not in fake.conversations:
                    return 404, nf
                if method == "POST":
                    return fake.create_note(cid, body)
                fake.counters["note.list"] += 1
                items = [
                    n
                    for n in fake.notes.values()
                    if n["relationships"]["conversation"]["data"]["id"] == cid
                ]
                items.reverse()  # newest first
                return page_of(copy.deepcopy(items), f"/v1/conversations/{cid}/notes", query)
            if path == "/v1/notes" and method == "POST":
                conv = body.get("conversation") if isinstance(body, dict) else None
                if not isinstance(conv, str):
                    return 400, error(
                        400,
                        "invalid_attribute",
                        "Invalid Attribute",
                        "conversation is required",
                        "/data/attributes/conversation",
                    )
                return fake.create_note(conv, body)
        return 404, nf

    def _admin(self, method: str, path: str, body: Any) -> None:
        fake = self.fake
        body = body if isinstance(body, dict) else {}
        if method == "GET" and path == "/__fake__/state":
            return self._send(200, fake.snapshot())
        if method == "POST" and path == "/__fake__/reset":
            fake.reset()
            return self._send(200, {"ok": True})
        if method == "POST" and path == "/__fake__/mode":
            fake.set_mode(**{k: body[k] for k in body if k in _MODE_KEYS})
            return self._send(200, {"ok": True})
        if method == "POST" and path == "/__fake__/customers":
            c = fake.add_customer(
                str(body.get("name", "Customer")),
                str(body.get("email", "c@example.com")),
                body.get("externalId"),
            )
            return self._send(201, {"data": c})
        if method == "POST" and path == "/__fake__/conversations":
            cust = str(body.get("customer", ""))
            if cust not in fake.customers:
                return self._send(404, error(404, "not_found", "Not Found", "no such customer"))
            return self._send(201, {"data": fake.add_conversation(cust, str(body.get("name")))})
        self._send(404, {"error": "unknown fake control route"})


_MODE_KEYS = {"fail_status", "html", "hang_s", "apply_then_hang_s", "rate_limit", "retry_after_s"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake Kustomer REST API for Fibric.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--token", action="append", help=f"accepted API key (default {DEFAULT_TOKEN})"
    )
    args = parser.parse_args(argv)
    fake = FakeKustomer(host=args.host, port=args.port, tokens=set(args.token or [DEFAULT_TOKEN]))
    fake.start()
    print(f"fake kustomer ready at {fake.url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    fake.stop()


if __name__ == "__main__":
    main()
