"""Marketplace commands of `sir-engine`: `admin catalog import FILE.csv` (with a progress bar)
and `reconcile` (the daily job, run by hand for one day).

The import is the same use case as `POST /api/v1/admin/catalog/import`: rows parsed and
validated by the wire model, upserted by `sku` (running a file twice changes nothing), each row
in its own savepoint so a bad row is listed and the rest go in, committed every BATCH rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from engine.errors import SirError
from engine.settings import load_settings

BATCH = 500


async def import_catalog(
    database_url: str, csv_text: str, *, actor: str, progress: bool | None
) -> dict[str, Any]:
    from tqdm import tqdm

    from engine import catalog
    from engine.db import create_engine
    from schemas.marketplace import catalog_rows

    rows = catalog_rows(csv_text)
    result = catalog.ImportResult()
    db = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        with tqdm(
            total=len(rows),
            unit="product",
            desc="catalog",
            file=sys.stderr,
            disable=(not sys.stderr.isatty() if progress is None else not progress),
        ) as bar:
            for start in range(0, len(rows), BATCH):
                chunk = rows[start : start + BATCH]
                async with db.begin() as conn:
                    await catalog.import_products(conn, actor=actor, rows=chunk, result=result)
                bar.update(len(chunk))
    finally:
        await db.dispose()
    return result.to_json()


def cmd_catalog_import(args: argparse.Namespace) -> int:
    settings = load_settings(need_redis=False, need_master_key=False)
    try:
        result = asyncio.run(
            import_catalog(
                settings.database_url,
                Path(args.file).read_text(encoding="utf-8-sig"),
                actor=f"cli:{args.actor}",
                progress=args.progress,
            )
        )
    except SirError as exc:
        print(json.dumps({"error": {"code": exc.code, "details": exc.details}}), file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 1 if result["rejected"] else 0


async def _reconcile(args: argparse.Namespace) -> list[dict[str, Any]]:
    from engine import reconciliation
    from engine.crypto import SecretBox
    from engine.db import create_engine
    from engine.scope import Scope
    from engine.vendors import Vendors
    from engine.wire import dumps, loads

    settings = load_settings(need_redis=False)
    day = (
        reconciliation.parse_day(args.date)
        if args.date
        else datetime.now(UTC).date() - timedelta(days=1)
    )
    db = create_engine(settings.database_url, pool_size=2, max_overflow=0)
    try:
        vendors = Vendors(db, SecretBox(settings.master_key))
        if args.partner:
            scopes = [Scope(args.partner, args.environment)]
        else:
            async with db.connect() as conn:
                scopes = await reconciliation.scopes_to_reconcile(conn, day)
        reports = []
        for scope in scopes:
            report = await reconciliation.reconcile_day(db, vendors, scope, day)
            reports.append(
                {"partnerId": scope.partner_id, "environment": scope.environment, **report}
            )
        return list(loads(dumps(reports)))
    finally:
        await db.dispose()


def cmd_reconcile(args: argparse.Namespace) -> int:
    try:
        reports = asyncio.run(_reconcile(args))
    except SirError as exc:
        print(json.dumps({"error": {"code": exc.code, "details": exc.details}}), file=sys.stderr)
        return 1
    print(json.dumps(reports, default=str, indent=2))
    findings = sum(r["summary"]["drifted"] + r["summary"]["unmatched"] for r in reports)
    broken = sum(not r["ledger"]["balanced"] for r in reports)
    return 3 if findings or broken else 0


def register(sub: Any, admin_sub: Any) -> None:
    """Add the marketplace commands to `sir-engine`'s parser."""
    cat = admin_sub.add_parser("catalog", help="the redemption catalog")
    cat_sub = cat.add_subparsers(dest="catalog_command", required=True)
    imp = cat_sub.add_parser(
        "import", help="upsert products by sku from a CSV (see POST /api/v1/admin/catalog/import)"
    )
    imp.add_argument("file", help="CSV with the header sku,name,category,country,currency,...")
    imp.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show the progress bar (default: on a terminal)",
    )
    imp.set_defaults(func=cmd_catalog_import)

    rec = sub.add_parser(
        "reconcile",
        help="reconcile a day's voucher allocations with the vendors' records and the ledger "
        "(exit 3 when anything is found)",
    )
    rec.add_argument("--date", default=None, help="YYYY-MM-DD, UTC (default: yesterday)")
    rec.add_argument(
        "--partner", default=None, help="only this partner (default: every active one)"
    )
    rec.add_argument("--environment", choices=("sandbox", "production"), default="sandbox")
    rec.set_defaults(func=cmd_reconcile)
