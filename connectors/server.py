"""The toolkit every Fibric MCP connector server is built on (mcp SDK 2.x ``MCPServer``).

What it guarantees for each server:

- **Flags in the tool list.** Every tool declares ``side_effect``, ``capability`` and
  ``compensating_tool``; clients learn them from ``tools/list`` through the tool annotations
  (``readOnlyHint = not side_effect``) and ``_meta`` keys ``fibric/side_effect``,
  ``fibric/capability``, ``fibric/compensating_tool``. Tool names keep their dots
  (``order.hold``): MCP (SEP-986) allows ``[A-Za-z0-9._-]{1,128}``, so no name mapping exists.
- **At most once per idempotency key.** A side-effecting tool must take a required
  ``idempotency_key: str`` and ``dry_run: bool = False``. The toolkit journals the key (intent
  before the upstream call, result before returning, ``journal.py``); a repeated key returns the
  recorded result without running the tool. An earlier attempt whose outcome is unknown is
  reconciled against the upstream (the tool's ``reconcile``) — never blindly re-applied.
- **Dry runs write nothing.** ``dry_run=True`` skips the journal and the tool must only read
  (validate auth and reachability).
- **One error shape.** Failures are MCP tool errors (``isError``) whose structured and text
  content is ``{"error": {"code", "message", "status"}}`` (codes in ``errors.py``).
- **Secrets stay in the environment.** Config and credentials arrive as JSON in
  ``FIBRIC_CONNECTOR_CONFIG`` / ``FIBRIC_CONNECTOR_CREDENTIALS`` (never argv); they are removed
  from ``os.environ`` once read and must never be logged or echoed in a result or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp_types import CallToolResult, InputRequiredResult, TextContent, ToolAnnotations
from pydantic import ValidationError

from connectors.errors import ConnectorError, ConnectorErrorCode
from connectors.journal import Claim, IdempotencyJournal, args_fingerprint
from connectors.marketplace import CHECK_TOOL

ENV_CONFIG = "FIBRIC_CONNECTOR_CONFIG"
ENV_CREDENTIALS = "FIBRIC_CONNECTOR_CREDENTIALS"
ENV_STATE_DIR = "FIBRIC_CONNECTOR_STATE_DIR"
ENV_INSTANCE = "FIBRIC_CONNECTOR_INSTANCE"
# "true"/"false": the egress policy the server's upstream calls follow (egress.py). Missing or
# anything else means live mode: a server started by hand gets the strict policy.
ENV_LIVEMODE = "FIBRIC_CONNECTOR_LIVEMODE"

META_SIDE_EFFECT = "fibric/side_effect"
META_CAPABILITY = "fibric/capability"
META_COMPENSATING = "fibric/compensating_tool"
META_REPLAYED = "fibric/replayed"  # on a result: served from the idempotency journal
META_RECONCILED = "fibric/reconciled"  # on a result: an unknown earlier outcome was confirmed

# MCPServer logs every tool failure at INFO on stderr; warnings are enough for a connector.
SERVER_LOG_LEVEL = "WARNING"

log = logging.getLogger("fibric.connector")

ToolFn = Callable[..., Awaitable[Any]]
ReconcileFn = Callable[..., Awaitable[Any | None]]


@dataclass(frozen=True)
class ConnectorEnv:
    """What a server process is given: config, credentials, where to keep state."""

    config: dict[str, Any]
    credentials: dict[str, Any]
    state_dir: Path
    instance_id: str | None
    livemode: bool = True  # the egress policy of its upstream calls; test mode may use loopback

    def __repr__(self) -> str:  # never let a stray repr print credentials
        return (
            f"ConnectorEnv(instance_id={self.instance_id!r}, state_dir={self.state_dir!s}, "
            f"livemode={self.livemode})"
        )


def read_env(listing_id: str, environ: MutableMapping[str, str] | None = None) -> ConnectorEnv:
    """Read (and remove) the connector's config and credentials from the environment."""
    env = os.environ if environ is None else environ
    config = _json_object(env.pop(ENV_CONFIG, "") or "{}", ENV_CONFIG)
    credentials = _json_object(env.pop(ENV_CREDENTIALS, "") or "{}", ENV_CREDENTIALS)
    instance = env.get(ENV_INSTANCE) or None
    state = env.get(ENV_STATE_DIR)
    if state:
        state_dir = Path(state)
    else:
        # Manual runs only: the pool always passes a per-instance state dir.
        state_dir = Path(tempfile.gettempdir()) / f"fibric-connector-{listing_id}-{os.getuid()}"
    livemode = env.get(ENV_LIVEMODE, "").strip().lower() != "false"
    return ConnectorEnv(config, credentials, state_dir, instance, livemode)


