"""A fresh embedded stack for one scenario: ``fibric up`` as a child process with its own
FIBRIC_HOME and free loopback ports, a bench tenant and API key made with ``fibric admin``, and
the pids of its broker, worker and api processes (for CPU accounting and py-spy)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import HOST, PROCS, free_port, log, proc_children, proc_cmdline

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
        self.loop_operator: str | None = None  # set by benchmarks.loop.ensure_setup
        self.loop_connector: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def bootstrap(self) -> str:
        return self.env["FIBRIC_KAFKA_BOOTSTRAP"]

    def start(self) -> BenchStack:
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

    def add_worker(self, timeout_s: float = 90.0) -> str:
        """Start one more ``fibric worker`` (as a second replica would be in production) and
        wait until ``/readyz`` shows every worker holding partitions: the group rebalanced."""
        n = len(self.worker_pids) + 1
        wid = f"worker-{n}"
        env = {**self.env, "FIBRIC_WORKER_ID": wid}
        logf = self.home / "logs" / f"{wid}.log"
        argv = [sys.executable, "-m", "fibric", "worker"]
        if self.cpus is not None:
            argv = ["taskset", "-c", self.cpus, *argv]
        t0 = time.monotonic()
        with open(logf, "ab") as out:
            self.extra.append(
                PROCS.spawn(wid, argv, env=env, stdout=out, stderr=subprocess.STDOUT, grace_s=20.0)
            )
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
        log(f"{wid} joined in {time.monotonic() - t0:.1f}s; partitions {self.ready_workers()}")
        return wid

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
        t = self.cli("admin", "tenant", "create", slug, "--json")
        k = self.cli("admin", "key", "create", "--tenant", slug, "--json")
        self.tenant_id, self.secret = t["id"], k["secret"]
        log(f"tenant {slug} = {self.tenant_id}")

    def stop(self) -> None:
        """Ctrl-C to ``fibric up`` (it stops api, worker, broker); then make sure by pid."""
        if self.proc is None:
            return
        leftovers = [p for k, p in self.pids.items() if k != "up"]
        t0 = time.monotonic()
        for extra in self.extra:
            PROCS.stop(extra, signal.SIGTERM)
        self.extra = []
        PROCS.stop(self.proc, signal.SIGINT)
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
