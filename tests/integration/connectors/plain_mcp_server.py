"""A stdio MCP server NOT built on our toolkit (no ``fibric.batch``), like a third party's remote
server: ``call_many`` must fall back to one request per call. It keeps the evidence the test
needs in memory and reports it through ``stats``: the most calls in flight at once, and whether
two calls with the same idempotency key ever overlapped.

Run as ``python -m tests.integration.connectors.plain_mcp_server`` (the pool spawns it).
"""

from __future__ import annotations

import asyncio
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

# Long enough that concurrent calls overlap in the server (so the in-flight bound is visible),
# short enough to keep the test quick.
CALL_DELAY_S = 0.05

server = MCPServer("plain-test-server", log_level="WARNING")
in_flight = 0
max_in_flight = 0
keys_in_flight: set[str] = set()
same_key_overlaps = 0
applied: dict[str, dict[str, Any]] = {}


@server.tool(name="connector.check", annotations=ToolAnnotations(read_only_hint=True))
async def check() -> dict[str, Any]:
    return {"ok": True}


@server.tool(
    name="thing.poke",
    annotations=ToolAnnotations(read_only_hint=False),
    meta={"fibric/side_effect": True, "fibric/capability": "thing.poke"},
    structured_output=False,
)
async def poke(idempotency_key: str, thing_id: str, dry_run: bool = False) -> dict[str, Any]:
    global in_flight, max_in_flight, same_key_overlaps
    if idempotency_key in keys_in_flight:
        same_key_overlaps += 1
    keys_in_flight.add(idempotency_key)
    in_flight += 1
    max_in_flight = max(max_in_flight, in_flight)
    try:
        await asyncio.sleep(CALL_DELAY_S)
        if idempotency_key not in applied:  # this server dedups on the key too
            applied[idempotency_key] = {"thing_id": thing_id, "n": len(applied) + 1}
        return applied[idempotency_key]
    finally:
        in_flight -= 1
        keys_in_flight.discard(idempotency_key)


@server.tool(
    name="stats",
    annotations=ToolAnnotations(read_only_hint=True),
    meta={"fibric/side_effect": False},
    structured_output=False,
)
async def stats() -> dict[str, Any]:
    return {
        "max_in_flight": max_in_flight,
        "same_key_overlaps": same_key_overlaps,
        "applied": len(applied),
    }


if __name__ == "__main__":
    server.run("stdio")
