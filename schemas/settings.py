"""The one typed settings object, read once from ``FIBRIC_*`` environment variables.

It lives in ``schemas`` (not ``fibric``) because every role receives it through its factory
(``create_app(settings)``), and nothing but entry points may import the ``fibric`` package.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Default maximum request body: 1 MiB. Event payloads are small JSON documents; anything larger
# is almost certainly a mistake or an attack, and the body is buffered in memory before parsing.
DEFAULT_MAX_BODY_BYTES = 1_048_576
# Bind addresses that mean "every interface", and the loopback a default public URL uses instead.
_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FIBRIC_", extra="ignore")

    home: Path = Field(
        default=Path("./.fibric"), description="State directory (chDB, RocksDB, keys)."
    )
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    # The base of every absolute URL the api hands out (export download links). Empty means
    # derived from api_host/api_port; behind a proxy or load balancer set it to the address
    # clients use. Never taken from the request's Host header, which the client controls.
    public_url: str = ""
    kafka_bootstrap: str = "127.0.0.1:9092"
    # Empty means the embedded default: chDB under ``home``. Production: http://user:pw@host:8123/db
    clickhouse_dsn: str = ""
    partitions: int = Field(default=8, ge=1, le=256)
    secret_key: str = ""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # The API's pending-write overlay gives read-your-writes until the ledger sink has inserted
    # the row; entries older than this are dropped even if never confirmed (e.g. deduplicated).
    read_your_writes_ttl_s: float = 120.0
    # List pages read from ClickHouse (receipts) are served from a per-process cache for at most
    # this long; this process's own inserts drop them at once. 0 disables it (decisions §18).
    read_cache_ttl_s: float = Field(default=1.0, ge=0.0, le=60.0)
    # Requests per minute per tenant and route class (per api process). Early access: generous.
    rate_limit_per_minute: int = 600_000
    # Plans awaiting approval expire after this many seconds (default 72 h).
    approval_ttl_s: float = 72 * 3600
    # What "router:default" resolves to: "rules" (embedded) or "openai:<model-name>".
    default_model: str = "rules"
    # OpenAI-compatible model endpoint for operators with model "openai:<name>".
    openai_base_url: str = ""
    openai_api_key: str = ""
    worker_id: str = ""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # A worker whose last heartbeat is older than this makes /readyz report it as down.
    heartbeat_stale_s: float = 15.0
    # Consumer-group session: a dead worker's partitions move after this long. 6 s is Apache
    # Kafka's group.min.session.timeout.ms; Tansu also holds a new group's first join for half
    # of it, so it bounds start-up too (decisions §17). Heartbeats go every quarter of it.
    kafka_session_timeout_s: float = Field(default=6.0, ge=6.0, le=300.0)
    # KIP-345 static membership for workers (group.instance.id = worker id). Safe only with a
    # single worker on this client; see decisions §19.
    kafka_static_membership: bool = False
    # The broker keeps nothing when it stops (the embedded Tansu broker, memory://): the api
    # then drains the ledger at shutdown (ledger/sink.py ``drain``). `fibric up` sets it when it
    # started that broker itself; against a durable Kafka it stays off and nothing waits.
    kafka_memory_only: bool = False
    # Webhook deliveries (api/deliveries.py, decisions §32). Retries back off exponentially from
    # this base (doubling, with jitter) up to the cap; tests use a base of a fraction of a second.
    webhook_backoff_base_s: float = Field(default=60.0, gt=0.0, le=3600.0)
    webhook_backoff_max_s: float = Field(default=6 * 3600.0, gt=0.0)
    # A delivery is retried for this long after it was created (or manually retried): 72 h,
    # the spec's "over ~3 days", which covers a receiver down over a weekend day.
    webhook_retry_window_s: float = Field(default=72 * 3600.0, gt=0.0)
    # An endpoint whose deliveries have failed without a single success for this long is
    # suspended (its owner re-enables it): 24 h of nothing but failures is a dead receiver.
    webhook_suspend_after_s: float = Field(default=24 * 3600.0, gt=0.0)
    # One attempt (connect, send, read the answer's head) may take this long.
    webhook_timeout_s: float = Field(default=10.0, gt=0.0, le=60.0)
    # Attempts in flight at once per endpoint (different lanes only; a lane is sequential).
    webhook_concurrency: int = Field(default=4, ge=1, le=64)
    # Where attempts run (decisions §40): "process" — a child of the api (api/webhook_sender.py)
    # at `webhook_sender_nice` below the loop's priority, so deliveries take the CPU the loop
    # leaves; "inline" — on the api's own event loop (no child; same client, same guarantees).
    webhook_sender: Literal["process", "inline"] = "process"
    webhook_sender_nice: int = Field(default=10, ge=0, le=19)

    # Live streams (api/hub.py, api/controllers/streams.py, decisions §33). A stream with no
    # frame for this long gets a ``: keep-alive`` comment (proxies drop connections idle for
    # 30-60 s; 15 s stays well inside that).
    stream_keepalive_s: float = Field(default=15.0, gt=0.0, le=300.0)
    # A stream is a slow consumer, and dropped, when more than ``stream_queue_max`` rows wait
    # for it and the oldest has waited over ``stream_max_lag_s`` (the sink stores in bursts of
    # up to thousands of rows, which a client that keeps up drains in milliseconds), or when ten
    # times that many wait at all (the memory bound: references, never the sink's time).
    stream_queue_max: int = Field(default=2_000, ge=1, le=1_000_000)
    stream_max_lag_s: float = Field(default=2.0, gt=0.0, le=300.0)
    # A frame the client's socket does not take within this long ends the stream (its TCP
    # window has been full that long: it is not reading).
    stream_send_timeout_s: float = Field(default=10.0, gt=0.0, le=300.0)
    # Concurrent streams one tenant may hold on one api process (429 beyond it).
    stream_max_per_tenant: int = Field(default=100, ge=1, le=100_000)
    # Recent rows kept in memory so a reconnecting stream resumes exactly from its cursor; older
    # positions are served from ClickHouse by key. 20k rows is seconds of peak load, minutes of
    # ordinary traffic, and ~20 MB.
    stream_ring_size: int = Field(default=20_000, ge=1, le=10_000_000)
    # At most this many stored events are replayed to a stream that starts from a cursor (more
    # than that is a backfill for GET /v1/events paging, not a live stream).
    stream_backfill_max: int = Field(default=100_000, ge=1, le=10_000_000)
    # OAuth 2.0 providers of oauth2 listings (decisions §43), JSON keyed by listing id:
    # {"cn-amazon-connect": {"authorize_url", "token_url", "client_id", "client_secret",
    # "scopes"}}; any field left out keeps the catalogue's default. The client secret is this
    # deployment's registration with the provider, never a tenant's.
    oauth_providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Token endpoint deadline per request (exchange and refresh).
    oauth_timeout_s: float = Field(default=10.0, gt=0.0, le=60.0)
    # Connector health (decisions §43): every installed connector's connector.check runs this
    # often (0 turns the probe off), each probe bounded by the timeout, a few at a time.
    connector_probe_interval_s: float = Field(default=60.0, ge=0.0, le=86_400.0)
    connector_probe_timeout_s: float = Field(default=10.0, gt=0.0, le=60.0)
    connector_probe_concurrency: int = Field(default=4, ge=1, le=64)

    # Prometheus metrics (docs/production.md "Metrics", decisions §41). On by default: the api
    # serves GET /metrics on its own port; a worker serves /metrics on ``metrics_port`` when it
    # is set (0 = no endpoint; `fibric up` assigns one per worker). Off: no endpoint on any role
    # and no instrumentation on the hot paths (the benchmark's baseline).
    metrics: bool = True
    metrics_port: int = Field(default=0, ge=0, le=65535)

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value:
            return value
        scheme, sep, rest = value.partition("://")
        host = rest.split("/", 1)[0]
        if not sep or scheme not in ("http", "https") or not host or any(c in rest for c in "?#@ "):
            raise ValueError("must be an http(s) URL such as https://api.example.com")
        return value

    @property
    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def chdb_path(self) -> Path:
        return self.resolved_home / "clickhouse"

    @property
    def effective_clickhouse_dsn(self) -> str:
        return self.clickhouse_dsn or f"chdb://{self.chdb_path}"

    @property
    def api_base_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    @property
    def public_base_url(self) -> str:
        """FIBRIC_PUBLIC_URL, else the address the api binds (absolute links to clients). A
        wildcard bind (0.0.0.0, ::) is no address to connect to: loopback stands in for it."""
        if self.public_url:
            return self.public_url
        host = _WILDCARD_HOSTS.get(self.api_host, self.api_host)
        return f"http://{host}:{self.api_port}"

    def ensure_home(self) -> Path:
        home = self.resolved_home
        home.mkdir(parents=True, exist_ok=True)
        return home

    def load_secret_key(self) -> str:
        """FIBRIC_SECRET_KEY, else a key generated once into ``home/secret.key`` (mode 0600)."""
        if self.secret_key:
            return self.secret_key
        path = self.ensure_home() / "secret.key"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()
