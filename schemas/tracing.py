"""Trace context across Fibric's hops, and the process's tracer (decisions §45).

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set:
each role's entry point calls :func:`configure` once; until it succeeds :data:`ENABLED` is False
and every call site checks that flag once per request or batch, so the off path imports no SDK
and builds no span or context object. On, the OpenTelemetry SDK exports spans over OTLP/HTTP in
a background thread (the standard ``OTEL_*`` variables configure exporter, sampler and batch
processor); ``service.name`` is ``OTEL_SERVICE_NAME`` or ``fibric-<role>``.

The wire contract (W3C Trace Context): a record Fibric produces to Kafka in a traced step
carries a ``traceparent`` header naming the span that produced it; an MCP tool call carries it
in ``params._meta`` and each ``fibric.batch`` item in its own ``_meta``. An action also keeps
the ``traceparent`` of the plan span that proposed it (``ActionRecord.traceparent``), so an
action run after an approval continues its event's trace, and a receipt's ``trace_id`` is the
trace id of that ``traceparent`` when it was sampled (null otherwise, and always when off).

This module sits in ``schemas`` (the lowest layer) because every role uses it: api, worker,
ledger sink and the connector servers. It never logs a span's attributes and never puts a
secret in one.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

ENABLED = False  # set by configure(); read by every call site once per request or batch
TRACEPARENT = "traceparent"  # Kafka header and MCP _meta key
_HEADER = TRACEPARENT.encode()
# W3C traceparent, version 00: version-trace_id-parent_id-flags (lower-case hex)
_TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
# The MCP SDK's own spans (one per JSON-RPC message: pings every few seconds, tools/list, the
# batch request as a whole) are turned off when the SDK lets us (decisions §45): Fibric makes
# the spans that follow one event, per call, including each call inside a batch.
MCP_SDK_TRACER = "mcp-python-sdk"

_tracer: Any = None
_provider: Any = None


def endpoint_configured(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def configure(role: str, **attributes: str) -> bool:
    """Install the SDK tracer provider with the OTLP/HTTP exporter when an endpoint is set.
    Idempotent; returns whether tracing is on. ``attributes`` are added to the resource."""
    if ENABLED:
        return True
    if not endpoint_configured():
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME") or f"fibric-{role}",
            "fibric.role": role,
            "process.pid": os.getpid(),
            **attributes,
        }
    )
    try:
        from opentelemetry.sdk.trace import _TracerConfig

        def config_of(scope: Any) -> Any:
            return _TracerConfig(is_enabled=scope.name != MCP_SDK_TRACER)

        provider = TracerProvider(resource=resource, _tracer_configurator=config_of)
    except (ImportError, TypeError):  # an SDK without tracer configs: the MCP spans stay on
        provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    use(provider)
    return True


def use(provider: Any) -> None:
    """Trace with ``provider`` (configure() calls this; tests pass one with an in-memory
    exporter). ``use(None)`` turns tracing off again."""
    global ENABLED, _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer("fibric") if provider is not None else None
    ENABLED = provider is not None


def shutdown() -> None:
    """Export what is buffered (the SDK also does this at exit)."""
    if _provider is not None:
        _provider.shutdown()


def tracer() -> Any:
    assert _tracer is not None, "tracing.configure() first"
    return _tracer


def now_ns() -> int:
    return time.time_ns()


# ---- the wire contract: pure string functions --------------------------------------------------
def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id a receipt carries: the 32-hex trace id of a *sampled* ``traceparent``."""
    if not traceparent:
        return None
    m = _TRACEPARENT_RE.match(traceparent)
    if m is None or not int(m.group(3), 16) & 1:
        return None
    return m.group(1)


def header_value(headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None) -> str | None:
    """The ``traceparent`` of a Kafka record's headers (aiokafka/Faust give (str, bytes) pairs)."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for k, v in items:
        if k == TRACEPARENT and v:
            return v.decode("ascii", "replace") if isinstance(v, bytes | bytearray) else str(v)
    return None


def meta_value(meta: Any) -> str | None:
    """The ``traceparent`` of an MCP ``_meta`` object (a dict, or None)."""
    if isinstance(meta, Mapping):
        v = meta.get(TRACEPARENT)
        return v if isinstance(v, str) else None
    return None


# ---- spans (only called when ENABLED) ------------------------------------------------------------
def parent(traceparent: str | None) -> Any:
    """The OpenTelemetry context whose parent is ``traceparent`` (None: start a new trace)."""
    if not traceparent or _TRACEPARENT_RE.match(traceparent) is None:
        return None
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

    ctx = SpanContext(
        trace_id=int(traceparent[3:35], 16),
        span_id=int(traceparent[36:52], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(traceparent[53:55], 16)),
    )
    if not ctx.is_valid:
        return None
    return set_span_in_context(NonRecordingSpan(ctx))


def child_context(span: Any) -> Any:
    from opentelemetry.trace import set_span_in_context

    return set_span_in_context(span)


def traceparent_of(span: Any) -> str | None:
    sc = span.get_span_context()
    if not sc.is_valid:
        return None
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


def headers_of(span: Any) -> list[tuple[str, bytes]] | None:
    """The Kafka headers a record produced inside ``span`` carries."""
    tp = traceparent_of(span)
    return [(TRACEPARENT, tp.encode())] if tp else None


def start(
    name: str,
    traceparent: str | None = None,
    *,
    context: Any = None,
    kind: str = "internal",
    start_time: int | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Any:
    """Start a span (ended by the caller) under ``context`` or the ``traceparent``'s span."""
    from opentelemetry.trace import SpanKind

    return tracer().start_span(
        name,
        context=context if context is not None else parent(traceparent),
        kind=getattr(SpanKind, kind.upper()),
        attributes=attributes,
        start_time=start_time,
    )


def fail(span: Any, description: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, description))


def record_spans(
    name: str,
    traceparents: Iterable[str],
    start_time: int,
    end_time: int,
    attributes: Mapping[str, Any] | None = None,
) -> None:
    """One finished span per distinct ``traceparent``, all with the same start and end (a batch
    step such as a ledger insert, shown in the trace of every record it stored)."""
    for tp in dict.fromkeys(traceparents):
        span = start(name, tp, kind="consumer", start_time=start_time, attributes=attributes)
        span.end(end_time=end_time)
