"""``python -m benchmarks [SCENARIO ...] [--quick] [--out DIR]`` (and ``fibric bench``).

Scenarios: see ``benchmarks.SCENARIOS`` (default: all, in that order). S1 reports
ratios to the ceilings and the naive baseline, so asking for S1 also runs those two (unless
``--no-baselines``). The ceilings and the naive baseline share one fresh embedded broker; S1
and S2 each get a fresh ``fibric up`` (in ``--quick`` mode S2 reuses S1's stack to stay well under
a minute). Each scenario prints one machine-readable line on stdout; progress goes to stderr;
``results.json`` and ``results.md`` are written to ``--out`` (default ``benchmarks/results/``).
Every process started is stopped on exit, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import LOOP_SCENARIOS, SCENARIOS
from benchmarks.common import PROCS, Sizes, busy_cores, log, machine
from benchmarks.report import (
    add_cpu_ratios,
    add_loop_ratios,
    add_ratios,
    contention,
    scenario_line,
    targets,
    write,
)

_HERE = Path(__file__).resolve().parent
# In a source checkout: benchmarks/results/ (gitignored); installed: ./benchmarks/results/.
DEFAULT_OUT = (
    _HERE / "results"
    if (_HERE.parent / "pyproject.toml").exists()
    else Path.cwd() / "benchmarks" / "results"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Fibric benchmarks: ceilings, the naive baselines, scenarios S1-S10, S3L, "
        "globs, replay.",
    )
    p.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"any of {', '.join(SCENARIOS)} (default: all)",
    )
    p.add_argument(
        "--quick", action="store_true", help="small sizes, short windows: well under 90 s"
    )
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the worker and api during S1/S2 (slows them; numbers marked profiled)",
    )
    p.add_argument(
        "--s2-isolate",
        action="store_true",
        help="pin the S2 stack to every core but the load generator's (wrk gets a core of its own)",
    )
    p.add_argument(
        "--no-baselines",
        action="store_true",
        help="do not add ceilings and naive when S1 is asked for (its ratios are then n/a)",
    )
    p.add_argument("--partitions", type=int, help="partitions of every topic (default 8)")
    p.add_argument("--events", type=int, help="S1 events (overrides the size preset)")
    p.add_argument(
        "--duration", type=float, help="S2 measured window in seconds (overrides the preset)"
    )
    p.add_argument(
        "--existing",
        action="store_true",
        help="run against the deployment at FIBRIC_API_HOST/FIBRIC_API_PORT and "
        "FIBRIC_KAFKA_BOOTSTRAP instead of starting embedded stacks (S7 and S9 are skipped)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary work dir (homes, logs)")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the harness test
    return p


def _select(names: list[str], no_baselines: bool) -> list[str]:
    canon = {s.lower(): s for s in SCENARIOS}
    chosen = []
    for n in names:
        s = canon.get(n.lower())
        if s is None:
            raise SystemExit(f"unknown scenario {n!r}; choose from {', '.join(SCENARIOS)}")
        chosen.append(s)
    if not chosen:
        chosen = list(SCENARIOS)
    if "S1" in chosen and not no_baselines:
        chosen += ["ceilings", "naive"]
    if "S3" in chosen and not no_baselines:
        chosen += ["naive_exec"]
    return [s for s in SCENARIOS if s in chosen]


class Stacks:
    """The embedded stacks scenarios run on. Full runs give each group of scenarios a fresh
    ``fibric up`` (tags ``s1``, ``s2``, ``loop``, ``s8``, ``s9``/``s7``); ``--quick`` (and the
    harness test) run every scenario on one stack, in an order that keeps them independent:
    S1, S2, the loop scenarios, S8, then S9 (adds a second worker) and S7 (kills one)."""

    def __init__(
        self, work: Path, partitions: int, *, shared: bool, existing: bool = False
    ) -> None:
        self.work, self.partitions, self.shared = work, partitions, shared or existing
        self.existing = existing
        self.current: Any = None
        self.tag = ""
        self.pending = False  # launched, not yet waited for

    def launch(self, tag: str) -> None:
        """Start the stack ``tag`` will use without waiting for it (``get`` waits)."""
        from benchmarks.stack import BenchStack

        self.close()
        self.current = BenchStack(self.work / f"{tag}-home", self.partitions).launch()
        self.tag = tag
        self.pending = True

    def get(self, tag: str, cpus: str | None = None) -> Any:
        from benchmarks.stack import BenchStack

        if self.existing:
            if self.current is None:
                from benchmarks.existing import ExistingStack

                self.current = ExistingStack().start()
                self.current.create_tenant("bench")
            return self.current
        if self.pending and self.current is not None:
            self.pending = False
            self.current.wait_ready()
            self.current.create_tenant("bench")
        cur = self.current
        if (
            cur is not None
            and cur.proc is not None
            and cur.proc.poll() is None
            and (self.shared or self.tag == tag)
            and cur.cpus == cpus
        ):
            return cur
        self.close()
        self.current = BenchStack(self.work / f"{tag}-home", self.partitions, cpus=cpus).start()
        self.tag = tag
        self.current.create_tenant("bench")
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.stop(fast=self.shared)
            self.current = None
        self.pending = False


# the scenario that starts the first stack, and that stack's tag
FIRST_STACK = (
    ("S1", "s1"),
    ("S2", "s2"),
    ("config", "loop"),
    ("S3", "loop"),
    ("S4", "loop"),
    ("S5", "loop"),
    ("S6", "loop"),
    ("S3L", "loop"),
    ("S8", "s8"),
    ("S9", "s9"),
    ("S7", "s7"),
)


def _finish(finisher: Any, job: Any) -> dict[str, Any]:
    if isinstance(job, Exception):
        raise job
    return finisher(job)


def _s3l(stack: Any, entities: int) -> dict[str, Any]:
    from benchmarks.s3l import run_s3l

    return run_s3l(stack, entities)


def _s4g(stack: Any, sizes: Any) -> dict[str, Any]:
    from benchmarks.policy import run_s4_governed

    return run_s4_governed(stack, sizes.s4_dispositions, min(sizes.s3_actions, 5_000))


def rss_during(stack: Any, fn: Any) -> dict[str, Any]:
    from benchmarks.loop import RssSampler

    return RssSampler(stack).during(lambda: fn(stack))


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    chosen = _select(args.scenarios, args.no_baselines)
    sizes = Sizes.tiny() if args.tiny else Sizes.quick() if args.quick else Sizes()
    if args.partitions:
        sizes.partitions = args.partitions
    if args.events:
        sizes.s1_events = args.events
    if args.duration:
        sizes.s2_duration_s = args.duration

    meta0 = machine()
    meta0["busy_cores_before"] = busy_cores(0.3 if args.quick or args.tiny else 1.0)
    if meta0["busy_cores_before"] > 0.3:
        log(
            f"warning: the machine is already busy ({meta0['busy_cores_before']} cores in use "
            "before the run): absolute figures will be low; ratios hold better"
        )
    # Ctrl-C and SIGTERM raise KeyboardInterrupt even where the shell started us with SIGINT
    # ignored (a background job): every started process is then stopped in the finally below.
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    work = Path(tempfile.mkdtemp(prefix="fibric-bench-"))
    t_start = time.monotonic()
    results: dict[str, Any] = {}
    lines: list[str] = []
    failed = False
    interrupted = False
    log(
        f"scenarios {' '.join(chosen)}; "
        f"{'quick' if args.quick else 'tiny' if args.tiny else 'full'} sizes; "
        f"work dir {work}"
    )

    def emit(name: str) -> None:
        add_cpu_ratios(results)
        ln = scenario_line(name, results[name], results)
        lines.append(ln)
        print(ln, flush=True)

    def attempt(name: str, fn: Any) -> None:
        nonlocal failed
        t0 = time.monotonic()
        try:
            results[name] = fn()
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one failed scenario must not hide the others
            failed = True
            log(f"{name} failed: {exc}")
            traceback.print_exc(file=sys.stderr)
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        results[name]["scenario_s"] = round(time.monotonic() - t0, 1)

    if ("S2" in chosen or "S8" in chosen) and shutil.which("wrk") is None:
        # a fresh machine: install the load generator while the first scenarios run
        import threading

        from benchmarks.s2 import ensure_wrk

        threading.Thread(target=ensure_wrk, name="install-wrk", daemon=True).start()
    try:
        if "globs" in chosen:
            from benchmarks.globs import run_globs

            attempt("globs", run_globs)
            emit("globs")
        if "policy" in chosen:
            from benchmarks.policy import run_policy

            attempt("policy", run_policy)
            emit("policy")
        if "replay" in chosen:
            from benchmarks.replay import run_replay

            replay_rows = 10_000 if args.tiny else 100_000 if args.quick else 1_000_000
            attempt("replay", lambda: run_replay(replay_rows))
            emit("replay")
        stacks = Stacks(
            work, sizes.partitions, shared=args.quick or args.tiny, existing=args.existing
        )
        first_tag = next((tag for name, tag in FIRST_STACK if name in chosen), None)
        broker = None
        if "ceilings" in chosen or "naive" in chosen or "naive_exec" in chosen:
            import asyncio

            from benchmarks.ceilings import clickhouse_ceiling, kafka_ceilings
            from benchmarks.kafka import Broker
            from benchmarks.naive import finish_naive, start_naive
            from benchmarks.naive_executor import finish_naive_executor, start_naive_executor

            try:
                broker = Broker(work / "ref-broker").start()
                if "ceilings" in chosen:

                    def ceilings() -> dict[str, Any]:
                        k = asyncio.run(
                            kafka_ceilings(
                                broker.bootstrap,
                                sizes.ceiling_msgs,
                                sizes.partitions,
                                broker.proc.pid,
                            )
                        )
                        ch = clickhouse_ceiling(
                            work / "clickhouse", sizes.clickhouse_rows, sizes.clickhouse_batch
                        )
                        return {"kafka": k, "clickhouse": ch}

                    attempt("ceilings", ceilings)
                    emit("ceilings")
                starters = {
                    "naive": lambda gate: start_naive(
                        broker.bootstrap,
                        work / "naive",
                        sizes.naive_events,
                        sizes.partitions,
                        broker.proc.pid,
                        gate=gate,
                    ),
                    "naive_exec": lambda gate: start_naive_executor(
                        broker.bootstrap,
                        work / "naive-exec",
                        sizes.naive_exec_actions,
                        sizes.partitions,
                        gate=gate,
                        broker_pid=broker.proc.pid,
                    ),
                }
                finishers = {"naive": finish_naive, "naive_exec": finish_naive_executor}
                names = [n for n in ("naive", "naive_exec") if n in chosen]
                if stacks.shared and not stacks.existing and first_tag is not None and names:
                    # Quick runs: the embedded stack starts while the baselines' Faust workers
                    # join their groups (both mostly wait on the broker); the baselines are held
                    # at a gate until the stack is ready and idle, then measure one at a time.
                    stacks.launch(first_tag)
                    jobs: dict[str, Any] = {}
                    for n in names:
                        try:
                            jobs[n] = starters[n](work / f"gate-{n}")
                        except Exception as exc:  # noqa: BLE001 - reported by its attempt below
                            jobs[n] = exc
                    try:
                        stacks.get(first_tag)
                    except Exception as exc:  # noqa: BLE001 - the scenarios report it again
                        log(f"the stack did not start: {exc}")
                        stacks.close()
                    for n in names:
                        attempt(n, lambda n=n: _finish(finishers[n], jobs[n]))
                        emit(n)
                else:
                    for n in names:
                        attempt(n, lambda n=n: finishers[n](starters[n](None)))
                        emit(n)
            finally:
                if broker is not None:
                    broker.stop()

        def one_worker_from_here(name: str) -> bool:
            """Was ``name`` measured on the stack now running, with one worker?"""
            return stacks.shared and name in results and "error" not in results[name]

        if "S1" in chosen:
            from benchmarks.s1 import run_s1

            attempt(
                "S1",
                lambda: run_s1(
                    stacks.get("s1"),
                    args.out,
                    sizes.s1_events,
                    sizes.s1_warmup,
                    confirm=args.quick or args.tiny,
                    profile=args.profile,
                ),
            )
            add_ratios(results)
            emit("S1")

        if "S2" in chosen:
            from benchmarks.s2 import run_s2, stack_cpus

            def s2() -> dict[str, Any]:
                cpus = stack_cpus() if args.s2_isolate else None
                stack = stacks.get("s2", cpus=cpus)
                r = run_s2(
                    stack,
                    args.out,
                    warmup_s=sizes.s2_warmup_s,
                    duration_s=sizes.s2_duration_s,
                    conns=sizes.s2_connections,
                    profile=args.profile,
                    isolated=args.s2_isolate,
                )
                r["shared_stack_with_S1"] = stacks.shared and "S1" in results
                return r

            attempt("S2", s2)
            emit("S2")

        loop_chosen = [n for n in LOOP_SCENARIOS if n in chosen]
        if loop_chosen:
            from benchmarks import loop

            def loop_stack() -> Any:
                st = stacks.get("loop")
                loop.ensure_setup(st)
                return st

            runners = {
                "config": lambda: loop.config_rtt(loop_stack(), sizes.config_writes),
                "S3": lambda: rss_during(
                    loop_stack(), lambda st: loop.run_s3(st, sizes.s3_actions)
                ),
                "S4": lambda: rss_during(
                    loop_stack(), lambda st: loop.run_s4(st, sizes.s4_dispositions)
                ),
                "S5": lambda: loop.run_s5(loop_stack()),
                "S6": lambda: loop.run_s6(
                    loop_stack(),
                    max(20.0, ((results.get("S3") or {}).get("actions_per_s") or 100) / 2),
                    sizes.s6_seconds,
                ),
                "S3L": lambda: _s3l(stacks.get("loop"), sizes.s3l_entities),
                "S4G": lambda: _s4g(loop_stack(), sizes),
            }
            for name in loop_chosen:
                attempt(name, runners[name])
                if name == "S3":
                    add_loop_ratios(results)
                emit(name)

        if args.existing:  # the receiver and the stream client need the api's pid and host
            for name in [n for n in ("S3W", "SSE") if n in chosen]:
                chosen.remove(name)
                results[name] = {"skipped": "needs an embedded stack (api pid, loopback)"}
                lines.append(f"{name} status=skipped")
                print(lines[-1], flush=True)
        if "S3W" in chosen or "SSE" in chosen:
            from benchmarks import push
            from benchmarks.common import line

            def emit_push(name: str, fields: tuple[str, ...]) -> None:
                r = results[name]
                status = "error" if "error" in r else None
                ln = line(name, [("status", status)] if status else [(k, r.get(k)) for k in fields])
                lines.append(ln)
                print(ln, flush=True)

            if "S3W" in chosen:

                def s3w() -> dict[str, Any]:
                    from benchmarks import loop

                    st = stacks.get("loop")
                    loop.ensure_setup(st)
                    # capped: 10 endpoints x the actions must drain (the dispatcher's own rate is
                    # benchmarks/webhooks.py's figure) before the next run is measured
                    n = min(sizes.s3_actions, 2_000)
                    return push.run_s3_webhooks(st, n, sizes.s6_seconds, work)

                attempt("S3W", s3w)
                emit_push("S3W", push.S3W_FIELDS)
            if "SSE" in chosen:
                big = not (args.quick or args.tiny)
                n_streams = 1000 if big else 90 if args.quick else 20

                def sse() -> dict[str, Any]:
                    if big:  # a fresh stack allowing 1,000 streams for one tenant
                        stacks.close()
                        st = push.sse_stack(work, sizes.partitions, n_streams)
                        try:
                            rate = float(os.environ.get("FIBRIC_BENCH_SSE_RATE", "20"))
                            return push.run_sse(st, n_streams, rate, 15.0)
                        finally:
                            st.stop()
                    return push.run_sse(stacks.get("loop"), n_streams, 10.0, 2.0)

                attempt("SSE", sse)
                emit_push("SSE", push.SSE_FIELDS)

        if "S8" in chosen:
            from benchmarks.s8 import run_s8

            def s8_stack() -> Any:
                st = stacks.get("s8")
                if (
                    "S9" in chosen
                    and not stacks.existing
                    and all(one_worker_from_here(n) for n in ("S1", "S3"))
                ):
                    # quick: S9's second worker joins (a few seconds of waiting on the broker)
                    # while S8 reads, which only the api serves
                    st.spawn_worker()
                return st

            attempt(
                "S8",
                lambda: run_s8(
                    s8_stack(),
                    args.out,
                    sizes.s8_receipts,
                    warmup_s=sizes.s2_warmup_s,
                    duration_s=sizes.s8_duration_s,
                    conns=sizes.s2_connections,
                ),
            )
            emit("S8")

        if args.existing:
            from benchmarks.existing import NEEDS_PROCESSES

            for name in [n for n in ("S9", "S7") if n in chosen]:
                chosen.remove(name)
                results[name] = {"skipped": NEEDS_PROCESSES[name]}
                emit(name)
                log(NEEDS_PROCESSES[name])

        if "S9" in chosen:
            from benchmarks.s9 import run_s9

            def s9() -> dict[str, Any]:
                one = {n: results[n] for n in ("S1", "S3") if one_worker_from_here(n)}
                return run_s9(
                    stacks.get("s9"),
                    args.out,
                    s1_events=sizes.s1_events,
                    s1_warmup=sizes.s1_warmup,
                    s3_actions=sizes.s9_s3_actions or sizes.s3_actions,
                    one_worker=one if len(one) == 2 else None,
                )

            attempt("S9", s9)
            emit("S9")

        if "S7" in chosen:
            from benchmarks import loop

            def s7() -> dict[str, Any]:
                # after S9 it runs on S9's two-worker stack; alone, on a fresh one-worker stack
                st = stacks.get("s9" if "S9" in chosen else "s7")
                loop.ensure_setup(st)
                return loop.run_s7(
                    st, rate=100.0, before_s=sizes.s7_before_s, after_s=sizes.s7_after_s
                )

            attempt("S7", s7)
            emit("S7")
        stacks.close()
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping every process started")
    finally:
        PROCS.stop_all()
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)

    doc: dict[str, Any] = {
        "meta": {
            **meta0,
            "loadavg_at_end": round(os.getloadavg()[0], 2),
            "quick": args.quick,
            "tiny": args.tiny,
            "profile": args.profile,
            "s2_isolate": args.s2_isolate,
            "scenarios": chosen,
            "sizes": vars(sizes),
            "argv": list(argv) if argv is not None else sys.argv[1:],
            "duration_s": round(time.monotonic() - t_start, 1),
            "interrupted": interrupted,
        },
        "scenarios": results,
        "targets": targets(results),
        "contended": contention(results),
        "lines": lines,
    }
    j, md = write(args.out, doc)
    log(f"wrote {j} and {md} in {doc['meta']['duration_s']}s")
    if failed or interrupted or args.keep:
        log(f"work dir kept for inspection: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if interrupted:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
