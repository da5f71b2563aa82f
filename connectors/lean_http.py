"""A lean HTTP/1.1 POST client under the egress policy, for webhook deliveries (decisions §40).

httpx costs ~1–3 ms of CPU per request here (httpcore's pool bookkeeping, anyio cancel scopes,
socket introspection per read; decisions §34's profile); a webhook attempt needs none of it: one
origin, one method, keep-alive, a bounded excerpt of the answer. This client writes the request
in one ``write`` and parses the response with httptools (llhttp, the parser uvicorn uses).

The egress rules are those of ``connectors.egress`` (decisions §22), applied the same way as its
``PinnedTransport``: the URL is parsed and refused up front, the host's addresses are checked
(off the loop, cached ``RESOLVED_TTL_S``) and the connection goes to the checked address, TLS
verifying and naming the host. Never: follow a redirect (a 3xx is returned as it is), use a proxy,
or send to another origin (a client is bound to one URL).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import httptools
import httpx

from connectors.egress import (
    RESOLVE_TIMEOUT_S,
    RESOLVED_TTL_S,
    TEST_MODE_ALLOWS_LOOPBACK,
    CheckedTarget,
    EgressRefused,
    Resolver,
    _ip_literal,
    check_parsed,
    loopback_allowed,
    parse_target,
)

# Past this many body bytes the rest of an answer is not read: the connection is closed and the
# status and excerpt kept (a receiver cannot make an attempt read a gigabyte).
MAX_BODY_READ = 64 * 1024
_SSL: ssl.SSLContext | None = None


class SendError(Exception):
    """The request could not be completed: connection refused, reset or closed early, or a
    response that is not HTTP. ``str()`` is a short kind, safe to record."""


def _ssl_context() -> ssl.SSLContext:
    global _SSL
    if _SSL is None:
        import certifi  # the CA bundle httpx uses: same trust as the other egress clients

        _SSL = ssl.create_default_context(cafile=certifi.where())
    return _SSL


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, excerpt_bytes: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.limit = excerpt_bytes
        self.parser: Any = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.status = 0
        self.excerpt = bytearray()
        self.read = 0
        self.got_bytes = False
        self.reusable = False

    # protocol callbacks
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.status and not self.reusable:
            self._finish()  # an answer delimited by the connection's end
        else:
            self._fail(SendError("connection closed before a response"))

    def data_received(self, data: bytes) -> None:
        if self.parser is None:
            return  # nothing asked: a stray byte makes the connection unusable
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(SendError("upgrade refused"))
        except httptools.HttpParserError:
            self._fail(SendError("malformed HTTP response"))

    # parser callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        room = self.limit - len(self.excerpt)
        if room > 0:
            self.excerpt += body[:room]
        self.read += len(body)
        if self.read > MAX_BODY_READ:
            self._finish(close=True)

    def on_message_complete(self) -> None:
        self.reusable = bool(self.parser.should_keep_alive())
        self._finish(close=not self.reusable)

    # request
    def _finish(self, close: bool = False) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result((self.status, bytes(self.excerpt)))
        if close:
            self.reusable = False
            self.close()

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(exc)
        self.close()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        self.parser = httptools.HttpResponseParser(self)
        self.status, self.read, self.got_bytes, self.reusable = 0, 0, False, False
        self.excerpt = bytearray()
        self.transport.write(data)
        try:
            return await self.waiter
        finally:
            self.waiter = None
            self.parser = None if not self.reusable else self.parser


class LeanClient:
    """POSTs to one URL (a webhook endpoint's) over at most ``max_connections`` keep-alive
    connections. Raises ``EgressRefused`` (before connecting), ``SendError`` or ``OSError``;
    the caller bounds the whole attempt in time."""

    def __init__(
        self,
        url: str,
        *,
        livemode: bool,
        max_connections: int = 4,
        excerpt_bytes: int = 512,
        resolve: Resolver | None = None,
    ) -> None:
        self.target = parse_target(url)
        self.loopback_ok = loopback_allowed(
            livemode=livemode, allow_loopback=TEST_MODE_ALLOWS_LOOPBACK
        )
        self.resolve = resolve
        self.max_connections = max_connections
        self.excerpt_bytes = excerpt_bytes
        parsed = httpx.URL(url)  # the same parser as the policy's: one reading of the URL
        self.path = parsed.raw_path or b"/"
        host = self.target.host
        shown = f"[{host}]" if ":" in host else host
        default = 443 if self.target.scheme == "https" else 80
        if self.target.port != default:
            shown += f":{self.target.port}"
        self.host_header = shown.encode("ascii")
        self._idle: list[_Conn] = []
        self._checked: CheckedTarget | None = None
        self._checked_until = 0.0

    async def _addresses(self) -> CheckedTarget:
        now = time.monotonic()
        if self._checked is None or now >= self._checked_until:
            t = self.target
            if _ip_literal(t.host) is not None:
                self._checked = check_parsed(t, loopback_ok=self.loopback_ok)
            else:
                try:
                    self._checked = await asyncio.wait_for(
                        asyncio.to_thread(
                            check_parsed, t, loopback_ok=self.loopback_ok, resolve=self.resolve
                        ),
                        RESOLVE_TIMEOUT_S,
                    )
                except TimeoutError:
                    raise EgressRefused("does not resolve in time") from None
            self._checked_until = now + RESOLVED_TTL_S
        return self._checked

    async def _connect(self) -> _Conn:
        checked = await self._addresses()
        loop = asyncio.get_running_loop()
        kw: dict[str, Any] = {}
        if self.target.scheme == "https":
            kw = {"ssl": _ssl_context(), "server_hostname": self.target.host}
        _, conn = await loop.create_connection(
            lambda: _Conn(self.excerpt_bytes), str(checked.addresses[0]), self.target.port, **kw
        )
        return conn

    def _head(self, headers: list[tuple[str, str]], length: int) -> bytes:
        lines = [b"POST " + self.path + b" HTTP/1.1", b"Host: " + self.host_header]
        for k, v in headers:
            if "\r" in k or "\n" in k or "\r" in v or "\n" in v:
                raise SendError("invalid header")
            lines.append(f"{k}: {v}".encode("latin-1"))
        lines.append(b"Content-Length: " + str(length).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def post(self, headers: list[tuple[str, str]], body: bytes) -> tuple[int, bytes]:
        """(status code, the first ``excerpt_bytes`` of the body)."""
        data = self._head(headers, len(body)) + body
        while self._idle:
            conn = self._idle.pop()
            if conn.closed:
                continue
            try:
                return await self._on(conn, data)
            except SendError:
                if conn.got_bytes:
                    raise
                # the server closed an idle connection as we reused it: once more, on a new one
                break
        return await self._on(await self._connect(), data)

    async def _on(self, conn: _Conn, data: bytes) -> tuple[int, bytes]:
        try:
            out = await conn.request(data)
        except BaseException:
            conn.close()
            raise
        if conn.reusable and not conn.closed and len(self._idle) < self.max_connections:
            self._idle.append(conn)
        else:
            conn.close()
        return out

    async def aclose(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
