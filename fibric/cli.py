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
    from streams.worker import run_worker

    run_worker(_settings())
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from api.server import EnvelopeHttpToolsProtocol
    from fibric.launcher import port_is_free

    settings = _settings()
    if not port_is_free(settings.api_host, settings.api_port):
        raise CliError(
            f"port {settings.api_port} on {settings.api_host} is busy (set FIBRIC_API_PORT)"
        )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
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
