"""`python -m ops.bench.sweep [--lots N] [--users N] [--batch N] [--quick]`: the sweeps' benchmark.

One run, on a fresh database on DATABASE_URL's server (dropped at the end):

1. builds a consistent ledger with SQL `generate_series`: N locked lots (default 1,000,000;
   `--quick` 50,000) spread over a few thousand users' wallets, each lot a CREDIT posting of a
   DISTRIBUTION entry per user against an allocated pool, balance caches set, so `ledger verify`
   passes before and after;
2. vesting: the baseline is ONE raw SQL UPDATE moving every due lot to its wallet's available
   account, rolled back; then `engine.sweeps.vest_due` in batches of `--batch` lots, one
   transaction each as the actor runs it, committed (postings, balances, lots, events);
3. expiry: the same, with `UPDATE lots SET remaining = 0` as the baseline and `expire_due`;
4. `ledger verify` over the database.

Each sweep is printed in rows/s with its ratio to the baseline from the same run (the machines
are shared and noisy: only same-run ratios compare). The lots are interleaved across users in
vesting order, so every batch touches as many wallets as it can: the worst case for batching.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.db import create_engine
from engine.money import Tokens
from engine.partners import create_partner
from engine.pools import allocate, create_pool
from engine.scope import Scope
from engine.sweeps import expire_due, vest_due
from engine.verify import verify_ledger
from ops.bench import measure
from ops.migrate import upgrade

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def log(message: str) -> None:
    print(f"[sweep bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Measured:
    label: str
    rows: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


# -- building the ledger --------------------------------------------------------------------------

# Lot n belongs to user ((n * 7919) % users) + 1 (7919 is prime: neighbours in vesting order
# land in different wallets) and holds 1..97 whole tokens; it vested n seconds before `now` and
# expires 30 days after it vested.
_PLAN = """
CREATE TEMP TABLE plan AS
SELECT g AS n, ((g::bigint * 7919) % :users)::int + 1 AS u, (1 + g % 97) * 1000000::bigint AS amount,
       CAST(:now AS timestamptz) - g * interval '1 second' AS vests_at
