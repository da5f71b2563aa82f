"""The MCP client runtime workers and the api use to call installed connectors.

One ``ConnectorRuntime`` per process keeps, per installed connector instance, one or more MCP
client sessions: a stdio subprocess (``python -m <listing.server.module>``) with config and
credentials passed in its environment, or a streamable-HTTP session when the instance has a
``remote_url``. It bounds in-flight calls per connector, applies a per-call deadline, learns
each tool's ``side_effect`` / ``capability`` / ``compensating_tool`` from the server's tool
list, pings sessions in the background, and restarts a server that died. ``call()`` never
raises for tool or transport failures: it returns ``ToolResult(ok=False, error_code=...)``.
``call_many()`` sends many calls to one instance as one ``fibric.batch`` request (server.py) when
the server lists that reserved tool, else as concurrent ``call``s under the same in-flight
bound; either way result i answers call i, with ``call``'s semantics per item. Reserved tools
are never in ``tools()`` (that list reaches model prompts) and cannot be ``call``ed.

Crash handling: when a stdio server dies, its stdout closes and every pending request is woken
with CONNECTION_CLOSED at once; the call returns ``connector_crashed`` and a restart is
scheduled, so the next call goes to a fresh process.

Never: put credentials in argv or a log line, or let a server's stderr into our logs (it goes
to a 0600 file in the instance's state dir); never retry a side-effecting call on its own (the
executor decides, with the same idempotency key).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

import httpx2
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CONNECTION_CLOSED,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    REQUEST_TIMEOUT,
    EmptyResult,
    PingRequest,
    RequestParams,
    RequestParamsMeta,
    TextContent,
)
from mcp_types import Tool as MCPTool

from connectors.egress import check_target_async, egress_client
from connectors.errors import ConnectorErrorCode, parse_error_payload
from connectors.marketplace import Listing
from connectors.server import (
    BATCH_MAX_CALLS,
    BATCH_TOOL,
    ENV_CONFIG,
    ENV_CREDENTIALS,
    ENV_INSTANCE,
    ENV_LIVEMODE,
    ENV_STATE_DIR,
    META_CAPABILITY,
    META_COMPENSATING,
    META_RESERVED,
    META_SIDE_EFFECT,
    RESERVED_PREFIX,
    credential_secret,
)
from schemas import tracing
from schemas.connector import Connector
from schemas.tracing import TRACEPARENT

log = logging.getLogger("fibric.connectors.pool")

# A Python connector imports mcp + httpx and answers initialize in ~1 s on these machines;
# 20 s covers a cold page cache on a loaded box without hiding a server that never starts.
START_TIMEOUT_S = 20.0
# Background health check period; a dead server is also noticed at once by a failing call.
HEALTH_INTERVAL_S = 5.0
# A ping answers in ~1 ms; a server that cannot answer one in this long is wedged.
PING_TIMEOUT_S = 5.0
# Consecutive failed pings before a live-but-wedged server is killed and restarted.
PING_FAILURES_BEFORE_RESTART = 2
# Restart backoff after consecutive failed starts: base * 2^n, capped (a crash-looping
# connector must not eat a core re-spawning Python).
RESTART_BACKOFF_BASE_S = 0.25
RESTART_BACKOFF_MAX_S = 30.0
# Replacing or removing a connector waits this long for its in-flight calls to finish.
DRAIN_TIMEOUT_S = 10.0
# A server's stderr file is rotated at spawn time once it grows past this.
STDERR_ROTATE_BYTES = 1_000_000
# Every environment variable a stdio server inherits besides the SDK's safe defaults
# (HOME, PATH, ...) and the FIBRIC_CONNECTOR_* ones; nothing else of ours leaks into it.
INHERITED_ENV = ("PYTHONPATH", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "SSL_CERT_FILE")
# Closing a session waits this long for the SDK's own bounded shutdown (stdin close, 2 s grace,
# SIGTERM, 2 s, SIGKILL) before cancelling its task outright.
SESSION_CLOSE_TIMEOUT_S = 10.0
# Remote (streamable HTTP) connectors: connect/write budget, and the read budget of the
# long-lived response stream (per-call deadlines are enforced separately, per request).
REMOTE_HTTP_TIMEOUT_S = 30.0
REMOTE_HTTP_READ_TIMEOUT_S = 300.0
# Error text we pass on (receipts, health) is capped: a message, not a dump.
MAX_ERROR_CHARS = 300
# Credential values shorter than this are not redacted from error text (they would match
# everywhere and are not secrets worth the name, e.g. "api_key").
MIN_REDACT_CHARS = 4
ENV_SPAWN_MARKER = "FIBRIC_CONNECTOR_SPAWN"  # per-session nonce to find the child's pid
STDERR_FILE = "stderr.log"


@dataclass
class ConnectorSpec:
    instance_id: str
    listing: Listing
    config: dict[str, Any]
    credentials: dict[str, Any]
    remote_url: str | None = None  # streamable HTTP when set
    # The instance's mode, for the egress policy (egress.py): live mode never reaches loopback
    # or private addresses. None: a caller that does not say gets test mode's rules (loopback
    # allowed, everything else still refused); every caller should pass it.
    livemode: bool | None = None

    @property
    def egress_livemode(self) -> bool:
        return bool(self.livemode)

    @classmethod
    def of(cls, cn: Connector, listing: Listing, credentials: dict[str, Any]) -> ConnectorSpec:
        """The spec of an installed connector (its id, config, remote URL and mode)."""
        return cls(
            instance_id=cn.id,
            listing=listing,
            config=cn.config,
            credentials=credentials,
            remote_url=cn.remote_url,
            # live connectors get the live egress rules (connectors/egress.py)
            livemode=cn.livemode,
        )

    def __repr__(self) -> str:  # never let a repr carry credentials into a log line
        return (
            f"ConnectorSpec(instance_id={self.instance_id!r}, listing={self.listing.id!r}, "
            f"remote_url={self.remote_url!r}, livemode={self.livemode!r})"
        )


@dataclass
class ToolInfo:
    name: str
    side_effect: bool
    capability: str | None
    compensating_tool: str | None
    input_schema: dict


@dataclass
class ToolResult:
    ok: bool
    content: Any
    error_code: str | None
    error_message: str | None
    latency_ms: float
    upstream_status: int | None = None


class ConnectorUnavailable(RuntimeError):
    """``ensure()`` could not start the connector's server (it stays registered: later calls
    retry the start and report ``connector_crashed`` while it keeps failing)."""


# ---- pure helpers ---------------------------------------------------------------------------
def spec_fingerprint(spec: ConnectorSpec) -> str:
    """Changes whenever the server must be restarted (config, credentials, listing, URL)."""
    blob = json.dumps(
        [
            spec.listing.id,
            spec.listing.server.model_dump() if spec.listing.server else None,
            spec.config,
            spec.credentials,
            spec.remote_url,
            spec.egress_livemode,
        ],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def tool_info(tool: MCPTool) -> ToolInfo:
    """Flags from the server's tool list: our ``_meta`` keys first, then MCP annotations.
    A tool that says nothing is treated as side-effecting (gated by policy: the safe side)."""
    meta = tool.meta or {}
    side_effect = meta.get(META_SIDE_EFFECT)
    if not isinstance(side_effect, bool):
        ro = tool.annotations.read_only_hint if tool.annotations else None
        side_effect = not ro if isinstance(ro, bool) else True
    capability = meta.get(META_CAPABILITY)
    compensating = meta.get(META_COMPENSATING)
    return ToolInfo(
        name=tool.name,
        side_effect=side_effect,
        capability=capability if isinstance(capability, str) else None,
        compensating_tool=compensating if isinstance(compensating, str) else None,
        input_schema=dict(tool.input_schema or {}),
    )


def is_reserved(tool: MCPTool) -> bool:
    """A toolkit tool (``fibric.*``, e.g. the batch tool): never offered to a model."""
    return tool.name.startswith(RESERVED_PREFIX) or bool((tool.meta or {}).get(META_RESERVED))


def supports_batch(tools: list[MCPTool]) -> bool:
    """The server lists our toolkit's batch tool (a FibricServer, stdio or remote)."""
    return any(t.name == BATCH_TOOL and (t.meta or {}).get(META_RESERVED) is True for t in tools)


