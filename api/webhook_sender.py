"""The webhook sending process (decisions §40): HTTP attempts off the api's core, at a lower
CPU priority than the loop.

The api role keeps everything that makes a delivery safe — the stored deliveries, lanes and
order, retries, the attempt record (api/deliveries.py); this child only performs attempts. It
is started by the api's dispatcher (``SenderProcess``), lowers its own priority (``nice``) and
reads one JSON request per line on stdin, answering one JSON result per line on stdout:

    → {"i": 7, "u": url, "l": livemode, "n": connections, "h": [[name, value], ...],
       "b": body, "t": timeout_s}
    ← {"i": 7, "c": status code | null, "e": error | null, "x": excerpt, "ms": latency}

Under a busy loop the kernel gives the child what the loop leaves (deliveries queue, as designed,
in the api and in ClickHouse); on an idle machine it sends at full speed. It exits when its stdin
closes (the api stopped or was killed), so it never outlives the api; a child that dies is
restarted by the api and its in-flight attempts sent again under the same delivery ids.

Never logs a header or a body.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import OrderedDict
from typing import Any

import orjson

from connectors.egress import EgressRefused
from connectors.lean_http import LeanClient, SendError

# Clients (one per endpoint URL) kept open; the least recently used beyond this is closed.
MAX_CLIENTS = 1024
# Excerpt of the receiver's answer kept per attempt (schemas.webhook.RESPONSE_EXCERPT_BYTES).
EXCERPT_BYTES = 512


def error_text(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, EgressRefused):
        return f"refused by the egress policy: the URL {exc.reason}"
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout_s:g}s"
    if isinstance(exc, SendError):
        return f"SendError: {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "ConnectError: connection refused"
    if isinstance(exc, OSError):
        return f"ConnectError: {type(exc).__name__}"
    return type(exc).__name__


class Clients:
    """One ``LeanClient`` per (url, livemode), least recently used closed past the bound."""

    def __init__(self, limit: int = MAX_CLIENTS) -> None:
        self.limit = limit
        self.by_url: OrderedDict[tuple[str, bool], LeanClient] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, url: str, livemode: bool, connections: int) -> LeanClient:
        key = (url, livemode)
        c = self.by_url.get(key)
        if c is None:
            c = self.by_url[key] = LeanClient(
                url, livemode=livemode, max_connections=connections, excerpt_bytes=EXCERPT_BYTES
            )
            while len(self.by_url) > self.limit:
                _, old = self.by_url.popitem(last=False)
                t = asyncio.get_running_loop().create_task(old.aclose())
                self._closing.add(t)
                t.add_done_callback(self._closing.discard)
        else:
            self.by_url.move_to_end(key)
        return c

    async def aclose(self) -> None:
        for c in self.by_url.values():
            await c.aclose()
        self.by_url.clear()


async def attempt(
    clients: Clients,
    url: str,
    livemode: bool,
    connections: int,
    headers: list[tuple[str, str]],
    body: bytes,
    timeout_s: float,
) -> tuple[int | None, str | None, str, float]:
    """One bounded attempt: (status code, error, response excerpt, latency in ms)."""
    try:
        client = clients.get(url, livemode, connections)
    except EgressRefused as exc:
        return None, error_text(exc, timeout_s), "", 0.0
    return await attempt_inline(client, headers, body, timeout_s)


async def attempt_inline(
    client: LeanClient, headers: list[tuple[str, str]], body: bytes, timeout_s: float
) -> tuple[int | None, str | None, str, float]:
    """One attempt on ``client``, bounded as a whole by ``timeout_s``."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            code, excerpt = await client.post(headers, body)
        text = excerpt.decode("utf-8", "replace")
        error = "redirect not followed" if 300 <= code < 400 else None
        return code, error, text, (time.monotonic() - started) * 1000
    except (EgressRefused, TimeoutError, SendError, OSError) as exc:
        return None, error_text(exc, timeout_s), "", (time.monotonic() - started) * 1000


class _Out:
    """Results written in one pipe write per loop turn."""

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self.transport = transport
        self.buf: list[bytes] = []

    def put(self, doc: dict[str, Any]) -> None:
        if not self.buf:
            asyncio.get_running_loop().call_soon(self._flush)
        self.buf.append(orjson.dumps(doc) + b"\n")

    def _flush(self) -> None:
        buf, self.buf = self.buf, []
        if buf and not self.transport.is_closing():
            self.transport.write(b"".join(buf))


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    wt, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout.buffer)
    out = _Out(wt)
    clients = Clients()
    tasks: set[asyncio.Task[None]] = set()

    async def one(msg: dict[str, Any]) -> None:
        code, error, excerpt, ms = await attempt(
            clients,
            msg["u"],
            bool(msg["l"]),
            int(msg.get("n", 4)),
            [(str(k), str(v)) for k, v in msg["h"]],
            msg["b"].encode(),
            float(msg["t"]),
        )
        out.put({"i": msg["i"], "c": code, "e": error, "x": excerpt, "ms": round(ms, 3)})

    try:
        while line := await reader.readline():
            try:
                msg = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            t = loop.create_task(one(msg))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await clients.aclose()


