"""The shipped dashboards and alert rules, run for real against a running ``fibric up``:

* a real Prometheus (Debian's, installed with apt-get when missing, as the bench harness installs
  wrk) loads ``deploy/prometheus/prometheus.yml``'s jobs pointed at this stack's api and worker,
  loads ``deploy/prometheus/alerts.yml`` (``promtool`` checks both), scrapes every role, evaluates
  every alert rule without an error, answers every PromQL expression of the Grafana dashboard,
  and every metric those expressions and rules read is one a running role exports;
* every ClickHouse panel's SQL, with Grafana's ``$__timeFilter``/``$__timeInterval`` macros
  expanded as the ClickHouse datasource plugin does, runs through ``POST /v1/sql`` against the
  embedded ledger (tables are in ``fibric`` on the production server, unqualified here).

Grafana itself is not run (no Debian package, no Docker here); its provisioning files are checked
statically in tests/unit/test_compose.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from benchmarks.common import ensure_debian_binary
from tests.conftest import create_operator, free_port, install_sandbox, new_tenant
from tests.e2e.test_kafka_pipeline import wait_for
from tests.unit.test_compose import DASHBOARD, DEPLOY, documented_metrics, metric_names

pytestmark = pytest.mark.e2e

PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
METRICS_LINE = re.compile(r"fibric: metrics at (.+)")
METRICS_URL = re.compile(r"http://([\d.]+:\d+)/metrics \(([\w-]+)\)")


def role_targets(up_output: str) -> dict[str, str]:
    """``role -> host:port`` of every role's /metrics, from ``fibric up``'s startup line."""
    line = METRICS_LINE.findall(up_output)[-1]
    return {role: addr for addr, role in METRICS_URL.findall(line)}


def local_config(targets: dict[str, str], rules: Path) -> dict[str, Any]:
    """The shipped config with its jobs kept (names, paths) and aimed at this stack: the api
    job's static target, the worker job's DNS discovery replaced by the workers' addresses."""
    cfg = yaml.safe_load(PROM_CONFIG.read_text())
    cfg["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    cfg["rule_files"] = [str(rules)]
    for job in cfg["scrape_configs"]:
        if job["job_name"] == "fibric-api":
            job["static_configs"] = [{"targets": [targets["api"]]}]
        else:
            job.pop("dns_sd_configs")
            workers = [a for r, a in targets.items() if r != "api"]
            job["static_configs"] = [{"targets": workers}]
    return cfg


def dashboard_targets() -> list[tuple[str, dict[str, Any]]]:
    doc = json.loads(DASHBOARD.read_text())
    return [
        (p["title"], t) for p in doc["panels"] if p["type"] != "row" for t in p.get("targets", [])
    ]


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def grafana_clickhouse_sql(sql: str, since_s: int, until_s: int, interval_s: int = 60) -> str:
    """The ClickHouse datasource plugin's macro expansion for a time range, and the ledger's
    tables unqualified (the embedded engine has them in its default database)."""
    sql = re.sub(
        r"\$__timeFilter\(([\w.]+)\)",
        rf"\1 >= toDateTime({since_s}) AND \1 <= toDateTime({until_s})",
        sql,
    )
    sql = re.sub(
        r"\$__timeInterval\(([\w.]+)\)",
        rf"toStartOfInterval(toDateTime(\1), INTERVAL {interval_s} second)",
        sql,
    )
    assert "$" not in sql, f"a Grafana macro this test does not expand: {sql}"
    return re.sub(r"\bfibric\.(\w+)", r"\1", sql)


@pytest.fixture(scope="module")
def prometheus_bin() -> str:
    found = ensure_debian_binary("prometheus", "prometheus")
    if found is None:
        pytest.skip("prometheus is not installed and apt-get is not available as root")
    return found


@pytest.fixture(scope="module")
def activity(stack):
    """A tenant whose operator has applied and refused actions through the sandbox connector
    (connector calls, dispositions, receipts), plus an analyst key for the SQL panels."""
    t = new_tenant(stack, f"dash-{uuid.uuid4().hex[:6]}")
    sql_key = stack.cli(
        "admin", "key", "create", "--tenant", t.id, "--scope", "ledger:query", "--json"
    )["secret"]
    c = httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {t.keys['admin']}"}, timeout=30
    )
    install_sandbox(c)
    op = create_operator(
        c,
        "dashboards",
        ["order.hold", "order.notify"],
        # no rule for order.notify: fail-closed, every notify is refused (decision BLOCK)
        [{"tool": "order.hold", "decision": "ALLOW"}],
        [
            {
                "when": "order.created",
                "then": [
                    {
                        "tool": "order.hold",
                        "args": {"order_id": "{{payload.order_id}}", "reason": "promise_risk"},
                        "entity_key": "order:{{payload.order_id}}",
                        "idempotency_key": "hold:{{payload.order_id}}",
                    },
                    {
                        "tool": "order.notify",
                        "args": {"order_id": "{{payload.order_id}}", "comment": "held"},
                        "entity_key": "order:{{payload.order_id}}",
                        "idempotency_key": "notify:{{payload.order_id}}",
                    },
                ],
            }
        ],
    )
    for i in range(3):
        r = c.post(
            "/v1/events",
            json={
                "source": "shop",
                "event_type": "order.created",
                "payload": {"order_id": f"D{i}"},
            },
        )
        assert r.status_code == 201, r.text

    def stored() -> list[dict] | None:
        page = c.get("/v1/receipts", params={"operator_id": op["id"], "limit": 100}).json()
        return page["data"] if len(page["data"]) >= 6 else None

    receipts = wait_for(stored, timeout=120, interval=0.5)
    assert {r["outcome"] for r in receipts} >= {"applied", "refused"}, receipts
    yield sql_key
    c.close()


