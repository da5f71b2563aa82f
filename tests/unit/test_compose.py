"""The production deployment files agree with the code: docker-compose.yml, the Dockerfile and
docs/production.md name only real settings, and the compose topology is the documented one.

No Docker engine is needed: the files are parsed, not run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML: a dependency of uvicorn[standard] (and litestar), so always installed

from schemas.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PRODUCTION_DOC = ROOT / "docs" / "production.md"

PREFIX = Settings.model_config.get("env_prefix", "FIBRIC_")
SETTING_VARS = {f"{PREFIX}{name}".upper() for name in Settings.model_fields}
# A FIBRIC_* name anywhere in a file: environment keys, ${…} interpolations, comments.
VAR_RE = re.compile(rf"\b{PREFIX}[A-Z0-9_]+\b")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, whichever of the two compose forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def test_services_exist(compose: dict[str, Any]) -> None:
    assert {"kafka", "clickhouse", "worker", "api"} <= set(compose["services"])


def test_every_fibric_variable_in_compose_is_a_setting(compose: dict[str, Any]) -> None:
    named = set(VAR_RE.findall(COMPOSE.read_text()))
    assert named, "the compose file names no FIBRIC_* setting at all"
    assert named <= SETTING_VARS, f"not fields of schemas.settings.Settings: {named - SETTING_VARS}"
    for name, service in compose["services"].items():
        keys = {k for k in env_of(service) if k.startswith(PREFIX)}
        assert keys <= SETTING_VARS, f"{name}: unknown settings {keys - SETTING_VARS}"


def test_every_fibric_variable_in_dockerfile_is_a_setting() -> None:
    named = set(VAR_RE.findall(DOCKERFILE.read_text()))
    assert named <= SETTING_VARS, f"not fields of schemas.settings.Settings: {named - SETTING_VARS}"


def test_api_and_worker_are_built_from_the_dockerfile(compose: dict[str, Any]) -> None:
    for role in ("api", "worker"):
        service = compose["services"][role]
        build = service.get("build")
        assert build is not None, f"{role} is not built from the Dockerfile"
        if isinstance(build, str):
            context, dockerfile = build, "Dockerfile"
        else:
            context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
        assert (ROOT / context / dockerfile).resolve() == DOCKERFILE
        command = service.get("command")
        command = command.split() if isinstance(command, str) else command
        assert command == [role], f"{role} runs {command!r}"


def test_dockerfile_runs_fibric_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r'^ENTRYPOINT \["fibric"\]$', text, re.M)
    assert re.search(r'^CMD \["api"\]$', text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the final image must not run as root"
    assert re.search(r"^RUN pip install \.(\s|$)", text, re.M), "install with `pip install .`"
    assert "[dev]" not in text, "the production image installs no dev extras"


def test_kafka_is_kraft_with_auto_create_disabled(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    env = env_of(kafka)
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"].lower() == "false"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node = env["KAFKA_NODE_ID"]
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert f"{controller}://" in env["KAFKA_LISTENERS"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{node}@kafka:")
    # the address the roles bootstrap from is the one the broker advertises
    advertised = {a.split("://", 1)[1] for a in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    for role in ("api", "worker"):
        assert env_of(compose["services"][role])["FIBRIC_KAFKA_BOOTSTRAP"] in advertised
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
    ):
        assert env[key] == "1"
    assert "healthcheck" in kafka
    assert any(str(v).endswith(":/var/lib/kafka/data") for v in kafka.get("volumes", []))


def test_roles_wait_for_healthy_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["worker"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for dep in ("kafka", "clickhouse"):
        assert services["api"]["depends_on"][dep]["condition"] == "service_healthy"
    assert "/readyz" in str(services["api"]["healthcheck"]["test"])
    assert "/ping" in str(services["clickhouse"]["healthcheck"]["test"])


def test_api_talks_to_the_clickhouse_server(compose: dict[str, Any]) -> None:
    env = env_of(compose["services"]["api"])
    dsn = env["FIBRIC_CLICKHOUSE_DSN"]
    assert dsn.startswith("http://") and "@clickhouse:8123/" in dsn
    database = dsn.rsplit("/", 1)[1]
    assert env_of(compose["services"]["clickhouse"])["CLICKHOUSE_DB"] == database
    assert env["FIBRIC_API_HOST"] == "0.0.0.0"


def test_no_secret_has_a_committed_default(compose: dict[str, Any]) -> None:
    for role in ("api", "worker"):
        secret = env_of(compose["services"][role])["FIBRIC_SECRET_KEY"]
        assert re.fullmatch(r"\$\{FIBRIC_SECRET_KEY:\?[^}]*\}", secret), secret
    password = env_of(compose["services"]["clickhouse"])["CLICKHOUSE_PASSWORD"]
    assert password.startswith("${") and ":?" in password, password


def test_worker_ids_are_unique_per_replica(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    replicas = int((worker.get("deploy") or {}).get("replicas", 1))
    assert replicas >= 2
    # a fixed id would be shared by every replica: leave it empty (worker-<hostname>)
    assert env_of(worker).get("FIBRIC_WORKER_ID", "") == ""
    assert "hostname" not in worker and "container_name" not in worker
    home = env_of(worker)["FIBRIC_HOME"]
    assert any(str(v).endswith(f":{home}") for v in worker.get("volumes", []))


def test_production_doc_lists_every_setting() -> None:
    text = PRODUCTION_DOC.read_text()
    missing = sorted(v for v in SETTING_VARS if f"`{v}`" not in text)
    assert not missing, f"docs/production.md does not document {missing}"
    # FIBRIC_KEY is the walkthrough's shell variable holding an API key (as in the README)
    unknown = set(VAR_RE.findall(text)) - SETTING_VARS - {"FIBRIC_KEY"}
    assert not unknown, f"docs/production.md names unknown settings {unknown}"


def test_every_package_data_file_ships_in_the_image() -> None:
    """The image installs the project non-editable (`pip install .`), so a data file the code
    reads (a migration, a catalogue) exists there only if pyproject's package-data lists it;
    an editable dev install hides the omission."""
    import subprocess
    import tomllib
    from fnmatch import fnmatch

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_data: dict[str, list[str]] = tool.get("package-data", {})
    tops = sorted({p.rstrip("*") for p in tool["packages"]["find"]["include"]})
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "--", *tops],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is needed to list the source files")
    missing = []
    for rel in listed:
        path = Path(rel)
        if path.suffix in (".py", ".pyc", ".pyi") or "__pycache__" in path.parts:
            continue
        # the nearest enclosing package (a directory with __init__.py) owns the file
        pkg_dir = next((p for p in path.parents if (ROOT / p / "__init__.py").exists()), None)
        if pkg_dir is None:
            continue
        package = ".".join(pkg_dir.parts)
        inner = path.relative_to(pkg_dir).as_posix()
        globs = package_data.get(package, []) + package_data.get("*", []) + package_data.get("", [])
        if not any(fnmatch(inner, g) for g in globs):
            missing.append(rel)
    assert not missing, f"add to [tool.setuptools.package-data] in pyproject.toml: {missing}"


# ---- dashboards: Prometheus, Grafana, alert rules (deploy/, docs/production.md) ------------------
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "fibric.json"
METRIC_ROW = re.compile(r"^\| `(fibric_[a-z0-9_]+)` \| (counter|gauge|histogram) \|", re.M)
METRIC_USE = re.compile(r"\b(fibric_[a-z0-9_]+)\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def documented_metrics() -> dict[str, str]:
    """The metric contract: name -> type, from docs/production.md's Metrics table."""
    return dict(METRIC_ROW.findall(PRODUCTION_DOC.read_text()))


