"""The MCP client pool (ConnectorRuntime) against real connector servers: tool flags from the
server's tool list, the in-flight bound, timeouts, crash -> connector_crashed -> restart, the
background health check, config changes, streamable HTTP, and credential hygiene."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connectors.marketplace import load_catalogue
from connectors.pool import ConnectorRuntime, ConnectorSpec
from connectors.server import ENV_CONFIG, ENV_CREDENTIALS, ENV_LIVEMODE, ENV_STATE_DIR
from tests.fakes.magento import FakeMagento

pytestmark = pytest.mark.integration

CN = "cn_test1"
SECRET = "mg_live_SECRET_7c1d9e0a55"  # distinctive, so a leak is unmistakable
# A crashed server must be reported well before any timeout could fire.
CRASH_REPORT_BUDGET_S = 2.0
REMOTE_READY_TIMEOUT_S = 20.0
REPO = Path(__file__).resolve().parents[3]


def _pid(runtime: ConnectorRuntime, instance_id: str = CN) -> int:
    pids = runtime.health()[instance_id]["pids"]
    assert pids, runtime.health()
    return pids[0]


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


async def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_tool_flags_come_from_the_server_tool_list(magento: ConnectorRuntime):
    tools = {t.name: t for t in await magento.tools(CN)}
    assert set(tools) == {
        "connector.check",
        "order.read",
        "order.hold",
        "order.release",
        "order.notify",
    }
    listing = load_catalogue()["cn-magento"]
    for lt in listing.tools:  # the catalogue and the live server agree
        t = tools[lt.name]
        assert (t.side_effect, t.capability, t.compensating_tool) == (
            lt.side_effect,
            lt.capability,
            lt.compensating_tool,
        )
    assert tools["order.hold"].compensating_tool == "order.release"
    assert tools["order.read"].side_effect is False
    assert tools["connector.check"].side_effect is False
    assert tools["connector.check"].capability is None
    hold_schema = tools["order.hold"].input_schema
    assert "idempotency_key" in hold_schema["required"]
    assert hold_schema["properties"]["dry_run"]["default"] is False


async def test_unknown_tool_and_missing_key(magento: ConnectorRuntime):
    r = await magento.call(CN, "order.cancel", {"order_id": "1"}, idempotency_key="k")
    assert (r.ok, r.error_code) == (False, "unknown_tool")
    r = await magento.call(CN, "order.hold", {"order_id": "1"})
    assert (r.ok, r.error_code) == (False, "invalid_args")
    r = await magento.call("cn_nope", "order.read", {})
    assert (r.ok, r.error_code) == (False, "unknown_connector")


async def test_in_flight_calls_are_bounded(tmp_path: Path, fake: FakeMagento, magento_spec):
    rt = ConnectorRuntime(state_dir=tmp_path, max_in_flight=2)
    try:
        await rt.ensure(magento_spec(fake))
        fake.set_mode(delay_s=0.3)
        seen = []

        async def sample() -> None:
            while True:
                seen.append(rt.health()[CN]["in_flight"])
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        results = await asyncio.gather(
            *(rt.call(CN, "order.read", {"order_id": "1"}) for _ in range(6))
        )
        sampler.cancel()
        assert all(r.ok for r in results), [(r.error_code, r.error_message) for r in results]
        assert fake.max_in_flight == 2  # never more than two requests reached the store
        assert max(seen) == 6  # all six were accepted, four of them waited for a slot
        assert fake.count("order.get") == 6
    finally:
        await rt.close()


async def test_waiting_for_a_slot_counts_against_the_deadline(
    tmp_path: Path, fake: FakeMagento, magento_spec
):
    rt = ConnectorRuntime(state_dir=tmp_path, max_in_flight=1)
    try:
        await rt.ensure(magento_spec(fake))
        fake.set_mode(hang_s=5)
        first = asyncio.create_task(rt.call(CN, "order.read", {"order_id": "1"}, timeout_s=3))
        await _wait_for(lambda: fake.in_flight == 1)
        r = await rt.call(CN, "order.read", {"order_id": "1"}, timeout_s=0.3)
        assert (r.ok, r.error_code) == (False, "timeout")
        fake.set_mode()
        assert (await first).ok
    finally:
        await rt.close()


async def test_kill_9_mid_call_reports_crash_and_restarts(magento: ConnectorRuntime, fake):
    old_pid = _pid(magento)
    fake.set_mode(hang_s=60)  # the call will sit in the server waiting for Magento
    call = asyncio.create_task(magento.call(CN, "order.read", {"order_id": "1"}, timeout_s=30))
    await _wait_for(lambda: fake.in_flight == 1)
    os.kill(old_pid, signal.SIGKILL)
    t0 = time.monotonic()
    r = await call
    assert time.monotonic() - t0 < CRASH_REPORT_BUDGET_S
    assert (r.ok, r.error_code) == (False, "connector_crashed")
    fake.set_mode()
    r = await magento.call(CN, "order.read", {"order_id": "1"})
    assert r.ok, r
    health = magento.health()[CN]
    assert health["alive"] and health["restarts"] == 1
    assert _pid(magento) != old_pid
    assert "connection closed" in health["last_error"]


async def test_kill_9_mid_side_effect_then_retry_applies_once(magento: ConnectorRuntime, fake):
    fake.set_mode(hang_s=0.5)  # Magento receives the hold, answers late; the server is gone
    call = asyncio.create_task(
        magento.call(CN, "order.hold", {"order_id": "1"}, idempotency_key="crash-1")
    )
    await _wait_for(lambda: fake.in_flight == 1)
    os.kill(_pid(magento), signal.SIGKILL)
    assert (await call).error_code == "connector_crashed"
    await _wait_for(lambda: fake.order(1)["state"] == "holded")
    fake.set_mode()
    # The executor re-invokes with the same key; the restarted server finds the intent with no
    # result, reconciles against Magento, and does not hold a second time.
    r = await magento.call(CN, "order.hold", {"order_id": "1"}, idempotency_key="crash-1")
    assert r.ok, r
    assert fake.count("order.hold") == 1


async def test_health_check_restarts_a_dead_server_without_a_call(magento: ConnectorRuntime):
    old_pid = _pid(magento)
    os.kill(old_pid, signal.SIGKILL)
    await _wait_for(
        lambda: (
            magento.health()[CN]["pids"] not in ([], [old_pid]) and magento.health()[CN]["alive"]
        )
    )
    assert magento.health()[CN]["restarts"] == 1


async def test_changed_credentials_restart_the_server(
    runtime: ConnectorRuntime, fake: FakeMagento, magento_spec
):
    await runtime.ensure(magento_spec(fake, token="wrong"))
    first = _pid(runtime)
    assert (await runtime.call(CN, "connector.check", {})).error_code == "auth_failed"
    await runtime.ensure(magento_spec(fake, token="wrong"))  # unchanged: same process
    assert _pid(runtime) == first
    await runtime.ensure(magento_spec(fake))  # fixed token: a new process with it
    assert _pid(runtime) != first
    assert (await runtime.call(CN, "connector.check", {})).ok
    await _wait_for(lambda: not Path(f"/proc/{first}").exists())  # old one drained and gone


async def test_remove_stops_the_server(magento: ConnectorRuntime):
    pid = _pid(magento)
    await magento.remove(CN)
    assert CN not in magento.health()
    await _wait_for(lambda: not Path(f"/proc/{pid}").exists())
    assert (await magento.call(CN, "order.read", {})).error_code == "unknown_connector"


async def test_several_sessions_per_connector(tmp_path: Path, fake: FakeMagento, magento_spec):
    # a generous call timeout: this checks that one key applies once across processes, not speed
    rt = ConnectorRuntime(state_dir=tmp_path, sessions_per_connector=2, call_timeout_s=60.0)
    try:
        await rt.ensure(magento_spec(fake))
        assert len(set(rt.health()[CN]["pids"])) == 2
        results = await asyncio.gather(
            *(
                rt.call(
                    CN, "order.notify", {"order_id": "1", "comment": "c"}, idempotency_key="shared"
                )
                for _ in range(4)
            )
        )
        assert all(r.ok for r in results), [(r.error_code, r.error_message) for r in results]
        # Two processes share the instance's journal: still one comment upstream.
        assert fake.count("order.comment") == 1
    finally:
        await rt.close()


async def test_credentials_stay_out_of_argv_logs_and_health(
    runtime: ConnectorRuntime, fake: FakeMagento, magento_spec, caplog, capfd, tmp_path
):
    caplog.set_level(logging.DEBUG)
    fake.tokens.add(SECRET)
    try:
        await runtime.ensure(magento_spec(fake, token=SECRET))
        pid = _pid(runtime)
        cmdline = _cmdline(pid)
        assert b"connectors.servers.magento" in cmdline
        assert SECRET.encode() not in cmdline
        # The server removed the variables from its own os.environ after reading them; only
        # the kernel's copy of the initial environment (0400, same uid) still holds them.
        r = await runtime.call(CN, "connector.check", {})
        assert r.ok
        await runtime.call(CN, "order.hold", {"order_id": "3"}, idempotency_key="k")  # fails
        await runtime.call(CN, "order.read", {"order_id": "1"}, timeout_s=0.001)  # times out
        os.kill(pid, signal.SIGKILL)  # a crash is logged too
        await runtime.call(CN, "order.read", {"order_id": "1"})
        await _wait_for(lambda: runtime.health()[CN]["alive"])
        health = json.dumps(runtime.health())
        out, err = capfd.readouterr()
        logged = "\n".join(
            f"{rec.getMessage()} {rec.args!r} {rec.exc_text or ''}" for rec in caplog.records
        )
        stderr_files = "".join(
            p.read_text(errors="replace") for p in (tmp_path / "connectors").rglob("stderr.log*")
        )
        journal = b"".join(p.read_bytes() for p in (tmp_path / "connectors").rglob("*.sqlite3*"))
        for where, text in (
            ("health", health),
            ("stdout", out),
            ("stderr", err),
            ("logs", logged),
            ("server stderr", stderr_files),
            ("repr", repr(magento_spec(fake, token=SECRET))),
        ):
            assert SECRET not in text, where
        assert SECRET.encode() not in journal
    finally:
        fake.tokens.discard(SECRET)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def remote_magento(fake: FakeMagento, tmp_path: Path):
    """cn-magento run by someone else: its own process serving streamable HTTP, configured
    through its own environment. Yields (url, process)."""
    port = _free_port()
    env = dict(os.environ)
    env.update(
        {
            ENV_CONFIG: json.dumps({"base_url": fake.url}),
            ENV_CREDENTIALS: json.dumps({"type": "api_key", "key": "mg_live_9f4c2e8b1a41"}),
            ENV_STATE_DIR: str(tmp_path / "remote"),
            # Started by hand, a server defaults to live mode's egress policy; its store is
            # the loopback fake, so this one runs in test mode.
            ENV_LIVEMODE: "false",
        }
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "connectors.servers.magento",
            "--transport",
            "streamable-http",
            "--port",
            str(port),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + REMOTE_READY_TIMEOUT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "remote not up"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp", proc
    finally:
        proc.kill()
        proc.wait(5)


async def test_remote_connector_over_streamable_http(
    runtime: ConnectorRuntime, fake: FakeMagento, remote_magento
):
    url, proc = remote_magento
    spec = ConnectorSpec(CN, load_catalogue()["cn-magento"], {}, {}, remote_url=url)
    await runtime.ensure(spec)
    assert runtime.health()[CN]["transport"] == "streamable_http"
    tools = {t.name: t for t in await runtime.tools(CN)}
    assert tools["order.hold"].side_effect and not tools["order.read"].side_effect
    r = await runtime.call(CN, "order.hold", {"order_id": "1"}, idempotency_key="rk")
    assert r.ok, r
    r = await runtime.call(CN, "order.hold", {"order_id": "1"}, idempotency_key="rk")
    assert r.ok and fake.count("order.hold") == 1
    proc.kill()  # the remote goes away: calls fail fast, they do not hang
    await asyncio.to_thread(proc.wait, 5)
    t0 = time.monotonic()
    r = await runtime.call(CN, "order.read", {"order_id": "1"}, timeout_s=5)
    assert (r.ok, r.error_code) == (False, "connector_crashed")
    assert time.monotonic() - t0 < CRASH_REPORT_BUDGET_S


@pytest.mark.parametrize(
    ("listing_id", "config", "credentials", "code"),
    [
        # no store listens on the discard port: the server starts, the upstream is unreachable
        ("cn-kustomer", {"base_url": "http://127.0.0.1:9"}, {"key": "k"}, "upstream_error"),
        # an oauth2 install before the authorization dance: no token yet
        ("cn-amazon-connect", {"instance_id": "inst-1"}, {"type": "oauth2"}, "auth_failed"),
    ],
)
async def test_every_live_listing_starts_and_reports_errors_in_shape(
    runtime: ConnectorRuntime, listing_id, config, credentials, code
):
    listing = load_catalogue()[listing_id]
    await runtime.ensure(ConnectorSpec("cn_other", listing, config, credentials))
    names = {t.name for t in await runtime.tools("cn_other")}
    assert names == {t.name for t in listing.tools} | {"connector.check"}
    r = await runtime.call("cn_other", "connector.check", {})
    assert (r.ok, r.error_code) == (False, code)
    assert r.content == {"error": {"code": code, "message": r.error_message, "status": None}}
    # The connection test calls every tool with no arguments (side effects as dry runs): each
    # must reach the upstream (here: fail the same way), never refuse the empty arguments.
    for t in listing.tools:
        r = await runtime.call("cn_other", t.name, {}, dry_run=t.side_effect)
        assert (r.ok, r.error_code) == (False, code), t.name
