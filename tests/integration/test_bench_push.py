"""The push benchmarks' own parts (benchmarks/push.py), cheaply: the webhook receiver process
counts each ``Fibric-Delivery-Id`` once and keeps the first arrival of each action's key; the
SSE client parses frames split across reads and chunked encoding and matches them to post
times. Correctness only: nothing here looks at how fast anything was. (The scenarios against a
real ``fibric up`` run in test_bench_harness.py with tiny sizes.)"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.push import Receiver, _stream_client

pytestmark = pytest.mark.integration


def test_receiver_deduplicates_on_delivery_id(tmp_path: Path) -> None:
    rx = Receiver(tmp_path).start()
    try:
        body = b'{"data":{"object":{"idempotency_key":"note:ab12-7","x":1}}}'
        for did, path in (("whd_1", "/hook/0"), ("whd_1", "/hook/0"), ("whd_2", "/hook/1")):
            r = httpx.post(f"{rx.url}{path}", content=body, headers={"Fibric-Delivery-Id": did})
            assert r.status_code == 200
        s = rx.stats()
        assert s["deliveries"] == 2 and s["duplicates"] == 1
        assert list(s["arrivals"]) == ["ab12-7"]  # only /hook/0 records arrivals
        rx.reset()
        assert rx.stats()["deliveries"] == 0
    finally:
        rx.stop()
    assert rx.proc is None


async def _sse_server(frames: int) -> tuple[asyncio.Server, int]:
    """A chunked SSE responder sending ``frames`` frames, each split over two chunks."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        w.write(b"d\r\n: keep-alive\n\n\r\n")
        for i in range(frames):
            frame = f'id: ev_{i}\nevent: envelope\ndata: {{"payload":{{"bseq":{i}}}}}\n\n'
            half = len(frame) // 2
            for part in (frame[:half], frame[half:]):
                w.write(f"{len(part):x}\r\n{part}\r\n".encode())
                await w.drain()
                await asyncio.sleep(0)
        await asyncio.sleep(5)
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_stream_client_counts_every_frame_once_per_stream(monkeypatch) -> None:
    async def go() -> dict:
        server, port = await _sse_server(5)
        posted = [time.time() - 0.01 * (5 - i) for i in range(5)]
        # the harness writes the post times on the client's stdin once every stream is open
        monkeypatch.setattr("sys.stdin.readline", lambda: json.dumps(posted) + "\n")
        async with server:
            return await _stream_client("127.0.0.1", port, "sk_test_x", 3, 5, 10.0)

    res = asyncio.run(go())
    assert res["streams_open"] == 3 and res["streams_complete"] == 3
    assert res["frames"] == res["frames_expected"] == 15
    assert res["errors"] == []
    assert res["p50_ms"] is not None and res["p50_ms"] >= 0
