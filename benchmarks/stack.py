"""A fresh embedded stack for one scenario: ``fibric up`` as a child process with its own
FIBRIC_HOME and free loopback ports, a bench tenant and API key made with ``fibric admin``, and
the pids of its broker, worker and api processes (for CPU accounting and py-spy)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import (
    HOST,
    PROCS,
    cpu_seconds,
    free_port,
    log,
    proc_children,
    proc_cmdline,
)
from schemas.settings import Settings

READY_TIMEOUT_S = 150.0


class BenchStack:
    def __init__(
        self, home: Path, partitions: int, *, cpus: str | None = None, workers: int = 1
    ) -> None:
        self.home = home
        self.partitions = partitions
        self.workers = workers
        self.cpus = cpus  # e.g. "0": pin the whole stack (children inherit the affinity)
        self.api_port = free_port()
        self.kafka_port = free_port()
        self.env = dict(os.environ)
        self.env.update(
            FIBRIC_HOME=str(home),
            FIBRIC_API_HOST=HOST,
            FIBRIC_API_PORT=str(self.api_port),
            FIBRIC_KAFKA_BOOTSTRAP=f"{HOST}:{self.kafka_port}",
            FIBRIC_PARTITIONS=str(partitions),
            FIBRIC_LOG_LEVEL=os.environ.get("FIBRIC_BENCH_LOG_LEVEL", "warning"),
        )
        self.env.pop("FIBRIC_CLICKHOUSE_DSN", None)  # always the embedded chDB under home
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra: list[subprocess.Popen[bytes]] = []  # workers added by add_worker()
        self.tenant_id = ""
        self.secret = ""
        self.pids: dict[str, int] = {}
        self.started_s = 0.0
        self._t0 = 0.0
        self._spawned_at = 0.0
        self.loop_operator: str | None = None  # set by benchmarks.loop.ensure_setup
        self.loop_connector: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def bootstrap(self) -> str:
        return self.env["FIBRIC_KAFKA_BOOTSTRAP"]

    def start(self) -> BenchStack:
        return self.launch().wait_ready()

    def launch(self) -> BenchStack:
        """Start ``fibric up`` without waiting (see :meth:`wait_ready`)."""
        self.home.mkdir(parents=True, exist_ok=True)
        out_path = self.home / "up.out"
        argv = [sys.executable, "-m", "fibric", "up", "--workers", str(self.workers)]
        if self.cpus is not None:
            argv = ["taskset", "-c", self.cpus, *argv]
        t0 = time.monotonic()
        log(
            f"starting a fresh stack: fibric up (home {self.home}, api :{self.api_port}, "
            f"kafka :{self.kafka_port}{', cpus ' + self.cpus if self.cpus else ''})"
        )
        with open(out_path, "ab") as out:
            self.proc = PROCS.spawn(
                "fibric-up", argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, grace_s=60.0
            )
        self._t0 = t0
        return self

    def wait_ready(self) -> BenchStack:
        """Wait for ``fibric up``'s "ready" line (it waits for ``/readyz`` itself)."""
        assert self.proc is not None
        out_path, t0 = self.home / "up.out", self._t0
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            text = out_path.read_text(errors="replace")
            if "ready at" in text:
                break
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"fibric up exited ({self.proc.returncode}):\n{text}\n{self.logs()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"fibric up was not ready in {READY_TIMEOUT_S:.0f}s:\n{text}\n{self.logs()}"
                )
            time.sleep(0.1)
        self.started_s = time.monotonic() - t0
        self.pids = self._role_pids()
        log(f"stack ready in {self.started_s:.1f}s; pids {self.pids}")
        return self

    def _role_pids(self) -> dict[str, int]:
        """``up``, ``broker``, ``api``, ``worker`` (worker-1) and ``worker-N`` for the others."""
        assert self.proc is not None
        pids = {"up": self.proc.pid}
        children = proc_children(self.proc.pid) + [p.pid for p in self.extra if p.poll() is None]
        for pid in children:
            cmd = proc_cmdline(pid)
            if "fibric worker" in cmd:
                wid = _env_of(pid).get("FIBRIC_WORKER_ID", "worker-1")
                pids["worker" if wid == "worker-1" else wid] = pid
            elif "fibric api" in cmd:
                pids["api"] = pid
            elif " broker " in f" {cmd} ":
                pids["broker"] = pid
        return pids

    @property
    def worker_pids(self) -> dict[str, int]:
        return {k: v for k, v in self._role_pids().items() if k.startswith("worker")}

    def cpu_roles(self) -> dict[str, int]:
        """Every process of the stack by role, now (``up``, broker, api, each worker): what a
        tree :class:`~benchmarks.common.CpuMeter` needs to count each process exactly once."""
        return self._role_pids()

    def add_worker(self, timeout_s: float = 90.0) -> str:
        """Start one more ``fibric worker`` (as a second replica would be in production) and
        wait until ``/readyz`` shows every worker holding partitions: the group rebalanced."""
        wid = self.spawn_worker()
        self.wait_workers(int(wid.split("-")[1]), timeout_s)
        return wid

    def spawn_worker(self) -> str:
        """Start one more ``fibric worker`` without waiting for it to join."""
        n = len(self.worker_pids) + 1
        wid = f"worker-{n}"
        env = {**self.env, "FIBRIC_WORKER_ID": wid}
        logf = self.home / "logs" / f"{wid}.log"
        argv = [sys.executable, "-m", "fibric", "worker"]
        if self.cpus is not None:
            argv = ["taskset", "-c", self.cpus, *argv]
        with open(logf, "ab") as out:
            self.extra.append(
                PROCS.spawn(wid, argv, env=env, stdout=out, stderr=subprocess.STDOUT, grace_s=20.0)
            )
        self._spawned_at = time.monotonic()
        return wid

    def wait_workers(self, n: int, timeout_s: float = 90.0) -> None:
        """Wait until ``/readyz`` shows ``n`` workers, each holding partitions."""
        t0 = time.monotonic()
        wid = f"worker-{n}"
        while True:
            live = self.ready_workers()
            if len(live) >= n and all(live.values()):
                break
            if self.extra[-1].poll() is not None:
                raise RuntimeError(f"{wid} exited ({self.extra[-1].returncode}):\n{self.logs()}")
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"{wid} did not get partitions in {timeout_s:.0f}s: {live}")
            time.sleep(0.2)
        self.workers = n
        self.pids = self._role_pids()
        since = time.monotonic() - max(self._spawned_at, 0.0) if self._spawned_at else 0.0
        log(f"{wid} joined ({since:.1f}s after its start); partitions {self.ready_workers()}")

    def wait_quiet(self, max_s: float = 8.0) -> float:
        """Wait until workers started by :meth:`spawn_worker` stop using CPU (their start-up is
        done; they wait on the group join): seconds waited (0 when there are none)."""
        pids = [p.pid for p in self.extra if p.poll() is None]
        t0 = time.monotonic()
        while pids and time.monotonic() - t0 < max_s:
            c0 = sum(cpu_seconds(p) or 0.0 for p in pids)
            time.sleep(0.2)
            if (sum(cpu_seconds(p) or 0.0 for p in pids) - c0) / 0.2 < 0.15:
                break
        return round(time.monotonic() - t0, 1) if pids else 0.0

    def ready_workers(self) -> dict[str, list[int]]:
        """worker id → partitions of ``fibric.events.v1`` it holds, from ``/readyz``."""
        import httpx

        try:
            body = httpx.get(f"{self.base_url}/readyz", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return {}
        return {w["worker_id"]: w["partitions"] for w in body.get("workers", [])}

    def check(self) -> None:
        """Raise, with its output and logs, when ``fibric up`` is no longer running."""
        if self.proc is None or self.proc.poll() is not None:
            code = self.proc.returncode if self.proc else None
            out = (self.home / "up.out").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"fibric up is not running (exit {code}):\n{out}\n{self.logs()}")

    def logs(self) -> str:
        out = []
        for f in sorted((self.home / "logs").glob("*.log")):
            out.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def cli(self, *args: str) -> dict:
        r = subprocess.run(
            [sys.executable, "-m", "fibric", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        if r.returncode != 0:
            raise RuntimeError(f"fibric {' '.join(args)} failed: {r.stderr.strip()}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    def create_tenant(self, slug: str = "bench") -> None:
        settings = Settings(
            home=self.home,
            kafka_bootstrap=self.bootstrap,
            partitions=self.partitions,
            api_port=self.api_port,
        )
        self.tenant_id, self.secret = make_tenant(settings, slug)
        log(f"tenant {slug} = {self.tenant_id}")

    def stop(self, fast: bool = False) -> None:
        """Ctrl-C to ``fibric up`` (it stops api, worker, broker); then make sure by pid.
        ``fast`` (quick runs, whose state is thrown away) kills everything at once instead."""
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            self.pids = {**self.pids, **self._role_pids()}
        leftovers = [p for k, p in self.pids.items() if k != "up"]
        t0 = time.monotonic()
        for extra in self.extra:
            PROCS.stop(extra, signal.SIGKILL if fast else signal.SIGTERM)
        self.extra = []
        if fast:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        PROCS.stop(self.proc, signal.SIGKILL if fast else signal.SIGINT)
        for pid in leftovers:
            marker = f"FIBRIC_HOME={self.home}".encode()
            with contextlib.suppress(OSError):
                if marker in (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0"):
                    os.kill(pid, signal.SIGKILL)
        self.proc = None
        log(f"stack stopped in {time.monotonic() - t0:.1f}s")


def _env_of(pid: int) -> dict[str, str]:
    try:
        raw = (Path("/proc") / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.decode(errors="replace").split("=", 1) for kv in raw.split(b"\0") if b"=" in kv)


def make_tenant(settings: Settings, slug: str) -> tuple[str, str]:
    """What ``fibric admin tenant create`` and ``key create`` do (a tenant and a test-mode key),
    in this process: two CLI runs would cost two interpreter start-ups. Returns (id, secret)."""
    from fibric.admin import Admin

    async def go() -> tuple[str, str]:
        async with Admin(settings) as admin:
            t = await admin.create_tenant(slug, None)
            _, secret = await admin.create_key(slug, None, None, "test", None)
            return t.id, secret

    return asyncio.run(go())
