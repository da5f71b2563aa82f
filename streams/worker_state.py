"""What the worker's agents share: config view, ingest dedup store, executor state, producer,
MCP runtime, model router, batch-guard health and counters. Built by ``create_app``; its
``start()`` runs inside the worker's event loop (aiokafka and the MCP pool bind to it)."""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from agents.ingest import Admitted, Coordinates, Refused, admit
from agents.planning import Built, build_plan
from agents.secrets import SecretBox
from schemas.config import ConfigRecord
from schemas.envelope import Event
from schemas.operator import Operator
from schemas.settings import Settings
from streams.checkpoint import Checkpoint
from streams.config_log import publish
from streams.config_view import ConfigView
from streams.dedup import DedupStore
from streams.execstate import ExecStateStore, restore_mark
from streams.executor import Executor
from streams.guard import Health
from streams.kafka import make_producer
from streams.metrics import ExecutorMetrics
from streams.models import ModelRouter
from streams.oauth_refresh import TokenRenewer, command_sender


def new_run_counts() -> dict[str, int]:
    return {"sensed": 0, "proposed": 0, "applied": 0}


class WorkerState:
    def __init__(self, settings: Settings, worker_id: str) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.home = settings.resolved_home / "workers" / worker_id
        self.view = ConfigView(settings.kafka_bootstrap)
        self.dedup = DedupStore(self.home / "dedup")
        self.execstate = ExecStateStore(self.home / "execstate")
        self.box = SecretBox(settings.load_secret_key())
        self.health = Health()
        self.ready = asyncio.Event()
        self.counts: dict[str, int] = defaultdict(int)
        self.runs: dict[str, dict[str, int]] = defaultdict(new_run_counts)
        # made in start(): aiokafka and the MCP pool bind to the running loop
        self.producer: Any = None
        self.runtime: Any = None
        self.executor: Executor | None = None
        self.models: ModelRouter | None = None
        self.instance = f"{worker_id}-{os.getpid()}"
        self.schedule_scanned_at = datetime.now(UTC)

    async def start(self) -> None:
        from connectors.pool import ConnectorRuntime

        self.producer = make_producer(self.settings.kafka_bootstrap)
        await self.producer.start()
        self.runtime = ConnectorRuntime(state_dir=self.home / "connectors")
        tokens = TokenRenewer(
            self.settings, self.box, self.view, command_sender(self.producer, self.instance)
        )
        self.executor = Executor(
            self.settings.kafka_bootstrap,
            self.producer,
            self.runtime,
            self.view,
            self.box,
            self.execstate,
            worker_id=self.worker_id,
            metrics=ExecutorMetrics() if self.settings.metrics else None,
            partitions=self.settings.partitions,
            restore_mark=(
                restore_mark(self.settings.resolved_home)
                if self.settings.kafka_memory_only
                else None
            ),
            tokens=tokens,
        )
        self.models = ModelRouter(self.settings)
        await self.view.start()
        await self.view.sync()
        self.ready.set()

    def checkpoint(self) -> Checkpoint:
        """A checkpoint for one batch of any agent (ingest, reason, control)."""
        return Checkpoint(
            self.producer,
            execstate=self.execstate,
            dedup=self.dedup,
            publish_config=self._publish_config,
            apply_config=self.view.apply_record,
        )

    def _publish_config(self, records: list[ConfigRecord]) -> Any:
        return publish(self.producer, records)

    async def admit_all(
        self, records: list[tuple[bytes | None, Coordinates]]
    ) -> list[Admitted | Refused]:
        results = [admit(raw, at, self.view.tenant_exists) for raw, at in records]
        if any(
            isinstance(r, Refused) and r.dead_letter.reason == "unknown_tenant" for r in results
        ):
            # A tenant created a moment ago may not be in the view yet: catch up once, re-decide.
            await self.view.sync()
            results = [
                admit(raw, at, self.view.tenant_exists)
                if isinstance(r, Refused) and r.dead_letter.reason == "unknown_tenant"
                else r
                for r, (raw, at) in zip(results, records, strict=True)
            ]
        return results

    async def describe_tools(self, connector_id: str) -> list[Any]:
        """The connector's MCP tool list (names, side effects, input schemas) for a model prompt."""
        assert self.executor is not None
        if await self.executor.ensure_connector(connector_id):
            return []
        return await self.runtime.tools(connector_id)

    def plan(
        self,
        event: Event,
        operator: Operator,
        proposal: Any,
        refusal: str | None,
        traceparent: str | None = None,
    ) -> Built:
        return build_plan(
            event=event,
            operator=operator,
            connectors=self.view.connectors_of(event.tenant_id, event.livemode),
            proposal=proposal,
            refusal=refusal,
            now=datetime.now(UTC),
            approval_ttl=timedelta(seconds=self.settings.approval_ttl_s),
            policies=self.view.guardrails_of(event.tenant_id, event.livemode),
            traceparent=traceparent,
        )
