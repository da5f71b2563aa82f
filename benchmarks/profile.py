"""Optional py-spy profiles of the stack's processes during a scenario's measured window
(``--profile``): ``py-spy record --nonblocking -f raw`` per process, stopped with SIGINT when the
window ends, then summarised into the top frames by own ("self") and inclusive samples.

Profiling costs CPU on a 2-core machine, so numbers of a profiled run are marked as such and
should not be compared with unprofiled ones.
"""

from __future__ import annotations

import re
import shutil
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import PROCS, log

RATE_HZ = 97
_LINE = re.compile(r" \([^()]*:\d+\)$")


class Profiler:
    def __init__(self, outdir: Path, pids: dict[str, int], label: str) -> None:
        self.outdir = outdir
        self.pids = pids
        self.label = label
        self.procs: dict[str, Any] = {}
        self.files: dict[str, Path] = {}
        self.t0 = 0.0
        self.duration = 0.0

    @staticmethod
    def available() -> bool:
        return shutil.which("py-spy") is not None

    def start(self) -> None:
        self.outdir.mkdir(parents=True, exist_ok=True)
        exe = shutil.which("py-spy")
        if exe is None:
            log("py-spy not found (pip install py-spy): no profile")
            return
        for role, pid in self.pids.items():
            out = self.outdir / f"{self.label}-{role}.collapsed.txt"
            logf = open(self.outdir / f"{self.label}-{role}.py-spy.log", "ab")  # noqa: SIM115
            self.procs[role] = PROCS.spawn(
                f"py-spy-{role}",
                [
                    exe,
                    "record",
                    "-p",
                    str(pid),
                    "-r",
                    str(RATE_HZ),
                    "-f",
                    "raw",
                    "-o",
                    str(out),
                    "--nonblocking",
                    "--threads",
                ],
                stdout=logf,
                stderr=logf,
                grace_s=30.0,
            )
            logf.close()
            self.files[role] = out
        self.t0 = time.monotonic()

    def stop(self) -> dict[str, Any]:
        self.duration = time.monotonic() - self.t0
        for proc in self.procs.values():
            PROCS.stop(proc, signal.SIGINT)
        out: dict[str, Any] = {}
        for role, path in self.files.items():
            if path.exists():
                out[role] = summarize(path, self.duration)
                out[role]["file"] = str(path)
        return out


def _func(frame: str) -> str:
    return _LINE.sub("", frame)


def _loc(frame: str) -> str:
    m = re.search(r"\(([^()]*):\d+\)$", frame)
    return m.group(1) if m else ""


def summarize(path: Path, duration_s: float, top: int = 15) -> dict[str, Any]:
    """Top functions by self and inclusive samples in a collapsed-stacks file."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if frames and frames[0].startswith("thread ("):
            threads[frames[0]] += n
            frames = frames[1:]
        if not frames:
            continue
        total += n
        leaf = frames[-1]
        own[f"{_func(leaf)} ({_loc(leaf)})"] += n
        for f in {f"{_func(fr)} ({_loc(fr)})" for fr in frames}:
            incl[f] += n
    denom = max(total, 1)
    return {
        "samples": total,
        "duration_s": round(duration_s, 2),
        # active samples / (rate × duration): roughly the share of one core the GIL-holding
        # Python threads kept busy (py-spy does not sample idle threads by default)
        "busy_share": round(total / max(RATE_HZ * duration_s, 1e-9), 3),
        "threads": {k: round(v / denom, 3) for k, v in threads.most_common(6)},
        "top_self": [(k, round(v / denom, 3)) for k, v in own.most_common(top)],
        "top_inclusive": [(k, round(v / denom, 3)) for k, v in incl.most_common(top * 2)],
    }
