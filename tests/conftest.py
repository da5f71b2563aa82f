"""Shared test helpers: free ports and a real `fibric up` stack started as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from fibric.launcher import API_STOP_GRACE_S, STOP_GRACE_S

READY_TIMEOUT_S = 120
# How long `fibric up` may take to stop after Ctrl-C: the api's grace (requests, ledger drain,
# clients), then each worker's and the broker's grace, plus slack for a loaded machine. A stop
# slower than this is a hang, not a slow drain.
STOP_WAIT_S = API_STOP_GRACE_S + 3 * STOP_GRACE_S + 15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    """A running `fibric up` (embedded broker, worker, api) in a temp FIBRIC_HOME."""

    home: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    output: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.env['FIBRIC_API_PORT']}"

    @property
    def bootstrap(self) -> str:
        return self.env["FIBRIC_KAFKA_BOOTSTRAP"]

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        out_path = self.home / "up.out"
        with open(out_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fibric", "up"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            text = out_path.read_text(errors="replace")
            if text.count("ready at") > len(self.output):
                self.output.append(text)
                return
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"fibric up exited {self.proc.returncode}:\n{text}\n{self.logs()}"
                )
            time.sleep(0.2)
        text = out_path.read_text(errors="replace")
        logs = self.logs()
        # never leak a stack that did not come up: the test's finally may not reach stop()
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            pass
        raise RuntimeError(f"fibric up not ready:\n{text}\n{logs}")

    def up_output(self) -> str:
        return (self.home / "up.out").read_text(errors="replace")

    def logs(self) -> str:
        out = []
        for f in sorted((self.home / "logs").glob("*.log")):
            out.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-4000:])
        return "\n".join(out)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise

    def cli(self, *args: str) -> dict:
        r = subprocess.run(
            [sys.executable, "-m", "fibric", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])

    def pids(self) -> list[int]:
        """Processes whose environment names this stack's FIBRIC_HOME (children included)."""
        found = []
        marker = f"FIBRIC_HOME={self.home}".encode()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                if marker in (d / "environ").read_bytes().split(b"\0"):
                    found.append(int(d.name))
            except OSError:
                continue
        return [p for p in found if p != os.getpid()]


def make_stack(tmp: Path, **env: str) -> Stack:
    home = tmp / "home"
    e = dict(os.environ)
    e.update(
        FIBRIC_HOME=str(home),
        FIBRIC_API_PORT=str(free_port()),
        FIBRIC_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
        FIBRIC_PARTITIONS="4",
        FIBRIC_LOG_LEVEL="info",
        # short approval window so the expiry path is exercised within a test
        FIBRIC_APPROVAL_TTL_S="20",
        # every response body is validated against its declared model (api/respond.py)
        FIBRIC_VALIDATE_RESPONSES="1",
    )
    e.update(env)
    return Stack(home=home, env=e)


@dataclass
class Tenant:
    id: str
    slug: str
    keys: dict[str, str]  # role or label -> secret


def client(stack: Stack, secret: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.Client(base_url=stack.base_url, headers=headers, timeout=30)


@pytest.fixture(scope="session")
def openai_fake():
    from tests.fakes.openai_server import FakeOpenAI

    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, openai_fake):
    s = make_stack(
        tmp_path_factory.mktemp("stack"),
        FIBRIC_OPENAI_BASE_URL=openai_fake.url,
        FIBRIC_OPENAI_API_KEY="sk-fake-model-key",
    )
    s.start()
    yield s
    s.stop()


def new_tenant(stack: Stack, slug: str) -> Tenant:
    t = stack.cli("admin", "tenant", "create", slug, "--json")
    keys = {}
    for role in ("admin", "read_only", "ingest"):
        keys[role] = stack.cli(
            "admin", "key", "create", "--tenant", slug, "--role", role, "--json"
        )["secret"]
    keys["live"] = stack.cli(
        "admin", "key", "create", "--tenant", t["id"], "--mode", "live", "--json"
    )["secret"]
    return Tenant(t["id"], slug, keys)


@pytest.fixture(scope="session")
def acme(stack: Stack) -> Tenant:
    return new_tenant(stack, "acme")


@pytest.fixture(scope="session")
def globex(stack: Stack) -> Tenant:
    return new_tenant(stack, "globex")


@dataclass
class FakeMagento:
    """The fake Magento store (tests/fakes/magento.py) as its own process on 127.0.0.1."""

    url: str
    proc: subprocess.Popen

    def state(self) -> dict:
        return httpx.get(f"{self.url}/__fake__/state", timeout=10).json()

    def mode(self, **kw) -> None:
        httpx.post(f"{self.url}/__fake__/mode", json=kw, timeout=10).raise_for_status()

    def reset(self) -> None:
        httpx.post(f"{self.url}/__fake__/reset", timeout=10).raise_for_status()

    def add_order(self, entity_id: int, **kw) -> dict:
        r = httpx.post(
            f"{self.url}/__fake__/orders", json={"entity_id": entity_id, **kw}, timeout=10
        )
        r.raise_for_status()
        return r.json()

    def count(self, name: str) -> int:
        return int(self.state()["counters"].get(name, 0))


def start_fake_magento() -> FakeMagento:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "connectors.fakes.magento", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/__fake__/state", timeout=1)
            return FakeMagento(url, proc)
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("fake magento did not start")


@pytest.fixture(scope="session")
def magento():
    fake = start_fake_magento()
    yield fake
    fake.proc.terminate()
    fake.proc.wait(10)


def install_sandbox(c: httpx.Client, name: str = "sandbox") -> dict:
    """Install cn-sandbox-orders (simulated side effects, any key) for the client's tenant."""
    r = c.post(
        "/v1/connectors",
        json={
            "listing": "cn-sandbox-orders",
            "name": name,
            "auth": {"type": "api_key", "key": "sandbox"},
        },
    )
    assert r.status_code == 201, r.text
    return r.json()


def create_operator(
    c: httpx.Client, name: str, capabilities: list, guardrails: list, playbook: list, **extra
) -> dict:
    r = c.post(
        "/v1/operators",
        json={
            "name": name,
            "outcome": extra.pop("outcome", f"{name}: governed actions for a test."),
            "capabilities": capabilities,
            "guardrails": guardrails,
            "playbook": playbook,
            **extra,
        },
    )
    assert r.status_code == 201, r.text
    return r.json()
