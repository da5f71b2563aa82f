"""The MCP connector servers Fibric ships, one module per marketplace listing.

Each runs as ``python -m connectors.servers.<name>`` (stdio) and is built on
``connectors.server``. They must never print credentials or write to stdout (stdout is the
MCP stream).
"""