FROM generate_series(1, :lots) AS g
"""


async def build(db: AsyncEngine, lots: int, users: int, now: datetime) -> Scope:
    async with db.begin() as conn:
        partner = await create_partner(
            conn,
            actor="bench",
            name=f"Sweep bench {secrets.token_hex(3)}",
            status="ACTIVE",
            action_types=("PURCHASE",),
            stakeholder_types=("CUSTOMER",),
        )
        scope = Scope(partner["id"], "sandbox")
        pool = await create_pool(
            conn, scope, actor="bench", name="main", vesting_days=7, expiration_days=30
        )
        p = {**scope.params, "users": users, "lots": lots, "now": now}
        await conn.execute(text(_PLAN), p)
        total = int((await conn.execute(text("SELECT sum(amount) FROM plan"))).scalar_one())
        await allocate(conn, scope, actor="bench", pool_id=pool["id"], amount=Tokens(total))
        pool_account = int(
            (
                await conn.execute(
                    text("SELECT id FROM ledger_accounts WHERE pool_id = :id"), {"id": pool["id"]}
                )
            ).scalar_one()
        )
        await conn.execute(
            text(
                "INSERT INTO partner_users (id, partner_id, environment, external_user_id) "
                "SELECT 'bu' || lpad(g::text, 22, '0'), :partner_id, :environment, "
                "'bench-' || g FROM generate_series(1, :users) AS g"
            ),
            p,
        )
        await conn.execute(
            text(
                "INSERT INTO ledger_accounts (partner_id, environment, kind, partner_user_id) "
                "SELECT :partner_id, :environment, k.kind, 'bu' || lpad(g::text, 22, '0') "
                "FROM generate_series(1, :users) AS g CROSS JOIN "
                "(VALUES ('WALLET_AVAILABLE'), ('WALLET_LOCKED')) AS k(kind) ORDER BY g, k.kind"
            ),
            p,
        )
        await conn.execute(
            text(
                "CREATE TEMP TABLE locked AS SELECT a.id, "
                "substr(a.partner_user_id, 3)::int AS u FROM ledger_accounts a "
                "WHERE a.partner_id = :partner_id AND a.kind = 'WALLET_LOCKED'"
            ),
            p,
        )
        await conn.execute(
            text(
                "INSERT INTO journal_entries (id, partner_id, environment, kind) "
                "SELECT 'be' || lpad(u::text, 22, '0'), :partner_id, :environment, "
                "'DISTRIBUTION' FROM (SELECT DISTINCT u FROM plan) d"
            ),
            p,
        )
        # One statement: the balance trigger checks every entry once.
        await conn.execute(
            text(
                "INSERT INTO postings (id, partner_id, environment, entry_id, account_id, "
                "amount, type) "
                "SELECT 'bd' || lpad(u::text, 22, '0'), :partner_id, :environment, "
                "'be' || lpad(u::text, 22, '0'), :pool, -sum(amount), 'DEBIT' FROM plan GROUP BY u "
                "UNION ALL "
                "SELECT 'bc' || lpad(n::text, 22, '0'), :partner_id, :environment, "
                "'be' || lpad(plan.u::text, 22, '0'), l.id, amount, 'CREDIT' "
                "FROM plan JOIN locked l ON l.u = plan.u"
            ),
            {**p, "pool": pool_account},
        )
        await conn.execute(
            text(
                "INSERT INTO lots (partner_id, environment, account_id, posting_id, amount, "
                "remaining, vests_at, expires_at) SELECT :partner_id, :environment, l.id, "
                "'bc' || lpad(n::text, 22, '0'), amount, amount, vests_at, "
                "vests_at + interval '30 days' FROM plan JOIN locked l ON l.u = plan.u ORDER BY n"
            ),
            p,
        )
        await conn.execute(
            text(
                "UPDATE ledger_accounts a SET balance = s.total FROM (SELECT l.id, "
                "sum(amount) AS total FROM plan JOIN locked l ON l.u = plan.u GROUP BY l.id) s "
                "WHERE a.id = s.id"
            )
        )
        await conn.execute(
            text("UPDATE ledger_accounts SET balance = balance - :t WHERE id = :id"),
            {"t": total, "id": pool_account},
        )
    await vacuum(db)
    return scope


async def vacuum(db: AsyncEngine) -> None:
    # Both measurements of a pair start from a clean heap: the rolled-back baseline leaves one
    # dead version of every row behind.
    async with db.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        for table in ("lots", "ledger_accounts", "postings", "journal_entries", "outbox_events"):
            await conn.execute(text(f"VACUUM ANALYZE {table}"))


# -- measuring ----------------------------------------------------------------------------------

_VEST_BASELINE = (
    "UPDATE lots l SET account_id = v.id, vested_at = :now FROM ledger_accounts k "
    "JOIN ledger_accounts v ON v.partner_user_id = k.partner_user_id "
    "AND v.kind = 'WALLET_AVAILABLE' WHERE k.id = l.account_id AND k.kind = 'WALLET_LOCKED' "
    "AND l.remaining > 0 AND l.vests_at IS NOT NULL AND l.vested_at IS NULL AND l.vests_at <= :now"
)
_EXPIRE_BASELINE = (
    "UPDATE lots SET remaining = 0 WHERE remaining > 0 AND expires_at IS NOT NULL "
    "AND expires_at <= :now"
)


async def baseline(db: AsyncEngine, label: str, sql: str, now: datetime) -> Measured:
    async with db.connect() as conn:
        transaction = await conn.begin()
        started = time.perf_counter()
        result = await conn.execute(text(sql), {"now": now})
        elapsed = time.perf_counter() - started
        await transaction.rollback()
    return Measured(label, result.rowcount, elapsed)


async def swept(db: AsyncEngine, label: str, sweep, now: datetime, batch: int) -> Measured:
    rows = 0
    started = time.perf_counter()
    while True:
        async with db.begin() as conn:
            handled = await sweep(conn, now, batch)
        if not handled:
            break
        rows += handled
    return Measured(label, rows, time.perf_counter() - started)


async def bench(args: argparse.Namespace) -> bool:
    lots = 50_000 if args.quick else args.lots
    server_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    name = f"sir_bench_sweep_{secrets.token_hex(4)}"
    database_url = measure.with_database(server_url, name)
    await measure.admin_sql(server_url, f'CREATE DATABASE "{name}"')
    db: AsyncEngine | None = None
    try:
        await asyncio.to_thread(upgrade, database_url)
        db = create_engine(database_url, pool_size=2, max_overflow=0)
        now = datetime.now(UTC).replace(microsecond=0)
        started = time.perf_counter()
        await build(db, lots, args.users, now)
        log(
            f"built {lots:,} locked lots over {args.users:,} users in {time.perf_counter() - started:.1f} s"
        )

        pairs: list[tuple[Measured, Measured]] = []
        base = await baseline(db, "vesting: one raw UPDATE (rolled back)", _VEST_BASELINE, now)
        await vacuum(db)
        sweep = await swept(
            db, f"vesting: vest_due, batches of {args.batch}", vest_due, now, args.batch
        )
        pairs.append((base, sweep))
        await vacuum(db)
        later = now + timedelta(days=60)
        base = await baseline(db, "expiry: one raw UPDATE (rolled back)", _EXPIRE_BASELINE, later)
        await vacuum(db)
        sweep = await swept(
            db, f"expiry: expire_due, batches of {args.batch}", expire_due, later, args.batch
        )
        pairs.append((base, sweep))

        async with db.connect() as conn:
            report = await verify_ledger(conn)
        ok = report.ok and all(b.rows == s.rows == lots for b, s in pairs)
        print(f"\nsweep bench: {lots:,} lots, {args.users:,} users, batch {args.batch}")
        for base, sweep in pairs:
            print(
                f"  {base.label:<44} {base.rows:>9,} rows {base.seconds:8.2f} s {base.rate:>10,.0f} rows/s"
            )
            print(
                f"  {sweep.label:<44} {sweep.rows:>9,} rows {sweep.seconds:8.2f} s "
                f"{sweep.rate:>10,.0f} rows/s  {sweep.rate / base.rate:.2f}x the baseline"
            )
        print(f"  {report.render().splitlines()[0]}")
        return ok
    finally:
        if db is not None:
            await db.dispose()
        await measure.admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench.sweep", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--lots", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=4_000)
    parser.add_argument(
        "--batch", type=int, default=20_000, help="lots per sweep transaction (the actors' default)"
    )
    parser.add_argument("--quick", action="store_true", help="50,000 lots")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return 0 if asyncio.run(bench(args)) else 1


if __name__ == "__main__":
    sys.exit(main())
