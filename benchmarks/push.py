"""Push-channel scenarios (issue 11 "Performance") against a real ``fibric up``.

- ``S3W``: S3 (benchmarks/loop.py) with 0, 1 and 10 webhook endpoints subscribed to
  ``receipt.written`` (created through the API with the bench tenant's test-mode key, pointing at a
  real receiver on 127.0.0.1 in its own process, answering 200), then 0 again, all on one stack
  in one run: ``ratio_1`` / ``ratio_10`` are S3's actions/s over the mean of the two 0-endpoint
  runs. After each run it waits until the receiver has every delivery (``deliveries_per_s`` from
  the first arrival to the last). Then, with one endpoint, actions paced at half of the
  0-endpoint peak: event → delivery p50/p99, the receiver's arrival time minus the time the
  harness produced the event.
- ``SSE``: one api process (``fibric up`` with ``FIBRIC_STREAM_MAX_PER_TENANT`` raised) holding
  1,000 ``GET /v1/events/stream`` connections opened by one client process (asyncio raw sockets);
  events POSTed at a steady rate; fan-out latency p50/p99 (POST start → frame arrival, over every
  stream and event) and the api's CPU per event, against the same with 0 and 1 stream.

Nothing here asserts on timing.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import HOST, PROCS, cpu_seconds, free_port, log
from benchmarks.loop import ensure_setup, notes, pct, run_s3
from streams.topics import EVENTS

# ---------------------------------------------------------------- the webhook receiver process

RECEIVER = r"""
import re, time, orjson
KEY = re.compile(rb'"idempotency_key":"note:([^"]+)"')
seen = {}      # (path, delivery id) -> None: dedup on Fibric-Delivery-Id
arrivals = {}  # key -> first arrival (path /hook/0 only)
counts = {"deliveries": 0, "duplicates": 0, "first": None, "last": None}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            break
    now = time.time()
    path = scope["path"]
    out = b"ok"
    if path == "/stats":
        out = orjson.dumps({**counts, "arrivals": arrivals})
    elif path == "/reset":
        seen.clear(); arrivals.clear()
        counts.update(deliveries=0, duplicates=0, first=None, last=None)
    else:
        did = dict(scope["headers"]).get(b"fibric-delivery-id", b"")
        if (path, did) in seen:
            counts["duplicates"] += 1
        else:
            seen[(path, did)] = None
            counts["deliveries"] += 1
            counts["first"] = counts["first"] or now
            counts["last"] = now
            if path == "/hook/0":
                m = KEY.search(body)
                if m:
                    arrivals.setdefault(m.group(1).decode(), now)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})
"""


class Receiver:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> Receiver:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "whreceiver.py").write_text(RECEIVER)
        argv = [sys.executable, "-m", "uvicorn", "whreceiver:app", "--host", HOST]
        argv += ["--port", str(self.port), "--log-level", "warning", "--no-access-log"]
        argv += ["--app-dir", str(self.home)]
        with open(self.home / "receiver.log", "ab") as out:
            self.proc = PROCS.spawn("receiver", argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.url}/stats", timeout=1)
                return self
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the webhook receiver did not start") from None
                time.sleep(0.1)

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/stats", timeout=30).json()

    def reset(self) -> None:
        httpx.post(f"{self.url}/reset", timeout=30)

    def wait(self, n: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            s = self.stats()
            if s["deliveries"] >= n or time.monotonic() > deadline:
                return s
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc is not None:
            PROCS.stop(self.proc)
            self.proc = None


def _api(stack: Any) -> httpx.Client:
    return httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.secret}"}, timeout=60
    )


def _create_endpoints(stack: Any, receiver: Receiver, lo: int, hi: int) -> list[str]:
    ids = []
    with _api(stack) as c:
        for k in range(lo, hi):
            r = c.post(
                "/v1/webhooks",
                json={"url": f"{receiver.url}/hook/{k}", "types": ["receipt.written"]},
            )
            r.raise_for_status()
            ids.append(r.json()["id"])
        for wid in ids:  # readable (and so in the api's view) before the run starts
            deadline = time.monotonic() + 30
            while c.get(f"/v1/webhooks/{wid}").status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"webhook {wid} not readable")
                time.sleep(0.1)
    return ids


def _delete_endpoints(stack: Any, ids: list[str]) -> None:
    with _api(stack) as c:
        for wid in ids:
            c.delete(f"/v1/webhooks/{wid}")


async def _paced(bootstrap: str, values: list[tuple[bytes, bytes]], rate: float) -> list[float]:
    """Produce ``values`` at ``rate``/s; each one's send time (time.time())."""
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, acks=1)
    await p.start()
    sent: list[float] = []
    t0 = time.time()
    try:
        futs = []
        for i, (k, v) in enumerate(values):
            ahead = t0 + i / rate - time.time()
            if ahead > 0:
                await asyncio.sleep(ahead)
            sent.append(time.time())
            futs.append(await p.send(EVENTS, v, key=k))
        await asyncio.gather(*futs)
    finally:
        await p.stop()
    return sent