class SenderGone(Exception):
    """The sending process ended with this attempt in flight (its outcome is unknown)."""


# A child that keeps dying is restarted at most this often.
RESPAWN_MIN_S = 1.0
# The api gives up waiting for a child's answer this long past the attempt's own timeout (a
# child starved of CPU by a busy loop is slow, not dead; the attempt then counts as timed out).
ANSWER_GRACE_S = 60.0


class SenderProcess:
    """The api's side: starts the child, hands it attempts, matches its answers. An attempt
    whose child dies is sent again on a new child (the same delivery id: receivers dedup)."""

    def __init__(self, nice: int = 10, python: str = sys.executable) -> None:
        self.nice = nice
        self.python = python
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._owner: dict[int, set[int]] = {}  # id(process) -> attempts it has in flight
        self._next = 0
        self._lock = asyncio.Lock()
        self._last_spawn = 0.0
        self.spawned = 0

    async def _ensure(self) -> asyncio.subprocess.Process:
        async with self._lock:
            p = self.proc
            if p is not None and p.returncode is None:
                return p  # alive: its reader clears ``proc`` the moment its stdout ends
            wait = self._last_spawn + RESPAWN_MIN_S - time.monotonic()
            if self.spawned and wait > 0:
                await asyncio.sleep(wait)
            self._last_spawn = time.monotonic()
            p = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "api.webhook_sender",
                str(self.nice),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=64 * 1024 * 1024,
            )
            self.proc = p
            self.spawned += 1
            self._reader = asyncio.create_task(self._read(p), name="webhook-sender-read")
            return p

    async def _read(self, p: asyncio.subprocess.Process) -> None:
        assert p.stdout is not None
        try:
            while line := await p.stdout.readline():
                try:
                    doc = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                fut = self._pending.pop(doc.get("i"), None)
                if fut is not None and not fut.done():
                    fut.set_result(doc)
        finally:
            # the child is gone: what it had in flight has no known outcome
            if self.proc is p:
                self.proc = None
            for i in list(self._owner.get(id(p), ())):
                fut = self._pending.pop(i, None)
                if fut is not None and not fut.done():
                    fut.set_exception(SenderGone())
            self._owner.pop(id(p), None)
            if p.returncode is None:
                p.kill()
            await p.wait()

    async def post(
        self,
        url: str,
        livemode: bool,
        connections: int,
        headers: list[tuple[str, str]],
        body: str,
        timeout_s: float,
    ) -> tuple[int | None, str | None, str, float]:
        loop = asyncio.get_running_loop()
        for _ in range(3):
            p = await self._ensure()
            self._next += 1
            i = self._next
            fut: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._pending[i] = fut
            self._owner.setdefault(id(p), set()).add(i)
            msg = {"i": i, "u": url, "l": livemode, "n": connections, "h": headers}
            msg.update(b=body, t=timeout_s)
            try:
                assert p.stdin is not None
                p.stdin.write(orjson.dumps(msg) + b"\n")
                async with asyncio.timeout(timeout_s + ANSWER_GRACE_S):
                    doc = await fut
            except SenderGone:
                continue
            except (BrokenPipeError, ConnectionResetError):
                self._pending.pop(i, None)
                continue
            except TimeoutError:
                waited = (timeout_s + ANSWER_GRACE_S) * 1000
                return None, f"timed out after {timeout_s:g}s", "", waited
            finally:
                self._pending.pop(i, None)
                owned = self._owner.get(id(p))
                if owned is not None:
                    owned.discard(i)
            return doc["c"], doc["e"], doc["x"], float(doc["ms"])
        return None, "the sending process is unavailable", "", 0.0

    async def aclose(self) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        if p.stdin is not None and not p.stdin.is_closing():
            p.stdin.close()
        try:
            async with asyncio.timeout(5):
                await p.wait()
        except TimeoutError:
            p.kill()
            await p.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


def main() -> None:
    nice = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if nice > 0:
        os.nice(nice)
    asyncio.run(serve())


if __name__ == "__main__":
    main()
