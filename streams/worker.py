"""Entry point of the worker role (``fibric worker``)."""

from __future__ import annotations

import asyncio

import faust

from schemas.settings import Settings
from streams.app import create_app, default_worker_id
from streams.kafka import ensure_topics
from streams.membership import evict_predecessor
from streams.metrics import serve
from streams.topics import INGEST_GROUP


def run_worker(settings: Settings) -> None:
    settings.ensure_home()
    asyncio.run(ensure_topics(settings.kafka_bootstrap, settings.partitions))
    app = create_app(settings)
    # a crashed run of this worker left its member in the group: drop it now rather than
    # waiting out its session (streams/membership.py)
    home = settings.resolved_home / "workers" / (settings.worker_id or default_worker_id())
    asyncio.run(evict_predecessor(settings.kafka_bootstrap, INGEST_GROUP, home))
    if settings.metrics and settings.metrics_port:
        serve(settings.api_host, settings.metrics_port)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
