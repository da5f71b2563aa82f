"""Scenario lines, target checks, ``results.json`` and the Markdown table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import line

# Issue 5's first bar: (metric, comparison, target)
TARGETS: dict[str, list[tuple[str, str, float]]] = {
    "S1": [("events_per_s", ">=", 10_000), ("kafka_ceiling_ratio", ">=", 0.10)],
    "S2": [("req_per_s", ">=", 3_000), ("p99_ms", "<=", 25.0)],
    "S3": [("actions_per_s", ">=", 2_000), ("ratio", ">=", 4.0)],
    "S4": [("dispositions_per_s", ">=", 20_000)],
    "S5": [("dispose_s", "<=", 1.0), ("connector_calls", "<=", 1)],
    "S6": [("p99_ms", "<=", 250.0)],
    "S7": [("first_event_s", "<=", 15.0)],
    "S8": [("req_per_s", ">=", 1_000), ("p99_ms", "<=", 50.0)],
    "S9": [("s1_scaling", ">=", 1.6)],
    "S3 RSS": [("worker_rss_mib", "<=", 1024)],
    # issue 9: actions/s >= 0.8 x (in-flight limit / latency), each entity single-flight
    "S3L": [("limit_ratio", ">=", 0.8), ("max_in_flight_per_entity", "<=", 1)],
    # issue 12: 1M stored receipts re-judged in well under a minute
    "replay": [("elapsed_s", "<=", 30.0)],
}
# S10 (peak RSS) is reported by S3 and S4; its target is checked on S3's figure.
TARGET_SOURCE = {"S3 RSS": "S3"}


# What one item is, per throughput scenario (its CPU figure is µs of CPU per item).
CPU_ITEM = {
    "naive": "event",
    "naive_exec": "action",
    "S1": "event",
    "S2": "request",
    "S3": "action",
    "S4": "disposition",
    "S3L": "action",
}
# The baseline doing the same logical work, measured in the same run.
CPU_BASELINE = {"S1": "naive", "S3": "naive_exec"}


def _cpu_fields(name: str, r: dict[str, Any]) -> list[tuple[str, Any]]:
    item = CPU_ITEM.get(name)
    if item is None:
        return []
    out = [
        (f"cpu_us_per_{item}", r.get("cpu_us_per_item")),
        (f"loadgen_cpu_us_per_{item}", r.get("loadgen_cpu_us_per_item")),
        ("cpu_floor_ratio", r.get("cpu_floor_ratio")),
    ]
    if name in CPU_BASELINE:
        out.append(("cpu_ratio_to_naive", r.get("cpu_ratio_to_baseline")))
    return out


def add_cpu_ratios(results: dict[str, Any]) -> None:
    """Each throughput scenario's CPU per item over the raw-client floor (the ceilings'
    consume→produce CPU per message, client + broker) and over its naive baseline's, both
    measured in the same run. Idempotent: called before every scenario line."""
    kafka = (results.get("ceilings") or {}).get("kafka") or {}
    floor = kafka.get("floor_cpu_us_per_msg")
    for name in CPU_ITEM:
        r = results.get(name)
        if not r or "error" in r or "skipped" in r:
            continue
        cpu = r.get("cpu_us_per_item")
        r["floor_cpu_us_per_msg"] = floor
        r["cpu_floor_ratio"] = round(cpu / floor, 2) if cpu and floor else None
        base_name = CPU_BASELINE.get(name)
        if base_name:
            base = results.get(base_name) or {}
            b = base.get("cpu_us_per_item") if "error" not in base else None
            r["baseline_cpu_us_per_item"] = b
            r["cpu_ratio_to_baseline"] = round(cpu / b, 2) if cpu and b else None


def check(metric: str, op: str, target: float, value: Any) -> dict[str, Any]:
    if value is None:
        return {
            "metric": metric,
            "target": f"{op} {target:g}",
            "value": None,
            "met": False,
            "by": None,
        }
    met = value >= target if op == ">=" else value <= target
    # how far off: the share of the target missing (>=) or exceeded (<=)
    by = (target - value) / target if op == ">=" else (value - target) / target
    return {
        "metric": metric,
        "target": f"{op} {target:g}",
        "value": value,
        "met": met,
        "by": None if met else round(by, 3),
    }


def scenario_line(name: str, r: dict[str, Any], refs: dict[str, Any]) -> str:
    if "error" in r:
        return line(name, [("status", "error")])
    if "skipped" in r:
        return line(name, [("status", "skipped")])
    if name == "ceilings":
        ch = r.get("clickhouse", {})
        k = r.get("kafka", {})
        return line(
            name,
            [
                ("produce_msgs_per_s", k.get("produce_msgs_per_s")),
                ("consume_msgs_per_s", k.get("consume_msgs_per_s")),
                ("consume_produce_msgs_per_s", k.get("consume_produce_msgs_per_s")),
                ("clickhouse_rows_per_s", ch.get("insert_rows_per_s")),
                ("msg_bytes", k.get("message_bytes")),
                ("floor_cpu_us_per_msg", k.get("floor_cpu_us_per_msg")),
                ("floor_client_cpu_us_per_msg", k.get("floor_client_cpu_us_per_msg")),
            ],
        )
    if name == "replay":
        return line(
            name,
            [
                (k, r.get(k))
                for k in (
                    "rows",
                    "rows_per_s",
                    "elapsed_s",
                    "cpu_s",
                    "query_s",
                    "judge_s",
                    "groups",
                    "flipped",
                    "naive_extrapolated_s",
                    "ratio_to_naive",
                )
            ],
        )
    if name == "globs":
        return line(
            name,
            [
                (k, r.get(k))
                for k in (
                    "us_1_segment",
                    "us_20_segments_typical",
                    "us_20_segments_hostile",
                    "typical_us_max",
                    "hostile_us_max",
                    "cached_us_max",
                    "max_segments",
                )
            ],
        )
    if name in ("policy", "S4G"):  # benchmarks/policy.py: every figure it returns
        return line(name, [(k, v) for k, v in r.items() if not isinstance(v, dict | list)])
    if name == "naive":
        return line(name, [("events_per_s", r.get("events_per_s")), *_cpu_fields(name, r)])
    if name == "S1":
        return line(
            name,
            [
                ("events_per_s", r.get("events_per_s")),
                ("steady_events_per_s", r.get("steady_events_per_s")),
                ("kafka_ceiling_ratio", r.get("kafka_ceiling_ratio")),
                ("naive_baseline", r.get("naive_baseline")),
                ("ratio", r.get("ratio")),
                ("clickhouse_ceiling_ratio", r.get("clickhouse_ceiling_ratio")),
                *_cpu_fields(name, r),
            ],
        )
    if name == "S2":
        return line(
            name,
            [
                ("req_per_s", r.get("req_per_s")),
                ("p50_ms", r.get("p50_ms")),
                ("p99_ms", r.get("p99_ms")),
                ("healthz_req_per_s", r.get("healthz_req_per_s")),
                ("healthz_ratio", r.get("healthz_ratio")),
                ("loadgen", r.get("loadgen")),
                ("loadgen_cpu", r.get("loadgen_cpu_share")),
                ("non_2xx", r.get("non_2xx")),
                *_cpu_fields(name, r),
                ("healthz_cpu_us_per_request", r.get("healthz_cpu_us_per_item")),
                ("idem_req_per_s", r.get("idem_req_per_s")),
                ("idem_p50_ms", r.get("idem_p50_ms")),
                ("idem_p99_ms", r.get("idem_p99_ms")),
                ("idem_healthz_ratio", r.get("idem_healthz_ratio")),
                ("idem_non_2xx", r.get("idem_non_2xx")),
                ("idem_cpu_us_per_request", r.get("idem_cpu_us_per_item")),
            ],
        )
    loop_fields = {
        "naive_exec": ("actions_per_s",),
        "config": ("p50_ms", "p99_ms", "writes"),
        "S3": (
            "actions_per_s",
            "naive_baseline",
            "ratio",
            "p50_ms",
            "p99_ms",
            "worker_rss_mib",
            "api_rss_mib",
        ),
        "S4": ("dispositions_per_s", "connector_calls", "worker_rss_mib", "api_rss_mib"),
        "S3L": (
            "actions_per_s",
            "target_actions_per_s",
            "limit_ratio",
            "in_flight_limit",
            "write_latency_ms",
            "entities",
            "store_max_in_flight",
            "max_in_flight_per_entity",
            "duplicate_writes",
            "p99_ms",
        ),
        "S5": ("dispose_s", "connector_calls", "receipts"),
        "S6": ("rate", "p50_ms", "p95_ms", "p99_ms"),
        "S7": ("first_event_s", "caught_up_s", "workers", "receipts", "sent", "missing_receipts"),
        "S8": (
            "req_per_s",
            "p50_ms",
            "p99_ms",
            "receipts_loaded",
            "uncached_req_per_s",
            "uncached_p99_ms",
            "load_rows_per_s",
            "non_2xx",
        ),
        "S9": (
            "s1_1w_events_per_s",
            "s1_2w_events_per_s",
            "s1_scaling",
            "s3_1w_actions_per_s",
            "s3_2w_actions_per_s",
            "s3_scaling",
        ),
    }
    if name in loop_fields:
        return line(name, [(k, r.get(k)) for k in loop_fields[name]] + _cpu_fields(name, r))
    return line(name, [])


def add_ratios(results: dict[str, Any]) -> None:
    """Each scenario's ratios to the ceilings and the baseline measured in the same run."""
    s1 = results.get("S1")
    if not s1 or "error" in s1:
        return
    ceil = results.get("ceilings") or {}
    naive = results.get("naive") or {}
    pipe = (ceil.get("kafka") or {}).get("consume_produce_msgs_per_s")
    ch = (ceil.get("clickhouse") or {}).get("insert_rows_per_s")
    nv = naive.get("events_per_s") if "error" not in naive else None
    ev = s1["events_per_s"]
    s1["kafka_ceiling_ratio"] = round(ev / pipe, 3) if pipe else None
    s1["clickhouse_ceiling_ratio"] = round(ev / ch, 3) if ch else None
    s1["naive_baseline"] = nv
    s1["ratio"] = round(ev / nv, 2) if nv else None


