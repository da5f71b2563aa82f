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
- **Many calls, one request.** Every server also lists the reserved tool ``fibric.batch``
  (``_meta`` ``fibric/reserved``; never in a catalogue listing, hidden from models by the pool).
  It takes ``calls: [{"tool", "arguments"}]`` and runs each through the same per-tool path as a
  single call (argument validation, journal claim, upstream call, journal result), with the
  intents of the whole batch in one journal transaction before any upstream call and the
  results in one after. Items are independent: an item's failure is that item's result. A key
  repeated in a batch is applied once; its later occurrences run after, and replay.
- **Secrets stay in the environment.** Config and credentials arrive as JSON in
  ``FIBRIC_CONNECTOR_CONFIG`` / ``FIBRIC_CONNECTOR_CREDENTIALS`` (never argv); they are removed
  from ``os.environ`` once read and must never be logged or echoed in a result or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import json
import logging
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp_types import CallToolResult, InputRequiredResult, TextContent, ToolAnnotations
from pydantic import ValidationError

from connectors.errors import ConnectorError, ConnectorErrorCode
from connectors.journal import Claim, ClaimResult, Finish, IdempotencyJournal, args_fingerprint
from connectors.marketplace import CHECK_TOOL
from schemas import tracing

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
META_RESERVED = "fibric/reserved"  # on a tool: the toolkit's own, never shown to a model

# The toolkit's own tools live under this prefix; a connector may not declare one.
RESERVED_PREFIX = "fibric."
BATCH_TOOL = "fibric.batch"
RESERVED_TOOLS = frozenset({BATCH_TOOL})
# Most calls one batch request may carry: bounds one request's bytes on the wire, the work one
# request holds up (its answer waits for its slowest item) and one journal transaction's size.
# The pool splits longer batches into several requests (pool.py).
BATCH_MAX_CALLS = 256
# Upstream calls of one batch in flight at once, unless the server says its upstream takes more:
# one at a time is safe for any upstream (rate limits, per-connection ordering).
DEFAULT_BATCH_CONCURRENCY = 1

# MCPServer logs every tool failure at INFO on stderr; warnings are enough for a connector.
SERVER_LOG_LEVEL: Final = "WARNING"

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
    for name in ("key", "token", "access_token", "api_key"):
        value = credentials.get(name)
        if isinstance(value, str) and value:
            return value
    return None


# ---- results ------------------------------------------------------------------------------
def ok_result(value: Any, meta: dict[str, Any] | None = None) -> CallToolResult:
    return _Outcome.ok(value, meta).call_result()


def error_result(err: ConnectorError) -> CallToolResult:
    return _Outcome.error(err).call_result()


@dataclass(slots=True)
class _Outcome:
    """One call's answer before it is encoded: a single call's ``CallToolResult`` or a batch
    item (``{"ok", "content", "meta"?}``); ``content`` is the structured result or the error
    payload, the same in both."""

    is_ok: bool
    content: dict[str, Any]
    meta: dict[str, Any] | None = None

    @classmethod
    def ok(cls, value: Any, meta: dict[str, Any] | None = None) -> _Outcome:
        return cls(True, value if isinstance(value, dict) else {"result": value}, meta)

    @classmethod
    def error(cls, err: ConnectorError) -> _Outcome:
        return cls(False, err.payload())

    def call_result(self) -> CallToolResult:
        # The text block repeats the structured content for clients that read only text.
        text = json.dumps(self.content, separators=(",", ":"), default=str)
        return CallToolResult(
            content=[TextContent(type="text", text=text)],
            structured_content=self.content,
            is_error=not self.is_ok,
            _meta=self.meta,
        )

    def item(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.is_ok, "content": self.content}
        if self.meta:
            out["meta"] = self.meta
        return out


def _validation_fields(exc: ValidationError) -> list[str]:
    # Field names only: the rejected values are the caller's data.
    return sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})


def _invalid_args(exc: ValidationError) -> ConnectorError:
    fields = ", ".join(_validation_fields(exc))
    return ConnectorError(ConnectorErrorCode.INVALID_ARGS, f"invalid arguments: {fields}")