def _json_object(raw: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise SystemExit(f"{name} is not valid JSON") from None  # never echo the value
    if not isinstance(value, dict):
        raise SystemExit(f"{name} must be a JSON object")
    return value


def credential_secret(credentials: dict[str, Any]) -> str | None:
    """The bearer secret of an ``api_key``/``oauth2`` auth dict (``key``, ``token``, ...)."""
    for field in ("key", "token", "access_token", "api_key"):
        value = credentials.get(field)
        if isinstance(value, str) and value:
            return value
    return None


# ---- results ------------------------------------------------------------------------------
def ok_result(value: Any, meta: dict[str, Any] | None = None) -> CallToolResult:
    structured = value if isinstance(value, dict) else {"result": value}
    text = json.dumps(structured, separators=(",", ":"), default=str)
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structured_content=structured,
        _meta=meta,
    )


def error_result(err: ConnectorError) -> CallToolResult:
    payload = err.payload()
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(payload, separators=(",", ":")))],
        structured_content=payload,
        is_error=True,
    )


def _validation_fields(exc: ValidationError) -> list[str]:
    # Field names only: the rejected values are the caller's data.
    return sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})


class _FibricMCPServer(MCPServer):
    """MCPServer whose argument and unknown-tool failures use the Fibric error shape."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                fields = ", ".join(_validation_fields(exc.__cause__))
                return error_result(
                    ConnectorError(ConnectorErrorCode.INVALID_ARGS, f"invalid arguments: {fields}")
                )
            if str(exc).startswith("Unknown tool"):
                return error_result(
                    ConnectorError(ConnectorErrorCode.UNKNOWN_TOOL, f"unknown tool {name!r}")
                )
            raise


@dataclass(frozen=True)
class ToolDecl:
    name: str
    side_effect: bool
    capability: str | None
    compensating_tool: str | None


class FibricServer:
    """Declare tools with their flags, then ``run()`` the MCP server (stdio by default)."""

    def __init__(
        self,
        listing_id: str,
        *,
        state_dir: Path,
        version: str = "0.1.0",
        instructions: str | None = None,
    ) -> None:
        self.listing_id = listing_id
        self.state_dir = state_dir
        self._journal: IdempotencyJournal | None = None
        self._tools: list[Tool] = []
        self.declarations: dict[str, ToolDecl] = {}
        self._version = version
        self._instructions = instructions

    @property
    def journal(self) -> IdempotencyJournal:
        if self._journal is None:  # opened lazily: read-only servers never create the file
            self._journal = IdempotencyJournal(self.state_dir)
        return self._journal

    # ---- declaring tools -----------------------------------------------------------------
    def tool(
        self,
        name: str,
        *,
        side_effect: bool,
        capability: str | None,
        compensating_tool: str | None = None,
        description: str | None = None,
        reconcile: ReconcileFn | None = None,
    ) -> Callable[[ToolFn], ToolFn]:
        """Register an async tool. ``reconcile(**args)`` (side effects only) looks upstream
        for the effect of an earlier attempt with unknown outcome: the result to record if it
        was applied, None if it was not (then the tool runs)."""

        def decorator(fn: ToolFn) -> ToolFn:
            _check_signature(name, fn, side_effect)
            if reconcile is not None and not side_effect:
                raise ValueError(f"{name}: only side-effecting tools reconcile")
            decl = ToolDecl(name, side_effect, capability, compensating_tool)
            meta = {
                META_SIDE_EFFECT: side_effect,
                META_CAPABILITY: capability,
                META_COMPENSATING: compensating_tool,
            }
            annotations = ToolAnnotations(
                read_only_hint=not side_effect,
                destructive_hint=False if not side_effect else None,
                # A repeated call with the same idempotency key is a no-op.
                idempotent_hint=True,
            )
            base = Tool.from_function(
                fn,
                name=name,
                description=description or inspect.getdoc(fn) or "",
                annotations=annotations,
                meta=meta,
                structured_output=False,
            )
            if side_effect:
                wrapper = self._side_effect_wrapper(decl, fn, reconcile)
            else:
                wrapper = self._read_wrapper(decl, fn)
            self._tools.append(base.model_copy(update={"fn": wrapper, "is_async": True}))
            self.declarations[name] = decl
            return fn

        return decorator

    def check(self, fn: ToolFn) -> ToolFn:
        """Register ``connector.check``: a read that validates the credentials upstream."""
        return self.tool(
            CHECK_TOOL,
            side_effect=False,
            capability=None,
            description=inspect.getdoc(fn) or "Validate the credentials against the upstream.",
        )(fn)

    # ---- wrappers --------------------------------------------------------------------------
    def _read_wrapper(self, decl: ToolDecl, fn: ToolFn) -> ToolFn:
        async def run_read(**kwargs: Any) -> CallToolResult:
            try:
                return ok_result(await fn(**kwargs))
            except ConnectorError as err:
                return error_result(err)
            except Exception:
                log.exception("tool %s crashed", decl.name)
                return error_result(_internal_error())

        return run_read

    def _side_effect_wrapper(
        self, decl: ToolDecl, fn: ToolFn, reconcile: ReconcileFn | None
    ) -> ToolFn:
        async def run_side_effect(**kwargs: Any) -> CallToolResult:
            if kwargs.get("dry_run"):
                try:
                    return ok_result(await fn(**kwargs))
                except ConnectorError as err:
                    return error_result(err)
                except Exception:
                    log.exception("tool %s crashed (dry run)", decl.name)
                    return error_result(_internal_error())
            key = kwargs["idempotency_key"]
            if not key:
                return error_result(
                    ConnectorError(ConnectorErrorCode.INVALID_ARGS, "idempotency_key is empty")
                )
            return await self._apply_once(decl, fn, reconcile, key, kwargs)

        return run_side_effect

    async def _apply_once(
        self,
        decl: ToolDecl,
        fn: ToolFn,
        reconcile: ReconcileFn | None,
        key: str,
        kwargs: dict[str, Any],
    ) -> CallToolResult:
        journal = self.journal
        lock = journal.local_lock(key)
        try:
            async with lock:
                # 1. claim the key (records the intent durably before any upstream call)
                claim = await journal.claim(key, decl.name, args_fingerprint(decl.name, kwargs))
                if claim.claim is Claim.DONE:
                    return ok_result(claim.result, {META_REPLAYED: True})
                if claim.claim is Claim.MISMATCH:
                    return error_result(
                        ConnectorError(
                            ConnectorErrorCode.INVALID_ARGS,
                            "idempotency_key was already used with other arguments"
                            + (f" (tool {claim.tool})" if claim.tool != decl.name else ""),
                        )
                    )
                if claim.claim is Claim.BUSY:
                    return error_result(
                        ConnectorError(
                            ConnectorErrorCode.UPSTREAM_ERROR,
                            "another call with this idempotency_key is still in progress",
                        )
                    )
                meta: dict[str, Any] | None = None
                if claim.claim is Claim.RECONCILE:
                    # 2a. an earlier attempt's outcome is unknown: look before re-applying
                    if reconcile is None:
                        await journal.record_unknown(key)
                        return error_result(
                            ConnectorError(
                                ConnectorErrorCode.UPSTREAM_ERROR,
                                "an earlier attempt with this idempotency_key has an unknown "
                                "outcome and this tool cannot confirm it upstream",
                            )
                        )
                    try:
                        found = await reconcile(**kwargs)
                    except ConnectorError as err:
                        await journal.record_unknown(key)
                        return error_result(err)
                    if found is not None:
                        await journal.record_done(key, found)
                        return ok_result(found, {META_RECONCILED: True})
                    meta = {META_RECONCILED: False}
                # 2. apply the effect upstream
                try:
                    result = await fn(**kwargs)
                except ConnectorError as err:
                    # 3a. record what we know: nothing applied -> free the key for a retry;
                    # maybe applied -> keep it unknown so a retry reconciles first
                    if err.outcome_unknown:
                        await journal.record_unknown(key)
                    else:
                        await journal.forget(key)
                    return error_result(err)
                except asyncio.CancelledError:
                    await asyncio.shield(journal.record_unknown(key))
                    raise
                except Exception:
                    log.exception("tool %s crashed", decl.name)
                    await journal.record_unknown(key)
                    return error_result(_internal_error())
                # 3. record the result before returning it
                await journal.record_done(key, result)
                return ok_result(result, meta)
        finally:
            journal.release_local(key)

    # ---- running ---------------------------------------------------------------------------
    def build(self) -> MCPServer:
        if CHECK_TOOL not in self.declarations:
            raise ValueError(f"{self.listing_id}: every connector must define {CHECK_TOOL}")
        return _FibricMCPServer(
            self.listing_id,
            version=self._version,
            instructions=self._instructions,
            tools=list(self._tools),
            log_level=SERVER_LOG_LEVEL,
        )

    def run(self, argv: list[str] | None = None) -> None:
        """Serve over stdio (default) or ``--transport streamable-http --port N``."""
        parser = argparse.ArgumentParser(prog=f"fibric connector {self.listing_id}")
        parser.add_argument("--transport", choices=("stdio", "streamable-http"), default="stdio")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=0)
        args = parser.parse_args(argv)
        server = self.build()
        try:
            if args.transport == "stdio":
                server.run("stdio")
            else:
                if not args.port:
                    parser.error("--port is required for streamable-http")
                server.run("streamable-http", host=args.host, port=args.port)
        finally:
            if self._journal is not None:
                self._journal.close()


def _internal_error() -> ConnectorError:
    return ConnectorError(
        ConnectorErrorCode.UPSTREAM_ERROR, "connector internal error (see the connector's stderr)"
    )


def _check_signature(name: str, fn: ToolFn, side_effect: bool) -> None:
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"tool {name} must be an async function")
    params = inspect.signature(fn).parameters
    if not side_effect:
        return
    key = params.get("idempotency_key")
    dry = params.get("dry_run")
    if key is None or key.default is not inspect.Parameter.empty:
        raise TypeError(f"side-effecting tool {name} needs a required idempotency_key parameter")
    if dry is None or dry.default is not False:
        raise TypeError(f"side-effecting tool {name} needs a dry_run parameter defaulting False")


def serve(build: Callable[[ConnectorEnv], FibricServer], listing_id: str) -> None:
    """Entry point of ``python -m connectors.servers.<name>``."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    server = build(read_env(listing_id))
    server.run(sys.argv[1:])
