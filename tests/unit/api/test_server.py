"""The envelope outside Litestar's handler chain, over a real socket: uvicorn with Fibric's
protocol and the guarded app, as ``fibric api`` runs them."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import orjson
import pytest
import uvicorn
from litestar import get

from api.server import EnvelopeH11Protocol, EnvelopeHttpToolsProtocol, FibricLitestar
from tests.conftest import free_port

# Bounds for the in-process server: start-up and one socket read (never reached when healthy).
START_TIMEOUT_S = 20
READ_TIMEOUT_S = 10


@get("/ok")
async def ok() -> dict:
    return {"ok": True}


@get("/cancelled")
async def cancelled() -> None:
    raise asyncio.CancelledError  # what uvicorn's shutdown does to a request still running


@get("/broken-handler")
async def broken_handler() -> None:
    raise ValueError("the handler fails")


def failing_exception_handler(request, exc):
    raise RuntimeError("and so does the exception handler")


def make_app() -> FibricLitestar:
    return FibricLitestar(
        route_handlers=[ok, cancelled, broken_handler],
        exception_handlers={ValueError: failing_exception_handler},
    )


@pytest.fixture(scope="module", params=[EnvelopeHttpToolsProtocol, EnvelopeH11Protocol])
def server(request):
    port = free_port()
    config = uvicorn.Config(
        make_app(),
        host="127.0.0.1",
        port=port,
        http=request.param,
        lifespan="off",
        log_level="critical",
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield port
    srv.should_exit = True
    thread.join(START_TIMEOUT_S)


def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):  # every reply here closes the connection
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def assert_envelope(status: int, headers: dict, body: bytes, want: int, code: str) -> None:
    assert status == want, body
    assert headers["content-type"] == "application/json"
    err = orjson.loads(body)["error"]
    assert err["code"] == code and err["request_id"] == headers["request-id"]
    assert set(err) >= {"type", "code", "message", "doc_url", "request_id"}


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /ok HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"GET /ok HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
        b"GET /ok HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a TLS ClientHello on the plain port
    ],
)
def test_malformed_http_gets_a_400_envelope(server, raw):
    status, headers, body = exchange(server, raw)
    assert_envelope(status, headers, body, 400, "invalid_parameter")
    assert headers["connection"] == "close"


def test_a_well_formed_request_is_served(server):
    status, _, body = exchange(server, b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200 and orjson.loads(body) == {"ok": True}


@pytest.mark.parametrize(
    "path,want,code",
    [("/cancelled", 503, "service_unavailable"), ("/broken-handler", 500, "internal_error")],
)
def test_failures_outside_the_handler_chain_are_envelopes(server, path, want, code):
    raw = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    status, headers, body = exchange(server, raw)
    assert_envelope(status, headers, body, want, code)
    if want == 503:
        assert int(headers["retry-after"]) > 0
