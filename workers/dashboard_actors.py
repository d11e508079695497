"""Dashboard actors: the daily ledger roll-up and the API-usage fold, both on scheduler ticks.

Both are idempotent (see `engine.rollups` and `engine.api_usage`): a tick enqueued twice, a
retry, or a worker killed half way never counts anything twice or loses a count.
"""

from __future__ import annotations

import logging
import os
import secrets
from datetime import UTC, datetime

import dramatiq
import redis.asyncio as aioredis
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncEngine

from engine import api_usage, rollups
from workers import runtime
from workers.broker import broker  # noqa: F401 - configures the global broker first
from workers.tick_metrics import mark
from workers.ticks import Tick

log = logging.getLogger("sir.workers.dashboard")

QUEUE = "maintenance"
ROLLED_DAYS = Counter("sir_dashboard_rollup_days_total", "UTC days rolled up for the dashboard")
FOLDED_REQUESTS = Counter("sir_api_usage_folded_total", "API requests folded into PostgreSQL")

# Take the pending hash unless an earlier fold left one behind; tag it with this fold's id.
_TAKE = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
end
return redis.call('HGETALL', KEYS[2])
"""
# Delete the folding hash only if it is still the one this fold applied.
_DONE = """
if redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


async def fold_usage(
    redis: aioredis.Redis, db: AsyncEngine, *, stop_after_commit: bool = False
) -> int:
    """One fold of the front's usage counts into `api_usage_days`; returns the requests added
    (0 when the hash held nothing new, or was already applied by a fold that died before its
    clean-up). `stop_after_commit` leaves the Redis clean-up undone, as a worker killed right
    after the commit would: tests use it to prove the next fold adds nothing twice."""
    fresh_id = f"fold_{secrets.token_hex(12)}"
    keys = [api_usage.PENDING_KEY, api_usage.FOLDING_KEY]
    reply = await redis.eval(_TAKE, 2, *keys, fresh_id, api_usage.FOLD_ID_FIELD)
    if not reply:
        return 0
    raw = {_str(reply[i]): _str(reply[i + 1]) for i in range(0, len(reply), 2)}
    fold_id = raw.get(api_usage.FOLD_ID_FIELD)
    if fold_id is None:  # not ours to interpret (written by hand?): tag it and fold next time
        await redis.hsetnx(api_usage.FOLDING_KEY, api_usage.FOLD_ID_FIELD, fresh_id)
        return 0
    counts = api_usage.parse_counts(raw)
    async with db.begin() as conn:
        applied = await api_usage.apply_fold(conn, fold_id, counts, datetime.now(UTC))
    if stop_after_commit:
        return sum(counts.values()) if applied else 0
    await redis.eval(_DONE, 1, api_usage.FOLDING_KEY, fold_id, api_usage.FOLD_ID_FIELD)
    return sum(counts.values()) if applied else 0


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dramatiq.actor(queue_name=QUEUE, time_limit=5 * 60 * 1000)
async def fold_api_usage() -> None:
    """Fold the front's API usage counts from Redis into PostgreSQL."""
    redis = aioredis.from_url(runtime.settings().redis_url, socket_timeout=10)
    try:
        folded = await fold_usage(redis, runtime.database())
        # A fold left behind by a dead worker was finished first: fold what is pending too.
        if folded == 0:
            folded = await fold_usage(redis, runtime.database())
    finally:
        await redis.aclose()
    FOLDED_REQUESTS.inc(folded)
    mark("fold_api_usage")
    if folded:
        log.info("folded %d API request(s)", folded)


@dramatiq.actor(queue_name=QUEUE, time_limit=10 * 60 * 1000)
async def roll_up_dashboards() -> None:
    """Roll the dashboard's daily figures up to the newest safely committed instant, and the
    webhook attempts of the hours that ended."""
    now = datetime.now(UTC)
    run = await rollups.roll_up(runtime.database(), now)
    hours = await rollups.roll_up_webhooks(runtime.database(), now)
    ROLLED_DAYS.inc(run.days)
    # A roll-up that stops makes every read slower (more is read live): SirTicksStale fires.
    mark("roll_up_dashboards")
    if run.days or hours:
        log.info(
            "rolled up %d day(s) until %s, %d webhook hour(s)", run.days, run.closed_until, hours
        )


TICKS = [
    Tick(
        "fold_api_usage",
        float(os.environ.get("SIR_API_USAGE_FOLD_SECONDS", "60")),
        fold_api_usage.send,
    ),
    Tick(
        "roll_up_dashboards",
        float(os.environ.get("SIR_DASHBOARD_ROLLUP_SECONDS", "60")),
        roll_up_dashboards.send,
    ),
]
