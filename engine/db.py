"""The database engine and the one-transaction-per-command helper."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg.exceptions
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from engine.settings import to_sqlalchemy_url
from engine.wire import dumps, loads

# Raised by asyncpg as they are (not wrapped by SQLAlchemy) when a new connection is refused:
# the server is shutting down or starting up (57P03), or the connection failed (class 08).
# The database is unreachable for a moment, like an OperationalError: 503 and retry, never 500.
CONNECT_REFUSED: tuple[type[Exception], ...] = (
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.PostgresConnectionError,
)


def create_engine(database_url: str, *, pool_size: int = 10, max_overflow: int = 10) -> AsyncEngine:
    """An asyncpg-backed engine. Create it on the event loop that will use it.

    `pool_pre_ping` lets a process recover by itself after PostgreSQL restarts. JSONB goes
    through the exact wire encoder, so decimals and tokens in JSON columns never touch float.
    """
    return create_async_engine(
        to_sqlalchemy_url(database_url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"server_settings": {"application_name": "sir-engine"}},
        json_serializer=dumps,
        json_deserializer=loads,
    )


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One command, one transaction: committed if the block finishes, rolled back otherwise."""
    async with engine.begin() as conn:
        yield conn
