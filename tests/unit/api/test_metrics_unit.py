"""The api's metrics without a stack: the middleware's labels, the off switch, the exposition."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.metrics import HEALTH, UNMATCHED, ApiMetrics, ApiMiddleware, route_class_of
from schemas.settings import Settings


def _paths(settings: Settings) -> set[str]:
    return {r.path for r in create_app(settings).routes}


def test_metrics_route_only_when_on(tmp_path) -> None:
    assert "/metrics" in _paths(Settings(home=tmp_path))
    assert "/metrics" not in _paths(Settings(home=tmp_path, metrics=False))


class _Handler:
    def __init__(self, opt: dict) -> None:
        self.opt = opt


def test_route_class_of_scope() -> None:
    assert route_class_of({}) == UNMATCHED
    assert route_class_of({"route_handler": _Handler({})}) == HEALTH
    assert route_class_of({"route_handler": _Handler({"route_class": "events_write"})}) == (
        "events_write"
    )


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_middleware_counts_status_and_skips_timing_streams() -> None:
    metrics = ApiMetrics()

    def app_answering(status: int, ctype: bytes):
        async def app(scope, receive, send) -> None:
            scope["route_handler"] = _Handler({"route_class": "unit_test_class"})
            await send(
                {"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]}
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        return app

    async def noop(message) -> None:
        return None

    labels = {"route_class": "unit_test_class", "method": "GET"}
    before = _sample("fibric_api_requests_total", **labels, status="418")
    timed = _sample("fibric_api_request_duration_seconds_count", route_class="unit_test_class")
    scope = {"type": "http", "method": "GET"}
    asyncio.run(ApiMiddleware(app_answering(418, b"application/json"), metrics)(dict(scope), None, noop))
    asyncio.run(ApiMiddleware(app_answering(200, b"text/event-stream"), metrics)(dict(scope), None, noop))
    assert _sample("fibric_api_requests_total", **labels, status="418") == before + 1
    assert _sample("fibric_api_requests_total", **labels, status="200") >= 1
    # the stream was counted but not timed
    after = _sample("fibric_api_request_duration_seconds_count", route_class="unit_test_class")
    assert after == timed + 1


def test_exposition_parses() -> None:
    ApiMetrics().request("unit_test_class", "POST", 201, 0.01)
    names = {f.name for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())}
    assert {"fibric_api_requests", "fibric_api_request_duration_seconds"} <= names
