"""Alembic environment: async, under an advisory lock and timeouts (warehouse's habit).

The advisory lock makes two `sir-engine migrate` processes started together take turns instead
of racing; `lock_timeout` keeps a migration from queueing behind live traffic forever.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from engine.tables import metadata

MIGRATION_LOCK_ID = 0x5152_0001  # arbitrary, fixed: "SIR" migrations

config = context.config
target_metadata = metadata


def _run(connection: Connection) -> None:
    connection.execute(text("SET lock_timeout = '10s'"))
    connection.execute(text("SET statement_timeout = '300s'"))
    connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
    connection.commit()  # the lock is session-level: it outlives this transaction
    try:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        # A failed migration leaves the transaction aborted; roll back so the unlock can run
        # and the original error, not a secondary one, is what the operator sees.
        connection.rollback()
        connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
        connection.commit()


async def _run_async() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url must be set by ops.migrate"
    engine = create_async_engine(url, poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run sir-engine migrate")
asyncio.run(_run_async())
