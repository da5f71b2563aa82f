"""Prometheus metrics of the worker role (docs/production.md "Metrics", decisions §41).

* a Faust sensor (:class:`FibricSensor`): records in and out per agent, rebalances;
* the agents' batch loop (``streams/app.py``): batch sizes and times, dead-lettered records;
* the executor (:class:`ExecutorMetrics`): dispositions by decision and outcome, DEDUP hits,
  lanes active, tool-call latency / errors / in-flight per connector listing and tool,
  intents recovered without a result;
* consumer lag per assigned partition, read from the Faust consumer at scrape time
  (:class:`WorkerCollector`), so the hot path pays nothing for it.

Hot-path cost is kept to a dict lookup and one ``inc``/``observe`` on a label child bound once
(``labels()`` itself costs a lock and a tuple build per call). Labels take bounded values only:
agent, topic, partition, catalogue listing and tool names, decision and outcome enums — never
a tenant id, connector instance or entity key (each distinct value is a series held forever).
The worker serves them on ``FIBRIC_METRICS_PORT`` (:func:`serve`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import faust
from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from streams.topics import ACTIONS, COMMANDS, EVENTS, OFFERS

# no *_created series: they double a scrape and no dashboard reads them
disable_created_metrics()

log = logging.getLogger(__name__)

AGENT_OF_TOPIC = {
    EVENTS: "ingest_events",
    OFFERS: "reason_offers",
    ACTIONS: "execute_actions",
    COMMANDS: "apply_commands",
}
# Label values for tools and connectors that are not in the catalogue (remote MCP servers name
# their own tools: an unbounded set).
OTHER_TOOL = "other"
REMOTE_CONNECTOR = "remote"

BATCH_SIZE_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1_000, 2_000, 5_000)
BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
CALL_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

EVENTS_IN = Counter("fibric_worker_events_in", "Records an agent received.", ["agent"])
EVENTS_OUT = Counter("fibric_worker_events_out", "Records an agent finished with.", ["agent"])
BATCH_SIZE = Histogram(
    "fibric_worker_batch_size",
    "Records per batch an agent processed.",
    ["agent"],
    buckets=BATCH_SIZE_BUCKETS,
)
BATCH_SECONDS = Histogram(
    "fibric_worker_batch_seconds",
    "Time to process one batch, retries included.",
    ["agent"],
    buckets=BATCH_SECONDS_BUCKETS,
)
REBALANCES = Counter("fibric_worker_rebalances", "Consumer-group rebalances of this worker.")
DEAD_LETTERED = Counter(
    "fibric_worker_dead_lettered",
    "Records this worker's batch guard dead-lettered as unprocessable.",
    ["agent"],
)
DISPOSITIONS = Counter(
    "fibric_executor_dispositions",
    "Receipts the executor wrote, by decision and outcome.",
    ["decision", "outcome"],
)
DEDUP_HITS = Counter(
    "fibric_executor_dedup_hits",
    "Side-effecting actions answered from the idempotency memory (DEDUP).",
)
LANES_ACTIVE = Gauge("fibric_executor_lanes_active", "Entity lanes running now.")
RECOVERED_INTENTS = Counter(
    "fibric_executor_recovered_intents",
    "Intents found without a result when partition state was recovered.",
)
CALL_SECONDS = Histogram(
    "fibric_connector_call_seconds",
    "Tool-call latency as the executor sees it.",
    ["connector", "tool"],
    buckets=CALL_SECONDS_BUCKETS,
)
CALL_ERRORS = Counter(
    "fibric_connector_call_errors", "Tool calls that returned an error.", ["connector", "tool"]
)
CALLS_IN_FLIGHT = Gauge(
    "fibric_connector_calls_in_flight", "Tool calls in flight now.", ["connector"]
)


class AgentMetrics:
    """Per-agent children of the batch metrics, bound once."""

    __slots__ = ("size", "seconds", "dead_lettered")

    def __init__(self, agent: str) -> None:
        self.size = BATCH_SIZE.labels(agent)
        self.seconds = BATCH_SECONDS.labels(agent)
        self.dead_lettered = DEAD_LETTERED.labels(agent)


def agent_metrics() -> dict[str, AgentMetrics]:
    return {agent: AgentMetrics(agent) for agent in AGENT_OF_TOPIC.values()}


class FibricSensor(faust.Sensor):
    """Records in/out per agent and rebalances, from Faust's sensor hooks (called per record by
    the stream, so each hook is one dict lookup and one increment)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._in = {topic: EVENTS_IN.labels(agent) for topic, agent in AGENT_OF_TOPIC.items()}
        self._out = {topic: EVENTS_OUT.labels(agent) for topic, agent in AGENT_OF_TOPIC.items()}

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> dict | None:
        child = self._in.get(tp.topic)
        if child is not None:
            child.inc()
        return None

    def on_stream_event_out(
        self, tp: Any, offset: int, stream: Any, event: Any, state: dict | None = None
    ) -> None:
        child = self._out.get(tp.topic)
        if child is not None:
            child.inc()

    def on_rebalance_start(self, app: Any) -> dict:
        REBALANCES.inc()
        return {}


