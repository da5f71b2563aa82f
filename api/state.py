"""What the api role holds while it runs, built once by ``create_app`` and shared by handlers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from agents.secrets import SecretBox
    from api.idempotency import Idempotency
    from api.metrics import ApiMetrics
    from api.overlay import PendingEvents
    from api.ratelimit import RateLimiter
    from api.readcache import ReadCache
    from connectors.pool import ConnectorRuntime
    from ledger.sink import LedgerSink
    from ledger.store import LedgerStore
    from schemas.settings import Settings
    from streams.commands import CommandClient
    from streams.config_view import ConfigView


@dataclass
class ApiState:
    settings: Settings
    store: LedgerStore
    view: ConfigView
    producer: AIOKafkaProducer
    sink: LedgerSink
    pending: PendingEvents
    idempotency: Idempotency
    limiter: RateLimiter
    commands: CommandClient
    box: SecretBox
    runtime: ConnectorRuntime | None = None
    reads: ReadCache | None = None
    metrics: ApiMetrics | None = None  # None: FIBRIC_METRICS=false
    extra: dict[str, Any] = field(default_factory=dict)