def _unknown_tool(name: str) -> ConnectorError:
    return ConnectorError(ConnectorErrorCode.UNKNOWN_TOOL, f"unknown tool {name!r}")


class _FibricMCPServer(MCPServer):
    """MCPServer whose argument and unknown-tool failures use the Fibric error shape."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        if not tracing.ENABLED or name == BATCH_TOOL:  # a batch traces each of its calls
            return await self._call_tool(name, arguments, context)
        request = getattr(context, "_request_context", None)
        span = _tool_span(name, tracing.meta_value(getattr(request, "meta", None)))
        try:
            result = await self._call_tool(name, arguments, context)
            if isinstance(result, CallToolResult) and result.is_error:
                tracing.fail(span, "tool error")
            return result
        finally:
            span.end()

    async def _call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None
    ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                return error_result(_invalid_args(exc.__cause__))
            if str(exc).startswith("Unknown tool"):
                return error_result(_unknown_tool(name))
            raise


@dataclass(frozen=True)
class ToolDecl:
    name: str
    side_effect: bool
    capability: str | None
    compensating_tool: str | None


@dataclass(frozen=True)
class _Entry:
    """A declared tool: its flags, the connector's function, and the MCP tool (whose argument
    model validates a batch item exactly as the SDK validates a single call)."""

    decl: ToolDecl
    fn: ToolFn
    reconcile: ReconcileFn | None
    tool: Tool


@dataclass
class _Effect:
    """A side-effecting batch item after validation: where its answer goes, what it runs."""

    index: int
    entry: _Entry
    kwargs: dict[str, Any]
    key: str
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        self.fingerprint = args_fingerprint(self.entry.decl.name, self.kwargs)


class FibricServer:
    """Declare tools with their flags, then ``run()`` the MCP server (stdio by default)."""

    def __init__(
        self,
        listing_id: str,
        *,
        state_dir: Path,
        version: str = "0.1.0",
        instructions: str | None = None,
        batch_concurrency: int = DEFAULT_BATCH_CONCURRENCY,
    ) -> None:
        if batch_concurrency < 1:
            raise ValueError("batch_concurrency must be >= 1")
        self.listing_id = listing_id
        self.state_dir = state_dir
        self._journal: IdempotencyJournal | None = None
        self._tools: list[Tool] = []
        self._entries: dict[str, _Entry] = {}
        self.declarations: dict[str, ToolDecl] = {}
        self._version = version
        self._instructions = instructions
        # How many upstream calls of one batch may run at once (DEFAULT_BATCH_CONCURRENCY).
        self.batch_concurrency = batch_concurrency

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
            if name.startswith(RESERVED_PREFIX):
                raise ValueError(f"{name}: tool names under {RESERVED_PREFIX!r} are reserved")
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
            entry = _Entry(decl, fn, reconcile, base)
            if side_effect:
                wrapper = self._side_effect_wrapper(entry)
            else:
                wrapper = self._read_wrapper(entry)
            self._tools.append(base.model_copy(update={"fn": wrapper, "is_async": True}))
            self._entries[name] = entry
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

    # ---- one call --------------------------------------------------------------------------
    def _read_wrapper(self, entry: _Entry) -> ToolFn:
        async def run_read(**kwargs: Any) -> CallToolResult:
            return (await self._run_plain(entry, kwargs)).call_result()

        return run_read

    def _side_effect_wrapper(self, entry: _Entry) -> ToolFn:
        async def run_side_effect(**kwargs: Any) -> CallToolResult:
            if kwargs.get("dry_run"):
                return (await self._run_plain(entry, kwargs)).call_result()
            key = kwargs["idempotency_key"]
            if not key:
                return error_result(_empty_key())
            return (await self._apply_once(_Effect(-1, entry, kwargs, key))).call_result()

        return run_side_effect

    @staticmethod
    async def _run_plain(entry: _Entry, kwargs: dict[str, Any]) -> _Outcome:
        """A read, or a dry run (which must only read): no journal."""
        try:
            return _Outcome.ok(await entry.fn(**kwargs))
        except ConnectorError as err:
            return _Outcome.error(err)
        except Exception:
            log.exception("tool %s crashed%s", entry.decl.name, _dry(kwargs))
            return _Outcome.error(_internal_error())

    async def _apply_once(self, eff: _Effect) -> _Outcome:
        journal = self.journal
        async with journal.hold((eff.key,)):
            # 1. claim the key (records the intent durably before any upstream call)
            claim = await journal.claim(eff.key, eff.entry.decl.name, eff.fingerprint)
            refused = _refusal(claim, eff.entry.decl)
            if refused is not None:
                return refused
            # 2. apply (or reconcile) upstream
            try:
                outcome, finish, value = await self._attempt(eff, claim)
            except asyncio.CancelledError:
                await asyncio.shield(journal.record_unknown(eff.key))
                raise
            # 3. record the result before returning it
            await journal.finish_many([(eff.key, finish, value)])
            return outcome

    @staticmethod
    async def _attempt(eff: _Effect, claim: ClaimResult) -> tuple[_Outcome, Finish, Any]:
        """Run a claimed (NEW or RECONCILE) key upstream: its answer and how the journal must
        end the attempt. Writes nothing itself; raises only CancelledError."""
        decl, fn, reconcile, kwargs = eff.entry.decl, eff.entry.fn, eff.entry.reconcile, eff.kwargs
        meta: dict[str, Any] | None = None
        if claim.claim is Claim.RECONCILE:
            # 2a. an earlier attempt's outcome is unknown: look before re-applying
            if reconcile is None:
                err = ConnectorError(
                    ConnectorErrorCode.UPSTREAM_ERROR,
                    "an earlier attempt with this idempotency_key has an unknown "
                    "outcome and this tool cannot confirm it upstream",
                )
                return _Outcome.error(err), Finish.UNKNOWN, None
            try:
                found = await reconcile(**kwargs)
            except ConnectorError as err:
                return _Outcome.error(err), Finish.UNKNOWN, None
            except Exception:
                log.exception("reconcile of %s crashed", decl.name)
                return _Outcome.error(_internal_error()), Finish.UNKNOWN, None
            if found is not None:
                return _Outcome.ok(found, {META_RECONCILED: True}), Finish.DONE, found
            meta = {META_RECONCILED: False}
        # 2b. apply the effect upstream
        try:
            result = await fn(**kwargs)
        except ConnectorError as err:
            # nothing applied -> free the key for a retry; maybe applied -> keep it unknown so a
            # retry reconciles first
            return (
                _Outcome.error(err),
                (Finish.UNKNOWN if err.outcome_unknown else Finish.FORGET),
                None,
            )
        except Exception:
            log.exception("tool %s crashed", decl.name)
            return _Outcome.error(_internal_error()), Finish.UNKNOWN, None
        return _Outcome.ok(result, meta), Finish.DONE, result

    # ---- a batch -----------------------------------------------------------------------------
    def _batch_tool(self) -> Tool:
        async def batch(calls: list[dict[str, Any]]) -> CallToolResult:
            return await self._run_batch(calls)

        tool = Tool.from_function(
            batch,
            name=BATCH_TOOL,
            description=(
                "Reserved (the Fibric pool's batch path, not for models): run many tool calls "
                'in one request. calls: [{"tool": name, "arguments": {...}}]; answers '
                'structuredContent {"results": [{"ok", "content", "meta"?}]}, one per call.'
            ),
            annotations=ToolAnnotations(read_only_hint=False, idempotent_hint=True),
            meta={
                META_RESERVED: True,
                META_SIDE_EFFECT: True,
                META_CAPABILITY: None,
                META_COMPENSATING: None,
            },
            structured_output=False,
        )
        return tool

    def _prepare(self, call: Any) -> tuple[_Entry, dict[str, Any]] | _Outcome:
        """Look up and validate one batch item, as the SDK does for a single call."""
        if not isinstance(call, dict) or not isinstance(call.get("tool"), str):
            return _Outcome.error(
                ConnectorError(ConnectorErrorCode.INVALID_ARGS, "a batch call needs a tool name")
            )
        name = call["tool"]
        entry = self._entries.get(name)
        if entry is None:
            return _Outcome.error(_unknown_tool(name))
        arguments = call.get("arguments") or {}
        if not isinstance(arguments, dict):
            return _Outcome.error(
                ConnectorError(ConnectorErrorCode.INVALID_ARGS, "arguments must be an object")
            )
        try:
            kwargs = entry.tool.fn_metadata.validate_arguments(arguments)
        except ValidationError as exc:
            return _Outcome.error(_invalid_args(exc))
        except Exception:
            log.exception("argument validation of %s crashed", name)
            return _Outcome.error(_internal_error())
        return entry, kwargs

    async def _run_batch(self, calls: list[dict[str, Any]]) -> CallToolResult:
        if len(calls) > BATCH_MAX_CALLS:
            return error_result(
                ConnectorError(
                    ConnectorErrorCode.INVALID_ARGS,
                    f"a batch carries at most {BATCH_MAX_CALLS} calls (got {len(calls)})",
                )
            )
        results: list[dict[str, Any] | None] = [None] * len(calls)
        plain: list[tuple[int, _Entry, dict[str, Any]]] = []
        # rounds[r]: the r-th occurrence of each key, so one round never repeats a key and a
        # repeated key runs after its first occurrence has been journaled (and then replays).
        rounds: list[list[_Effect]] = []
        seen: dict[str, int] = {}
        for i, call in enumerate(calls):
            prepared = self._prepare(call)
            if isinstance(prepared, _Outcome):
                results[i] = prepared.item()
                continue
            entry, kwargs = prepared
            if not entry.decl.side_effect or kwargs.get("dry_run"):
                plain.append((i, entry, kwargs))
                continue
            key = kwargs["idempotency_key"]
            if not key:
                results[i] = _Outcome.error(_empty_key()).item()
                continue
            r = seen.get(key, 0)
            seen[key] = r + 1
            if r == len(rounds):
                rounds.append([])
            rounds[r].append(_Effect(i, entry, kwargs, key))

        # each call of the batch continues its own trace (its item's _meta, schemas/tracing.py)
        traces = [
            tracing.meta_value(c.get("_meta")) if isinstance(c, dict) else None for c in calls
        ]
        traced = tracing.ENABLED and any(traces)

        async def run_plain(i: int, entry: _Entry, kwargs: dict[str, Any]) -> None:
            span = _tool_span(entry.decl.name, traces[i]) if traced else None
            results[i] = (await self._run_plain(entry, kwargs)).item()
            if span is not None:
                _end_item_span(span, results[i])

        await self._each([functools.partial(run_plain, *args) for args in plain])
        for effects in rounds:
            await self._run_round(effects, results, traces if traced else None)
        structured = {"results": results}
        return CallToolResult(
            # Only our pool calls this tool and it reads the structured content: the text block
            # is a note, not a second encoding of every result.
            content=[TextContent(type="text", text=f"{len(results)} results in structuredContent")],
            structured_content=structured,
        )

    async def _run_round(
        self,
        effects: list[_Effect],
        results: list[dict[str, Any] | None],
        traces: list[str | None] | None = None,
    ) -> None:
        """Distinct keys, ``batch_concurrency`` at a time: 1. claim the key (fsynced; claims
        made at the same moment share one transaction, journal.py) 2. run it upstream 3. record
        every end (one transaction) before the batch answers.

        A key is claimed only when its upstream call is about to start, never for the whole
        batch up front: a crash then leaves "outcome unknown" only on keys whose call may really
        have started, and a retry of the others simply runs them (a tool without ``reconcile``
        would otherwise have to refuse every item of a batch that was merely waiting)."""
        journal = self.journal
        async with journal.hold([e.key for e in effects]):
            ends: dict[str, tuple[Finish, Any]] = {}
            started: list[_Effect] = []

            async def attempt(eff: _Effect) -> None:
                span = _tool_span(eff.entry.decl.name, traces[eff.index]) if traces else None
                try:
                    claim = await journal.claim(eff.key, eff.entry.decl.name, eff.fingerprint)
                    refused = _refusal(claim, eff.entry.decl)
                    if refused is not None:
                        results[eff.index] = refused.item()
                        return
                    started.append(eff)
                    outcome, finish, value = await self._attempt(eff, claim)
                    ends[eff.key] = (finish, value)
                    results[eff.index] = outcome.item()
                finally:
                    if span is not None:
                        _end_item_span(span, results[eff.index])

            try:
                await self._each([functools.partial(attempt, e) for e in effects])
            except BaseException:
                # cancelled mid-batch: what ended is recorded, what started is an unknown outcome
                records = [(e.key, *ends.get(e.key, (Finish.UNKNOWN, None))) for e in started]
                await asyncio.shield(journal.finish_many(records))
                raise
            await journal.finish_many([(k, f, v) for k, (f, v) in ends.items()])

    async def _each(self, jobs: list[Callable[[], Awaitable[None]]]) -> None:
        """Run jobs (which never raise but CancelledError), ``batch_concurrency`` at a time."""
        if self.batch_concurrency <= 1 or len(jobs) <= 1:
            for job in jobs:
                await job()
            return
        sem = asyncio.Semaphore(self.batch_concurrency)

        async def bounded(job: Callable[[], Awaitable[None]]) -> None:
            async with sem:
                await job()

        tasks = [asyncio.ensure_future(bounded(job)) for job in jobs]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    # ---- running ---------------------------------------------------------------------------
    def build(self) -> MCPServer:
        if CHECK_TOOL not in self.declarations:
            raise ValueError(f"{self.listing_id}: every connector must define {CHECK_TOOL}")
        return _FibricMCPServer(
            self.listing_id,
            version=self._version,
            instructions=self._instructions,
            tools=[*self._tools, self._batch_tool()],
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


def _tool_span(name: str, traceparent: str | None) -> Any:
    """The server side of one tool call (a single request or one item of a batch), under the
    caller's span from ``_meta`` (schemas/tracing.py). Arguments are never attributes."""
    return tracing.start(
        f"tools/call {name}",
        traceparent,
        kind="server",
        attributes={"mcp.method.name": "tools/call", "gen_ai.tool.name": name},
    )


