"""`fibric up` gives each worker its own /metrics port (fibric/launcher.py, decisions §41)."""

from __future__ import annotations

from fibric.launcher import Stack
from schemas.settings import Settings


def test_ports_follow_fibric_metrics_port(tmp_path) -> None:
    st = Stack(Settings(home=tmp_path, metrics_port=9400), workers=3)
    assert st.metrics_ports() == {"worker-1": 9400, "worker-2": 9401, "worker-3": 9402}


def test_ports_are_picked_free_and_distinct_when_unset(tmp_path) -> None:
    ports = Stack(Settings(home=tmp_path), workers=3).metrics_ports()
    assert set(ports) == {"worker-1", "worker-2", "worker-3"}
    assert all(p > 0 for p in ports.values())


def test_no_ports_when_metrics_are_off(tmp_path) -> None:
    assert Stack(Settings(home=tmp_path, metrics=False), workers=2).metrics_ports() == {}


def test_the_printed_line_names_every_role(tmp_path) -> None:
    st = Stack(Settings(home=tmp_path, api_port=8123, metrics_port=9500), workers=2)
    st.worker_metrics = st.metrics_ports()
    assert st.metrics_urls() == (
        "http://127.0.0.1:8123/metrics (api), http://127.0.0.1:9500/metrics (worker-1), "
        "http://127.0.0.1:9501/metrics (worker-2)"
    )
