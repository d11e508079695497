"""Cheap whole-engine health figures the workers export as Prometheus gauges.

Each is one aggregate over a small table, run on a tick that already exists, so an alert can
fire on it without a sweep of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

ENVIRONMENTS = ("sandbox", "production")

_POOLS = text(
    "SELECT p.environment, "
    "count(*) FILTER (WHERE p.low_balance_threshold > 0 "
    "AND a.balance < p.low_balance_threshold) AS below, "
    "count(*) FILTER (WHERE p.status = 'EXHAUSTED') AS exhausted "
    "FROM token_pools p JOIN ledger_accounts a ON a.pool_id = p.id "
    "WHERE p.status <> 'CLOSED' GROUP BY p.environment"
)


@dataclass(frozen=True)
class PoolHealth:
    below_threshold: int
    exhausted: int


async def pool_health(conn: AsyncConnection) -> dict[str, PoolHealth]:
    """Per environment: open pools whose balance is under their `lowBalanceThreshold`, and
    EXHAUSTED pools. Every environment is present (zeros), so a resolved alert reads 0, not
    an absent series. One aggregate over every pool: partners have a handful each."""
    found = {env: PoolHealth(0, 0) for env in ENVIRONMENTS}
    for row in (await conn.execute(_POOLS)).all():
        found[row.environment] = PoolHealth(int(row.below), int(row.exhausted))
    return found
