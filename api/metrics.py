"""Prometheus metrics of the api role and its ``GET /metrics`` (docs/production.md "Metrics",
decisions §41).

Incremented on the request path (children bound once, a dict lookup per request): requests by
route class, method and status; request duration by route class; idempotency replays and
conflicts; rate-limit rejections. Read at scrape time from what the api holds anyway (no cost
per request or row): read-cache hits and misses, ledger rows per table, dead letters by
reason, what the ledger sink has left to store, approvals pending. The ledger sink's own batch
histograms live in ``ledger/metrics.py`` (same registry).

Label values are bounded: route classes (the rate-limit classes of ``opt["route_class"]``),
methods, statuses, table names, dead-letter reasons; never tenant ids or keys.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from litestar import Response, get
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from api.state import ApiState

# no *_created series: they double a scrape and no dashboard reads them
disable_created_metrics()

REQUEST_SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)
# Routes outside /v1 (no rate-limit class) and requests no route matched.
HEALTH = "health"
UNMATCHED = "unmatched"

REQUESTS = Counter(
    "fibric_api_requests",
    "Requests answered, by route class, method and status.",
    ["route_class", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "fibric_api_request_duration_seconds",
    "Time from a request's arrival to the end of its response (streams not timed).",
    ["route_class"],
    buckets=REQUEST_SECONDS_BUCKETS,
)
IDEMPOTENCY = Counter(
    "fibric_api_idempotency",
    "Idempotency-Key requests answered from the stored response or refused as a conflict.",
    ["result"],
)
RATE_LIMITED = Counter(
    "fibric_api_rate_limited", "Requests refused by the per-tenant rate budget.", ["route_class"]
)


class ApiMetrics:
    """The request-path metrics; the api holds ``None`` when metrics are off."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, int], Any] = {}
        self._seconds: dict[str, Any] = {}
        self._limited: dict[str, Any] = {}
        self.replayed = IDEMPOTENCY.labels("replayed")
        self.conflict = IDEMPOTENCY.labels("conflict")

    def request(self, route_class: str, method: str, status: int, seconds: float | None) -> None:
        key = (route_class, method, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = REQUESTS.labels(route_class, method, str(status))
        child.inc()
        if seconds is not None:
            hist = self._seconds.get(route_class)
            if hist is None:
                hist = self._seconds[route_class] = REQUEST_SECONDS.labels(route_class)
            hist.observe(seconds)

    def rate_limited(self, route_class: str) -> None:
        child = self._limited.get(route_class)
        if child is None:
            child = self._limited[route_class] = RATE_LIMITED.labels(route_class)
        child.inc()


def route_class_of(scope: dict) -> str:
    handler = scope.get("route_handler")
    if handler is None:
        return UNMATCHED
    return handler.opt.get("route_class") or HEALTH


class ApiMiddleware:
    """Counts and times every HTTP request (outermost, so 404s, 415s and errors count too).
    A response of ``text/event-stream`` is counted but not timed: its duration is the stream's
    life, not a latency."""

    def __init__(self, app: Any, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        seen = {"status": 500, "stream": False}

        async def send_watching(message: dict) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message.get("status", 200)
                for k, v in message.get("headers") or ():
                    if k.lower() == b"content-type" and v.startswith(b"text/event-stream"):
                        seen["stream"] = True
            await send(message)

        try:
            await self.app(scope, receive, send_watching)
        finally:
            elapsed = None if seen["stream"] else time.perf_counter() - started
            self.metrics.request(
                route_class_of(scope), scope.get("method", "GET"), int(seen["status"]), elapsed
            )


class ApiCollector(Collector):
    """Read at scrape time from the running api's state. Registered once per process; the
    lifespan points it at its state (and clears it at shutdown)."""

    def __init__(self) -> None:
        self.state: ApiState | None = None

    def describe(self) -> list[Metric]:
        return []  # the families depend on the state: no registration-time collision check

    def collect(self) -> Iterator[Metric]:
        state = self.state
        if state is None:
            return
        reads = state.reads
        cache = CounterMetricFamily(
            "fibric_api_read_cache",
            "Receipt list pages served from the read cache (hit) or read from ClickHouse (miss).",
            labels=["result"],
        )
        cache.add_metric(["hit"], reads.hits if reads else 0)
        cache.add_metric(["miss"], reads.misses if reads else 0)
        yield cache
        sink = state.sink
        rows = CounterMetricFamily(
            "fibric_ledger_rows",
            "Rows the ledger sink inserted, per table (duplicates: replayed rows skipped).",
            labels=["table"],
        )
        for table, n in sorted(sink.inserted.items()):
            rows.add_metric([table], n)
        yield rows
        dead = CounterMetricFamily(
            "fibric_dead_letters", "Dead letters stored in the ledger, by reason.", labels=["reason"]
        )
        for reason, n in sorted(sink.dead_letter_reasons.items()):
            dead.add_metric([reason], n)
        yield dead
        left = sink.lag_records()
        if left is not None:
            yield GaugeMetricFamily(
                "fibric_ledger_sink_lag_records",
                "Records on the ledger sink's partitions not yet stored.",
                value=left,
            )
        pending = list(state.view.pending_plans.values())
        yield GaugeMetricFamily(
            "fibric_approvals_pending", "Plans awaiting approval.", value=len(pending)
        )
        now = datetime.now(UTC)
        oldest = min((p.created_at for p in pending), default=None)
        yield GaugeMetricFamily(
            "fibric_approvals_oldest_pending_seconds",
            "Age of the oldest plan awaiting approval (0 when none).",
            value=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        )


COLLECTOR = ApiCollector()
_registered = False


def install(state: ApiState | None) -> None:
    global _registered
    COLLECTOR.state = state
    if not _registered:
        REGISTRY.register(COLLECTOR)
        _registered = True


@get("/metrics", operation_id="metrics", include_in_schema=False, sync_to_thread=False)
def metrics_endpoint() -> Response[bytes]:
    """Prometheus text exposition of this api process (no API key: scrape it from inside the
    network; docs/production.md "Metrics")."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
