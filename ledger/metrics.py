"""Prometheus metrics of the ledger sink (docs/production.md "Metrics", decisions §41).

The sink runs in the api process, so these are served by the api's ``/metrics``. Observed once
per stored batch (hundreds of milliseconds apart under load), never per row. Counts the sink
keeps anyway (rows per table, dead letters per reason, what is left to store) are read at
scrape time by the api's collector (``api/metrics.py``), not incremented here.
"""

from __future__ import annotations

from prometheus_client import Gauge, Histogram, disable_created_metrics

# no *_created series: they double a scrape and no dashboard reads them
disable_created_metrics()

# rows per batch: a lone record when idle up to MAX_BATCH (20k) under load
BATCH_ROWS_BUCKETS = (1, 10, 100, 500, 1_000, 2_500, 5_000, 10_000, 20_000)
# seconds per batch: chDB stores a few thousand rows in tens of milliseconds
BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

BATCH_ROWS = Histogram(
    "fibric_ledger_sink_batch_rows",
    "Records per batch the ledger sink stored.",
    buckets=BATCH_ROWS_BUCKETS,
)
BATCH_SECONDS = Histogram(
    "fibric_ledger_sink_batch_seconds",
    "Time to store one ledger batch (decode, id check, inserts, before-commit hooks).",
    buckets=BATCH_SECONDS_BUCKETS,
)
LAG_SECONDS = Gauge(
    "fibric_ledger_sink_lag_seconds",
    "Age of the oldest record of the latest stored batch when it was stored.",
)


class SinkMetrics:
    """What the sink observes per batch; the sink holds ``None`` when metrics are off."""

    __slots__ = ()

    @staticmethod
    def batch(rows: int, seconds: float, oldest_timestamp_ms: int | None, now_ms: int) -> None:
        BATCH_ROWS.observe(rows)
        BATCH_SECONDS.observe(seconds)
        if oldest_timestamp_ms is not None and oldest_timestamp_ms > 0:
            LAG_SECONDS.set(max(0.0, (now_ms - oldest_timestamp_ms) / 1000.0))
