"""Prometheus metrics through the running stack (issue 13 item 1, decisions §41): every role's
/metrics is scraped over HTTP and parsed with the Prometheus text parser, and the counters move
when events flow through the real worker, executor, MCP connector and ledger sink."""

from __future__ import annotations

import asyncio
import re
import uuid

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from streams.topics import EVENTS
from tests.conftest import client, create_operator, free_port, install_sandbox, make_stack
from tests.conftest import new_tenant as make_tenant
from tests.e2e.test_kafka_pipeline import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Low enough that a burst of config reads is refused within the test, high enough that the
# test's other requests (a few dozen per class per minute) never are.
RATE_LIMIT = 150
HOLD = {
    "tool": "order.hold",
    "args": {"order_id": "{{payload.order_id}}"},
    "entity_key": "order:{{payload.order_id}}",
    "idempotency_key": "hold:{{payload.order_id}}",
}
NOTIFY = {
    "tool": "order.notify",
    "args": {"order_id": "{{payload.order_id}}", "comment": "check"},
    "entity_key": "order:{{payload.order_id}}",
    "idempotency_key": "notify:{{payload.order_id}}",
}


@pytest.fixture(scope="module")
def mstack(tmp_path_factory: pytest.TempPathFactory):
    s = make_stack(
        tmp_path_factory.mktemp("metrics"),
        FIBRIC_METRICS_PORT=str(free_port()),
        FIBRIC_RATE_LIMIT_PER_MINUTE=str(RATE_LIMIT),
    )
    s.start()
    yield s
    s.stop()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> tuple[str, Samples]:
    """GET one /metrics; every line must parse (the parser raises on a malformed one)."""
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return r.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over the samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def urls(stack) -> dict[str, str]:
    """The scrape URLs `fibric up` printed, by role."""
    line = wait_for(
        lambda: next(
            (ln for ln in stack.up_output().splitlines() if ln.startswith("fibric: metrics at")),
            None,
        ),
        timeout=10,
    )
    return {role: url for url, role in re.findall(r"(http://\S+/metrics) \(([\w-]+)\)", line)}


