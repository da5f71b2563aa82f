"""Analyst SQL on the embedded ledger (``POST /v1/sql``, ``fibric sql``; decisions §42).

chDB is one embedded engine with one user (``default``, the api's own): it cannot create users,
run ``EXECUTE AS`` or read ``access_control_improvements`` (all tried, decisions §42), but it does
load a ``users.xml`` at start-up and applies its **row policies** to every read, through joins,
subqueries, CTEs, ``merge()`` and views. So the tenant wall is a row policy on every table the
engine has, keyed on the query's ``log_comment`` setting:

* an analyst query runs with ``log_comment = 'fibric-sql:<mode>:<tenant_id>'`` followed by
  ``readonly = 1`` in the same SETTINGS clause, so the query itself cannot change either (the
  engine refuses: ``READONLY``), nor write, nor call file()/url()/remote() table functions;
* the ledger tables an analyst may read get ``tenant_id = <tenant> AND livemode = <mode>`` for
  such queries (and no filter at all for the api's own queries, which never set log_comment);
* every other table (vault, idempotency records, exports, webhook tables, every system and
  information_schema table) gets a filter that raises (``throwIf``): a refusal, by the engine.

A table the engine has and the policy file does not cover makes :meth:`AccessPolicy.covers`
false and the api refuses analyst SQL until the policies are rewritten and the engine reopened
(``LedgerStore.open`` does both at start-up), so a table added later is closed, not open.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

MARK = "fibric-sql:"
_SETTING = "getSetting('log_comment')"
_IS_ANALYST = f"startsWith({_SETTING}, '{MARK}')"
# 'fibric-sql:' is 11 characters: the mode digit is at 12, the tenant id starts at 14
_MODE = f"(substring({_SETTING}, 12, 1) = '1')"
_TENANT = f"substring({_SETTING}, 14)"

# table -> extra condition (besides the tenant and mode) on the rows an analyst may read
LEDGER_TABLES: dict[str, str | None] = {
    "events": None,
    "dead_letters": None,
    "plans": None,
    "actions": None,
    "receipts": None,
    # the audit trail; API key records (their secret's hash) stay out
    "config_log": "kind != 'key'",
}
# tables with nothing of anyone's in them, open to every query (a SELECT without FROM reads one)
OPEN_TABLES = {("system", "one")}
# tables without a livemode column: the tenant alone scopes them
NO_MODE = {"config_log"}

# Limits every analyst query runs under (the body may lower rows and time, never raise them).
MAX_ROWS = 10_000
DEFAULT_ROWS = 1_000
MAX_SECONDS = 30.0
DEFAULT_SECONDS = 10.0
MAX_RESULT_BYTES = 64 << 20
MAX_MEMORY = 1 << 30

_TENANT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def marker(tenant_id: str, livemode: bool) -> str:
    if not _TENANT_ID.match(tenant_id):  # ids are ours (t_…); never quote-escape a wall
        raise ValueError(f"unexpected tenant id {tenant_id!r}")
    return f"{MARK}{int(livemode)}:{tenant_id}"


def settings_clause(tenant_id: str, livemode: bool, max_rows: int, seconds: float) -> str:
    """The SETTINGS an analyst query runs under; ``readonly = 1`` last, so nothing after it (the
    query's own SETTINGS, applied after ours) can change a limit or the tenant marker."""
    return (
        f"SETTINGS max_result_rows = {int(max_rows)}, result_overflow_mode = 'throw', "
        f"max_result_bytes = {MAX_RESULT_BYTES}, max_execution_time = {float(seconds)}, "
        f"timeout_overflow_mode = 'throw', max_memory_usage = {MAX_MEMORY}, max_threads = 1, "
        f"log_comment = '{marker(tenant_id, livemode)}', readonly = 1"
    )


def ledger_filter(table: str) -> str:
    cond = [f"tenant_id = {_TENANT}"]
    if table not in NO_MODE:
        cond.append(f"livemode = {_MODE}")
    extra = LEDGER_TABLES[table]
    if extra:
        cond.append(extra)
    return f"NOT {_IS_ANALYST} OR ({' AND '.join(cond)})"


def deny_filter(database: str, table: str) -> str:
    msg = f"{database}.{table} is not available to SQL queries".replace("'", "")
    return f"throwIf({_IS_ANALYST}, '{msg}') = 0"


def _filter(db: str, table: str) -> str:
    if (db, table) in OPEN_TABLES:
        return "1"
    if db == "default" and table in LEDGER_TABLES:
        return ledger_filter(table)
    return deny_filter(db, table)


@dataclass
class AccessPolicy:
    """The chDB ``config.xml`` + ``users.xml`` pair that carries the row policies, beside the
    engine's data directory, and the tables it covers."""

    directory: Path

    @property
    def config_file(self) -> Path:
        return self.directory / "config.xml"

    @property
    def users_file(self) -> Path:
        return self.directory / "users.xml"

    @property
    def covered_file(self) -> Path:
        return self.directory / "covered.json"

    def covered(self) -> set[tuple[str, str]]:
        try:
            return {(x[0], x[1]) for x in json.loads(self.covered_file.read_text())}
        except (OSError, ValueError):
            return set()

    def covers(self, tables: set[tuple[str, str]]) -> bool:
        return tables <= self.covered()

    def write(self, tables: set[tuple[str, str]]) -> None:
        """Policies for ``tables`` (plus the ledger tables, whether they exist yet or not)."""
        tables = set(tables) | {("default", t) for t in LEDGER_TABLES}
        by_db: dict[str, list[str]] = {}
        for db, name in sorted(tables):
            if not (_IDENT.match(db) and _IDENT.match(name)):
                continue  # not expressible as a users.xml element: stays uncovered (closed)
            by_db.setdefault(db, []).append(name)
        parts = []
        for db, names in by_db.items():
            rows = "".join(
                f"<{n}><filter>" + escape(_filter(db, n)) + f"</filter></{n}>" for n in names
            )
            parts.append(f"<{db}>{rows}</{db}>")
        self.directory.mkdir(parents=True, exist_ok=True)
        users = (
            "<clickhouse><profiles><default/></profiles><quotas><default/></quotas><users>"
            "<default><password></password><networks><ip>::/0</ip></networks>"
            "<profile>default</profile><quota>default</quota>"
            f"<databases>{''.join(parts)}</databases></default></users></clickhouse>\n"
        )
        config = (
            "<clickhouse><user_directories><users_xml>"
            f"<path>{escape(str(self.users_file))}</path>"
            "</users_xml></user_directories></clickhouse>\n"
        )
        self.users_file.write_text(users)
        self.config_file.write_text(config)
        done = sorted((db, n) for db, names in by_db.items() for n in names)
        self.covered_file.write_text(json.dumps(done))


def policy_dir(dsn: str) -> Path | None:
    """Where the policy files of a ``chdb:///path`` engine live (beside it); None for a
    ClickHouse server or an in-memory engine (analyst SQL through the api is then off)."""
    if not dsn.startswith("chdb:"):
        return None
    path = dsn.split("://", 1)[-1].split("?", 1)[0]
    if not path.startswith("/") or path.rstrip("/") in ("", "/memory", "/:memory:"):
        return None
    return Path(path.rstrip("/") + "-access")


# ClickHouse error codes -> how the api reports them (schemas/errors.py)
REFUSED_CODES = {164, 395, 497, 344, 291}  # READONLY, throwIf, ACCESS_DENIED, …
LIMIT_CODES = {396, 159, 241, 307, 158}  # rows/bytes, time, memory


def engine_code(exc: BaseException) -> int | None:
    m = re.search(r"Code: (\d+)\.", str(exc))
    return int(m.group(1)) if m else None


def engine_message(exc: BaseException) -> str:
    """The engine's own message, first line, without the version trailer or stack."""
    text = str(exc)
    m = re.search(r"DB::Exception: (.*)", text)
    text = (m.group(1) if m else text).splitlines()[0] if text else "query failed"
    text = re.sub(r"DB::Exception: ", "", text)
    text = re.sub(r"\s*\(version [^)]*\)", "", text)
    text = re.sub(r":? while executing 'FUNCTION throwIf.*", "", text)
    return text.strip()[:500]