def batch_item_result(item: Any, t0: float) -> ToolResult:
    """One ``fibric.batch`` item (``{"ok", "content", "meta"?}``) as ``call`` would return it."""
    if not isinstance(item, dict) or not isinstance(item.get("ok"), bool):
        return _fail(ConnectorErrorCode.UPSTREAM_ERROR, "malformed batch item", t0)
    content = item.get("content")
    if item["ok"]:
        return ToolResult(True, content, None, None, _ms(t0))
    code, message, status = classify_tool_error(content)
    return _fail(code, message, t0, status=status, content=content)


def result_payload(structured: Any, texts: list[str]) -> Any:
    """A tool result's value: structured content, else the text parsed as JSON, else text."""
    if structured is not None:
        return structured
    if len(texts) == 1:
        try:
            return json.loads(texts[0])
        except ValueError:
            return texts[0]
    return texts or None


def classify_tool_error(payload: Any) -> tuple[str, str, int | None]:
    """(code, message, upstream status) of an ``isError`` result."""
    parsed = parse_error_payload(payload)
    if parsed is not None:
        return parsed
    text = payload if isinstance(payload, str) else json.dumps(payload, default=str)
    # A server not built on our toolkit: SDK argument validation reads "validation error".
    if "validation error" in text.lower():
        return ConnectorErrorCode.INVALID_ARGS, text[:MAX_ERROR_CHARS], None
    if text.startswith("Unknown tool"):
        return ConnectorErrorCode.UNKNOWN_TOOL, text[:MAX_ERROR_CHARS], None
    return ConnectorErrorCode.UPSTREAM_ERROR, text[:MAX_ERROR_CHARS], None


