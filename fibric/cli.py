"""Command-line entry point: ``fibric up | worker | api | admin …``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from pydantic import ValidationError

from fibric.errors import CliError


def _settings() -> Any:
    from schemas.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CliError(
            f"invalid setting FIBRIC_{str(first['loc'][0]).upper()}: {first['msg']}"
        ) from None


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj))
    else:
        for k, v in obj.items():
            print(f"{k}: {v}")


def cmd_up(args: argparse.Namespace) -> int:
    from fibric.launcher import up

    return up(_settings(), workers=args.workers, demo=args.demo)


def cmd_worker(args: argparse.Namespace) -> int:
    from schemas import tracing
    from streams.worker import run_worker

    settings = _settings()
    # off unless OTEL_EXPORTER_OTLP_ENDPOINT is set (decisions §45)
    tracing.configure("worker", **{"service.instance.id": settings.worker_id or "worker"})
    run_worker(settings)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from api.server import EnvelopeHttpToolsProtocol
    from fibric.launcher import port_is_free
    from schemas import tracing

    settings = _settings()
    if not port_is_free(settings.api_host, settings.api_port):
        raise CliError(
            f"port {settings.api_port} on {settings.api_host} is busy (set FIBRIC_API_PORT)"
        )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    tracing.configure("api")  # off unless OTEL_EXPORTER_OTLP_ENDPOINT is set (decisions §45)
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level,
        access_log=False,
        loop="uvloop",
        # httptools, answering malformed HTTP with the error envelope instead of plain text
        http=EnvelopeHttpToolsProtocol,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.__main__ import main as bench_main

    return bench_main(args.bench_args)


def cmd_admin(args: argparse.Namespace) -> int:
    from fibric.admin import Admin

    async def run() -> Any:
        async with Admin(_settings()) as admin:
            if args.resource == "tenant" and args.action == "create":
                t = await admin.create_tenant(args.slug, args.name)
                return {"id": t.id, "slug": t.slug, "name": t.name}
            if args.resource == "tenant" and args.action == "list":
                return {"data": [t.model_dump(mode="json") for t in admin.tenants()]}
            if args.resource == "key" and args.action == "create":
                key, secret = await admin.create_key(
                    args.tenant, args.role, args.scope, args.mode, args.name
                )
                return admin.key_object(key, secret)
            if args.resource == "key" and args.action == "list":
                return {"data": [admin.key_object(k) for k in admin.keys(args.tenant)]}
            if args.resource == "key" and args.action == "revoke":
                return admin.key_object(await admin.revoke_key(args.key_id))
            raise CliError("unknown admin command")

    _print(asyncio.run(run()), getattr(args, "json", False))
    return 0


def render_sql(result: dict[str, Any], fmt: str) -> str:
    """A ``sql_result`` as an aligned text table, CSV (with a header) or JSON lines."""
    names = [c["name"] for c in result["columns"]]
    rows = result["rows"]
    if fmt == "json":
        return "\n".join(json.dumps(dict(zip(names, r, strict=True))) for r in rows)

    def cell(v: Any) -> str:
        if v is None:
            return "NULL" if fmt == "table" else ""
        return v if isinstance(v, str) else json.dumps(v)

    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(names)
        w.writerows([cell(v) for v in r] for r in rows)
        return buf.getvalue().rstrip("\n")
    cells = [[cell(v).replace("\n", "\\n") for v in r] for r in rows]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)), line]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''}, {result['elapsed_ms']} ms)")
    return "\n".join(out)


def cmd_sql(args: argparse.Namespace) -> int:
    """``fibric sql "SELECT …"``: POST /v1/sql with FIBRIC_API_KEY (a key holding ledger:query)."""
    import os

    import httpx

    key = args.key or os.environ.get("FIBRIC_API_KEY")
    if not key:
        raise CliError("set FIBRIC_API_KEY (or --key) to a key with the ledger:query scope")
    url = args.url or os.environ.get("FIBRIC_API_URL") or _settings().api_base_url
    query = sys.stdin.read() if args.query == "-" else args.query
    params: dict[str, Any] = {}
    for p in args.param or []:
        name, sep, value = p.partition("=")
        if not sep:
            raise CliError(f"--param {p!r}: expected name=value")
        params[name] = value
    body: dict[str, Any] = {"query": query, "max_rows": args.max_rows, "timeout_s": args.timeout}
    if params:
        body["parameters"] = params
    try:
        r = httpx.post(
            f"{url.rstrip('/')}/v1/sql",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=args.timeout + 30,
        )
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the api at {url}: {exc}") from None
    if r.status_code != 200:
        try:
            err = r.json()["error"]
            raise CliError(f"{err['code']}: {err['message']}")
        except (ValueError, KeyError, TypeError):
            raise CliError(f"HTTP {r.status_code}: {r.text[:500]}") from None
    text = render_sql(r.json(), args.format)
    if text:
        print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fibric", description="Fibric: a governed automation kernel.")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser(
        "up", help="start the embedded stack (broker, worker, api) in the foreground"
    )
    up.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    up.add_argument(
        "--demo", action="store_true", help="also start a fake Magento store and a demo tenant"
    )
    up.set_defaults(fn=cmd_up)
    sub.add_parser("worker", help="run one worker process (Faust agents)").set_defaults(
        fn=cmd_worker
    )
    sub.add_parser("api", help="run one api process (REST API + ledger sink)").set_defaults(
        fn=cmd_api
    )
    bench = sub.add_parser(
        "bench", help="run the benchmarks (see `python -m benchmarks --help`)", add_help=False
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(fn=cmd_bench)

    sql = sub.add_parser(
        "sql",
        help="run a read-only SQL query over your tenant's ledger (POST /v1/sql)",
        description="Needs FIBRIC_API_KEY: a key with the ledger:query scope "
        "(fibric admin key create --tenant T --scope ledger:query). {tenant:String} is bound "
        "to the key's tenant.",
    )
    sql.add_argument("query", help='the SELECT (or "-" to read it from stdin)')
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sql.add_argument("--max-rows", type=int, default=1000, help="row limit (1-10000)")
    sql.add_argument("--timeout", type=float, default=10.0, help="time limit in s (max 30)")
    sql.add_argument("--param", action="append", help="query parameter name=value (repeatable)")
    sql.add_argument("--key", help="API key (default: FIBRIC_API_KEY)")
    sql.add_argument("--url", help="api base URL (default: FIBRIC_API_URL, else the settings')")
    sql.set_defaults(fn=cmd_sql)

    admin = sub.add_parser("admin", help="manage tenants and API keys").add_subparsers(
        dest="resource", required=True
    )
    tenant = admin.add_parser("tenant").add_subparsers(dest="action", required=True)
    tc = tenant.add_parser("create", help="create a tenant")
    tc.add_argument("slug")
    tc.add_argument("--name")
    tc.add_argument("--json", action="store_true")
    tl = tenant.add_parser("list")
    tl.add_argument("--json", action="store_true")

    key = admin.add_parser("key").add_subparsers(dest="action", required=True)
    kc = key.add_parser("create", help="create an API key (the secret is shown once)")
    kc.add_argument("--tenant", required=True, help="tenant slug or id")
    kc.add_argument("--role", choices=["admin", "operate", "ingest", "read_only"])
    kc.add_argument(
        "--scope", action="append", help="explicit scope (repeatable); overrides --role"
    )
    kc.add_argument("--mode", choices=["live", "test"], default="test")
    kc.add_argument("--name")
    kc.add_argument("--json", action="store_true")
    kl = key.add_parser("list")
    kl.add_argument("--tenant", required=True)
    kl.add_argument("--json", action="store_true")
    kr = key.add_parser("revoke")
    kr.add_argument("key_id")
    kr.add_argument("--json", action="store_true")
    for parser in (tc, tl, kc, kl, kr):
        parser.set_defaults(fn=cmd_admin)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # every option belongs to the harness
        from benchmarks.__main__ import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except CliError as exc:
        print(f"fibric: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
