"""The webhooks' lean HTTP/1.1 client (connectors/lean_http.py) against real sockets on
127.0.0.1: servers that answer with Content-Length, chunked or close-delimited bodies, that close
an idle keep-alive connection, that answer a redirect, that send garbage, that never answer; and
the egress policy (live mode never reaches loopback, no connection is opened)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from connectors.egress import EgressRefused
from connectors.lean_http import MAX_BODY_READ, LeanClient, SendError

pytestmark = pytest.mark.integration


class RawServer:
    """An asyncio TCP server whose replies are scripted bytes; records each request's head."""

    def __init__(self, reply, close_after: bool = False) -> None:
        self.reply = reply  # bytes, or callable(n) -> bytes | None (None: never answer)
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.connections = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook/1?x=y"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                out = self.reply(len(self.requests)) if callable(self.reply) else self.reply
                if out is None:
                    await asyncio.sleep(3600)
                writer.write(out)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        self.server.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_post_sends_one_well_formed_request_and_reuses_the_connection():
    srv = RawServer(OK)
    url = await srv.start()
    c = LeanClient(url, livemode=False)
    for _ in range(3):
        assert await c.post([("Fibric-Delivery-Id", "whd_1")], b'{"a":1}') == (200, b"ok")
    assert srv.connections == 1  # keep-alive
    head = srv.requests[0]
    assert head.startswith(b"POST /hook/1?x=y HTTP/1.1\r\n")
    assert f"Host: {url.split('/')[2]}".encode() in head
    assert b"Fibric-Delivery-Id: whd_1\r\n" in head and b"Content-Length: 7\r\n" in head
    assert head.endswith(b'\r\n\r\n{"a":1}')
    await c.aclose()
    await srv.stop()


async def test_chunked_and_close_delimited_bodies_and_the_excerpt_bound():
    chunked = (
        b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnope\r\n3\r\n!!!\r\n0\r\n\r\n"
    )
    srv = RawServer(chunked)
    url = await srv.start()
    c = LeanClient(url, livemode=False, excerpt_bytes=5)
    assert await c.post([], b"{}") == (500, b"nope!")  # cut at the excerpt bound
    await srv.stop()

    srv2 = RawServer(b"HTTP/1.0 202 Accepted\r\n\r\nthanks", close_after=True)
    c2 = LeanClient(await srv2.start(), livemode=False)
    assert await c2.post([], b"{}") == (202, b"thanks")  # delimited by the close
    assert await c2.post([], b"{}") == (202, b"thanks")  # a new connection
    assert srv2.connections == 2
    await srv2.stop()

    big = b"x" * (MAX_BODY_READ * 4)
    srv3 = RawServer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
    c3 = LeanClient(await srv3.start(), livemode=False)
    code, excerpt = await asyncio.wait_for(c3.post([], b"{}"), 10)
    assert code == 200 and excerpt == b"x" * 512  # the rest is never read
    await srv3.stop()


async def test_an_idle_connection_closed_by_the_server_is_replaced_once():
    # the server answers keep-alive, then closes: the next post finds a dead connection
    srv = RawServer(OK, close_after=True)
    c = LeanClient(await srv.start(), livemode=False)
    assert await c.post([], b"{}") == (200, b"ok")
    await asyncio.sleep(0.1)
    assert await c.post([], b"{}") == (200, b"ok")
    assert srv.connections == 2 and len(srv.requests) == 2
    await srv.stop()


async def test_a_redirect_is_returned_not_followed():
    srv = RawServer(
        b"HTTP/1.1 302 Found\r\nLocation: http://10.0.0.1/\r\nContent-Length: 0\r\n\r\n"
    )
    c = LeanClient(await srv.start(), livemode=False)
    assert await c.post([], b"{}") == (302, b"")
    assert len(srv.requests) == 1
    await srv.stop()


async def test_garbage_unreachable_and_silent_servers():
    srv = RawServer(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    c = LeanClient(await srv.start(), livemode=False)
    with pytest.raises(SendError):
        await c.post([], b"{}")
    await srv.stop()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    with pytest.raises(OSError):
        await LeanClient(f"http://127.0.0.1:{port}/", livemode=False).post([], b"{}")

    silent = RawServer(lambda n: None)
    c = LeanClient(await silent.start(), livemode=False)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await c.post([], b"{}")
    assert not c._idle  # the timed-out connection is not reused
    await silent.stop()


async def test_the_egress_policy_applies_before_any_connection():
    srv = RawServer(OK)
    url = await srv.start()
    c = LeanClient(url, livemode=True)  # live mode: loopback refused
    with pytest.raises(EgressRefused) as exc:
        await c.post([], b"{}")
    assert "loopback" in exc.value.reason
    assert srv.connections == 0
    for bad in ("ftp://example.com/", "http://user:pw@127.0.0.1/", "http://0x7f.1/"):
        with pytest.raises(EgressRefused):
            LeanClient(bad, livemode=False)
    with pytest.raises(SendError):
        await LeanClient(url, livemode=False).post([("X", "a\r\nInjected: 1")], b"{}")
    assert srv.requests == []
    await srv.stop()