def classify_mcp_error(exc: MCPError) -> str:
    code = exc.error.code
    if code == REQUEST_TIMEOUT:
        return ConnectorErrorCode.TIMEOUT
    if code == CONNECTION_CLOSED:
        return ConnectorErrorCode.CONNECTOR_CRASHED
    if code == INVALID_PARAMS:
        return ConnectorErrorCode.INVALID_ARGS
    if code == METHOD_NOT_FOUND:
        return ConnectorErrorCode.UNKNOWN_TOOL
    return ConnectorErrorCode.UPSTREAM_ERROR


def redact(text: str, credentials: dict[str, Any]) -> str:
    """``text`` with every credential value masked (for error text from third-party code)."""
    for name, value in credentials.items():
        if name == "type":  # "api_key" / "oauth2" / "basic": a label, not a secret
            continue
        if isinstance(value, str) and len(value) >= MIN_REDACT_CHARS:
            text = text.replace(value, "***")
    return text


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


def _fail(
    code: str, message: str, t0: float, *, status: int | None = None, content: Any = None
) -> ToolResult:
    return ToolResult(False, content, str(code), message, _ms(t0), status)


def _unknown_connector(instance_id: str, t0: float) -> ToolResult:
    return _fail(
        ConnectorErrorCode.UNKNOWN_CONNECTOR, f"connector {instance_id} is not running here", t0
    )


def _wire_args(
    conn: _Connector,
    tool: str,
    args: dict,
    idempotency_key: str | None,
    dry_run: bool,
    t0: float,
) -> dict | ToolResult:
    """The arguments ``tool`` is sent with, or the failure that stops the call here."""
    info = conn.tools.get(tool)
    if info is None:
        return _fail(
            ConnectorErrorCode.UNKNOWN_TOOL, f"{conn.spec.listing.id} has no tool {tool!r}", t0
        )
    if not info.side_effect:
        return args
    if idempotency_key is None and not dry_run:
        return _fail(
            ConnectorErrorCode.INVALID_ARGS,
            f"side-effecting tool {tool} needs an idempotency_key",
            t0,
        )
    return {
        **args,
        # A dry run writes nothing, so its key only satisfies the schema.
        "idempotency_key": idempotency_key or f"dry-run:{uuid.uuid4().hex}",
        "dry_run": dry_run,
    }


def _child_pid(marker: str) -> int | None:
    """The pid of our child process with the ``NAME=value`` entry ``marker`` in its
    environment (Linux /proc; None elsewhere). Only entries are compared, none is kept."""
    me = os.getpid()
    needle = marker.encode()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
            if ppid != me:
                continue
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    return int(name)
        except (OSError, ValueError):
            continue
    return None


