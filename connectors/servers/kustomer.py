"""cn-kustomer: an MCP server for Kustomer's REST API (``python -m connectors.servers.kustomer``).

Talks to ``config.base_url`` (e.g. ``https://acme.api.kustomerapp.com``) with the API key as
``Authorization: Bearer <key>``. Tools:

- ``customer.read`` — GET ``/v1/customers/{id}``; with no id, a one-row customer listing.
- ``conversation.note`` — POST ``/v1/conversations/{id}/notes`` ``{"body": ...}``: an internal
  note customers never see. Dry run: GET ``/v1/conversations/{id}``. An earlier attempt with an
  unknown outcome is reconciled by looking for a note with the same body on the conversation.
- ``connector.check`` — GET ``/v1/customers?pageSize=1`` (401/403 -> auth_failed).

Called with no arguments (the connection test), reads do a cheap live read and dry runs check
auth and reachability. Minimal by design (two capabilities); it must never log or return the
API key. A 429 (Kustomer's org-wide rate limit) whose wait is short is waited out and sent once
more (a 429 applied nothing); a longer one is an ``upstream_error`` naming the wait. The wait is
``Retry-After`` when a gateway sends one, else the window's reset: Kustomer documents only
``x-ratelimit-limit`` / ``-remaining`` / ``-reset``, the reset a UTC epoch second
(developer.kustomer.com/docs/concepts/rate-limits; help.kustomer.com "API rate limits"). Its
error bodies are an ``errors`` array of ``{code, message, meta}`` or JSON:API objects
(developer.kustomer.com/docs/concepts/errors); both read by ``connectors/upstream.py``.
Tested against ``connectors/fakes/kustomer.py``, a stand-in written from Kustomer's API docs.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from connectors.errors import ConnectorError, ConnectorErrorCode
from connectors.server import ConnectorEnv, FibricServer, credential_secret, serve
from connectors.upstream import Upstream

LISTING_ID = "cn-kustomer"
# Kustomer ids are 24-hex object ids; anything path-unsafe is refused before the request.
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Notes are short hand-off texts; Kustomer rejects very large bodies anyway.
MAX_NOTE_CHARS = 10_000
# A 429 whose Retry-After is at most this long is waited out once, inside the call's deadline.
RETRY_AFTER_MAX_WAIT_S = 2.0
# Pages of a conversation's notes (newest first, 100 a page) a reconcile reads at most.
RECONCILE_PAGES = 5
CUSTOMER_FIELDS = (
    "name",
    "displayName",
    "emails",
    "phones",
    "externalId",
    "tags",
    "createdAt",
    "updatedAt",
)


def resource(doc: Any) -> dict[str, Any]:
    """Flatten a JSON:API ``{"data": {"id", "type", "attributes"}}`` document (pure)."""
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        return {}
    attrs = data.get("attributes") or {}
    return {"id": data.get("id"), "type": data.get("type"), **attrs}


def _check_id(name: str, value: str) -> None:
    if not ID_RE.match(value):
        raise ConnectorError(ConnectorErrorCode.INVALID_ARGS, f"{name} is malformed")


def build(env: ConnectorEnv) -> FibricServer:
    base_url = env.config.get("base_url")
    token = credential_secret(env.credentials)
    valid_url = isinstance(base_url, str) and base_url.startswith(("http://", "https://"))
    http = Upstream(
        str(base_url) if valid_url else "http://invalid.invalid",
        {"Authorization": f"Bearer {token}"} if token else {},
        livemode=env.livemode,
    )
    server = FibricServer(LISTING_ID, state_dir=env.state_dir)

    async def request(method: str, path: str, **kw: Any) -> Any:
        if not valid_url:
            raise ConnectorError(
                ConnectorErrorCode.INVALID_ARGS, "config.base_url must be an http(s) URL"
            )
        if not token:
            raise ConnectorError(ConnectorErrorCode.AUTH_FAILED, "no API key in the credentials")
        try:
            return await http.request(method, path, **kw)
        except ConnectorError as exc:
            wait = exc.retry_after_s
            if exc.status != 429 or wait is None or wait > RETRY_AFTER_MAX_WAIT_S:
                raise
        await asyncio.sleep(wait)
        return await http.request(method, path, **kw)

    @server.check
    async def connector_check() -> dict[str, Any]:
        """Validate the API key with a one-row customer listing."""
        await request("GET", "/v1/customers", params={"pageSize": 1})
        return {"ok": True, "listing": LISTING_ID}

    @server.tool("customer.read", side_effect=False, capability="customer.read")
    async def customer_read(customer_id: str | None = None) -> dict[str, Any]:
        """Read a customer by id. With no id, the first customer of a one-row listing (a cheap
        live read, what a connection test runs)."""
        if customer_id is None:
            listing = await request("GET", "/v1/customers", params={"pageSize": 1})
            first = ((listing or {}).get("data") or [None])[0]
            doc = resource({"data": first}) if first else {}
        else:
            _check_id("customer_id", customer_id)
            doc = resource(await request("GET", f"/v1/customers/{customer_id}"))
        if not doc:
            return {"customer": None}
        return {"customer": {k: doc.get(k) for k in ("id", *CUSTOMER_FIELDS) if k in doc}}

    async def reconcile_note(
        conversation_id: str | None = None, body: str | None = None, **_: Any
    ) -> dict[str, Any] | None:
        if conversation_id is None or body is None:
            return None  # the call itself will refuse these arguments
        _check_id("conversation_id", conversation_id)
        for page in range(1, RECONCILE_PAGES + 1):
            listing = await request(
                "GET",
                f"/v1/conversations/{conversation_id}/notes",
                params={"page": page, "pageSize": 100},
            )
            for item in (listing or {}).get("data") or []:
                if (item.get("attributes") or {}).get("body") == body:
                    return {"note_id": item.get("id"), "conversation_id": conversation_id}
            if not ((listing or {}).get("links") or {}).get("next"):
                break
        return None

    @server.tool(
        "conversation.note",
        side_effect=True,
        capability="conversation.note",
        reconcile=reconcile_note,
    )
    async def conversation_note(
        idempotency_key: str,
        conversation_id: str | None = None,
        body: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Add an internal note (never shown to the customer) to a conversation."""
        if dry_run and conversation_id is None:  # connection test: auth and reachability
            await request("GET", "/v1/customers", params={"pageSize": 1})
            return {"dry_run": True, "reachable": True}
        if conversation_id is None:
            raise ConnectorError(ConnectorErrorCode.INVALID_ARGS, "conversation_id is required")
        _check_id("conversation_id", conversation_id)
        if body is None or not body.strip() or len(body) > MAX_NOTE_CHARS:
            raise ConnectorError(
                ConnectorErrorCode.INVALID_ARGS, f"body must be 1..{MAX_NOTE_CHARS} characters"
            )
        if dry_run:
            conv = resource(await request("GET", f"/v1/conversations/{conversation_id}"))
            return {"dry_run": True, "conversation_id": conv.get("id") or conversation_id}
        note = resource(
            await request("POST", f"/v1/conversations/{conversation_id}/notes", json={"body": body})
        )
        return {"note_id": note.get("id"), "conversation_id": conversation_id}

    return server


def main() -> None:
    serve(build, LISTING_ID)


if __name__ == "__main__":
    main()
