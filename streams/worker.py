"""Entry point of the worker role (``fibric worker``)."""

from __future__ import annotations

import asyncio

import faust

from schemas.settings import Settings
from streams.app import create_app
from streams.kafka import ensure_topics


def run_worker(settings: Settings) -> None:
    settings.ensure_home()
    asyncio.run(ensure_topics(settings.kafka_bootstrap, settings.partitions))
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
