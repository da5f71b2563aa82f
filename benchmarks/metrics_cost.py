"""MET: what the Prometheus metrics and the OpenTelemetry traces cost (issue 13 items 1 and 2,
decisions §41, §45).

``python -m benchmarks.metrics_cost [--s1 N] [--s3 N] [--quick]``.

1. **S1 and S3 with metrics off, metrics on, and metrics on + tracing sampled at 100 %, same
   run.** Stacks alternate off, on, traced, off, on, traced (a fresh ``fibric up`` each,
   ``FIBRIC_METRICS=false`` / ``true``; "traced" also sets ``OTEL_EXPORTER_OTLP_ENDPOINT`` to an
   OTLP/HTTP receiver this process serves on loopback, which counts and discards the exports,
   and ``OTEL_TRACES_SAMPLER=always_on``; one stack cannot switch). On each: S1 (Kafka-native
   ingest, benchmarks/s1.py), then the loop's operator and a warm-up S3, then S3 (governed
   actions, benchmarks/loop.py). Ratios = mean(on) / mean(off) for metrics and mean(traced) /
   mean(on) for tracing (its cost on top of metrics): the shared machine drifts over minutes,
   and alternating cancels a drift in either direction to first order. On the "on" stacks
   every role's ``/metrics`` is scraped after the runs (series count, time).
2. **Scrape time at 10k label series**, in-process: a registry holding 10,000 series shaped like
   ours (a counter with 5,000 label children and a histogram with 312 children of 16 series
   each) rendered by ``generate_latest``, and fetched over HTTP from prometheus-client's own
   server on loopback (what a worker's endpoint is): median and max of 20.

Nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import PROCS, busy_cores, line, log
from benchmarks.stack import BenchStack

SCRAPE_SERIES = 10_000
SCRAPE_REPEATS = 20
ORDER = ("off", "on", "traced", "off", "on", "traced")
# Batch exports a little more often than the SDK's 5 s default, so a short quick-size run
# exports (and pays for) its spans within the run, as a long run would.
BENCH_BSP_SCHEDULE_DELAY_MS = "1000"


class OtlpSink:
    """An OTLP/HTTP receiver that answers 200 and keeps only counts (requests, bytes): the
    spans' cost is the roles' (build, encode, send), not a collector's."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        sink = self
        self.requests = 0
        self.bytes = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                sink.requests += 1
                sink.bytes += n
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()


def _stack(
    work: Path, partitions: int, mode: str, i: int, sink: OtlpSink | None = None
) -> BenchStack:
    st = BenchStack(work / f"met-{i}-{mode}", partitions)
    st.env["FIBRIC_METRICS"] = "false" if mode == "off" else "true"
    st.env.pop("FIBRIC_METRICS_PORT", None)  # `fibric up` picks free ports
    for k in [k for k in st.env if k.startswith("OTEL_")]:
        del st.env[k]
    if mode == "traced":
        assert sink is not None
        st.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink.port}"
        st.env["OTEL_TRACES_SAMPLER"] = "always_on"
        st.env["OTEL_BSP_SCHEDULE_DELAY"] = BENCH_BSP_SCHEDULE_DELAY_MS
    st.start()
    st.create_tenant("bench")
    return st


def _scrape_urls(st: BenchStack) -> dict[str, str]:
    text = (st.home / "up.out").read_text(errors="replace")
    m = re.search(r"^fibric: metrics at (.*)$", text, re.M)
    if not m:
        return {}
    return {role: url for url, role in re.findall(r"(http://\S+/metrics) \(([\w-]+)\)", m[1])}


def _scrape_live(st: BenchStack) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {}
    for role, url in _scrape_urls(st).items():
        times, n = [], 0
        for _ in range(5):
            t0 = time.perf_counter()
            r = httpx.get(url, timeout=30)
            times.append((time.perf_counter() - t0) * 1000)
            n = sum(len(f.samples) for f in text_string_to_metric_families(r.text))
        out[role] = {"series": n, "scrape_ms": round(statistics.median(times), 2)}
    return out