@pytest.fixture(scope="module")
def prometheus(prometheus_bin, stack, activity, tmp_path_factory):
    work = tmp_path_factory.mktemp("prometheus")
    cfg_path = work / "prometheus.yml"
    cfg_path.write_text(yaml.safe_dump(local_config(role_targets(stack.up_output()), ALERTS)))
    promtool = shutil.which("promtool")
    assert promtool, "Debian's prometheus package ships promtool"
    for args in (["check", "config", str(cfg_path)], ["check", "rules", str(ALERTS)]):
        r = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    port = free_port()
    log = open(work / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [
            prometheus_bin,
            f"--config.file={cfg_path}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ok(f"{url}/-/ready"), timeout=60, interval=0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _api(url: str, path: str, **params: str) -> Any:
    r = httpx.get(f"{url}/api/v1/{path}", params=params, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (path, params, body)
    return body["data"]


def test_prometheus_scrapes_every_role_with_the_shipped_jobs(prometheus, stack):
    roles = role_targets(stack.up_output())
    assert set(roles) >= {"api", "worker-1"}

    def all_up() -> list[dict] | None:
        active = _api(prometheus, "targets")["activeTargets"]
        healthy = [t for t in active if t["health"] == "up"]
        return active if len(healthy) == len(roles) == len(active) else None

    active = wait_for(all_up, timeout=60, interval=0.5)
    assert {t["labels"]["job"] for t in active} == {"fibric-api", "fibric-worker"}
    assert {t["labels"]["instance"] for t in active} == set(roles.values())


def test_every_dashboard_and_alert_expression_evaluates_on_exported_metrics(prometheus, stack):
    exprs = [(title, t["expr"]) for title, t in dashboard_targets() if "expr" in t]
    rules = alert_rules()
    exprs += [(r["alert"], r["expr"]) for r in rules]
    assert len(exprs) >= 15
    # the metric families the running roles export (from their # TYPE lines, samples or not)
    wait_for(
        lambda: (
            len(_api(prometheus, "targets")["activeTargets"]) >= 2
            and {m for m in _api(prometheus, "metadata") if m.startswith("fibric_worker_")}
        ),
        timeout=60,
        interval=0.5,
    )
    metadata = _api(prometheus, "metadata")
    # family names as Prometheus keeps them: a counter's without its ``_total`` sample suffix
    exported = set(metadata) | {
        f"{name}_total" for name, m in metadata.items() if m[0]["type"] == "counter"
    }
    # every metric of docs/production.md's table is exported by a running role
    undelivered = set(documented_metrics()) - exported
    assert not undelivered, f"documented but exported by no role: {sorted(undelivered)}"
    for title, expr in exprs:
        missing = metric_names(expr) - exported
        assert not missing, f"{title}: no running role exports {sorted(missing)}"
        result = _api(prometheus, "query", query=expr)
        assert result["resultType"] in ("vector", "scalar", "matrix"), (title, result)
    # something moved: the loop's dispositions were counted and scraped
    moved = _api(prometheus, "query", query="sum(fibric_executor_dispositions_total)")["result"]
    assert moved and float(moved[0]["value"][1]) >= 6

    def evaluated() -> list[dict] | None:
        groups = _api(prometheus, "rules", type="alert")["groups"]
        loaded = [r for g in groups for r in g["rules"]]
        done = [r for r in loaded if r.get("lastEvaluation", "").startswith("20")]
        return loaded if len(done) == len(loaded) == len(rules) else None

    for rule in wait_for(evaluated, timeout=60, interval=0.5):
        assert rule["health"] == "ok", rule


def test_every_clickhouse_panel_runs_through_analyst_sql(stack, activity):
    sql_key = activity
    now = int(time.time())
    panels = [(title, t["rawSql"]) for title, t in dashboard_targets() if "rawSql" in t]
    assert len(panels) >= 4
    rows_seen = {}
    with httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {sql_key}"}, timeout=30
    ) as c:
        for title, raw in panels:
            q = grafana_clickhouse_sql(raw, now - 3600, now + 60)
            r = c.post("/v1/sql", json={"query": q})
            assert r.status_code == 200, (title, q, r.text)
            res = r.json()
            assert res["columns"], title
            rows_seen[title] = res["row_count"]
    # the tenant's applied and refused receipts are on the panels that count them
    assert rows_seen["Dispositions by operator and outcome"] >= 2, rows_seen
    assert rows_seen["Top refusal reasons"] >= 1, rows_seen
    assert rows_seen["Event → receipt p99"] >= 1, rows_seen