# ---- one MCP session ------------------------------------------------------------------------
class _Session:
    """One client session (one server process for stdio), owned by a dedicated task so the
    SDK's task groups are entered and left in the same task."""

    def __init__(self, conn: _Connector, index: int) -> None:
        self.conn = conn
        self.index = index
        self.session: ClientSession | None = None
        self.tools: list[MCPTool] = []
        self.pid: int | None = None
        self.dead = False
        self.ping_failures = 0
        self._stop = asyncio.Event()
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.session is not None and not self.dead

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        # A start that timed out may still fail later: mark that outcome as seen.
        started.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._task = asyncio.create_task(
            self._own(started), name=f"mcp-session:{self.conn.spec.instance_id}:{self.index}"
        )
        try:
            await asyncio.wait_for(asyncio.shield(started), START_TIMEOUT_S)
        except BaseException:
            await self.close()
            raise

    async def _own(self, started: asyncio.Future[None]) -> None:
        spec = self.conn.spec
        try:
            async with contextlib.AsyncExitStack() as stack:
                if spec.remote_url:
                    # Checked before the client exists, so a refused URL fails the start at once
                    # (the client's transport checks again at every connection).
                    await check_target_async(spec.remote_url, livemode=spec.egress_livemode)
                    headers = {}
                    secret = credential_secret(spec.credentials)
                    if secret:
                        headers["Authorization"] = f"Bearer {secret}"
                    client = await stack.enter_async_context(
                        egress_client(
                            spec.remote_url,
                            livemode=spec.egress_livemode,
                            lib=httpx2,  # the MCP SDK's client library
                            headers=headers,
                            timeout=httpx2.Timeout(
                                REMOTE_HTTP_TIMEOUT_S, read=REMOTE_HTTP_READ_TIMEOUT_S
                            ),
                        )
                    )
                    read, write = await stack.enter_async_context(
                        streamable_http_client(spec.remote_url, http_client=client)
                    )
                else:
                    marker = uuid.uuid4().hex
                    errlog = stack.enter_context(self.conn.open_stderr())
                    read, write = await stack.enter_async_context(
                        stdio_client(self.conn.stdio_params(marker), errlog=errlog)
                    )
                    self.pid = await asyncio.to_thread(_child_pid, f"{ENV_SPAWN_MARKER}={marker}")
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                listing = await session.list_tools()
                self.tools = list(listing.tools)
                self.session = session
                if not started.done():
                    started.set_result(None)
                await self._stop.wait()
        except BaseException as exc:  # noqa: BLE001 - reported through `started` or health
            if not started.done():
                started.set_exception(
                    exc if isinstance(exc, Exception) else ConnectorUnavailable(repr(exc))
                )
            elif not isinstance(exc, asyncio.CancelledError):
                self.conn.last_error = f"session ended: {type(exc).__name__}"
        finally:
            self.dead = True
            self.session = None
            self._closed.set()

    def mark_dead(self, reason: str) -> None:
        if not self.dead:
            self.dead = True
            self.conn.last_error = reason
            log.warning(
                "connector %s session %d died: %s", self.conn.spec.instance_id, self.index, reason
            )

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            try:
                # stdio_client's own shutdown is bounded (stdin close, SIGTERM, SIGKILL).
                await asyncio.wait_for(asyncio.shield(self._closed.wait()), SESSION_CLOSE_TIMEOUT_S)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task


