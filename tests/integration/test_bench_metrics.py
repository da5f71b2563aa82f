"""Smoke test of the MET benchmark's scrape part (benchmarks/metrics_cost.py): the registry it
builds has the series count it reports, renders, parses, and is served over loopback HTTP.
No timing is asserted."""

from __future__ import annotations

from benchmarks.metrics_cost import _scrape_urls, scrape_at


def test_scrape_at_builds_the_series_it_reports() -> None:
    r = scrape_at(series=1_000, repeats=2)
    assert r["series"] == 1_000
    assert r["bytes"] > 0
    assert r["render_ms_p50"] > 0 and r["http_ms_p50"] > 0


def test_scrape_urls_parse_the_line_fibric_up_prints(tmp_path) -> None:
    class St:
        home = tmp_path

    (tmp_path / "up.out").write_text(
        "fibric: ready at http://127.0.0.1:8080  (logs: x; Ctrl-C stops)\n"
        "fibric: metrics at http://127.0.0.1:8080/metrics (api), "
        "http://127.0.0.1:41807/metrics (worker-1), http://127.0.0.1:41808/metrics (worker-2)\n"
    )
    assert _scrape_urls(St()) == {  # type: ignore[arg-type]
        "api": "http://127.0.0.1:8080/metrics",
        "worker-1": "http://127.0.0.1:41807/metrics",
        "worker-2": "http://127.0.0.1:41808/metrics",
    }
