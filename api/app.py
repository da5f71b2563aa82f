"""The api role: ``create_app(settings)`` builds the Litestar app and, in its lifespan, the
ClickHouse store, the Kafka producer, the config view and the ledger sink."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Router
from litestar.openapi import OpenAPIConfig
from litestar.routes import WebSocketRoute

from agents.secrets import SecretBox
from api.auth import authorize_request, require_scope
from api.broker import BoundedProducer, CachingPartitioner
from api.connector_health import ConnectorHealthMonitor
from api.controllers.api_keys import ApiKeysController
from api.controllers.connectors import ConnectorsController, MarketplaceController
from api.controllers.dead_letters import DeadLettersController
from api.controllers.events import EventsController
from api.controllers.exports import ExportsController
from api.controllers.governance import AuditLogController, GovernanceController
from api.controllers.guardrails import GuardrailsController
from api.controllers.health import healthz, openapi, readyz
from api.controllers.loop import ActionsController, PlansController, ReceiptsController
from api.controllers.operators import OperatorsController
from api.controllers.replays import ReplaysController
from api.controllers.sql import SqlController
from api.controllers.streams import (
    EventStreamController,
    LoopStreamController,
    PlanStreamController,
)
from api.controllers.webhooks import WebhooksController
from api.deliveries import WebhookDispatcher
from api.errors import handle_exception
from api.hub import StreamHub
from api.idempotency import Idempotency
from api.metrics import ApiMetrics, metrics_endpoint
from api.metrics import install as install_metrics
from api.middleware import ConventionsMiddleware
from api.overlay import PendingEvents
from api.ratelimit import RateLimiter
from api.readcache import ReadCache
from api.server import FibricLitestar, tune_gc
from api.state import ApiState
from connectors.pool import ConnectorRuntime
from ledger.exec_restore import restore_exec_state
from ledger.metrics import SinkMetrics
from ledger.sink import LedgerSink
from ledger.store import LedgerStore
from schemas.config import ConfigRecord
from schemas.settings import Settings
from streams.commands import CommandClient
from streams.config_log import config_log_size, publish
from streams.config_view import ConfigView
from streams.execstate import write_restore_mark
from streams.kafka import ensure_topics, make_producer, probe
from streams.topics import CONFIG, DLQ, LEDGER, LEDGER_GROUP

log = logging.getLogger(__name__)


async def restore_config(store: LedgerStore, producer: object, bootstrap: str) -> int:
    """The embedded broker keeps nothing across restarts; ClickHouse keeps every config change.
    When the config log is empty but the ledger has config, republish it (a no-op on a durable
    Apache Kafka, whose compacted config topic is never empty once written)."""
    if await config_log_size(bootstrap) > 0:
        return 0
    raw = await store.config_records()
    if not raw:
        return 0
    records = [ConfigRecord.model_validate_json(r) for r in raw]
    await publish(producer, records)
    log.info("restored %d config records from the ledger into %s", len(records), CONFIG)
    return len(records)


def check_sockets_guarded(app: Litestar) -> None:
    """Every /v1 WebSocket route must run :func:`require_scope` (the router's request hook does
    not run for sockets): refuse to build an app with an unauthenticated one."""
    for route in app.routes:
        if isinstance(route, WebSocketRoute) and route.path.startswith("/v1"):
            if require_scope not in route.route_handler.resolve_guards():
                raise RuntimeError(f"{route.path} must declare guards=[require_scope]")


def create_app(settings: Settings) -> Litestar:
    # Prometheus metrics (api/metrics.py, decisions §41): request-path counters, the ledger
    # sink's batch histograms and, at scrape time, what the state holds. Off: none of it.
    metrics = ApiMetrics() if settings.metrics else None

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        settings.ensure_home()
        store = LedgerStore(settings.effective_clickhouse_dsn)
        store.open()
        await ensure_topics(settings.kafka_bootstrap, settings.partitions)
        producer = make_producer(settings.kafka_bootstrap, partitioner=CachingPartitioner())
        await producer.start()
        await restore_config(store, producer, settings.kafka_bootstrap)
        view = ConfigView(settings.kafka_bootstrap)
        await view.start()
        await view.sync()
        # after the view: budget spend is rebuilt under the tenants' current policies
        await restore_exec_state(store, producer, settings.kafka_bootstrap, view)
        if settings.kafka_memory_only:  # workers wait for this before loading state (§49)
            cluster = await probe(settings.kafka_bootstrap)
            if cluster is not None:
                write_restore_mark(settings.resolved_home, cluster)
        pending = PendingEvents(settings.read_your_writes_ttl_s)
        sink = LedgerSink(
            settings.kafka_bootstrap,
            store,
            ledger_topic=LEDGER,
            dlq_topic=DLQ,
            config_topic=CONFIG,
            group_id=LEDGER_GROUP,
            session_timeout_s=settings.kafka_session_timeout_s,
            metrics=SinkMetrics() if metrics is not None else None,
        )
        sink.listeners.append(pending.confirm)
        reads = ReadCache(settings.read_cache_ttl_s)
        sink.on_insert.append(reads.invalidate)
        # Live streams: the hub gets every row the sink has just stored (decisions §33).
        hub = StreamHub(
            settings.stream_ring_size,
            settings.stream_queue_max,
            settings.stream_max_per_tenant,
            settings.stream_max_lag_s,
        )
        sink.on_rows.append(hub.publish)
        sweeps = asyncio.create_task(hub.run_sweeps(), name="stream-sweeps")
        box = SecretBox(settings.load_secret_key())
        # Webhook deliveries are derived from each stored batch before its commit (decisions
        # §32); pending ones are read back from ClickHouse first, so a restart loses none.
        webhooks = WebhookDispatcher(settings, store, view, box, commands=None)
        await webhooks.start()
        sink.before_commit.append(webhooks.on_batch)
        await sink.start()
        # Handlers and commands produce through the bounded wrapper: broker down -> 503 fast.
        bounded_producer = BoundedProducer(producer)
        commands = CommandClient(settings.kafka_bootstrap, bounded_producer)
        await commands.start()
        webhooks.commands = commands  # suspensions are control-plane commands
        runtime = ConnectorRuntime(state_dir=settings.resolved_home / "api" / "connectors")
        app.state["fibric"] = ApiState(
            settings=settings,
            store=store,
            view=view,
            producer=bounded_producer,
            sink=sink,
            pending=pending,
            idempotency=Idempotency(store, metrics),
            limiter=RateLimiter(settings.rate_limit_per_minute),
            commands=commands,
            box=box,
            runtime=runtime,
            reads=reads,
            metrics=metrics,
        )
        # Connector health probes and OAuth token refresh (decisions §43).
        health_monitor = ConnectorHealthMonitor(app.state["fibric"])
        health_monitor.start()
        app.state["fibric"].extra["connector_health"] = health_monitor
        app.state["fibric"].extra["webhooks"] = webhooks
        app.state["fibric"].extra["hub"] = hub
        if metrics is not None:
            install_metrics(app.state["fibric"])
        tune_gc()  # everything long-lived exists now
        try:
            yield
        finally:
            if metrics is not None:
                install_metrics(None)
            # Shutdown order (uvicorn has stopped accepting requests and finished those in
            # flight; `fibric up` stops the workers only after this process exits):
            # 1. flush the producer: every event that got its 201 is in the broker;
            # 2. on the embedded memory-only broker only (a durable Kafka keeps the rest for
            #    the next sink), drain the ledger sink: wait until the workers have processed
            #    what was accepted and the sink has stored what they produced (bounded, and no
            #    longer than some worker's heartbeat is fresh) — a row not in ClickHouse now
            #    would be lost;
            # 3. stop the consumers, the producer and the store.
            sweeps.cancel()
            hub.close_all()  # open streams end with a "shutting down" frame
            await producer.flush()
            if settings.kafka_memory_only and not await sink.drain(
                workers_alive=lambda: bool(view.live_workers(settings.heartbeat_stale_s))
            ):
                log.warning("stopping with ledger records not yet stored (drain incomplete)")
            elif not settings.kafka_memory_only:
                log.info("durable broker: no ledger drain at shutdown")
            await health_monitor.stop()
            await runtime.close()
            await commands.stop()
            await sink.stop()
            await webhooks.stop()
            await view.stop()
            await producer.stop()
            store.close()

    v1 = Router(
        path="/v1",
        route_handlers=[
            EventStreamController,
            EventsController,
            DeadLettersController,
            OperatorsController,
            ConnectorsController,
            MarketplaceController,
            PlanStreamController,
            PlansController,
            ActionsController,
            LoopStreamController,
            ReceiptsController,
            ExportsController,
            ApiKeysController,
            WebhooksController,
            ReplaysController,
            GuardrailsController,
            SqlController,
            GovernanceController,
            AuditLogController,
        ],
        # HTTP routes: one hook call per request; WebSocket routes declare the guard themselves
        # (check_sockets_guarded: a /v1 socket without it would be unauthenticated)
        before_request=authorize_request,
    )
    root = [v1, healthz, readyz, openapi]
    if metrics is not None:
        root.append(metrics_endpoint)
    app = FibricLitestar(
        route_handlers=root,
        lifespan=[lifespan],
        middleware=[ConventionsMiddleware],
        exception_handlers={Exception: handle_exception},
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(title="Fibric API", version="1.0.0", path="/schema"),
        debug=False,
        metrics=metrics,
    )
    check_sockets_guarded(app)
    return app
