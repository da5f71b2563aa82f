"""Connectors: the marketplace catalogue, the MCP servers Fibric ships, and the client pool.

- ``marketplace`` — listings as data (``catalogue.json``) behind pydantic models.
- ``server`` — the toolkit every Fibric MCP server is built on (flags in the tool list,
  idempotency keys, dry runs, the JSON error shape).
- ``servers/`` — the connectors we ship (``python -m connectors.servers.<name>``, stdio).
- ``pool`` — the MCP client runtime workers and the api use to call installed connectors.

Connectors never import ``streams``, ``api`` or ``fibric``; credentials reach a server only
through its environment, never argv, and are never logged.
"""
