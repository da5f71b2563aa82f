"""PNG plots of one run (matplotlib, headless): throughput over time, latency percentiles,
scale-out, and each figure next to its baseline and ceiling. Written next to ``results.json``;
a run without matplotlib installed skips them with a note (``pip install -e ".[dev]"`` has it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOTS = ("throughput.png", "latency.png", "scaling.png", "baselines.png")


def _rate(timeline: list[list[float]], col: int, window_s: float = 0.5) -> tuple[list, list]:
    """Rows/s of one cumulative timeline column, over a sliding window."""
    xs, ys = [], []
    j = 0
    for i, row in enumerate(timeline):
        while j < i and row[0] - timeline[j][0] > window_s:
            j += 1
        if i > j:
            dt = row[0] - timeline[j][0]
            xs.append(row[0])
            ys.append((row[col] - timeline[j][col]) / dt if dt > 0 else 0.0)
    return xs, ys


def write_plots(out_dir: Path, doc: dict[str, Any]) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    sc = {k: v for k, v in doc["scenarios"].items() if isinstance(v, dict) and "error" not in v}
    written: list[Path] = []
    label = "quick run" if doc["meta"].get("quick") else "full run"
    when = f"{doc['meta'].get('date', '')[:16]} · {doc['meta'].get('nproc')} cores · {label}"

    def save(fig: Any, name: str) -> None:
        fig.text(0.99, 0.01, when, ha="right", va="bottom", fontsize=7, color="grey")
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    # 1. throughput over time: S1 (one worker) and S9's S1 (two workers), into ClickHouse
    series = []
    if sc.get("S1", {}).get("timeline"):
        series.append(("S1, 1 worker", sc["S1"]["timeline"]))
    if sc.get("S9", {}).get("s1_2w_timeline"):
        series.append(("S1, 2 workers (S9)", sc["S9"]["s1_2w_timeline"]))
    if series:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for (name, tl), color in zip(series, ("#4c72b0", "#55a868"), strict=False):
            # the sink commits in steps (up to 250 ms / 5,000 rows): a 2-s window shows the rate
            xs, ys = _rate(tl, 3, window_s=2.0)
            a1.plot(xs, ys, color=color, label=f"{name}: into ClickHouse")
            a2.plot([r[0] for r in tl], [r[3] for r in tl], color=color, label=f"{name}: stored")
            a2.plot(
                [r[0] for r in tl], [r[1] for r in tl], "--", color=color, label=f"{name}: produced"
            )
        a1.set(title="S1 ingest rate (events/s, 2 s window)", xlabel="s", ylabel="events/s")
        a2.set(title="S1 cumulative events", xlabel="s", ylabel="events")
        a1.legend(fontsize=8)
        a2.legend(fontsize=8)
        save(fig, "throughput.png")

    # 2. latency percentiles (log scale)
    lat = []
    for name, key, pcts in (
        ("S2 POST /v1/events", "S2", ("p50_ms", "p90_ms", "p99_ms")),
        ("S8 GET /v1/receipts", "S8", ("p50_ms", "p90_ms", "p99_ms")),
        ("S8 uncached", "S8", ("uncached_p50_ms", None, "uncached_p99_ms")),
        ("S6 event → receipt", "S6", ("p50_ms", "p95_ms", "p99_ms")),
        ("config write → readable", "config", ("p50_ms", None, "p99_ms")),
    ):
        r = sc.get(key)
        if r:
            lat.append((name, [r.get(p) if p else None for p in pcts]))
    if lat:
        fig, ax = plt.subplots(figsize=(10, 4))
        width = 0.27
        for k, (plabel, color) in enumerate(
            (("p50", "#4c72b0"), ("p90 / p95", "#dd8452"), ("p99", "#c44e52"))
        ):
            xs = [i + (k - 1) * width for i in range(len(lat))]
            vals = [v[k] or 0 for _, v in lat]
            ax.bar(xs, vals, width, label=plabel, color=color)
        ax.set_xticks(range(len(lat)), [n for n, _ in lat], fontsize=8)
        ax.set_yscale("log")
        ax.set(title="Latency percentiles (ms, log scale)", ylabel="ms")
        for y, txt in ((25, "S2 p99 target"), (50, "S8 p99 target"), (250, "S6 p99 target")):
            ax.axhline(y, color="grey", lw=0.6, ls=":")
            ax.text(len(lat) - 0.5, y, txt, fontsize=7, color="grey", ha="right", va="bottom")
        ax.legend(fontsize=8)
        save(fig, "latency.png")

    # 3. scale-out
    s9 = sc.get("S9")
    if s9:
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        for ax, (title, a, b) in zip(
            axes,
            (
                ("S1 events/s", s9.get("s1_1w_events_per_s"), s9.get("s1_2w_events_per_s")),
                ("S3 actions/s", s9.get("s3_1w_actions_per_s"), s9.get("s3_2w_actions_per_s")),
            ),
            strict=True,
        ):
            ax.bar(["1 worker", "2 workers"], [a or 0, b or 0], color=["#4c72b0", "#55a868"])
            if a:
                ax.axhline(2 * a, color="grey", ls=":", lw=0.8)
                ax.text(1.4, 2 * a, "perfect 2×", fontsize=7, color="grey", ha="right", va="bottom")
                ax.axhline(1.6 * a, color="#c44e52", ls=":", lw=0.8)
                ax.text(1.4, 1.6 * a, "1.6× target", fontsize=7, color="#c44e52", ha="right")
            ratio = f" ({b / a:.2f}×)" if a and b else ""
            ax.set(title=f"S9 {title}{ratio}")
        save(fig, "scaling.png")

    # 4. each figure against its baseline and its ceiling (log scale)
    ceil = (sc.get("ceilings") or {}).get("kafka") or {}
    groups = []
    if "S1" in sc:
        groups.append(
            (
                "events/s: Kafka → ClickHouse",
                [
                    ("Fibric S1", sc["S1"].get("events_per_s")),
                    ("naive Faust", (sc.get("naive") or {}).get("events_per_s")),
                    ("raw consume→produce", ceil.get("consume_produce_msgs_per_s")),
                ],
            )
        )
    if "S3" in sc:
        groups.append(
            (
                "actions/s with a side effect",
                [
                    ("Fibric S3", sc["S3"].get("actions_per_s")),
                    ("naive executor", (sc.get("naive_exec") or {}).get("actions_per_s")),
                    ("target", 2000),
                ],
            )
        )
    if "S4" in sc:
        groups.append(
            (
                "refusals + replays/s",
                [("Fibric S4", sc["S4"].get("dispositions_per_s")), ("target", 20000)],
            )
        )
    if groups:
        fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 4))
        axes = axes if len(groups) > 1 else [axes]
        for ax, (title, bars) in zip(axes, groups, strict=True):
            names = [n for n, v in bars if v]
            vals = [v for _, v in bars if v]
            colors = ["#4c72b0" if n.startswith("Fibric") else "#bbbbbb" for n in names]
            ax.bar(names, vals, color=colors)
            ax.set_yscale("log")
            ax.set_title(title, fontsize=10)
            ax.tick_params(axis="x", labelsize=8)
            for i, v in enumerate(vals):
                ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=7)
        save(fig, "baselines.png")
    return written