# ---- one installed connector ----------------------------------------------------------------
@dataclass
class _Connector:
    spec: ConnectorSpec
    fingerprint: str
    runtime: ConnectorRuntime
    sem: asyncio.Semaphore
    sessions: list[_Session | None] = field(default_factory=list)
    tools: dict[str, ToolInfo] = field(default_factory=dict)
    restarts: int = 0
    starts: int = 0
    failed_starts: int = 0
    in_flight: int = 0
    last_error: str | None = None
    next_start_at: float = 0.0
    rr: int = 0
    batch: bool = False  # the server lists the toolkit's batch tool
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    restart_task: asyncio.Task[None] | None = None
    closed: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set when in_flight == 0

    @property
    def state_dir(self) -> Path:
        return self.runtime.state_dir / self.spec.instance_id

    def open_stderr(self) -> TextIO:
        d = self.state_dir
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = d / STDERR_FILE
        with contextlib.suppress(OSError):
            if path.stat().st_size > STDERR_ROTATE_BYTES:
                path.replace(path.with_suffix(".log.1"))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8")

    def stdio_params(self, marker: str) -> StdioServerParameters:
        server = self.spec.listing.server
        if server is None or not server.module:
            raise ConnectorUnavailable(f"listing {self.spec.listing.id} ships no server")
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        # the exporter, sampler and batch settings of our tracing (schemas/tracing.py): the
        # server continues each call's trace; it names itself (never the worker's service name)
        env.update(
            {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}
            if tracing.ENABLED
            else {}
        )
        env.pop("OTEL_SERVICE_NAME", None)
        env.update(
            {
                ENV_CONFIG: json.dumps(self.spec.config),
                ENV_CREDENTIALS: json.dumps(self.spec.credentials),
                ENV_STATE_DIR: str(self.state_dir),
                ENV_INSTANCE: self.spec.instance_id,
                ENV_LIVEMODE: "true" if self.spec.egress_livemode else "false",
                ENV_SPAWN_MARKER: marker,
            }
        )
        # argv carries only the interpreter and the module: never a secret.
        return StdioServerParameters(command=sys.executable, args=["-m", server.module], env=env)

    def live_sessions(self) -> list[_Session]:
        return [s for s in self.sessions if s is not None and s.alive]

    def pick(self) -> _Session | None:
        live = self.live_sessions()
        if not live:
            return None
        if len(live) == 1:
            return live[0]
        self.rr = (self.rr + 1) % len(live)
        return live[self.rr]

    async def fill(self) -> None:
        """Start every missing or dead session (under the lock), with crash-loop backoff."""
        async with self.lock:
            if self.closed:
                raise ConnectorUnavailable("connector was removed")
            n = self.runtime.sessions_per_connector
            if len(self.sessions) < n:
                self.sessions.extend([None] * (n - len(self.sessions)))
            todo = [i for i, s in enumerate(self.sessions) if s is None or not s.alive]
            if not todo:
                return
            wait = self.next_start_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            for i in todo:
                old = self.sessions[i]
                if old is not None:
                    await old.close()
                    self.restarts += 1
                session = _Session(self, i)
                try:
                    await session.start()
                except Exception as exc:
                    self.failed_starts += 1
                    detail = redact(str(exc), self.spec.credentials)
                    self.last_error = f"start failed: {type(exc).__name__}: {detail}"[
                        :MAX_ERROR_CHARS
                    ]
                    delay = RESTART_BACKOFF_BASE_S * 2 ** (self.failed_starts - 1)
                    self.next_start_at = time.monotonic() + min(delay, RESTART_BACKOFF_MAX_S)
                    self.sessions[i] = None
                    raise ConnectorUnavailable(self.last_error) from None
                self.failed_starts = 0
                self.starts += 1
                self.sessions[i] = session
                self.tools = {t.name: tool_info(t) for t in session.tools if not is_reserved(t)}
                self.batch = supports_batch(session.tools)

    def schedule_restart(self) -> None:
        if self.closed or (self.restart_task is not None and not self.restart_task.done()):
            return

        async def restart() -> None:
            with contextlib.suppress(ConnectorUnavailable):
                await self.fill()

        self.restart_task = asyncio.create_task(restart())

    async def close(self, drain_s: float) -> None:
        self.closed = True
        if self.in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), drain_s)
        if self.restart_task is not None:
            self.restart_task.cancel()
            with contextlib.suppress(BaseException):
                await self.restart_task
        async with self.lock:
            for s in self.sessions:
                if s is not None:
                    await s.close()
            self.sessions = []