# How long a run's deliveries may take to reach the receiver before the next run starts.
DRAIN_MAX_S = 420.0


def run_s3_webhooks(stack: Any, actions: int, paced_s: float, work: Path) -> dict[str, Any]:
    ensure_setup(stack)
    receiver = Receiver(work / "receiver").start()
    ids: list[str] = []
    out: dict[str, Any] = {"actions": actions}
    try:
        runs: dict[str, dict[str, Any]] = {}

        def s3(label: str, endpoints: int) -> None:
            receiver.reset()
            log(f"S3W: S3 with {endpoints} endpoint(s)")
            r = run_s3(stack, actions)
            row = {
                "endpoints": endpoints,
                "actions_per_s": r["actions_per_s"],
                "complete": r["complete"],
                "cpu_us_per_action": r.get("cpu_us_per_item"),
                "cpu_us_by_role": r.get("cpu_us_per_item_by_role"),
            }
            if endpoints:
                want = actions * endpoints
                s = receiver.wait(want, timeout=DRAIN_MAX_S)
                span = (s["last"] or 0) - (s["first"] or 0)
                row.update(
                    deliveries=s["deliveries"],
                    drained=s["deliveries"] >= want,
                    duplicates=s["duplicates"],
                    deliveries_per_s=round(s["deliveries"] / span, 1) if span > 0 else None,
                )
            runs[label] = row
            log(f"S3W: {label}: {row}")

        log("S3W: warm-up (not counted)")
        run_s3(stack, max(50, actions // 4))
        s3("0", 0)
        ids += _create_endpoints(stack, receiver, 0, 1)
        s3("1", 1)
        ids += _create_endpoints(stack, receiver, 1, 10)
        s3("10", 10)
        _delete_endpoints(stack, ids[1:])
        ids = ids[:1]
        # event -> delivery latency with one endpoint at half the 0-endpoint peak
        peak = runs["0"]["actions_per_s"] or 100.0
        rate = max(10.0, peak / 2)
        n = max(50, int(rate * paced_s))
        values = notes(stack.tenant_id, n, 512)
        keys = [json.loads(v)["payload"]["note_id"] for _, v in values]
        receiver.reset()
        log(f"S3W: event -> delivery latency at {rate:.0f} actions/s for {paced_s:.0f}s")
        sent = asyncio.run(_paced(stack.bootstrap, values, rate))
        s = receiver.wait(n, timeout=paced_s + 120)
        lat = [
            (s["arrivals"][k] - t) * 1000
            for k, t in zip(keys, sent, strict=True)
            if k in s["arrivals"]
        ]
        out.update(
            paced_rate=round(rate, 1),
            paced_events=n,
            paced_delivered=len(lat),
            latency_p50_ms=pct(lat, 0.5),
            latency_p99_ms=pct(lat, 0.99),
            latency_max_ms=max(lat) if lat else None,
        )
        _delete_endpoints(stack, ids)
        ids = []
        s3("0b", 0)
        base_vals = [runs[k]["actions_per_s"] for k in ("0", "0b") if runs[k]["actions_per_s"]]
        base = sum(base_vals) / len(base_vals) if base_vals else None
        for k in ("1", "10"):
            v = runs[k]["actions_per_s"]
            out[f"ratio_{k}"] = round(v / base, 3) if v and base else None
        out.update(
            actions_per_s_0=runs["0"]["actions_per_s"],
            actions_per_s_0b=runs["0b"]["actions_per_s"],
            actions_per_s_1=runs["1"]["actions_per_s"],
            actions_per_s_10=runs["10"]["actions_per_s"],
            deliveries_per_s_1=runs["1"].get("deliveries_per_s"),
            deliveries_per_s_10=runs["10"].get("deliveries_per_s"),
            duplicates=sum(r.get("duplicates", 0) for r in runs.values()),
            runs=runs,
        )
        return out
    finally:
        if ids:
            _delete_endpoints(stack, ids)
        receiver.stop()


S3W_FIELDS = (
    "actions_per_s_0",
    "actions_per_s_1",
    "actions_per_s_10",
    "actions_per_s_0b",
    "ratio_1",
    "ratio_10",
    "deliveries_per_s_1",
    "deliveries_per_s_10",
    "paced_rate",
    "latency_p50_ms",
    "latency_p99_ms",
    "duplicates",
)

# ---------------------------------------------------------------- SSE fan-out

SEQ = re.compile(rb'"bseq":(\d+)')


async def _stream_client(
    host: str, port: int, secret: str, streams: int, expect: int, timeout: float
) -> dict[str, Any]:
    """Open ``streams`` SSE connections; print ``ready``; collect every frame's arrival time
    until each stream has ``expect`` events (or ``timeout`` after the post times arrive on
    stdin); then print the latency summary."""
    arrivals: list[list[float]] = [[] for _ in range(expect)]
    per_stream = [0] * streams
    opened = asyncio.Event()
    n_open = 0
    errors: list[str] = []
    req = (
        f"GET /v1/events/stream HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {secret}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()

    async def one(i: int) -> None:
        nonlocal n_open
        try:
            r, w = await asyncio.open_connection(host, port)
        except OSError as exc:
            errors.append(f"connect: {exc}")
            return
        w.write(req)
        try:
            head = await r.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors.append(f"head: {exc!r}")
            return
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            errors.append(head.split(b"\r\n", 1)[0].decode())
            w.close()
            return
        n_open += 1
        if n_open == streams:
            opened.set()
        buf = b""
        try:
            while per_stream[i] < expect:
                try:
                    chunk = await r.read(65536)
                except OSError as exc:
                    errors.append(f"read: {exc!r}")
                    break
                if not chunk:
                    errors.append("closed")
                    break
                now = time.time()
                buf += chunk
                cut = buf.rfind(b"\n\n")
                if cut < 0:
                    continue
                done, buf = buf[: cut + 2], buf[cut + 2 :]
                for m in SEQ.finditer(done):
                    s = int(m.group(1))
                    if s < expect:
                        arrivals[s].append(now)
                        per_stream[i] += 1
        finally:
            w.close()

    tasks = [asyncio.create_task(one(i)) for i in range(streams)]
    try:
        await asyncio.wait_for(opened.wait(), 120)
    except TimeoutError:
        pass
    print(json.dumps({"ready": n_open, "errors": errors[:5]}), flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    posted: list[float] = json.loads(line)
    await asyncio.wait(tasks, timeout=timeout)
    for t in tasks:
        t.cancel()
    lat = [(a - posted[s]) * 1000 for s in range(len(posted)) for a in arrivals[s]]
    return {
        "streams_open": n_open,
        "frames": len(lat),
        "frames_expected": n_open * len(posted),
        "streams_complete": sum(1 for c in per_stream if c >= expect),
        "p50_ms": pct(lat, 0.5),
        "p99_ms": pct(lat, 0.99),
        "max_ms": max(lat) if lat else None,
        "errors": errors[:5],
        "client_cpu_s": round(time.process_time(), 2),
    }


def _raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = want if hard == resource.RLIM_INFINITY else min(max(soft, want), hard)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def runqueue_wait_s(pid: int) -> float:
    """Seconds the process's main thread (the api's event loop) has waited for a CPU while
    runnable (``/proc/PID/schedstat``, field 2): on a shared machine, latency that is not ours."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def sse_stack(work: Path, partitions: int, streams: int) -> Any:
    """A fresh ``fibric up`` allowing ``streams`` live streams for one tenant (the default
    ``FIBRIC_STREAM_MAX_PER_TENANT`` is 100); its processes inherit the raised fd limit."""
    from benchmarks.stack import BenchStack

    _raise_nofile(streams * 2 + 1024)
    st = BenchStack(work / "sse-home", partitions)
    st.env["FIBRIC_STREAM_MAX_PER_TENANT"] = str(streams + 100)
    st.start()
    st.create_tenant("bench")
    return st


def run_sse(stack: Any, streams: int, rate: float, seconds: float) -> dict[str, Any]:
    _raise_nofile(streams * 2 + 1024)
    api_pid = stack.pids.get("api") or stack.cpu_roles()["api"]
    n = max(10, int(rate * seconds))
    out: dict[str, Any] = {"streams": streams, "rate": rate, "events": n}

    async def post_all(run: str) -> list[float]:
        posted: list[float] = []
        async with httpx.AsyncClient(
            base_url=stack.base_url,
            headers={"Authorization": f"Bearer {stack.secret}"},
            timeout=30,
        ) as c:
            t0 = time.time()
            for i in range(n):
                ahead = t0 + i / rate - time.time()
                if ahead > 0:
                    await asyncio.sleep(ahead)
                posted.append(time.time())
                r = await c.post(
                    "/v1/events",
                    json={"source": run, "event_type": "bench.tick", "payload": {"bseq": i}},
                )
                r.raise_for_status()
        return posted

    def phase(k: int) -> dict[str, Any]:
        run = f"sse-{uuid.uuid4().hex[:6]}"
        client = None
        row: dict[str, Any] = {"streams": k}
        if k:
            client = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.push",
                    "sse-client",
                    HOST,
                    str(stack.api_port),
                    str(k),
                    str(n),
                    str(seconds + 60),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, "FIBRIC_BENCH_SECRET": stack.secret},
                text=True,
            )
            assert client.stdout is not None and client.stdin is not None
            ready = json.loads(client.stdout.readline())
            row["open"] = ready["ready"]
            if ready["errors"]:
                row["open_errors"] = ready["errors"]
        # what the api costs with the streams held open and no events (keep-alives, sweeps)
        c0 = cpu_seconds(api_pid) or 0.0
        time.sleep(3.0)
        idle = ((cpu_seconds(api_pid) or 0.0) - c0) / 3.0
        row["idle_api_cores"] = round(idle, 3)
        log(f"SSE: {k} stream(s) open; posting {n} events at {rate:g}/s")
        c0 = cpu_seconds(api_pid) or 0.0
        w0 = runqueue_wait_s(api_pid)
        t0 = time.monotonic()
        posted = asyncio.run(post_all(run))
        if client is not None:
            assert client.stdin is not None and client.stdout is not None
            client.stdin.write(json.dumps(posted) + "\n")
            client.stdin.flush()
            row.update(json.loads(client.stdout.readline()))
            client.wait(30)
        else:
            time.sleep(1.0)  # the sink stores what was posted (about 250 ms)
        # same window for every phase: up to the last frame, then quiet
        time.sleep(1.0)
        cpu = (cpu_seconds(api_pid) or 0.0) - c0
        row["window_s"] = round(time.monotonic() - t0, 2)
        row["api_cpu_s"] = round(cpu, 3)
        row["api_runqueue_wait_s"] = round(runqueue_wait_s(api_pid) - w0, 2)
        row["api_cpu_ms_per_event_gross"] = round(cpu / n * 1000, 3)
        # net of the idle rate just measured over the same window: what the events cost
        row["api_cpu_ms_per_event"] = round(max(0.0, cpu - idle * row["window_s"]) / n * 1000, 3)
        log(f"SSE: {row}")
        return row

    phases = {str(k): phase(k) for k in (0, 1, streams)}
    big, one, zero = phases[str(streams)], phases["1"], phases["0"]
    out.update(
        streams_open=big.get("open"),
        frames=big.get("frames"),
        frames_expected=big.get("frames_expected"),
        p50_ms=big.get("p50_ms"),
        p99_ms=big.get("p99_ms"),
        max_ms=big.get("max_ms"),
        one_stream_p50_ms=one.get("p50_ms"),
        one_stream_p99_ms=one.get("p99_ms"),
        api_cpu_ms_per_event=big["api_cpu_ms_per_event"],
        api_cpu_ms_per_event_0=zero["api_cpu_ms_per_event"],
        api_cpu_ratio=round(big["api_cpu_ms_per_event"] / zero["api_cpu_ms_per_event"], 2)
        if zero["api_cpu_ms_per_event"]
        else None,
        api_cpu_us_per_frame=round(
            (big["api_cpu_ms_per_event"] - zero["api_cpu_ms_per_event"])
            * n
            / 1000
            / max(1, big.get("frames") or 0)
            * 1e6,
            1,
        ),
        idle_api_cores_0=zero.get("idle_api_cores"),
        api_runqueue_wait_s=big.get("api_runqueue_wait_s"),
        window_s=big.get("window_s"),
        idle_api_cores=big.get("idle_api_cores"),
        phases=phases,
    )
    return out


SSE_FIELDS = (
    "streams_open",
    "frames",
    "frames_expected",
    "p50_ms",
    "p99_ms",
    "one_stream_p99_ms",
    "api_cpu_ms_per_event",
    "api_cpu_ms_per_event_0",
    "api_cpu_ratio",
    "api_cpu_us_per_frame",
    "idle_api_cores_0",
    "idle_api_cores",
    "window_s",
    "api_runqueue_wait_s",
)


if __name__ == "__main__":
    if sys.argv[1:2] == ["sse-client"]:
        host, port, k, expect, timeout = sys.argv[2:7]
        _raise_nofile(int(k) * 2 + 256)
        res = asyncio.run(
            _stream_client(
                host,
                int(port),
                os.environ["FIBRIC_BENCH_SECRET"],
                int(k),
                int(expect),
                float(timeout),
            )
        )
        print(json.dumps(res), flush=True)
    else:
        raise SystemExit("usage: python -m benchmarks push.py is run by python -m benchmarks")
