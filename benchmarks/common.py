"""Shared pieces of the harness: progress on stderr, free ports, the ~1 KB benchmark envelope,
a registry of every process the harness starts (so each is stopped, even on error or Ctrl-C),
per-process CPU accounting from /proc, and the machine description."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

# Every benchmark message has this size (bytes of JSON), the size of a typical event envelope.
ENVELOPE_BYTES = 1024
HOST = "127.0.0.1"  # all benchmark traffic stays on loopback
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- progress and logging -------------------------------------------------------------------
def log(msg: str) -> None:
    """A progress/status line on stderr (stdout carries only the machine-readable lines)."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class Progress:
    """A one-line progress indicator on stderr: redrawn in place on a terminal, one line every
    few seconds otherwise (CI logs)."""

    def __init__(self, label: str, total: int, unit: str = "") -> None:
        self.label, self.total, self.unit = label, max(total, 1), unit
        self.start = time.monotonic()
        self._tty = sys.stderr.isatty()
        self._last = 0.0
        self._done = False

    def update(self, n: int, extra: str = "") -> None:
        now = time.monotonic()
        if n >= self.total or now - self._last < (0.1 if self._tty else 2.0):
            return  # the final state is drawn once, by done()
        self._last = now
        self._draw(n, extra, now)

    def _draw(self, n: int, extra: str, now: float) -> None:
        pct = min(100.0, 100.0 * n / self.total)
        width = 24
        fill = int(width * pct / 100)
        bar = "#" * fill + "." * (width - fill)
        text = (
            f"[bench] {self.label} [{bar}] {n}/{self.total} {self.unit} {pct:5.1f}% "
            f"{now - self.start:6.1f}s {extra}"
        ).rstrip()
        if self._tty:
            print("\r" + text.ljust(100)[:140], end="", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def done(self, extra: str = "") -> None:
        if self._done:
            return
        self._done = True
        self._draw(self.total, extra, time.monotonic())
        if self._tty:
            print(file=sys.stderr, flush=True)


# ---- ports ----------------------------------------------------------------------------------
def ensure_debian_binary(binary: str, package: str) -> str | None:
    """The path of ``binary``, installing Debian's ``package`` with apt-get when it is missing
    (an ``apt-get update`` first if the install fails); None when that is impossible (no apt-get
    or not root). The bench harness's wrk and the dashboard test's Prometheus come this way."""
    found = shutil.which(binary)
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return None
    log(f"{binary} is missing: apt-get install -y {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "install", "-y", "--no-install-recommends", package],
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", package],
    ):
        if cmd[1] == "update" and shutil.which(binary):
            break
        r = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
        )
        if r.returncode != 0 and cmd[1] == "install":
            log(f"{' '.join(cmd)} failed: {r.stderr.strip()[-200:]}")
    return shutil.which(binary)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---- the benchmark envelope -----------------------------------------------------------------
def event_body(i: int, *, run: str, entity_mod: int = 1024) -> dict[str, Any]:
    """The caller part of an envelope (also a valid ``POST /v1/events`` body), ~1 KB as JSON."""
    doc: dict[str, Any] = {
        "source": "bench",
        "event_type": "order.created",
        "entity_key": f"order-{i % entity_mod:06d}",
        "payload": {
            "order_id": f"ord_{run}_{i:09d}",
            "amount": 1000 + i % 9000,
            "currency": "EUR",
            "customer": {"id": f"cus_{i % 5000:06d}", "tier": "gold", "country": "DE"},
            "lines": [
                {"sku": f"sku-{(i + k) % 997:04d}", "qty": 1 + k, "unit_price": 250 + k}
                for k in range(3)
            ],
            "note": "",
        },
    }
    return doc


def _pad(doc: dict[str, Any], target: int) -> dict[str, Any]:
    size = len(orjson.dumps(doc))
    if size < target:
        doc["payload"]["note"] = "x" * (target - size)
    return doc