class ExecutorMetrics:
    """What the executor observes. ``connector_label`` maps a connector instance to its
    catalogue listing (the instance id is per tenant: unbounded)."""

    def __init__(self) -> None:
        self._dispositions: dict[tuple[str, str], Any] = {}
        self._calls: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._in_flight: dict[str, Any] = {}
        self._known_tools: dict[str, frozenset[str]] | None = None
        self.lanes = LANES_ACTIVE
        self.dedup = DEDUP_HITS
        self.recovered = RECOVERED_INTENTS

    def disposed(self, decision: str, outcome: str) -> None:
        child = self._dispositions.get((decision, outcome))
        if child is None:
            child = self._dispositions[(decision, outcome)] = DISPOSITIONS.labels(decision, outcome)
        child.inc()
        if decision == "DEDUP":
            self.dedup.inc()

    def _tools(self) -> dict[str, frozenset[str]]:
        if self._known_tools is None:
            from connectors.marketplace import load_catalogue

            self._known_tools = {
                lid: frozenset(t.name for t in entry.tools)
                for lid, entry in load_catalogue().items()
            }
        return self._known_tools

    def labels_of(self, listing: str | None, remote: bool, tool: str) -> tuple[str, str]:
        tools = self._tools()
        if remote or listing not in tools:
            return REMOTE_CONNECTOR, OTHER_TOOL
        assert listing is not None
        return listing, tool if tool in tools[listing] else OTHER_TOOL

    def call(self, connector: str, tool: str) -> tuple[Any, Any, Any]:
        """(latency histogram child, error counter child, in-flight gauge child)."""
        pair = self._calls.get((connector, tool))
        if pair is None:
            pair = self._calls[(connector, tool)] = (
                CALL_SECONDS.labels(connector, tool),
                CALL_ERRORS.labels(connector, tool),
            )
        gauge = self._in_flight.get(connector)
        if gauge is None:
            gauge = self._in_flight[connector] = CALLS_IN_FLIGHT.labels(connector)
        return pair[0], pair[1], gauge


class WorkerCollector(Collector):
    """Consumer lag per assigned partition, read from the running Faust app at scrape time:
    the broker's high watermark (as of the consumer's last fetch) minus the next offset to
    read. Registered once per process; ``create_app`` points it at its app."""

    def __init__(self) -> None:
        self.app: Any = None

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "fibric_worker_consumer_lag",
            "Records behind the high watermark on each assigned partition.",
            labels=["topic", "partition"],
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fam = self._family()
        app = self.app
        consumer = getattr(app, "_consumer", None) if app is not None else None
        if consumer is not None:
            try:
                read = consumer._read_offset
                committed = consumer._committed_offset
                for tp in sorted(consumer.assignment()):
                    if tp.topic not in AGENT_OF_TOPIC:
                        continue
                    high = consumer.highwater(tp)
                    if high is None:
                        continue
                    last = read.get(tp)
                    if last is None:
                        last = committed.get(tp)
                    nxt = 0 if last is None else last + 1
                    fam.add_metric([tp.topic, str(tp.partition)], max(0, high - nxt))
            except Exception:  # noqa: BLE001 - a scrape during a rebalance: report what we have
                log.debug("consumer lag not readable now", exc_info=True)
        yield fam


COLLECTOR = WorkerCollector()
_registered = False


def install(app: Any) -> None:
    """Point the lag collector at ``app`` (registering it once per process)."""
    global _registered
    COLLECTOR.app = app
    if not _registered:
        REGISTRY.register(COLLECTOR)
        _registered = True


def serve(host: str, port: int) -> bool:
    """The worker's /metrics endpoint (a daemon thread of prometheus-client). A port that is
    taken is logged, not fatal: the worker keeps processing without its endpoint."""
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.error("metrics endpoint not started on %s:%d (%s)", host, port, exc)
        return False
    log.info("metrics at http://%s:%d/metrics", host, port)
    return True
