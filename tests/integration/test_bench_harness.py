"""The benchmark harness runs end to end with tiny sizes: every scenario prints its line, the
results files hold every expected key, and no process it started is left behind. Correctness
only: nothing here looks at how fast anything was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import SCENARIOS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _our_processes(root: Path) -> list[int]:
    """Processes whose FIBRIC_HOME or command line points into ``root``."""
    found = []
    needle = str(root).encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if any(v.startswith(b"FIBRIC_HOME=" + needle) for v in env.split(b"\0")) or needle in cmd:
            found.append(int(d.name))
    return found


def _bench(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks ARGS`` from the repository, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        stdin=subprocess.DEVNULL,
    )


def _fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split()[1:])


@pytest.mark.timeout(600)
def test_the_harness_runs_every_scenario_and_writes_its_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "TMPDIR": str(work)}
    r = _bench(["--tiny", "--out", str(out)], env)
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr[-6000:]}"

    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.strip()}
    assert set(lines) == set(SCENARIOS), r.stdout
    assert {
        "produce_msgs_per_s",
        "consume_msgs_per_s",
        "consume_produce_msgs_per_s",
        "clickhouse_rows_per_s",
    } <= set(_fields(lines["ceilings"]))
    assert "events_per_s" in _fields(lines["naive"])
    s1_line = _fields(lines["S1"])
    assert {"events_per_s", "kafka_ceiling_ratio", "naive_baseline", "ratio"} <= set(s1_line)
    assert s1_line["kafka_ceiling_ratio"] != "nan" and s1_line["ratio"] != "nan"
    assert {"req_per_s", "p50_ms", "p99_ms", "healthz_req_per_s", "loadgen"} <= set(
        _fields(lines["S2"])
    )
    assert "[bench]" not in r.stdout and "[bench]" in r.stderr  # progress goes to stderr only

    doc = json.loads((out / "results.json").read_text())
    assert {"meta", "scenarios", "targets", "lines"} <= set(doc)
    assert {"nproc", "cpu_model", "ram_gib", "date"} <= set(doc["meta"])
    sc = doc["scenarios"]
    assert set(sc) == set(SCENARIOS)
    for name, result in sc.items():
        assert "error" not in result, (name, result)
    for key in ("produce_msgs_per_s", "consume_msgs_per_s", "consume_produce_msgs_per_s"):
        assert sc["ceilings"]["kafka"][key] > 0
    assert sc["ceilings"]["clickhouse"]["rows_stored"] == sc["ceilings"]["clickhouse"]["rows"]
    assert sc["naive"]["events_per_s"] > 0 and sc["naive"]["refused"] == 0
    s1 = sc["S1"]
    # every event produced reached ClickHouse exactly once, none was refused
    assert s1["api_count"] == s1["events"]
    assert s1["dead_letters"] == 0
    for key in ("events_per_s", "kafka_ceiling_ratio", "naive_baseline", "ratio"):
        assert s1[key] is not None, (key, s1)
    s2 = sc["S2"]
    assert s2["ok_requests"] > 0 and s2["non_2xx"] == 0
    assert s2["healthz_req_per_s"] > 0
    assert {t["metric"] for t in doc["targets"]["S1"]} == {"events_per_s", "kafka_ceiling_ratio"}
    assert {t["metric"] for t in doc["targets"]["S2"]} == {"req_per_s", "p99_ms"}
    # the governed loop: every action disposed, the flood applied once, recovery measured
    assert sc["naive_exec"]["actions_per_s"] > 0
    assert sc["config"]["writes"] > 0 and sc["config"]["p99_ms"] is not None, sc["config"]
    assert sc["S3"]["complete"] and sc["S3"]["outcomes"].get("applied", 0) >= 1
    assert sc["S3"]["ratio"] is not None and sc["S3"]["worker_rss_mib"], (
        sc["S3"],
        sc["naive_exec"],
    )
    assert sc["S4"]["complete"] and {"refused", "deduplicated"} <= set(sc["S4"]["outcomes"])
    assert sc["S5"]["complete"] and sc["S5"]["connector_calls"] == 1
    assert sc["S6"]["complete"] and sc["S6"]["p99_ms"] is not None, sc["S6"]
    assert sc["S7"]["first_event_s"] is not None, sc["S7"]
    assert sc["S7"]["receipts"] >= sc["S7"]["sent"], sc["S7"]
    assert sc["S7"]["workers"] == 2  # S7 kills one of S9's two workers
    # reads over stored receipts: every query answered 200, cached and uncached
    s8 = sc["S8"]
    assert s8["receipts_loaded"] > 0 and s8["ok_requests"] > 0 and s8["non_2xx"] == 0
    assert s8["uncached_non_2xx"] == 0 and s8["query_shapes"] >= 8
    # scale-out: the second worker took partitions and both loads completed
    s9 = sc["S9"]
    assert set(s9["partitions_by_worker"]) == {"worker-1", "worker-2"}
    assert all(s9["partitions_by_worker"].values())
    assert s9["s1_scaling"] is not None and s9["s3_scaling"] is not None, s9
    # CPU per item, summed over every process, next to the raw-client floor of the same run
    floor = sc["ceilings"]["kafka"]["floor_cpu_us_per_msg"]
    assert floor is not None and floor > 0, sc["ceilings"]["kafka"]
    assert "floor_cpu_us_per_msg" in _fields(lines["ceilings"])
    items = {"naive": "event", "naive_exec": "action", "S1": "event", "S2": "request"}
    items |= {"S3": "action", "S4": "disposition", "S3L": "action"}
    for name, item in items.items():
        assert sc[name]["cpu_us_per_item"] > 0, (name, sc[name])
        assert sc[name]["cpu_floor_ratio"] is not None, (name, sc[name])
        assert sc[name]["loadgen_cpu_us_per_item"] is not None, (name, sc[name])
        assert _fields(lines[name])[f"cpu_us_per_{item}"] != "nan", name
    assert set(sc["S3"]["cpu_us_per_item_by_role"]) >= {"broker", "worker", "api", "harness"}
    assert sc["S1"]["cpu_ratio_to_baseline"] is not None, (sc["S1"], sc["naive"])
    assert sc["S3"]["cpu_ratio_to_baseline"] is not None, (sc["S3"], sc["naive_exec"])
    assert sc["S2"]["healthz_cpu_us_per_item"] is not None, sc["S2"]
    # S3L: every action applied once at the store, never two requests on one entity at once
    s3l = sc["S3L"]
    assert s3l["complete"] and s3l["outcomes"] == {"applied": s3l["actions"]}
    assert s3l["store_writes"] == s3l["actions"] and s3l["duplicate_writes"] == 0
    assert s3l["max_in_flight_per_entity"] == 1
    assert s3l["store_max_in_flight"] >= 1 and s3l["in_flight_limit"] > 0
    assert {t["metric"] for t in doc["targets"]["S3L"]} == {
        "limit_ratio",
        "max_in_flight_per_entity",
    }
    # the glob micro-benchmark: every length timed, typical and hostile
    g = sc["globs"]
    assert [r["segments"] for r in g["rows"]] == list(range(1, 21))
    assert all(r["shaped_matches"] for r in g["rows"])
    assert g["hostile_us_max"] > 0 and g["typical_us_max"] > 0
    # policy replay over stored receipts: every action judged, the candidate flips some
    rp = sc["replay"]
    assert rp["rows_scanned"] == rp["rows"] == 10_000 and rp["actions_judged"] == 9_091
    assert rp["flipped"] > 0 and rp["groups"] == rp["distinct_inputs"]
    assert doc["lines"] == [ln for ln in r.stdout.splitlines() if ln.strip()]

    md = (out / "results.md").read_text()
    assert "| Scenario | Metric | Value | Target | Status |" in md
    for name in (
        "ceilings",
        "naive",
        "S1",
        "S2",
        "S3",
        "S4",
        "S5",
        "S6",
        "S7",
        "S8",
        "S9",
        "S10",
        "S3L",
        "globs",
        "replay",
    ):
        assert f"| {name} |" in md

    assert _our_processes(work) == [], "the harness left processes running"


@pytest.mark.timeout(600)
def test_the_harness_runs_against_an_existing_deployment(tmp_path: Path) -> None:
    """``--existing``: no stack of its own; the scenarios talk to the deployment named by the
    FIBRIC_* addresses (here a ``fibric up`` started for the purpose), in a fresh tenant; the
    scenarios that start or kill workers are skipped, not failed."""
    from benchmarks.stack import BenchStack

    deployment = BenchStack(tmp_path / "deployment", 2).start()
    try:
        env = {
            **os.environ,
            **{k: v for k, v in deployment.env.items() if k.startswith("FIBRIC_")},
            "TMPDIR": str(tmp_path),
        }
        env.pop("FIBRIC_HOME", None)  # nothing of the deployment's state is read locally
        r = _bench(
            ["--existing", "--tiny", "--no-baselines", "S1", "S2", "S3", "S8", "S9", "S7"]
            + ["--out", str(tmp_path / "out")],
            env,
        )
        assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr[-6000:]}"
        lines = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.strip()}
        assert set(lines) == {"S1", "S2", "S3", "S8", "S9", "S7"}, r.stdout
        assert _fields(lines["S7"]) == {"status": "skipped"}
        assert _fields(lines["S9"]) == {"status": "skipped"}
        doc = json.loads((tmp_path / "out" / "results.json").read_text())
        sc = doc["scenarios"]
        assert sc["S1"]["events"] > 0 and sc["S1"]["dead_letters"] == 0
        assert sc["S2"]["non_2xx"] == 0 and sc["S8"]["non_2xx"] == 0
        assert sc["S3"]["complete"]
        # it used the deployment: its own api now knows the bench tenant's receipts
        assert "starting a fresh stack" not in r.stderr
        assert "using the existing deployment" in r.stderr
        deployment.check()  # and left it running
    finally:
        deployment.stop()
