"""`sir-engine`: one console script for every process and operator task.

Each subcommand reads only the settings it needs; a wrong or missing one prints one line naming
it and exits with status 2 before anything starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from engine.errors import ConfigError, SirError
from engine.settings import Settings, load_settings

EXIT_CONFIG = 2
EXIT_LEDGER_BROKEN = 3


def _configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )


# -- processes ---------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    from ops.migrate import upgrade

    settings = load_settings(need_redis=False, need_master_key=False)
    upgrade(settings.database_url, args.revision)
    print(f"migrated to {args.revision}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from http_front.app import create_app

    settings = load_settings()
    _configure_logging(settings.log_level)
    host = args.host or settings.host
    port = args.port or settings.port
    if args.processes > 1:
        from ops.front_processes import supervise

        return supervise(args.processes, host, port)
    # reuse_port lets several `serve` processes share one port behind the kernel's balancer.
    web.run_app(
        create_app(settings),
        host=host,
        port=port,
        reuse_port=args.reuse_port,
        print=None,
        access_log=None,
        shutdown_timeout=10,
    )
    return 0


def _prepare_worker_metrics(port: int) -> None:
    """Prometheus multiprocess mode, done before anything imports prometheus_client.

    Every worker process writes its samples to one directory, and Dramatiq's exposition server
    (a forked process) serves them all on `port`. Our own actor metrics are created at import
    time, so the directory must be in the environment before the actor modules load.
    """
    import shutil
    import tempfile

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.path.join(
        tempfile.gettempdir(), f"sir-worker-metrics-{port}"
    )
    shutil.rmtree(directory, ignore_errors=True)  # stale samples of dead processes would add up
    os.makedirs(directory, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    os.environ["dramatiq_prom_db"] = directory
    os.environ["dramatiq_prom_port"] = str(port)
    os.environ.setdefault(
        "dramatiq_prom_host", os.environ.get("SIR_WORKER_METRICS_HOST", "127.0.0.1")
    )
    os.environ["SIR_WORKER_METRICS"] = "1"


def cmd_worker(args: argparse.Namespace) -> int:
    load_settings()  # fail fast on configuration, before Dramatiq forks
    if args.metrics_port:
        _prepare_worker_metrics(args.metrics_port)

    from dramatiq.cli import main as dramatiq_main
    from dramatiq.cli import make_argument_parser

    argv = ["workers.actors", "--processes", str(args.processes), "--threads", str(args.threads)]
    if args.queues:
        argv += ["--queues", *args.queues]
    return int(dramatiq_main(make_argument_parser().parse_args(argv)) or 0)


def cmd_scheduler(args: argparse.Namespace) -> int:
    from workers.scheduler import run

    settings = load_settings()
    _configure_logging(settings.log_level)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per job run is noise
    run(settings.redis_url)
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from ops.dev import cmd_sign as sign

    return sign(args)


def cmd_dev(args: argparse.Namespace) -> int:
    from ops.dev import run_dev

    return run_dev(args)


# -- ledger ------------------------------------------------------------------------------------


async def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from sqlalchemy import text

    from engine.db import create_engine
    from engine.scope import Scope
    from engine.verify import verify_ledger

    scope = Scope(args.partner, args.environment) if args.partner else None
    db = create_engine(settings.database_url, pool_size=1, max_overflow=0)
    try:
        async with db.connect() as conn:
            # One snapshot for every check, so concurrent traffic cannot fake a mismatch.
            await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            report = await verify_ledger(conn, scope)
    finally:
        await db.dispose()
    print(report.render())
    return 0 if report.ok else EXIT_LEDGER_BROKEN


def cmd_ledger_verify(args: argparse.Namespace) -> int:
    settings = load_settings(need_redis=False, need_master_key=False)
    return asyncio.run(_verify(settings, args))


# -- dead letters ------------------------------------------------------------------------------


def cmd_dead_letters(args: argparse.Namespace) -> int:
    import redis
    from dramatiq.brokers.redis import RedisBroker

    from ops import dead_letters
    from workers.broker import QUEUES

    settings = load_settings(need_master_key=False)
    client = redis.Redis.from_url(settings.redis_url)
    queues = tuple(args.queue) if args.queue else QUEUES
    letters = dead_letters.list_dead(client, queues, limit=args.limit)
    if args.id:
        letters = [
            letter
            for letter in letters
            if letter.redis_id in args.id or letter.message.message_id in args.id
        ]
    if args.dead_command == "list":
        for letter in letters:
            print(json.dumps(letter.summary()))
        print(f"{len(letters)} dead letter(s)", file=sys.stderr)
        return 0
    if not args.id and not args.all:
        print("sir-engine dead-letters: name --id ID (repeatable) or --all", file=sys.stderr)
        return EXIT_CONFIG
    if args.dead_command == "requeue":
        count = dead_letters.requeue(client, RedisBroker(url=settings.redis_url), letters)
    else:
        count = dead_letters.purge(client, letters)
    print(f"{args.dead_command}d {count} dead letter(s)")
    return 0


# -- admin -------------------------------------------------------------------------------------


async def _admin(settings: Settings, args: argparse.Namespace) -> Any:
    from engine import credentials, partners, pools
    from engine.crypto import SecretBox
    from engine.db import create_engine
    from engine.money import Tokens
    from engine.scope import Scope

    actor = f"cli:{args.actor}"
    db = create_engine(settings.database_url, pool_size=1, max_overflow=0)
    try:
        async with db.begin() as conn:
            if args.admin_command == "partner-create":
                row = await partners.create_partner(
                    conn,
                    actor=actor,
                    name=args.name,
                    slug=args.slug,
                    status=args.status,
                    tier=args.tier,
                    enabled_features=args.features,
                    action_types=args.action_types,
                    stakeholder_types=args.stakeholder_types,
                    contact_email=args.contact_email,
                )
                return {
                    "id": row["id"],
                    "slug": row["slug"],
                    "status": row["status"],
                    "tier": row["tier"],
                }
            if args.admin_command == "keys-issue":
                expires = datetime.fromisoformat(args.expires_at) if args.expires_at else None
                keys = await credentials.issue_keys(
                    conn,
                    SecretBox(settings.master_key),
                    actor=actor,
                    partner_id=args.partner,
                    environment=args.environment,
                    name=args.name,
                    expires_at=expires,
                )
                return {
                    "id": keys.id,
                    "partnerId": keys.partner_id,
                    "environment": keys.environment,
                    "publicKey": keys.public_key,
                    "secretKey": keys.secret_key,
                    "hmacSecret": keys.hmac_secret,
                    "expiresAt": args.expires_at,
                    "note": "secretKey and hmacSecret are shown once; store them now",
                }
            scope = Scope(args.partner, args.environment)
            if args.admin_command == "pool-create":
                row = await pools.create_pool(
                    conn,
                    scope,
                    actor=actor,
                    name=args.name,
                    vesting_days=args.vesting_days,
                    expiration_days=args.expiration_days,
                )
                if args.fund:
                    await pools.allocate(
                        conn, scope, actor=actor, pool_id=row["id"], amount=Tokens.parse(args.fund)
                    )
                return {
                    "id": row["id"],
                    "isDefault": row["is_default"],
                    "balance": args.fund or "0",
                }
            if args.admin_command == "pool-fund":
                entry = await pools.allocate(
                    conn,
                    scope,
                    actor=actor,
                    pool_id=args.pool,
                    amount=Tokens.parse(args.amount),
                    memo=args.memo,
                )
                balance = await pools.pool_balance(conn, scope, args.pool)
                return {"entryId": entry, "poolId": args.pool, "balance": balance.format()}
            if args.admin_command == "reserve-fund":
                entry = await pools.fund_reserve(
                    conn, scope, actor=actor, amount=Tokens.parse(args.amount), memo=args.memo
                )
                return {"entryId": entry}
    finally:
        await db.dispose()
    raise SystemExit(f"unknown admin command {args.admin_command}")


def cmd_admin(args: argparse.Namespace) -> int:
    from engine.money import InvalidAmount

    needs_key = args.admin_command == "keys-issue"
    settings = load_settings(need_redis=False, need_master_key=needs_key)
    try:
        result = asyncio.run(_admin(settings, args))
    except SirError as exc:
        print(
            json.dumps(
                {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}
            ),
            file=sys.stderr,
        )
        return 1
    except InvalidAmount as exc:
        print(
            json.dumps({"error": {"code": "VALIDATION_FAILED", "message": f"amount {exc}"}}),
            file=sys.stderr,
        )
        return 1
    print(json.dumps(result, indent=2))
    return 0


def cmd_organizations_import(args: argparse.Namespace) -> int:
    """`admin organizations import FILE.csv`: validate, then upsert by slug (idempotent)."""
    from pathlib import Path

    from engine.db import create_engine
    from ops.organizations_import import ImportRefused, import_file

    settings = load_settings(need_redis=False, need_master_key=False)

    async def run() -> Any:
        db = create_engine(settings.database_url, pool_size=1, max_overflow=0)
        try:
            return await import_file(db, Path(args.file), actor=f"cli:{args.actor}")
        finally:
            await db.dispose()

    try:
        counts = asyncio.run(run())
    except ImportRefused as exc:
        for line in exc.errors:
            print(f"sir-engine: {line}", file=sys.stderr)
        print(f"sir-engine: nothing imported ({len(exc.errors)} problem(s))", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {"inserted": counts.inserted, "updated": counts.updated, "unchanged": counts.unchanged}
        )
    )
    return 0


def cmd_provider_secret(args: argparse.Namespace) -> int:
    """The shared secret a payment provider (every.org, test) signs its notices with."""
    from engine.payment_providers import provider_secret

    print(provider_secret(load_settings(need_redis=False), args.provider))
    return 0


# -- parser ------------------------------------------------------------------------------------


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sir-engine", description="The SIR rewards engine.")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser(
        "dev", help="run the whole engine locally (embedded PostgreSQL and Redis by default)"
    )
    dev.add_argument(
        "--data-dir",
        default=".sir-dev",
        help="where embedded servers keep data (default ./.sir-dev)",
    )
    dev.add_argument("--host", default=None)
    dev.add_argument("--port", type=int, default=None)
    dev.add_argument("--worker-processes", type=int, default=1)
    dev.add_argument("--worker-threads", type=int, default=4)
    dev.set_defaults(func=cmd_dev)

    sign = sub.add_parser(
        "sign", help="print a freshly signed curl request with the dev credentials"
    )
    sign.add_argument("method")
    sign.add_argument("path", help="path with query, e.g. /v1/partner/users?limit=10")
    sign.add_argument("--body", default=None, help="raw JSON body")
    sign.add_argument("--credentials", default=".sir-dev/demo-credentials.json")
    sign.add_argument("--base-url", default=None)
    sign.set_defaults(func=cmd_sign)

    migrate = sub.add_parser("migrate", help="apply migrations to DATABASE_URL")
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(func=cmd_migrate)

    serve = sub.add_parser("serve", help="run the HTTP front")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument(
        "--reuse-port", action="store_true", help="share the port with other serve processes"
    )
    serve.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        help="front processes on one port (SO_REUSEPORT); the parent forwards SIGTERM/SIGINT "
        "and exits when they do, restarting none (default 1)",
    )
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run Dramatiq workers")
    worker.add_argument("--processes", type=int, default=2)
    worker.add_argument("--threads", type=int, default=8)
    worker.add_argument(
        "--queues", nargs="*", default=None, help="queues to consume (default: all)"
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("SIR_WORKER_METRICS_PORT", "9191")),
        help="Prometheus port of this worker group (0 disables; default 9191 or SIR_WORKER_METRICS_PORT)",
    )
    worker.set_defaults(func=cmd_worker)

    scheduler = sub.add_parser("scheduler", help="run the periodic ticks (one leader at a time)")
    scheduler.set_defaults(func=cmd_scheduler)

    ledger = sub.add_parser("ledger", help="ledger checks")
    ledger_sub = ledger.add_subparsers(dest="ledger_command", required=True)
    verify = ledger_sub.add_parser(
        "verify", help="prove caches equal postings and entries sum to zero"
    )
    verify.add_argument("--partner", default=None, help="only this partner (with --environment)")
    verify.add_argument("--environment", default="sandbox", choices=("sandbox", "production"))
    verify.set_defaults(func=cmd_ledger_verify)

    dead = sub.add_parser(
        "dead-letters", help="list, requeue or purge messages the workers gave up on"
    )
    dead_sub = dead.add_subparsers(dest="dead_command", required=True)
    for name, helptext in (
        ("list", "show dead letters as JSON lines"),
        ("requeue", "send dead letters back to their queues (retries reset)"),
        ("purge", "delete dead letters"),
    ):
        d = dead_sub.add_parser(name, help=helptext)
        d.add_argument("--queue", action="append", help="only this queue (repeatable; default all)")
        d.add_argument("--id", action="append", help="only this message (repeatable)")
        d.add_argument("--limit", type=int, default=1000)
        if name != "list":
            d.add_argument(
                "--all", action="store_true", help="every dead letter of the chosen queues"
            )
        d.set_defaults(func=cmd_dead_letters, all=False)

    admin = sub.add_parser("admin", help="operator bootstrap from the shell")
    admin.add_argument("--actor", default="shell", help="who is acting (recorded in the audit log)")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)

    p = admin_sub.add_parser("partner-create", help="create a partner")
    p.add_argument("--name", required=True)
    p.add_argument("--slug", default=None)
    p.add_argument("--status", default="PENDING_APPROVAL")
    p.add_argument("--tier", default="STANDARD")
    p.add_argument("--features", nargs="*", default=["ACTIONS"])
    p.add_argument("--action-types", nargs="*", default=[])
    p.add_argument("--stakeholder-types", nargs="*", default=[])
    p.add_argument("--contact-email", default=None)
    p.set_defaults(func=cmd_admin)

    k = admin_sub.add_parser("keys-issue", help="issue a key pair and HMAC secret (shown once)")
    k.add_argument("--partner", required=True)
    k.add_argument("--environment", choices=("sandbox", "production"), required=True)
    k.add_argument("--name", default="default")
    k.add_argument("--expires-at", default=None, help="RFC 3339 time")
    k.set_defaults(func=cmd_admin)

    orgs = admin_sub.add_parser("organizations", help="the nonprofit directory")
    orgs_sub = orgs.add_subparsers(dest="organizations_command", required=True)
    imp = orgs_sub.add_parser(
        "import", help="upsert organizations by slug from a CSV (name, slug, ein, logoUrl)"
    )
    imp.add_argument("file", help="CSV file with a header row")
    imp.set_defaults(func=cmd_organizations_import)

    secret = sub.add_parser(
        "provider-secret",
        help="print the shared secret a payment provider signs its notifications with",
    )
    secret.add_argument("provider", choices=("every.org", "test"))
    secret.set_defaults(func=cmd_provider_secret)

    for name, helptext in (
        ("pool-create", "create a token pool"),
        ("pool-fund", "allocate tokens to a pool"),
        ("reserve-fund", "fund the partner's auto-refill reserve"),
    ):
        c = admin_sub.add_parser(name, help=helptext)
        c.add_argument("--partner", required=True)
        c.add_argument("--environment", choices=("sandbox", "production"), required=True)
        if name == "pool-create":
            c.add_argument("--name", required=True)
            c.add_argument("--vesting-days", type=int, default=None)
            c.add_argument("--expiration-days", type=int, default=None)
            c.add_argument("--fund", default=None, help="tokens to allocate at once")
        else:
            if name == "pool-fund":
                c.add_argument("--pool", required=True)
            c.add_argument("--amount", required=True)
            c.add_argument("--memo", default=None)
        c.set_defaults(func=cmd_admin)

    from ops import marketplace_cli

    marketplace_cli.register(sub, admin_sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"sir-engine: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