def envelope(
    i: int, tenant_id: str, *, run: str, idempotent: bool = True, source: str = "bench"
) -> bytes:
    """A valid :class:`schemas.envelope.EventEnvelope` for ``fibric.events.v1``, ~1 KB."""
    doc = event_body(i, run=run)
    doc["source"] = source
    doc = {"tenant_id": tenant_id, **doc}
    if idempotent:
        doc["idempotency_key"] = f"{run}-{source}-{i}"
    return orjson.dumps(_pad(doc, ENVELOPE_BYTES))


def http_body(run: str) -> bytes:
    """A valid ``POST /v1/events`` body of the same ~1 KB size."""
    return orjson.dumps(_pad(event_body(0, run=run), ENVELOPE_BYTES))


def message_key(tenant_id: str, i: int) -> bytes:
    """The wire contract's key: ``<tenant_id>:<entity_key>``."""
    return f"{tenant_id}:order-{i % 1024:06d}".encode()


# ---- processes ------------------------------------------------------------------------------
def _pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: die with the harness
    except OSError:
        pass


class Procs:
    """Every process the harness starts, so each one is stopped (by its pid) whatever happens."""

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes], float]] = []

    def spawn(
        self, name: str, argv: Sequence[str], *, grace_s: float = 10.0, **kw: Any
    ) -> subprocess.Popen[bytes]:
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(list(argv), preexec_fn=_pdeathsig, start_new_session=True, **kw)
        self._procs.append((name, proc, grace_s))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int | None:
        grace = next((g for _, p, g in self._procs if p is proc), 10.0)
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait(10)
        finally:
            self._procs = [t for t in self._procs if t[1] is not proc]
        return proc.returncode

    def stop_all(self) -> None:
        for _, proc, _ in reversed(list(self._procs)):
            with contextlib.suppress(Exception):
                self.stop(proc)


PROCS = Procs()


def spawn_module(name: str, module: str, log_path: Path, **flags: Any) -> subprocess.Popen[bytes]:
    """``python -m module --flag value …`` as a registered child logging to ``log_path``."""
    argv = [sys.executable, "-m", module]
    for k, v in flags.items():
        argv += [f"--{k.replace('_', '-')}", "" if v is None else str(v)]
    with open(log_path, "ab") as logf:
        return PROCS.spawn(name, argv, stdout=logf, stderr=logf, grace_s=5.0)


def proc_children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        if ppid == pid:
            out.append(int(d.name))
    return out