def add_loop_ratios(results: dict[str, Any]) -> None:
    s3, ne = results.get("S3"), results.get("naive_exec") or {}
    if not s3 or "error" in s3:
        return
    base = ne.get("actions_per_s") if "error" not in ne else None
    s3["naive_baseline"] = base
    s3["ratio"] = round(s3["actions_per_s"] / base, 2) if base and s3.get("actions_per_s") else None


# Other processes using more than this many cores during a measured window make it "contended".
CONTENDED_CORES = 0.3


def contention(results: dict[str, Any]) -> dict[str, float]:
    """Scenario → cores used by processes not ours during its window, where above the bar."""
    out = {}
    for name, r in results.items():
        if not isinstance(r, dict):
            continue
        cpu = r.get("cpu_cores") or {}
        if name == "ceilings":
            phases = ((r.get("kafka") or {}).get("cpu_cores") or {}).values()
            others = max((p.get("others", 0.0) for p in phases), default=0.0)
        else:
            others = cpu.get("others", 0.0)
        if others > CONTENDED_CORES:
            out[name] = others
    return out


def targets(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name, checks in TARGETS.items():
        r = results.get(TARGET_SOURCE.get(name, name))
        if r is None or "skipped" in r:
            continue
        out[name] = [check(m, op, t, None if "error" in r else r.get(m)) for m, op, t in checks]
    return out


def _v(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:,.3f}" if abs(x) < 10 else f"{x:,.0f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def markdown(doc: dict[str, Any]) -> str:
    res = doc["scenarios"]
    tg = doc.get("targets", {})
    m = doc["meta"]
    rows: list[tuple[str, str, Any, str, str]] = []

    def status(name: str, metric: str) -> tuple[str, str]:
        for c in tg.get(name, []):
            if c["metric"] == metric:
                if c["met"]:
                    return c["target"], "met"
                return c["target"], (
                    "missed" + (f" by {c['by'] * 100:.0f}%" if c["by"] is not None else "")
                )
        return "", ""

    def add(name: str, label: str, value: Any, key: str | None = None) -> None:
        t, s = status(name, key or label)
        rows.append((name, label, value, t, s))

    c = res.get("ceilings")
    if c and "error" not in c:
        k, ch = c.get("kafka", {}), c.get("clickhouse", {})
        add(
            "ceilings",
            f"raw aiokafka produce msgs/s ({k.get('message_bytes')} B)",
            k.get("produce_msgs_per_s"),
        )
        add("ceilings", "raw aiokafka consume msgs/s", k.get("consume_msgs_per_s"))
        add(
            "ceilings",
            "raw aiokafka consume→produce msgs/s (one process)",
            k.get("consume_produce_msgs_per_s"),
        )
        add(
            "ceilings",
            "ClickHouse bulk insert rows/s (chDB, events rows)",
            ch.get("insert_rows_per_s"),
        )
        add(
            "ceilings",
            "ledger-sink path rows/s (decode + dedup query + insert)",
            ch.get("sink_path_rows_per_s"),
        )
    n = res.get("naive")
    if n and "error" not in n:
        add("naive", "naive Faust pipeline events/s", n.get("events_per_s"))
    s1 = res.get("S1")
    if s1 and "error" not in s1:
        add("S1", "events/s, producer → in ClickHouse", s1.get("events_per_s"), "events_per_s")
        add("S1", "steady events/s into ClickHouse (10%–90% of N)", s1.get("steady_events_per_s"))
        add(
            "S1",
            "steady events/s onto the ledger topic (worker)",
            s1.get("worker_steady_events_per_s"),
        )
        add("S1", "kafka_ceiling_ratio", s1.get("kafka_ceiling_ratio"))
        add("S1", "ratio to naive baseline", s1.get("ratio"))
        add("S1", "max lag (events)", s1.get("max_lag_events"))
    s2 = res.get("S2")
    if s2 and "error" not in s2:
        add(
            "S2",
            f"POST /v1/events req/s ({s2.get('connections')} conns, {s2.get('loadgen')})",
            s2.get("req_per_s"),
            "req_per_s",
        )
        add("S2", "POST p50 ms", s2.get("p50_ms"), "p50_ms")
        add("S2", "POST p99 ms", s2.get("p99_ms"), "p99_ms")
        add("S2", "GET /healthz req/s (framework ceiling)", s2.get("healthz_req_per_s"))
        add("S2", "POST ÷ /healthz req/s (same run)", s2.get("healthz_ratio"))
        add("S2", "POST + Idempotency-Key req/s", s2.get("idem_req_per_s"))
        add("S2", "POST + Idempotency-Key p99 ms", s2.get("idem_p99_ms"))
        add("S2", "load generator CPU (share of its core)", s2.get("loadgen_cpu_share"))
    ok = {
        k: r
        for k, r in res.items()
        if isinstance(r, dict) and "error" not in r and "skipped" not in r
    }
    if "naive_exec" in ok:
        add("naive_exec", "naive Faust executor actions/s", ok["naive_exec"].get("actions_per_s"))
    if "config" in ok:
        add("config", "operator create → readable p50 ms", ok["config"].get("p50_ms"))
        add("config", "operator create → readable p99 ms", ok["config"].get("p99_ms"))
    if "S3" in ok:
        r = ok["S3"]
        add(
            "S3",
            "governed actions/s (rules model, MCP side effect)",
            r.get("actions_per_s"),
            "actions_per_s",
        )
        add("S3", "ratio to naive executor", r.get("ratio"), "ratio")
        add("S3", "event → receipt p99 ms (at saturation)", r.get("p99_ms"))
        t, st = status("S3 RSS", "worker_rss_mib")
        rows.append(("S10", "peak worker RSS MiB (during S3)", r.get("worker_rss_mib"), t, st))
        rows.append(("S10", "peak api RSS MiB (during S3)", r.get("api_rss_mib"), "", ""))
    if "S4" in ok:
        add(
            "S4",
            "BLOCK + DEDUP dispositions/s",
            ok["S4"].get("dispositions_per_s"),
            "dispositions_per_s",
        )
        add("S4", "connector calls", ok["S4"].get("connector_calls"))
    if "S5" in ok:
        add("S5", "657 flood: seconds to dispose all", ok["S5"].get("dispose_s"), "dispose_s")
        add("S5", "connector calls", ok["S5"].get("connector_calls"), "connector_calls")
    if "S6" in ok:
        r = ok["S6"]
        add("S6", f"event → receipt p50 ms at {_v(r.get('rate'))} actions/s", r.get("p50_ms"))
        add("S6", "event → receipt p95 ms", r.get("p95_ms"))
        add("S6", "event → receipt p99 ms", r.get("p99_ms"), "p99_ms")
    if "S8" in ok:
        r = ok["S8"]
        add(
            "S8",
            f"GET /v1/receipts req/s ({_v(r.get('receipts_loaded'))} stored, "
            f"{r.get('connections')} conns, {r.get('query_shapes')} pages)",
            r.get("req_per_s"),
            "req_per_s",
        )
        add("S8", "GET p50 ms", r.get("p50_ms"))
        add("S8", "GET p99 ms", r.get("p99_ms"), "p99_ms")
        add("S8", "uncached reads req/s (every request a new page)", r.get("uncached_req_per_s"))
        add("S8", "uncached reads p99 ms", r.get("uncached_p99_ms"))
        add("S8", "load: receipts/s through the ledger sink", r.get("load_rows_per_s"))
    if "S9" in ok:
        r = ok["S9"]
        add(
            "S9",
            "S1 events/s, 1 → 2 workers",
            f"{_v(r.get('s1_1w_events_per_s'))} → {_v(r.get('s1_2w_events_per_s'))}",
        )
        add("S9", "S1 scaling (2 workers / 1)", r.get("s1_scaling"), "s1_scaling")
        add(
            "S9",
            "S3 actions/s, 1 → 2 workers",
            f"{_v(r.get('s3_1w_actions_per_s'))} → {_v(r.get('s3_2w_actions_per_s'))}",
        )
        add("S9", "S3 scaling (2 workers / 1)", r.get("s3_scaling"))
    if "S7" in ok:
        r = ok["S7"]
        add(
            "S7",
            f"kill -9 → first receipt from the restarted worker, s ({r.get('workers')} workers)",
            r.get("first_event_s"),
            "first_event_s",
        )
        add("S7", "kill -9 → caught up, s", r.get("caught_up_s"))
    if "S3L" in ok:
        r = ok["S3L"]
        add(
            "S3L",
            f"governed actions/s, cn-magento, {_v(r.get('write_latency_ms'))} ms per store "
            f"write, {_v(r.get('entities'))} entities",
            r.get("actions_per_s"),
        )
        add(
            "S3L",
            f"share of in-flight limit ÷ latency ({r.get('in_flight_limit')} ÷ "
            f"{_v(r.get('write_latency_ms'))} ms = {_v(r.get('limit_actions_per_s'))}/s)",
            r.get("limit_ratio"),
            "limit_ratio",
        )
        add("S3L", "most store requests in flight at once", r.get("store_max_in_flight"))
        add(
            "S3L",
            "most requests in flight on one entity (single-flight: 1)",
            r.get("max_in_flight_per_entity"),
            "max_in_flight_per_entity",
        )
        add("S3L", "store writes beyond applied receipts", r.get("duplicate_writes"))
        add("S3L", "event → receipt p99 ms", r.get("p99_ms"))
    if "replay" in ok:
        r = ok["replay"]
        add("replay", f"receipt rows re-judged per s ({r.get('rows'):,} rows)", r.get("rows_per_s"))
        add("replay", "seconds for the whole replay", r.get("elapsed_s"), "elapsed_s")
        add("replay", "CPU s of the replay (chDB in process)", r.get("cpu_s"))
        add(
            "replay",
            "ratio to the naive replay (one judge per action), same run",
            r.get("ratio_to_naive"),
        )
    if "globs" in ok:
        r = ok["globs"]
        add("globs", "µs per match, 1 segment", r.get("us_1_segment"))
        add(
            "globs",
            "µs per match, 20 segments, typical event type",
            r.get("us_20_segments_typical"),
        )
        add(
            "globs",
            "µs per match, 20 segments, hostile event type",
            r.get("us_20_segments_hostile"),
        )
        add("globs", "µs per match, worst of 1–20 segments, hostile", r.get("hostile_us_max"))
        add(
            "globs",
            "µs per match, event type seen before (answer cache), worst of 1–20 segments",
            r.get("cached_us_max"),
        )
    if "ceilings" in ok:
        k = ok["ceilings"].get("kafka") or {}
        add(
            "ceilings",
            "raw-client floor: CPU µs per msg consume→produce (client + broker)",
            k.get("floor_cpu_us_per_msg"),
        )
        add(
            "ceilings",
            "raw-client floor: client CPU µs per msg",
            k.get("floor_client_cpu_us_per_msg"),
        )
    for name, item in CPU_ITEM.items():
        if name not in ok or ok[name].get("cpu_us_per_item") is None:
            continue
        r = ok[name]
        add(name, f"CPU µs per {item}, all processes (load generator apart)", r["cpu_us_per_item"])
        add(name, f"load generator CPU µs per {item}", r.get("loadgen_cpu_us_per_item"))
        add(name, "CPU per item ÷ raw-client floor (same run)", r.get("cpu_floor_ratio"))
        if name in CPU_BASELINE:
            add(name, f"CPU per item ÷ {CPU_BASELINE[name]}'s", r.get("cpu_ratio_to_baseline"))
    if "S2" in ok and ok["S2"].get("healthz_cpu_us_per_item") is not None:
        add("S2", "CPU µs per GET /healthz (framework floor)", ok["S2"]["healthz_cpu_us_per_item"])
    for name, r in res.items():
        if "error" in r:
            rows.append((name, "error", r["error"][:120], "", ""))
        elif "skipped" in r:
            rows.append((name, "skipped", r["skipped"], "", ""))
    busy = doc.get("contended") or {}

    out = [
        f"Run {m.get('date')} on {m.get('nproc')} × {m.get('cpu_model')}, "
        f"{m.get('ram_gib')} GiB RAM, "
        f"Python {m.get('python')}; {'quick' if m.get('quick') else 'full'} run"
        f"{' (profiled: py-spy running)' if m.get('profile') else ''}.",
        "",
        "| Scenario | Metric | Value | Target | Status |",
        "|---|---|---:|---|---|",
    ]
    out += [f"| {a} | {b} | {_v(v)} | {t} | {s} |" for a, b, v, t, s in rows]
    if busy:
        out += [
            "",
            "Contended windows (other processes' CPU, in cores): "
            + ", ".join(f"{k} {v:.2f}" for k, v in busy.items())
            + ". Their absolute figures are low; re-run on a quiet machine.",
        ]
    return "\n".join(out) + "\n"


def write(out_dir: Path, doc: dict[str, Any]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    j = out_dir / "results.json"
    j.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    from benchmarks.plots import write_plots

    plots = write_plots(out_dir, doc)
    text = markdown(doc)
    if plots:
        text += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
    else:
        text += '\n(plots skipped: matplotlib is not installed; `pip install -e ".[dev]"`)\n'
    md = out_dir / "results.md"
    md.write_text(text)
    return j, md