# ---- the runtime ----------------------------------------------------------------------------
class ConnectorRuntime:
    def __init__(
        self,
        *,
        state_dir: Path,
        max_in_flight: int = 16,
        call_timeout_s: float = 10.0,
        sessions_per_connector: int = 1,
        health_interval_s: float = HEALTH_INTERVAL_S,
    ) -> None:
        if max_in_flight < 1 or sessions_per_connector < 1:
            raise ValueError("max_in_flight and sessions_per_connector must be >= 1")
        self.state_dir = Path(state_dir)
        self.max_in_flight = max_in_flight
        self.call_timeout_s = call_timeout_s
        self.sessions_per_connector = sessions_per_connector
        self.health_interval_s = health_interval_s
        self._conns: dict[str, _Connector] = {}
        self._health_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # ---- lifecycle -----------------------------------------------------------------------
    async def ensure(self, spec: ConnectorSpec) -> None:
        """Start the connector's session(s), or restart them if its config/creds changed.
        Raises ``ConnectorUnavailable`` if the server cannot be started."""
        fp = spec_fingerprint(spec)
        conn = self._conns.get(spec.instance_id)
        if conn is not None and conn.fingerprint == fp:
            if len(conn.live_sessions()) < self.sessions_per_connector:
                await conn.fill()
            return
        new = _Connector(
            spec=spec, fingerprint=fp, runtime=self, sem=asyncio.Semaphore(self.max_in_flight)
        )
        self._conns[spec.instance_id] = new
        if conn is not None:
            self._spawn(conn.close(DRAIN_TIMEOUT_S))
        self._ensure_health_task()
        await new.fill()

    async def remove(self, instance_id: str) -> None:
        """Stop the instance's server(s) after in-flight calls drain (bounded); no-op if absent."""
        conn = self._conns.pop(instance_id, None)
        if conn is not None:
            await conn.close(DRAIN_TIMEOUT_S)

    async def close(self) -> None:
        """Stop the health check and every server now (in-flight calls get connector_crashed)."""
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(BaseException):
                await self._health_task
            self._health_task = None
        conns, self._conns = list(self._conns.values()), {}
        await asyncio.gather(*(c.close(0.0) for c in conns), return_exceptions=True)
        for t in list(self._background):
            with contextlib.suppress(BaseException):
                await t

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- reading -------------------------------------------------------------------------
    async def tools(self, instance_id: str) -> list[ToolInfo]:
        """The tools as the server lists them (flags from its ``_meta``/annotations).
        ``KeyError`` if never ensure()d; ``ConnectorUnavailable`` if it cannot start."""
        conn = self._conns.get(instance_id)
        if conn is None:
            raise KeyError(instance_id)
        if not conn.tools:
            await conn.fill()
        return list(conn.tools.values())

    def health(self) -> dict[str, dict]:
        """Per instance: alive, restarts, in_flight, last_error (+ listing, transport, pids)."""
        out: dict[str, dict] = {}
        for iid, c in self._conns.items():
            live = c.live_sessions()
            out[iid] = {
                "alive": len(live) == self.sessions_per_connector,
                "restarts": c.restarts,
                "in_flight": c.in_flight,
                "last_error": c.last_error,
                "listing": c.spec.listing.id,
                "transport": "streamable_http" if c.spec.remote_url else "stdio",
                "sessions": len(live),
                "pids": [s.pid for s in live if s.pid is not None],
            }
        return out

    # ---- calling -------------------------------------------------------------------------
    async def call(
        self,
        instance_id: str,
        tool: str,
        args: dict,
        *,
        idempotency_key: str | None = None,
        dry_run: bool = False,
        timeout_s: float | None = None,
    ) -> ToolResult:
        """Call one tool. Side-effecting tools get ``idempotency_key`` and ``dry_run`` added to
        their arguments (a dry run without a key gets a throwaway one). Never raises for tool or
        transport failures: ``ok=False`` with ``error_code`` from ``ConnectorErrorCode``."""
        t0 = time.perf_counter()
        conn = self._conns.get(instance_id)
        if conn is None:
            return _unknown_connector(instance_id, t0)
        deadline = t0 + (self.call_timeout_s if timeout_s is None else timeout_s)
        if not conn.tools:  # never started yet (or every start failed): flags unknown
            failed = await self._start_within(conn, deadline, t0)
            if failed is not None:
                return failed
        wire_args = _wire_args(conn, tool, args, idempotency_key, dry_run, t0)
        if isinstance(wire_args, ToolResult):
            return wire_args
        return await self._in_slot(conn, 1, tool, wire_args, deadline, t0)

    async def call_many(
        self,
        instance_id: str,
        calls: list[tuple[str, dict, str | None]],
        timeout_s: float | None = None,
        traces: list[str | None] | None = None,
    ) -> list[ToolResult]:
        """Call many tools of one instance: ``calls[i] = (tool, args, idempotency_key)``, result
        i answers call i with ``call``'s semantics (never raises for tool or transport failures;
        one item's failure is that item's result). One ``timeout_s`` covers the whole batch.

        With a batch-capable server (every FibricServer): one MCP request per
        ``BATCH_MAX_CALLS`` calls, which the server journals as a batch (server.py). Otherwise
        concurrent ``call``s bounded by ``max_in_flight``; calls that share a key run one
        after the other, never concurrently. ``traces[i]``: call i's W3C ``traceparent`` (when
        traced), sent in its batch item's ``_meta`` or its request's ``params._meta``."""
        t0 = time.perf_counter()
        if not calls:
            return []
        conn = self._conns.get(instance_id)
        if conn is None:
            return [_unknown_connector(instance_id, t0) for _ in calls]
        deadline = t0 + (self.call_timeout_s if timeout_s is None else timeout_s)
        if not conn.tools:
            failed = await self._start_within(conn, deadline, t0)
            if failed is not None:
                return [dataclasses.replace(failed) for _ in calls]
        results: list[ToolResult | None] = [None] * len(calls)
        wire: list[tuple[int, str, dict, str | None]] = []  # (index, tool, args, key)
        for i, (tool, args, key) in enumerate(calls):
            wire_args = _wire_args(conn, tool, args, key, False, t0)
            if isinstance(wire_args, ToolResult):
                results[i] = wire_args
            else:
                wire.append((i, tool, wire_args, key))
        if conn.batch:
            chunks = [wire[j : j + BATCH_MAX_CALLS] for j in range(0, len(wire), BATCH_MAX_CALLS)]
            await asyncio.gather(
                *(self._call_batch(conn, chunk, results, deadline, t0, traces) for chunk in chunks)
            )
        else:
            await self._call_each(conn, wire, results, deadline, t0, traces)
        return results  # type: ignore[return-value]  # every index is filled above

    async def _call_batch(
        self,
        conn: _Connector,
        chunk: list[tuple[int, str, dict, str | None]],
        results: list[ToolResult | None],
        deadline: float,
        t0: float,
        traces: list[str | None] | None = None,
    ) -> None:
        sent: list[dict[str, Any]] = [
            {"tool": tool, "arguments": args} for _, tool, args, _ in chunk
        ]
        if traces:  # each call's own trace context (schemas/tracing.py)
            for item, (i, *_) in zip(sent, chunk, strict=True):
                if traces[i]:
                    item["_meta"] = {TRACEPARENT: traces[i]}
        payload = {"calls": sent}
        answer = await self._in_slot(conn, len(chunk), BATCH_TOOL, payload, deadline, t0)
        items = answer.content.get("results") if answer.ok and answer.content else None
        if not answer.ok or not isinstance(items, list) or len(items) != len(chunk):
            # transport failure (connector_crashed, timeout, ...) or a refused batch: no item
            # was answered, each gets the batch's failure
            if answer.ok:
                answer = _fail(ConnectorErrorCode.UPSTREAM_ERROR, "malformed batch answer", t0)
            for i, *_ in chunk:
                results[i] = dataclasses.replace(answer)
            return
        for (i, *_), item in zip(chunk, items, strict=True):
            results[i] = batch_item_result(item, t0)

    async def _call_each(
        self,
        conn: _Connector,
        wire: list[tuple[int, str, dict, str | None]],
        results: list[ToolResult | None],
        deadline: float,
        t0: float,
        traces: list[str | None] | None = None,
    ) -> None:
        """Fallback: one request per call, concurrently; the calls of one key in order."""
        chains: dict[Any, list[tuple[int, str, dict]]] = {}
        for i, tool, args, key in wire:
            chains.setdefault(key if key is not None else ("no-key", i), []).append((i, tool, args))

        async def run(chain: list[tuple[int, str, dict]]) -> None:
            for i, tool, args in chain:
                meta = {TRACEPARENT: traces[i]} if traces and traces[i] else None
                results[i] = await self._in_slot(conn, 1, tool, args, deadline, t0, meta)

        await asyncio.gather(*(run(c) for c in chains.values()))

    async def _in_slot(
        self,
        conn: _Connector,
        weight: int,
        tool: str,
        args: dict,
        deadline: float,
        t0: float,
        meta: dict[str, Any] | None = None,
    ) -> ToolResult:
        """One MCP request inside one of the connector's ``max_in_flight`` slots; ``weight``
        calls count as in flight meanwhile (health, draining)."""
        conn.in_flight += weight
        conn.idle.clear()
        try:
            if conn.sem.locked():  # only a waiting call pays for wait_for's extra task
                try:
                    await asyncio.wait_for(
                        conn.sem.acquire(), max(deadline - time.perf_counter(), 0)
                    )
                except TimeoutError:
                    return _fail(
                        ConnectorErrorCode.TIMEOUT, "timed out waiting for a free call slot", t0
                    )
            else:
                await conn.sem.acquire()
            try:
                return await self._call_session(conn, tool, args, deadline, t0, meta)
            finally:
                conn.sem.release()
        finally:
            conn.in_flight -= weight
            if not conn.in_flight:
                conn.idle.set()

    @staticmethod
    async def _start_within(conn: _Connector, deadline: float, t0: float) -> ToolResult | None:
        """(Re)start the connector's sessions before ``deadline``; a failure result or None."""
        try:
            await asyncio.wait_for(conn.fill(), max(deadline - time.perf_counter(), 0))
        except TimeoutError:
            return _fail(ConnectorErrorCode.TIMEOUT, "timed out starting the connector", t0)
        except ConnectorUnavailable as exc:
            return _fail(ConnectorErrorCode.CONNECTOR_CRASHED, str(exc), t0)
        return None

    async def _call_session(
        self,
        conn: _Connector,
        tool: str,
        args: dict,
        deadline: float,
        t0: float,
        meta: dict[str, Any] | None = None,
    ) -> ToolResult:
        session = conn.pick()
        if session is None:
            failed = await self._start_within(conn, deadline, t0)
            if failed is not None:
                return failed
            session = conn.pick()
            if session is None:
                return _fail(ConnectorErrorCode.CONNECTOR_CRASHED, "connector is not running", t0)
        client = session.session
        if client is None:  # died between pick() and here
            conn.schedule_restart()
            return _fail(ConnectorErrorCode.CONNECTOR_CRASHED, "connector is not running", t0)
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return _fail(ConnectorErrorCode.TIMEOUT, "deadline passed before the call", t0)
        try:
            if meta is None:
                result = await client.call_tool(tool, args, read_timeout_seconds=remaining)
            else:  # the trace context in params._meta (schemas/tracing.py)
                result = await client.call_tool(
                    tool, args, read_timeout_seconds=remaining, meta=cast(RequestParamsMeta, meta)
                )
        except MCPError as exc:
            code = classify_mcp_error(exc)
            if code == ConnectorErrorCode.CONNECTOR_CRASHED:
                session.mark_dead("connection closed mid-call")
                conn.schedule_restart()
                return _fail(code, "connection to the connector closed during the call", t0)
            if code == ConnectorErrorCode.TIMEOUT:
                return _fail(code, f"no result within {remaining:.1f}s", t0)
            return _fail(code, exc.error.message[:MAX_ERROR_CHARS], t0)
        except Exception as exc:  # transport broke (closed stream, HTTP error, ...)
            session.mark_dead(f"transport error: {type(exc).__name__}")
            conn.schedule_restart()
            return _fail(
                ConnectorErrorCode.CONNECTOR_CRASHED, f"transport error: {type(exc).__name__}", t0
            )
        texts = [c.text for c in result.content if isinstance(c, TextContent)]
        payload = result_payload(result.structured_content, texts)
        if result.is_error:
            code, message, status = classify_tool_error(payload)
            return _fail(code, message, t0, status=status, content=payload)
        return ToolResult(True, payload, None, None, _ms(t0))

    # ---- health ----------------------------------------------------------------------------
    def _ensure_health_task(self) -> None:
        if self._health_task is None or self._health_task.done():
            self._health_task = asyncio.create_task(self._health_loop(), name="mcp-health")

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            for conn in list(self._conns.values()):
                try:
                    await self._check(conn)
                except Exception:  # the loop must survive anything one connector does
                    log.exception("health check of %s failed", conn.spec.instance_id)

    async def _check(self, conn: _Connector) -> None:
        if conn.closed:
            return
        needs_restart = len(conn.live_sessions()) < self.sessions_per_connector
        for s in conn.live_sessions():
            client = s.session
            if client is None:
                continue
            try:
                await client.send_request(
                    PingRequest(params=RequestParams()),
                    EmptyResult,
                    request_read_timeout_seconds=PING_TIMEOUT_S,
                )
                s.ping_failures = 0
            except MCPError as exc:
                if exc.error.code == CONNECTION_CLOSED:
                    s.mark_dead("health ping: connection closed")
                    needs_restart = True
                else:
                    s.ping_failures += 1
                    conn.last_error = f"health ping failed: {exc.error.message[:100]}"
            except Exception as exc:
                s.ping_failures += 1
                conn.last_error = f"health ping failed: {type(exc).__name__}"
            if s.ping_failures >= PING_FAILURES_BEFORE_RESTART:
                s.mark_dead("health ping: not answering")
                needs_restart = True
        if needs_restart:
            conn.schedule_restart()
