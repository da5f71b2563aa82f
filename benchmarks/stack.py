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
    def __init__(self, home: Path, partitions: int, *, cpus: str | None = None) -> None:
        self.home = home
        self.partitions = partitions
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
            FIBRIC_LOG_LEVEL="warning",
        )
        self.env.pop("FIBRIC_CLICKHOUSE_DSN", None)  # always the embedded chDB under home
        self.proc: subprocess.Popen[bytes] | None = None
        self.tenant_id = ""
        self.secret = ""
        self.pids: dict[str, int] = {}
        self.started_s = 0.0

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def bootstrap(self) -> str:
        return self.env["FIBRIC_KAFKA_BOOTSTRAP"]

    def start(self) -> BenchStack:
        self.home.mkdir(parents=True, exist_ok=True)
        out_path = self.home / "up.out"
        argv = [sys.executable, "-m", "fibric", "up"]
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
        assert self.proc is not None
        pids = {"up": self.proc.pid}
        for pid in proc_children(self.proc.pid):
            cmd = proc_cmdline(pid)
            if "fibric worker" in cmd:
                pids.setdefault("worker", pid)
            elif "fibric api" in cmd:
                pids["api"] = pid
            elif " broker " in f" {cmd} ":
                pids["broker"] = pid
        return pids

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
        PROCS.stop(self.proc, signal.SIGINT)
        for pid in leftovers:
            marker = f"FIBRIC_HOME={self.home}".encode()
            with contextlib.suppress(OSError):
                if marker in (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0"):
                    os.kill(pid, signal.SIGKILL)
        self.proc = None
        log(f"stack stopped in {time.monotonic() - t0:.1f}s")