def test_every_role_serves_metrics_and_they_move(mstack) -> None:
    roles = urls(mstack)
    assert set(roles) == {"api", "worker-1"}
    assert roles["api"] == f"{mstack.base_url}/metrics"
    port = int(mstack.env["FIBRIC_METRICS_PORT"])
    assert roles["worker-1"] == f"http://127.0.0.1:{port}/metrics"  # FIBRIC_METRICS_PORT + 0
    _, api0 = scrape(roles["api"])
    worker0 = wait_for(lambda: scrape(roles["worker-1"])[1], timeout=30)

    tenant = make_tenant(mstack, f"m-{uuid.uuid4().hex[:8]}")
    c = client(mstack, tenant.keys["admin"])
    install_sandbox(c)
    create_operator(
        c,
        "holder",
        ["order.hold", "order.notify"],
        [
            {"tool": "order.hold", "decision": "ALLOW"},
            {"tool": "order.notify", "decision": "ALERT"},
        ],
        [
            {"when": "order.created", "then": [HOLD]},
            {"when": "order.flagged", "then": [NOTIFY]},
        ],
    )
    # 5 orders held; order 0 a second time (same idempotency key: DEDUP); one ALERT plan
    posted = []
    for i in [0, 1, 2, 3, 4, 0]:
        r = c.post(
            "/v1/events",
            json={"source": "shop", "event_type": "order.created", "payload": {"order_id": str(i)}},
        )
        assert r.status_code == 201, r.text
        posted.append(r.json()["id"])
    r = c.post(
        "/v1/events",
        json={"source": "shop", "event_type": "order.flagged", "payload": {"order_id": "9"}},
    )
    assert r.status_code == 201, r.text
    # an Idempotency-Key used twice: the second answer is a replay
    body = {"source": "shop", "event_type": "noop.ping", "payload": {}}
    for _ in range(2):
        r = c.post("/v1/events", json=body, headers={"Idempotency-Key": "metrics-replay-1"})
        assert r.status_code in (200, 201), r.text
    assert r.headers.get("idempotent-replayed") == "true"
    # a record no envelope can be made of, straight on the topic: a dead letter (invalid_json)
    asyncio.run(_produce(mstack.bootstrap, b"{not json"))

    def held() -> list | None:
        rcs = c.get("/v1/receipts", params={"limit": 100}).json()["data"]
        outcomes = sorted(r["outcome"] for r in rcs)
        done = outcomes.count("applied") >= 5 and "deduplicated" in outcomes
        return rcs if done and "pending_approval" in outcomes else None

    wait_for(held, timeout=60, interval=0.5)
    c.get("/v1/receipts", params={"limit": 100})  # the same page again: from the read cache
    # a burst of config reads past the per-minute budget: 429s
    statuses = [c.get("/v1/operators").status_code for _ in range(RATE_LIMIT + 5)]
    assert 429 in statuses

    def moved() -> tuple[str, Samples, str, Samples] | None:
        at, a = scrape(roles["api"])
        wt, w = scrape(roles["worker-1"])
        ok = (
            value(a, "fibric_dead_letters_total", reason="invalid_json") >= 1
            and value(w, "fibric_executor_dispositions_total", decision="DEDUP") >= 1
        )
        return (at, a, wt, w) if ok else None

    api_text, api1, worker_text, worker1 = wait_for(moved, timeout=30, interval=0.5)

    def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # api: requests by route class and status, idempotency, rate limit, read cache, the sink
    assert (
        delta(
            api0,
            api1,
            "fibric_api_requests_total",
            route_class="events_write",
            method="POST",
            status="201",
        )
        >= 7
    )
    assert delta(api0, api1, "fibric_api_requests_total", route_class="config_read", status="429")
    assert delta(api0, api1, "fibric_api_rate_limited_total", route_class="config_read") >= 1
    assert (
        delta(api0, api1, "fibric_api_request_duration_seconds_count", route_class="events_write")
        >= 7
    )
    assert delta(api0, api1, "fibric_api_idempotency_total", result="replayed") == 1
    assert delta(api0, api1, "fibric_api_read_cache_total", result="hit") >= 1
    assert delta(api0, api1, "fibric_api_read_cache_total", result="miss") >= 1
    assert delta(api0, api1, "fibric_ledger_rows_total", table="events") >= 8
    assert delta(api0, api1, "fibric_ledger_rows_total", table="receipts") >= 7
    assert delta(api0, api1, "fibric_ledger_sink_batch_rows_count") >= 1
    assert delta(api0, api1, "fibric_ledger_sink_batch_seconds_sum") > 0
    assert value(api1, "fibric_ledger_sink_lag_seconds") >= 0
    assert value(api1, "fibric_ledger_sink_lag_records") >= 0
    assert value(api1, "fibric_approvals_pending") >= 1
    assert value(api1, "fibric_approvals_oldest_pending_seconds") > 0
    # a path no route serves is counted too
    httpx.get(f"{mstack.base_url}/no-such-path", timeout=10)
    _, api2 = scrape(roles["api"])
    assert delta(api1, api2, "fibric_api_requests_total", route_class="unmatched", status="404")

    # worker: the sensor, batches, executor dispositions and the connector calls
    assert delta(worker0, worker1, "fibric_worker_events_in_total", agent="ingest_events") >= 9
    assert delta(worker0, worker1, "fibric_worker_events_out_total", agent="ingest_events") >= 9
    assert delta(worker0, worker1, "fibric_worker_events_in_total", agent="execute_actions") >= 6
    assert delta(worker0, worker1, "fibric_worker_batch_size_count", agent="ingest_events") >= 1
    assert delta(worker0, worker1, "fibric_worker_batch_seconds_count", agent="execute_actions")
    assert (
        delta(
            worker0,
            worker1,
            "fibric_executor_dispositions_total",
            decision="ALLOW",
            outcome="applied",
        )
        >= 5
    )
    assert (
        delta(
            worker0,
            worker1,
            "fibric_executor_dispositions_total",
            decision="ALERT",
            outcome="pending_approval",
        )
        >= 1
    )
    assert delta(worker0, worker1, "fibric_executor_dedup_hits_total") >= 1
    calls = delta(
        worker0,
        worker1,
        "fibric_connector_call_seconds_count",
        connector="cn-sandbox-orders",
        tool="order.hold",
    )
    assert calls >= 5
    assert (
        value(worker1, "fibric_connector_calls_in_flight", connector="cn-sandbox-orders") == 0
    )
    assert value(worker1, "fibric_executor_lanes_active") == 0
    assert value(worker1, "fibric_worker_rebalances_total") >= 1
    lag = [ls for (n, ls) in worker1 if n == "fibric_worker_consumer_lag"]
    assert {dict(ls)["topic"] for ls in lag} >= {"fibric.events.v1", "fibric.actions.v1"}
    assert all(v >= 0 for (n, _), v in worker1.items() if n == "fibric_worker_consumer_lag")

    # bounded labels: no tenant id, event id or entity key in any series of either role
    for text in (api_text, worker_text):
        assert tenant.id not in text
        assert not any(ev in text for ev in posted)
        assert "order:0" not in text


async def _produce(bootstrap: str, value: bytes) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await p.start()
    try:
        await p.send_and_wait(EVENTS, value, key=b"metrics-bad")
    finally:
        await p.stop()
