"""The connector server toolkit, driven in-process through the real MCPServer object: flags in
the tool list, the error shape, at-most-once per key, dry runs and reconciliation."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from connectors.errors import ConnectorError
from connectors.server import BATCH_MAX_CALLS, BATCH_TOOL, FibricServer


class Toy:
    """A fake upstream: counts applied effects; can fail the next call in a chosen way."""

    def __init__(self) -> None:
        self.applied = 0
        self.fail_next: ConnectorError | Exception | None = None
        self.upstream_has_it = False


def make_server(tmp_path: Path, toy: Toy, *, reconcile: bool = True) -> Any:
    server = FibricServer("cn-toy", state_dir=tmp_path)

    @server.check
    async def check() -> dict:
        return {"ok": True}

    @server.tool("thing.read", side_effect=False, capability="thing.read")
    async def read(thing_id: str) -> dict:
        return {"thing_id": thing_id, "applied": toy.applied}

    async def find(**_: Any) -> dict | None:
        return {"applied": True, "reconciled": True} if toy.upstream_has_it else None

    @server.tool(
        "thing.poke",
        side_effect=True,
        capability="thing.poke",
        compensating_tool="thing.unpoke",
        reconcile=find if reconcile else None,
    )
    async def poke(idempotency_key: str, thing_id: str, dry_run: bool = False) -> dict:
        if dry_run:
            return {"dry_run": True}
        if toy.fail_next is not None:
            err, toy.fail_next = toy.fail_next, None
            raise err
        toy.applied += 1
        return {"applied": True, "n": toy.applied}

    return server.build()


def payload(result) -> Any:
    return json.loads(result.content[0].text)


async def test_flags_are_in_the_tool_list(tmp_path: Path):
    tools = {t.name: t for t in await make_server(tmp_path, Toy()).list_tools()}
    poke = tools["thing.poke"]
    assert poke.annotations.read_only_hint is False
    assert poke.meta == {
        "fibric/side_effect": True,
        "fibric/capability": "thing.poke",
        "fibric/compensating_tool": "thing.unpoke",
    }
    assert tools["thing.read"].annotations.read_only_hint is True
    assert tools["connector.check"].meta["fibric/side_effect"] is False


async def test_same_key_applies_once(tmp_path: Path):
    toy = Toy()
    s = make_server(tmp_path, toy)
    first = await s.call_tool("thing.poke", {"idempotency_key": "k", "thing_id": "1"})
    second = await s.call_tool("thing.poke", {"idempotency_key": "k", "thing_id": "1"})
    assert not first.is_error and payload(first) == payload(second) == {"applied": True, "n": 1}
    assert second.meta == {"fibric/replayed": True}
    assert toy.applied == 1
    other = await s.call_tool("thing.poke", {"idempotency_key": "k", "thing_id": "2"})
    assert other.is_error and payload(other)["error"]["code"] == "invalid_args"


async def test_dry_run_never_journals(tmp_path: Path):
    toy = Toy()
    s = make_server(tmp_path, toy)
    r = await s.call_tool("thing.poke", {"idempotency_key": "k", "thing_id": "1", "dry_run": True})
    assert payload(r) == {"dry_run": True}
    r = await s.call_tool("thing.poke", {"idempotency_key": "k", "thing_id": "1"})
    assert payload(r) == {"applied": True, "n": 1}  # the dry run did not consume the key


async def test_definite_failure_frees_the_key(tmp_path: Path):
    toy = Toy()
    s = make_server(tmp_path, toy)
    toy.fail_next = ConnectorError("upstream_error", "down", status=503)
    r = await s.call_tool("thing.poke", {"idempotency_key": "k", "thing_id": "1"})
    assert payload(r) == {"error": {"code": "upstream_error", "message": "down", "status": 503}}
    assert r.structured_content == payload(r) and r.is_error
    r = await s.call_tool("thing.poke", {"idempotency_key": "k", "thing_id": "1"})
    assert not r.is_error and toy.applied == 1


async def test_unknown_outcome_is_reconciled_not_reapplied(tmp_path: Path):
    toy = Toy()
    s = make_server(tmp_path, toy)
    toy.fail_next = ConnectorError("upstream_error", "timed out", outcome_unknown=True)
    r = await s.call_tool("thing.poke", {"idempotency_key": "k", "thing_id": "1"})
    assert r.is_error
    toy.upstream_has_it = True  # the write did land
    r = await s.call_tool("thing.poke", {"idempotency_key": "k", "thing_id": "1"})
    assert payload(r) == {"applied": True, "reconciled": True}
    assert r.meta == {"fibric/reconciled": True}
    assert toy.applied == 0


async def test_unknown_outcome_not_found_upstream_is_applied(tmp_path: Path):
    toy = Toy()
    s = make_server(tmp_path, toy)
    toy.fail_next = RuntimeError("bug")  # a crash inside the tool: outcome unknown
    r = await s.call_tool("thing.poke", {"idempotency_key": "k", "thing_id": "1"})
    assert payload(r)["error"]["code"] == "upstream_error"
    assert "bug" not in r.content[0].text  # internals stay on the server
    r = await s.call_tool("thing.poke", {"idempotency_key": "k", "thing_id": "1"})
    assert payload(r) == {"applied": True, "n": 1}


async def test_without_reconcile_an_unknown_outcome_is_not_retried(tmp_path: Path):
    toy = Toy()
    s = make_server(tmp_path, toy, reconcile=False)
    toy.fail_next = ConnectorError("upstream_error", "timed out", outcome_unknown=True)
    await s.call_tool("thing.poke", {"idempotency_key": "k", "thing_id": "1"})
    r = await s.call_tool("thing.poke", {"idempotency_key": "k", "thing_id": "1"})
    assert payload(r)["error"]["code"] == "upstream_error"
    assert "unknown outcome" in payload(r)["error"]["message"]
    assert toy.applied == 0


async def test_argument_errors_use_the_error_shape(tmp_path: Path):
    s = make_server(tmp_path, Toy())
    r = await s.call_tool("thing.poke", {"thing_id": "1"})
    assert payload(r) == {
        "error": {
            "code": "invalid_args",
            "message": "invalid arguments: idempotency_key",
            "status": None,
        }
    }
    r = await s.call_tool("thing.nope", {})
    assert payload(r)["error"]["code"] == "unknown_tool"


def test_declarations_are_checked(tmp_path: Path):
    server = FibricServer("cn-toy", state_dir=tmp_path)

    with pytest.raises(TypeError, match="idempotency_key"):

        @server.tool("a.b", side_effect=True, capability="a.b")
        async def no_key(thing_id: str, dry_run: bool = False) -> dict:
            return {}

    with pytest.raises(TypeError, match="dry_run"):

        @server.tool("a.b", side_effect=True, capability="a.b")
        async def no_dry_run(idempotency_key: str) -> dict:
            return {}

    with pytest.raises(TypeError, match="async"):

        @server.tool("a.c", side_effect=False, capability="a.c")
        def sync_tool() -> dict:
            return {}

    with pytest.raises(ValueError, match="connector.check"):
        server.build()


# ---- the batch tool -----------------------------------------------------------------------------
def _batch_server(
    tmp_path: Path,
    seen: list,
    gate: asyncio.Event | None = None,
    both: asyncio.Event | None = None,
    concurrency: int = 4,
    started: asyncio.Event | None = None,
) -> Any:
    """A toolkit server whose effect records what the journal holds when it runs."""
    server = FibricServer("cn-toy", state_dir=tmp_path, batch_concurrency=concurrency)

    @server.check
    async def check() -> dict:
        return {"ok": True}

    @server.tool("thing.poke", side_effect=True, capability="thing.poke")
    async def poke(idempotency_key: str, thing_id: str, dry_run: bool = False) -> dict:
        states = {k: await server.journal.state(k) for k in ("b1", "b2", "b3")}
        seen.append((idempotency_key, {k: v[0] if v else None for k, v in states.items()}))
        if both is not None and len(seen) >= 2:
            both.set()
        if started is not None:
            started.set()
        if gate is not None:
            await gate.wait()
        return {"thing_id": thing_id}

    return server, server.build()


def _calls(*keys: str) -> dict:
    return {
        "calls": [
            {"tool": "thing.poke", "arguments": {"idempotency_key": k, "thing_id": k}} for k in keys
        ]
    }


async def test_batch_journals_each_intent_before_its_upstream_call(tmp_path: Path):
    seen: list = []
    _, s = _batch_server(tmp_path, seen)
    r = await s.call_tool(BATCH_TOOL, _calls("b1", "b2", "b3"))
    items = r.structured_content["results"]
    assert [i["ok"] for i in items] == [True, True, True]
    # every effect ran with its own intent already committed
    assert all(states[key] == "pending" for key, states in seen)
    assert {k for k, _ in seen} == {"b1", "b2", "b3"}


async def test_keys_waiting_their_turn_are_not_claimed(tmp_path: Path):
    """A crash mid-batch must leave "unknown" only on keys whose call may have started: a key
    still waiting for its turn is unclaimed, so a retry just runs it (no reconcile needed)."""
    seen: list = []
    gate = asyncio.Event()  # never set: the first effect hangs until cancelled
    started = asyncio.Event()
    server, s = _batch_server(tmp_path, seen, gate, concurrency=1, started=started)
    task = asyncio.create_task(s.call_tool(BATCH_TOOL, _calls("b1", "b2", "b3")))
    await started.wait()
    assert seen[0] == ("b1", {"b1": "pending", "b2": None, "b3": None})
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await server.journal.state("b1") == ("unknown", None)
    assert await server.journal.state("b2") is None
    assert await server.journal.state("b3") is None


async def test_cancelled_batch_leaves_unknown_outcomes_not_pending_rows(tmp_path: Path):
    seen: list = []
    gate = asyncio.Event()  # never set: the effects hang until cancelled
    both = asyncio.Event()  # both effects are running
    server, s = _batch_server(tmp_path, seen, gate, both)
    task = asyncio.create_task(s.call_tool(BATCH_TOOL, _calls("b1", "b2")))
    await both.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await server.journal.state("b1") == ("unknown", None)
    assert await server.journal.state("b2") == ("unknown", None)


async def check_fn() -> dict:
    return {"ok": True}


async def test_batch_limits_and_reserved_names(tmp_path: Path):
    _, s = _batch_server(tmp_path, [])
    too_many = _calls(*(f"k{i}" for i in range(BATCH_MAX_CALLS + 1)))
    r = await s.call_tool(BATCH_TOOL, too_many)
    assert r.is_error and r.structured_content["error"]["code"] == "invalid_args"
    r = await s.call_tool(BATCH_TOOL, {"calls": [{"tool": BATCH_TOOL, "arguments": {}}, {}]})
    assert [i["content"]["error"]["code"] for i in r.structured_content["results"]] == [
        "unknown_tool",
        "invalid_args",
    ]
    with pytest.raises(ValueError, match="reserved"):
        FibricServer("cn-x", state_dir=tmp_path).tool(
            "fibric.mine", side_effect=False, capability=None
        )(check_fn)