def metric_names(text: str) -> set[str]:
    """fibric_* series a PromQL text reads, histogram series mapped to their metric."""
    metrics = documented_metrics()
    out = set()
    for name in METRIC_USE.findall(text):
        base = next(
            (
                name[: -len(s)]
                for s in HISTOGRAM_SUFFIXES
                if name.endswith(s) and metrics.get(name[: -len(s)]) == "histogram"
            ),
            name,
        )
        out.add(base)
    return out


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts of a service: container path -> host path (relative to the repo)."""
    out = {}
    for v in service.get("volumes") or []:
        src, dst = v.split(":")[:2]
        if src.startswith("./"):
            out[dst] = src[2:]
    return out


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    import json

    return json.loads(DASHBOARD.read_text())


def test_the_metrics_contract_is_documented() -> None:
    assert len(documented_metrics()) >= 20


def test_prometheus_and_grafana_mount_files_that_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("prometheus", "grafana", "clickhouse"):
        for dst, src in mounts(services[name]).items():
            assert (ROOT / src).exists(), f"{name} mounts missing {src} at {dst}"
    assert "grafana-clickhouse-datasource" in env_of(services["grafana"])["GF_INSTALL_PLUGINS"]
    for name, var in (
        ("grafana", "GF_SECURITY_ADMIN_PASSWORD"),
        ("grafana", "CLICKHOUSE_GRAFANA_PASSWORD"),
        ("clickhouse", "CLICKHOUSE_GRAFANA_PASSWORD"),
    ):
        value = env_of(services[name])[var]
        assert value.startswith("${") and ":?" in value, (name, var, value)


def test_prometheus_scrapes_the_api_and_every_worker(compose: dict[str, Any]) -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    api_port = env_of(compose["services"]["api"])["FIBRIC_API_PORT"]
    assert jobs["fibric-api"]["static_configs"][0]["targets"] == [f"api:{api_port}"]
    worker_port = int(env_of(compose["services"]["worker"])["FIBRIC_METRICS_PORT"])
    sd = jobs["fibric-worker"]["dns_sd_configs"][0]
    assert sd["names"] == ["worker"] and sd["port"] == worker_port and worker_port > 0
    assert all(j.get("metrics_path", "/metrics") == "/metrics" for j in jobs.values())
    mounted = mounts(compose["services"]["prometheus"])
    for rule_file in prom["rule_files"]:
        assert rule_file in mounted, f"rule file {rule_file} is not mounted"


def test_three_alert_rules_on_documented_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "FibricConsumerLagGrowing",
        "FibricConnectorErrorRate",
        "FibricApprovalsStale",
    }
    metrics = documented_metrics()
    doc = PRODUCTION_DOC.read_text()
    for name, rule in alerts.items():
        used = metric_names(rule["expr"])
        assert used and used <= set(metrics), f"{name}: undocumented metrics {used - set(metrics)}"
        assert name in doc, f"docs/production.md does not explain {name}"


def test_dashboard_panels_read_documented_metrics_and_ledger_tables(dashboard) -> None:
    import json

    provisioned = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "fibric.yml").read_text()
    )
    uids = {d["uid"]: d["type"] for d in provisioned["datasources"]}
    metrics = set(documented_metrics())
    tables = set(
        re.findall(
            r"CREATE TABLE IF NOT EXISTS (\w+)",
            "".join(p.read_text() for p in (ROOT / "ledger" / "migrations").glob("*.sql")),
        )
    )
    grafana_grants = set(
        re.findall(
            r"GRANT SELECT ON fibric\.(\w+)",
            (DEPLOY / "clickhouse" / "users.d" / "grafana.xml").read_text(),
        )
    )
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    doc = PRODUCTION_DOC.read_text()
    for p in panels:
        ds = p["datasource"]
        assert uids.get(ds["uid"]) == ds["type"], p["title"]
        assert p["title"] in doc, f"docs/production.md does not explain panel {p['title']!r}"
        for t in p["targets"]:
            if ds["type"] == "prometheus":
                used = metric_names(t["expr"])
                assert used and used <= metrics, (p["title"], used - metrics)
            else:
                read = set(re.findall(r"\bfibric\.(\w+)", t["rawSql"]))
                assert read and read <= tables & grafana_grants, (p["title"], read)
    assert "fibric_" not in json.dumps(
        [p for p in panels if p["datasource"]["uid"] == "clickhouse"]
    )
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in (
        "throughput",
        "lag",
        "event → receipt p99",
        "refusal",
        "connector latency",
        "approval backlog",
        "dispositions by operator and outcome",
    ):
        assert topic in titles, f"no panel for {topic}"


def test_grafana_clickhouse_user_is_read_only() -> None:
    import xml.etree.ElementTree as ET

    root = ET.parse(DEPLOY / "clickhouse" / "users.d" / "grafana.xml").getroot()
    user = root.find("users/grafana")
    assert (
        user is not None and user.find("password").get("from_env") == "CLICKHOUSE_GRAFANA_PASSWORD"
    )
    profile = root.find(f"profiles/{user.findtext('profile')}")
    assert profile is not None and profile.findtext("readonly") in ("1", "2")
    grants = [q.text for q in user.findall("grants/query")]
    assert grants and all(re.fullmatch(r"GRANT SELECT ON fibric\.\w+", g) for g in grants)
