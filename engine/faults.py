"""Which dependency a failure came from, so the front and the workers can count database and
Redis errors apart (`sir_http_dependency_errors_total`, `sir_worker_dependency_errors_total`).

An error the engine re-raised as its own (`ServiceUnavailable(...) from None`) still carries the
original in `__context__`, so the whole chain is searched.
"""

from __future__ import annotations

from asyncpg.exceptions import InterfaceError as AsyncpgInterfaceError
from asyncpg.exceptions import PostgresError
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

# asyncpg's own errors can reach us unwrapped (a connection lost between statements).
_DATABASE = (DBAPIError, OperationalError, InterfaceError, PostgresError, AsyncpgInterfaceError)


def dependency_of(exc: BaseException) -> str | None:
    """ "database", "redis", or None when no database or Redis error is in the chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _DATABASE):
            return "database"
        if isinstance(current, RedisError):
            return "redis"
        current = current.__cause__ or current.__context__
    return None