def _end_item_span(span: Any, item: dict[str, Any] | None) -> None:
    if not item or not item.get("ok"):
        tracing.fail(span, "tool error")
    span.end()


def _refusal(claim: ClaimResult, decl: ToolDecl) -> _Outcome | None:
    """The answer of a claim that must not run upstream (DONE, MISMATCH, BUSY), else None."""
    if claim.claim is Claim.DONE:
        return _Outcome.ok(claim.result, {META_REPLAYED: True})
    if claim.claim is Claim.MISMATCH:
        return _Outcome.error(
            ConnectorError(
                ConnectorErrorCode.INVALID_ARGS,
                "idempotency_key was already used with other arguments"
                + (f" (tool {claim.tool})" if claim.tool != decl.name else ""),
            )
        )
    if claim.claim is Claim.BUSY:
        return _Outcome.error(
            ConnectorError(
                ConnectorErrorCode.UPSTREAM_ERROR,
                "another call with this idempotency_key is still in progress",
            )
        )
    return None


def _empty_key() -> ConnectorError:
    return ConnectorError(ConnectorErrorCode.INVALID_ARGS, "idempotency_key is empty")


def _dry(kwargs: dict[str, Any]) -> str:
    return " (dry run)" if kwargs.get("dry_run") else ""


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
    # on when the worker that spawned us traces (it passes the OTEL_* settings, pool.py)
    tracing.configure("connector", **{"fibric.connector.listing": listing_id})
    server = build(read_env(listing_id))
    server.run(sys.argv[1:])