def run_pair(
    work: Path, partitions: int, s1_events: int, s1_warmup: int, s3_actions: int
) -> dict[str, Any]:
    from benchmarks import loop
    from benchmarks.s1 import run_s1

    runs: list[dict[str, Any]] = []
    sink = OtlpSink()
    for i, mode in enumerate(ORDER):
        st = _stack(work, partitions, mode, i, sink)
        exported = sink.bytes
        try:
            log(f"MET: run {i + 1}/{len(ORDER)}, {mode}")
            s1 = run_s1(st, work, s1_events, s1_warmup, confirm=False, profile=False)
            loop.ensure_setup(st)
            loop.run_s3(st, max(50, s3_actions // 5))  # warm-up: connector sessions, JIT of paths
            s3 = loop.run_s3(st, s3_actions)
            row = {
                "metrics": mode,
                "s1_events_per_s": s1.get("events_per_s"),
                "s3_actions_per_s": s3.get("actions_per_s"),
                "s3_complete": s3.get("complete"),
                "s3_p50_ms": s3.get("p50_ms"),
                "busy_cores_after": round(busy_cores(), 2),
            }
            if mode == "on":
                row["scrape"] = _scrape_live(st)
            runs.append(row)
            log(f"MET: {row}")
        finally:
            st.stop()  # the roles export what they buffered as they exit
        if mode == "traced":
            row["otlp_bytes"] = sink.bytes - exported
    sink.close()

    def mean(mode: str, key: str) -> float | None:
        vals = [r[key] for r in runs if r["metrics"] == mode and r.get(key)]
        return sum(vals) / len(vals) if vals else None

    out: dict[str, Any] = {"runs": runs, "s1_events": s1_events, "s3_actions": s3_actions}
    for key, short in (("s1_events_per_s", "s1"), ("s3_actions_per_s", "s3")):
        on, off, traced = mean("on", key), mean("off", key), mean("traced", key)
        out[f"{short}_on"], out[f"{short}_off"], out[f"{short}_traced"] = on, off, traced
        out[f"{short}_ratio"] = round(on / off, 3) if on and off else None
        # tracing's cost on top of metrics, and both against neither
        out[f"{short}_trace_ratio"] = round(traced / on, 3) if traced and on else None
        out[f"{short}_traced_vs_off"] = round(traced / off, 3) if traced and off else None
    out["otlp_bytes_per_traced_run"] = mean("traced", "otlp_bytes")
    last_on: dict[str, Any] = next((r["scrape"] for r in reversed(runs) if "scrape" in r), {})
    for role, s in last_on.items():
        out[f"live_{role}_series"] = s["series"]
        out[f"live_{role}_scrape_ms"] = s["scrape_ms"]
    return out


SPAN_EVENTS = 5_000


def span_cost(events: int = SPAN_EVENTS, ratio: float = 1.0) -> dict[str, Any]:
    """CPU per event of the spans one event makes with tracing on (ingest, plan, model, execute,
    MCP client call, the connector's tool call, three ledger inserts: 9 spans), made with the
    roles' own helpers (schemas/tracing.py) through the SDK's batch processor and the OTLP/HTTP
    exporter to a loopback receiver, flushed at the end: this process's CPU time (export thread
    included) per event. A figure of CPU, not of wall time, so a shared machine moves it little.
    ``ratio`` < 1: the same with ``parentbased_traceidratio`` sampling (what sampled-out events
    still cost: ids, context, the sampler's decision)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

    from schemas import tracing

    sink = OtlpSink()
    provider = TracerProvider(sampler=ParentBasedTraceIdRatio(ratio), shutdown_on_exit=False)
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"http://127.0.0.1:{sink.port}/v1/traces"),
            max_queue_size=events * 10,
        )
    )
    tracing.use(provider)
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(events):
            started = tracing.now_ns()
            ingest = tracing.start("ingest", None, kind="consumer", start_time=started)
            plan = tracing.start("plan", context=tracing.child_context(ingest))
            model = tracing.start("model rules", context=tracing.child_context(plan))
            model.end()
            tp = tracing.traceparent_of(plan)
            plan.end()
            ingest.end()
            execute = tracing.start("execute", tp, kind="consumer", attributes={"i": i})
            call = tracing.start("mcp tools/call x", context=tracing.child_context(execute))
            server = tracing.start("tools/call x", tracing.traceparent_of(call), kind="server")
            server.end()
            call.end()
            execute.end()
            heads = [tracing.header_value(tracing.headers_of(s)) for s in (ingest, plan, execute)]
            tracing.record_spans(
                "ledger.insert", [h for h in heads if h], started, tracing.now_ns()
            )
        provider.force_flush(60_000)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    finally:
        tracing.use(None)
        provider.shutdown()
        sink.close()
    return {
        "events": events,
        "ratio": ratio,
        "cpu_us_per_event": round(cpu / events * 1e6, 1),
        "wall_us_per_event": round(wall / events * 1e6, 1),
        "otlp_bytes_per_event": round(sink.bytes / events, 1),
    }


def _span_fields() -> dict[str, Any]:
    full, tenth = span_cost(), span_cost(ratio=0.1)
    log(f"MET spans: {full} {tenth}")
    return {
        "spans_cpu_us_per_event": full["cpu_us_per_event"],
        "spans_otlp_bytes_per_event": full["otlp_bytes_per_event"],
        "spans_10pct_cpu_us_per_event": tenth["cpu_us_per_event"],
    }


def scrape_at(series: int = SCRAPE_SERIES, repeats: int = SCRAPE_REPEATS) -> dict[str, Any]:
    """Render and serve a registry of ``series`` series shaped like Fibric's."""
    from prometheus_client import (
        CollectorRegistry,
        Counter,
        Histogram,
        disable_created_metrics,
        generate_latest,
    )
    from prometheus_client.exposition import start_http_server

    disable_created_metrics()  # as the roles do

    reg = CollectorRegistry()
    counter = Counter("bench_requests", "x", ["route_class", "method", "status"], registry=reg)
    hist = Histogram(
        "bench_call_seconds",
        "x",
        ["connector", "tool"],
        registry=reg,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    )
    per_hist_child = 16  # 13 buckets + +Inf + _sum + _count
    n_hist = series // 2 // per_hist_child
    n_counter = series - n_hist * per_hist_child
    for i in range(n_counter):
        counter.labels(f"c{i % 50}", "POST", str(i)).inc(i)
    for i in range(n_hist):
        hist.labels(f"listing-{i % 20}", f"tool.{i}").observe(0.01 * (i % 7))
    render, render_cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        body = generate_latest(reg)
        render.append((time.perf_counter() - t0) * 1000)
        render_cpu.append((time.process_time() - c0) * 1000)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=reg)
    port = server.server_address[1]
    fetch = []
    try:
        with httpx.Client(timeout=30) as c:
            for _ in range(repeats):
                t0 = time.perf_counter()
                r = c.get(f"http://127.0.0.1:{port}/metrics")
                fetch.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200
    finally:
        server.shutdown()
        thread.join(5)
    samples = sum(1 for ln in body.splitlines() if ln and not ln.startswith(b"#"))
    return {
        "series": samples,
        "bytes": len(body),
        "render_ms_p50": round(statistics.median(render), 2),
        "render_ms_max": round(max(render), 2),
        # CPU time of the render: what the scrape costs the role, without the waits for a CPU
        # that a loaded machine adds to the wall-clock figures
        "render_cpu_ms_p50": round(statistics.median(render_cpu), 2),
        "http_ms_p50": round(statistics.median(fetch), 2),
        "http_ms_max": round(max(fetch), 2),
    }


FIELDS = (
    "busy_cores_before",
    "s1_off",
    "s1_on",
    "s1_ratio",
    "s3_off",
    "s3_on",
    "s3_ratio",
    "s1_traced",
    "s1_trace_ratio",
    "s1_traced_vs_off",
    "s3_traced",
    "s3_trace_ratio",
    "s3_traced_vs_off",
    "otlp_bytes_per_traced_run",
    "spans_cpu_us_per_event",
    "spans_otlp_bytes_per_event",
    "spans_10pct_cpu_us_per_event",
    "live_api_series",
    "live_api_scrape_ms",
    "live_worker-1_series",
    "live_worker-1_scrape_ms",
    "scrape_10k_series",
    "scrape_10k_render_ms_p50",
    "scrape_10k_render_cpu_ms_p50",
    "scrape_10k_http_ms_p50",
    "scrape_10k_http_ms_max",
)


def run(work: Path, partitions: int, s1_events: int, s1_warmup: int, s3_actions: int) -> dict:
    out: dict[str, Any] = {"busy_cores_before": round(busy_cores(), 2)}
    out.update(_span_fields())
    sc = scrape_at()
    out.update({f"scrape_10k_{k}": v for k, v in sc.items()})
    out.update(run_pair(work, partitions, s1_events, s1_warmup, s3_actions))
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.metrics_cost")
    p.add_argument("--s1", type=int, default=60_000, help="S1 events per run")
    p.add_argument("--s3", type=int, default=3_000, help="S3 actions per run")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--scrape-only", action="store_true")
    p.add_argument("--spans-only", action="store_true", help="only the in-process span cost")
    p.add_argument("--quick", action="store_true", help="S1 and S3 at the suite's quick sizes")
    a = p.parse_args()
    if a.quick:
        from benchmarks.common import Sizes

        q = Sizes.quick()
        a.s1, a.s3 = q.s1_events, q.s3_actions
    try:
        if a.spans_only:
            r = {"busy_cores_before": round(busy_cores(), 2)}
            r.update(_span_fields())
        elif a.scrape_only:
            r = {"busy_cores_before": round(busy_cores(), 2)}
            r.update({f"scrape_10k_{k}": v for k, v in scrape_at().items()})
        else:
            with tempfile.TemporaryDirectory(prefix="fibric-met-") as d:
                r = run(Path(d), a.partitions, a.s1, max(500, a.s1 // 20), a.s3)
        log(f"MET: {r}")
        print(line("MET", [(k, r.get(k)) for k in FIELDS]), flush=True)
    finally:
        PROCS.stop_all()


if __name__ == "__main__":
    main()
