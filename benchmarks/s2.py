"""S2 HTTP ingest: ``POST /v1/events`` req/s and latency percentiles at 64 connections, with
``wrk`` pinned to its own core (``taskset -c <last cpu>``) and its CPU use reported, so the load
generator is shown not to be the bottleneck; plus ``GET /healthz`` (a hello-JSON through the same
middleware) as the framework ceiling in the same run.

wrk comes from Debian (installed by the harness when missing: ``apt-get install -y wrk``, with an
``apt-get update`` first if that fails). Without wrk the harness falls back to an in-process
asyncio httpx load generator and says so (``loadgen=httpx``): that one shares the harness's core
and is much slower than wrk, so its figures are a floor, not a measurement of the API.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import PROCS, CpuMeter, Progress, ensure_debian_binary, http_body, log
from benchmarks.kafka import OffsetProbe, quiet_aiokafka
from benchmarks.profile import Profiler
from benchmarks.stack import BenchStack
from streams.topics import EVENTS

_DONE_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d,\"p50_us\":%d,\"p90_us\":%d," ..
    "\"p99_us\":%d,\"p999_us\":%d,\"max_us\":%d,\"mean_us\":%.1f,\"err_connect\":%d," ..
    "\"err_read\":%d,\"err_write\":%d,\"err_status\":%d,\"err_timeout\":%d}\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean, e.connect, e.read,
    e.write, e.status, e.timeout))
end
"""


_WRK_LOCK = threading.Lock()  # one apt-get at a time (the harness may start it early)


def ensure_wrk() -> str | None:
    """The path of wrk, installing Debian's package when it is missing (None if impossible)."""
    with _WRK_LOCK:
        return _ensure_wrk()


def _ensure_wrk() -> str | None:
    return ensure_debian_binary("wrk", "wrk")


def loadgen_cpu() -> str | None:
    """The core wrk is pinned to: the last one this process may use (None on one core)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return None
    return str(cpus[-1])


def stack_cpus() -> str | None:
    """Every core but the load generator's (for ``--s2-isolate``)."""
    cpus = sorted(os.sched_getaffinity(0))
    return ",".join(map(str, cpus[:-1])) if len(cpus) >= 2 else None


def _post_lua(secret: str, body: bytes, idempotency_prefix: str | None = None) -> str:
    """POST the ~1 KB body with the entity key varying over 1,024 values (fixed width, so the
    size is constant): events spread over every partition, as real producers' do. With
    ``idempotency_prefix`` every request also carries a new ``Idempotency-Key`` (prefix +
    counter): the second S2 line, where each POST also records its attempt in ClickHouse."""
    marker = b'"order-000000"'
    assert marker in body
    template = body.decode().replace("%", "%%").replace(marker.decode(), '"order-%06d"', 1)
    return (
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {secret}"\n'
        f"local template = [==[{template}]==]\n"
        "local counter = 0\n"
        "request = function()\n"
        "  counter = counter + 1\n"
        + (
            f'  wrk.headers["Idempotency-Key"] = "{idempotency_prefix}" .. counter\n'
            if idempotency_prefix
            else ""
        )
        + "  return wrk.format(nil, nil, nil, string.format(template, counter % 1024))\n"
        "end\n" + _DONE_LUA
    )