def proc_cmdline(pid: int) -> str:
    try:
        return (
            (Path("/proc") / str(pid) / "cmdline")
            .read_bytes()
            .replace(b"\0", b" ")
            .decode(errors="replace")
            .strip()
        )
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process, in seconds (None when it is gone)."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int | None:
    try:
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def system_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def _proc_table() -> dict[int, tuple[int, float]]:
    """Every process now: pid → (ppid, its CPU seconds plus those of the children it reaped)."""
    out: dict[int, tuple[int, float]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        f = stat[stat.rfind(")") + 2 :].split()
        # utime, stime, cutime, cstime: a child that exited and was waited for is in cutime
        out[int(d.name)] = (int(f[1]), sum(int(x) for x in f[11:15]) / CLK_TCK)
    return out


def tree_cpu_seconds(pids: dict[str, int], own_only: Iterable[str] = ()) -> dict[str, float]:
    """Role → CPU seconds of its process and every descendant (a worker's connector
    subprocesses, wrk under the harness), live or reaped, except descendants that are listed
    roles themselves (they count for their own role). Roles in ``own_only`` count their own
    process only (the harness, whose children include the whole stack)."""
    table = _proc_table()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    listed = set(pids.values())
    own = set(own_only)
    out: dict[str, float] = {}
    for role, pid in pids.items():
        if pid not in table:
            continue
        if role in own:
            c = cpu_seconds(pid)
            if c is not None:
                out[role] = c
            continue
        total, todo = table[pid][1], list(kids.get(pid, ()))
        while todo:
            c = todo.pop()
            if c in listed or c not in table:
                continue
            total += table[c][1]
            todo += kids.get(c, ())
        out[role] = total
    return out


class CpuMeter:
    """CPU used by named processes between :meth:`start` and :meth:`stop`, as a share of one
    core (1.0 = one core fully busy); ``machine`` is the whole machine's busy cores and
    ``others`` what processes not listed used (other work on a shared machine, kernel threads):
    a large ``others`` means the figures were taken on a busy machine.

    ``tree=True`` counts each role's descendants with it (:func:`tree_cpu_seconds`); give it
    every role of the stack, or the unlisted ones are counted with their parent. :attr:`seconds`
    keeps the raw CPU seconds of the window and :meth:`per_item` turns them into µs per item."""

    def __init__(
        self, pids: dict[str, int], *, tree: bool = False, own_only: Iterable[str] = ()
    ) -> None:
        self.pids = dict(pids)
        self.pids.setdefault("harness", os.getpid())
        self.tree = tree
        self.own_only = tuple(own_only)
        self._t0 = 0.0
        self._c0: dict[str, float | None] = {}
        self.result: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def _now(self) -> dict[str, float | None]:
        if self.tree:
            got = tree_cpu_seconds(self.pids, self.own_only)
            return {k: got.get(k) for k in self.pids}
        return {k: cpu_seconds(p) for k, p in self.pids.items()}

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._c0 = self._now()
        self._sys0 = system_busy_seconds()

    def stop(self) -> dict[str, float]:
        wall = max(time.monotonic() - self._t0, 1e-9)
        out: dict[str, float] = {}
        self.seconds = {}
        now = self._now()
        for k in self.pids:
            c1, c0 = now.get(k), self._c0.get(k)
            if c1 is not None and c0 is not None:
                self.seconds[k] = c1 - c0
                out[k] = round((c1 - c0) / wall, 3)
        busy = (system_busy_seconds() - self._sys0) / wall
        ours = sum(out.values())
        out["machine"] = round(busy, 3)
        out["others"] = round(max(0.0, busy - ours), 3)
        out["wall_s"] = round(wall, 3)
        self.result = out
        return out

    def per_item(
        self, items: int, *, loadgen: Iterable[str] = ("harness",), apart: Iterable[str] = ()
    ) -> dict[str, Any]:
        """µs of CPU per item over the last window: ``cpu_us_per_item`` sums every role but
        the load generator (``loadgen``, reported as ``loadgen_cpu_us_per_item``) and the
        roles ``apart`` (e.g. a fake upstream store: not our cost, reported by role only)."""
        return cpu_per_item(self.seconds, items, loadgen=loadgen, apart=apart)


# After a loop scenario's last receipt the stack still finishes its work (the ledger sink's
# last inserts, commits): its CPU window stays open until the stack is back to its idle rate
# (measured before the window: timers, polls) plus QUIET_MARGIN_CORES over a sample of
# QUIET_SAMPLE_S (long enough for CLK_TCK's 10 ms ticks), for at most QUIET_MAX_S.
QUIET_MARGIN_CORES = 0.1
QUIET_SAMPLE_S = 0.3
QUIET_MAX_S = 5.0


def busy_rate(pids: dict[str, int], seconds: float = QUIET_SAMPLE_S) -> float:
    """Cores the processes (with their children) use over the next ``seconds``."""
    c0 = sum(tree_cpu_seconds(pids).values())
    time.sleep(seconds)
    return (sum(tree_cpu_seconds(pids).values()) - c0) / seconds


def wait_quiet(pids: dict[str, int], idle_cores: float = 0.0) -> float:
    """Wait until the processes are back to ``idle_cores`` (+ the margin); seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < QUIET_MAX_S:
        if busy_rate(pids) <= idle_cores + QUIET_MARGIN_CORES:
            break
    return round(time.monotonic() - t0, 2)


def cpu_per_item(
    seconds: dict[str, float],
    items: int,
    *,
    loadgen: Iterable[str] = ("harness",),
    apart: Iterable[str] = (),
) -> dict[str, Any]:
    """See :meth:`CpuMeter.per_item` (also used on CPU seconds a child process measured)."""
    if items <= 0 or not seconds:
        return {"cpu_us_per_item": None, "loadgen_cpu_us_per_item": None}
    gen, skip = set(loadgen), set(apart)
    ours = sum(v for k, v in seconds.items() if k not in gen and k not in skip)
    return {
        "cpu_us_per_item": round(ours / items * 1e6, 1),
        "loadgen_cpu_us_per_item": round(sum(seconds.get(k, 0.0) for k in gen) / items * 1e6, 1),
        "cpu_us_per_item_by_role": {k: round(v / items * 1e6, 1) for k, v in seconds.items()},
    }


# ---- the machine ----------------------------------------------------------------------------
def busy_cores(seconds: float = 1.0) -> float:
    """How many cores the machine keeps busy right now (before we start anything)."""
    s0, t0 = system_busy_seconds(), time.monotonic()
    time.sleep(seconds)
    return round((system_busy_seconds() - s0) / (time.monotonic() - t0), 2)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    return {
        "nproc": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "cpu_model": model,
        "ram_gib": round(mem / 2**30, 1),
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def fmt(v: float | int | None, digits: int = 0) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and digits:
        return f"{v:.{digits}f}"
    return str(int(round(v))) if isinstance(v, float) else str(v)


def line(name: str, fields: Iterable[tuple[str, Any]]) -> str:
    """The machine-readable line of one scenario: ``NAME k=v k=v``."""
    parts = [name]
    for k, v in fields:
        if v is None:
            v = "nan"
        elif isinstance(v, float):
            v = f"{v:.3f}" if abs(v) < 10 else f"{v:.0f}"
        parts.append(f"{k}={v}")
    return " ".join(parts)


@dataclass
class Sizes:
    """Every size the scenarios use; ``quick()`` fits the whole run in well under a minute."""

    ceiling_msgs: int = 200_000
    clickhouse_rows: int = 200_000
    clickhouse_batch: int = 20_000
    naive_events: int = 60_000
    s1_events: int = 200_000
    s1_warmup: int = 5_000
    s2_warmup_s: float = 3.0
    s2_duration_s: float = 15.0
    s2_connections: int = 64
    partitions: int = 8
    # the governed loop (benchmarks/loop.py)
    naive_exec_actions: int = 3_000
    s3_actions: int = 10_000
    s4_dispositions: int = 20_000
    s6_seconds: float = 15.0
    s7_before_s: float = 3.0
    s7_after_s: float = 20.0
    config_writes: int = 100
    s8_receipts: int = 1_000_000
    s8_duration_s: float = 10.0
    s9_s3_actions: int = 0  # 0: S3's size
    s3l_entities: int = 1_000  # two actions each (hold, notify)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            ceiling_msgs=6_000,
            clickhouse_rows=10_000,
            clickhouse_batch=10_000,
            naive_events=1_500,
            s1_events=2_000,
            s1_warmup=300,
            s2_warmup_s=0.3,
            s2_duration_s=0.8,
            naive_exec_actions=200,
            s3_actions=200,
            s4_dispositions=600,
            s6_seconds=1.0,
            s7_before_s=0.5,
            s7_after_s=4.0,
            config_writes=3,
            s8_receipts=3_000,
            s8_duration_s=1.0,
            s3l_entities=200,
        )

    @classmethod
    def tiny(cls) -> Sizes:
        """For the harness test: correctness only."""
        return cls(
            ceiling_msgs=2_000,
            clickhouse_rows=2_000,
            clickhouse_batch=1_000,
            naive_events=300,
            s1_events=500,
            s1_warmup=50,
            s2_warmup_s=0.5,
            s2_duration_s=1.0,
            s2_connections=8,
            partitions=2,
            naive_exec_actions=50,
            s3_actions=60,
            s4_dispositions=100,
            s6_seconds=1.0,
            s7_before_s=1.0,
            s7_after_s=3.0,
            config_writes=3,
            s8_receipts=2_000,
            s8_duration_s=1.0,
            s3l_entities=40,
        )
