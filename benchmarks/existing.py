"""``fibric bench --existing``: run the scenarios against a deployment that is already running —
the api at ``FIBRIC_API_HOST``:``FIBRIC_API_PORT`` and Kafka at ``FIBRIC_KAFKA_BOOTSTRAP`` (for
example the docker-compose stack) — instead of starting an embedded ``fibric up``.

It offers what :class:`benchmarks.stack.BenchStack` offers the scenarios, minus the processes: a
bench tenant and key (created through Kafka, as ``fibric admin`` does), the base URL and the
bootstrap servers. Its processes are not ours, so there is no per-process CPU or RSS accounting,
and the scenarios that start or kill workers (S7, S9) are skipped. The ceilings and the naive
baselines still run against their own embedded broker on this machine.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import log
from benchmarks.stack import make_tenant
from schemas.settings import Settings

NEEDS_PROCESSES = {
    "S7": "S7 kills a worker process: not run against an existing deployment",
    "S9": "S9 starts a second worker process: not run against an existing deployment",
}


class ExistingStack:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.base_url = self.settings.api_base_url
        self.bootstrap = self.settings.kafka_bootstrap
        self.partitions = self.settings.partitions
        self.home = Path(".")
        self.cpus = None
        self.proc = None
        self.pids: dict[str, int] = {}
        self.extra: list[Any] = []
        self.tenant_id = ""
        self.secret = ""
        self.started_s = 0.0
        self.loop_operator: str | None = None
        self.loop_connector: str | None = None

    def start(self) -> ExistingStack:
        self.check()
        log(f"using the existing deployment: api {self.base_url}, kafka {self.bootstrap}")
        return self

    def check(self) -> None:
        try:
            r = httpx.get(f"{self.base_url}/readyz", timeout=10)
        except httpx.HTTPError as exc:
            raise RuntimeError(
                f"the deployment's api at {self.base_url} does not answer: {exc}"
            ) from exc
        if r.status_code != 200:
            raise RuntimeError(f"the deployment is not ready: {r.text[:300]}")

    def create_tenant(self, slug: str = "bench") -> None:
        """A fresh tenant per run (``bench-<hex>``), so runs never see each other's data."""
        slug = f"{slug}-{secrets.token_hex(3)}"
        self.tenant_id, self.secret = make_tenant(self.settings, slug)
        log(f"tenant {slug} = {self.tenant_id}")

    def _role_pids(self) -> dict[str, int]:
        return {}

    def cpu_roles(self) -> dict[str, int]:
        return {}

    @property
    def worker_pids(self) -> dict[str, int]:
        return {}

    def ready_workers(self) -> dict[str, list[int]]:
        try:
            body = httpx.get(f"{self.base_url}/readyz", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return {}
        return {w["worker_id"]: w["partitions"] for w in body.get("workers", [])}

    def wait_quiet(self, max_s: float = 0.0) -> float:  # noqa: ARG002 - nothing of ours starts
        return 0.0

    def logs(self) -> str:
        return "(an existing deployment: see its own logs)"

    def stop(self, fast: bool = False) -> None:  # noqa: ARG002 - not ours to stop
        return None