def _run_wrk(
    wrk: str, url: str, script: Path, conns: int, duration_s: float, pin: str | None, label: str
) -> dict[str, Any]:
    argv = [
        wrk,
        "-t1",
        f"-c{conns}",
        f"-d{max(1, round(duration_s))}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    if pin is not None:
        argv = ["taskset", "-c", pin, *argv]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = PROCS.spawn(f"wrk-{label}", argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    prog = Progress(label, int(duration_s * 10), "")
    while proc.poll() is None:
        time.sleep(0.1)
        prog.update(min(int((time.monotonic() - t0) * 10), int(duration_s * 10)))
    wall = time.monotonic() - t0
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    PROCS.stop(proc)
    prog.done()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    js = next((ln[len("WRKJSON ") :] for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if js is None:
        raise RuntimeError(f"wrk gave no summary:\n{out[-2000:]}")
    d = json.loads(js)
    dur = d["duration_us"] / 1e6
    errors = d["err_connect"] + d["err_read"] + d["err_write"] + d["err_timeout"]
    ok = d["requests"] - d["err_status"]
    return {
        "requests": d["requests"],
        "ok_requests": ok,
        "req_per_s": round(ok / dur),
        "p50_ms": round(d["p50_us"] / 1000, 2),
        "p90_ms": round(d["p90_us"] / 1000, 2),
        "p99_ms": round(d["p99_us"] / 1000, 2),
        "p999_ms": round(d["p999_us"] / 1000, 2),
        "max_ms": round(d["max_us"] / 1000, 2),
        "non_2xx": d["err_status"],
        "socket_errors": errors,
        "duration_s": round(dur, 2),
        "loadgen_cpu_share": round(cpu / wall, 3),  # of one core; 1.0 = wrk saturated its core
    }


async def _httpx_load(
    url: str, headers: dict[str, str], body: bytes | None, conns: int, duration_s: float, label: str
) -> dict[str, Any]:
    lat: list[float] = []
    bad = 0
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        t0 = time.monotonic()
        stop = t0 + duration_s
        prog = Progress(label, int(duration_s * 10), "")

        counter = 0

        async def one() -> None:
            nonlocal bad, counter
            while time.monotonic() < stop:
                s = time.perf_counter()
                counter += 1
                try:
                    if body is None:
                        r = await client.get(url, headers=headers)
                    else:
                        varied = body.replace(
                            b'"order-000000"', b'"order-%06d"' % (counter % 1024), 1
                        )
                        r = await client.post(url, headers=headers, content=varied)
                    if r.status_code >= 300:
                        bad += 1
                except httpx.HTTPError:
                    bad += 1
                lat.append(time.perf_counter() - s)

        async def ticker() -> None:
            while time.monotonic() < stop:
                prog.update(int((time.monotonic() - t0) * 10))
                await asyncio.sleep(0.2)

        await asyncio.gather(ticker(), *(one() for _ in range(conns)))
        dur = time.monotonic() - t0
        prog.done()
    lat.sort()

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000, 2) if lat else 0.0

    return {
        "requests": len(lat),
        "ok_requests": len(lat) - bad,
        "req_per_s": round((len(lat) - bad) / dur),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "p999_ms": pct(99.9),
        "max_ms": round(lat[-1] * 1000, 2) if lat else 0.0,
        "non_2xx": bad,
        "socket_errors": 0,
        "duration_s": round(dur, 2),
        "loadgen_cpu_share": None,
    }


async def _events_end(bootstrap: str) -> int:
    quiet_aiokafka()
    probe = OffsetProbe(bootstrap)
    await probe.start([EVENTS])
    try:
        return await probe.end(EVENTS)
    finally:
        await probe.stop()


def run_s2(
    stack: BenchStack,
    workdir: Path,
    *,
    warmup_s: float,
    duration_s: float,
    conns: int,
    profile: bool,
    isolated: bool = False,
) -> dict[str, Any]:
    if not stack.tenant_id:
        stack.create_tenant()
    workdir.mkdir(parents=True, exist_ok=True)
    body = http_body("s2")
    post_url = f"{stack.base_url}/v1/events"
    health_url = f"{stack.base_url}/healthz"
    # one request by hand: the body must be accepted, or the numbers would measure errors
    r = httpx.post(
        post_url,
        content=body,
        headers={"Authorization": f"Bearer {stack.secret}", "Content-Type": "application/json"},
        timeout=30,
    )
    if r.status_code != 201:
        raise RuntimeError(f"S2: POST /v1/events answered {r.status_code}: {r.text[:300]}")

    wrk = ensure_wrk()
    pin = loadgen_cpu()
    result: dict[str, Any] = {
        "connections": conns,
        "body_bytes": len(body),
        "loadgen": "wrk" if wrk else "httpx",
        "loadgen_pinned_cpu": pin if wrk else None,
        "stack_cpus": stack.cpus or "all",
        "isolated": isolated,
        "stack_start_s": round(stack.started_s, 1),
    }
    if wrk is None:
        log(
            "wrk could not be installed: falling back to an in-process httpx load generator "
            "(its numbers are a floor: the generator is likely the bottleneck)"
        )
    events_before = asyncio.run(_events_end(stack.bootstrap))

    def measure(
        url: str, script: Path | None, headers: dict[str, str], post: bool, dur: float, label: str
    ) -> dict[str, Any]:
        stack.check()
        try:
            if wrk is not None and script is not None:
                return _run_wrk(wrk, url, script, conns, dur, pin, label)
            return asyncio.run(_httpx_load(url, headers, body if post else None, conns, dur, label))
        except Exception:
            stack.check()  # a dead stack explains the failure better than the load generator
            raise

    post_lua = workdir / "post.lua"
    post_lua.write_text(_post_lua(stack.secret, body))
    done_lua = workdir / "done.lua"
    done_lua.write_text(_DONE_LUA)
    hdrs = {"Authorization": f"Bearer {stack.secret}", "Content-Type": "application/json"}

    measure(post_url, post_lua, hdrs, True, warmup_s, "S2 warm-up POST /v1/events")
    prof = None
    if profile and Profiler.available():
        prof = Profiler(
            workdir / "profiles",
            {k: stack.pids[k] for k in ("api", "worker") if k in stack.pids},
            "S2-isolated" if isolated else "S2",
        )
        prof.start()
    # every process of the stack with its children; the harness's child wrk is the load
    cpu = CpuMeter(stack.cpu_roles(), tree=True)
    cpu.start()
    post = measure(post_url, post_lua, hdrs, True, duration_s, "S2 POST /v1/events")
    result["cpu_cores"] = cpu.stop()
    result.update(cpu.per_item(post["requests"]))  # µs of CPU per POST, all processes
    if prof is not None:
        result["profile"] = prof.stop()
    events_after = asyncio.run(_events_end(stack.bootstrap))

    # the second line: the same POSTs, each with a new Idempotency-Key
    idem_lua = workdir / "post_idempotent.lua"
    idem_lua.write_text(_post_lua(stack.secret, body, f"s2-{os.getpid()}-{time.time_ns()}-"))
    cpu = CpuMeter(stack.cpu_roles(), tree=True)
    cpu.start()
    idem = measure(post_url, idem_lua, hdrs, True, duration_s, "S2 POST + Idempotency-Key")
    cpu.stop()
    idem_cpu = cpu.per_item(idem["requests"])["cpu_us_per_item"]

    measure(health_url, done_lua, {}, False, warmup_s, "S2 warm-up GET /healthz")
    cpu = CpuMeter(stack.cpu_roles(), tree=True)
    cpu.start()
    health = measure(health_url, done_lua, {}, False, duration_s, "S2 GET /healthz")
    result["healthz_cpu_cores"] = cpu.stop()
    # the framework's floor in the same run: µs of CPU per GET /healthz
    result["healthz_cpu_us_per_item"] = cpu.per_item(health["requests"])["cpu_us_per_item"]

    result.update(post)
    result["events_on_topic_approx"] = (
        events_after - events_before
    )  # Tansu end offsets under-count; includes the warm-up
    for k in ("req_per_s", "p50_ms", "p99_ms", "non_2xx", "socket_errors", "loadgen_cpu_share"):
        result[f"healthz_{k}"] = health[k]
    for k in ("req_per_s", "p50_ms", "p99_ms", "non_2xx", "socket_errors"):
        result[f"idem_{k}"] = idem[k]
    result["idem_cpu_us_per_item"] = idem_cpu
    result["idem_healthz_ratio"] = (
        round(idem["req_per_s"] / health["req_per_s"], 3) if health["req_per_s"] else None
    )
    result["healthz_ratio"] = (
        round(post["req_per_s"] / health["req_per_s"], 3) if health["req_per_s"] else None
    )
    return result
