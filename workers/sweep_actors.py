"""Sweep actors: vesting, expiry, auto-refill, low-balance and API-key expiry alerts.

Each is a thin loop over its `engine.sweeps` function: one batch per transaction, until a batch
comes back empty or MAX_BATCHES_PER_RUN is reached (the next tick carries on), so a large
backlog never holds one long transaction and any number of workers can share a sweep. The
engine functions take their batches with `FOR UPDATE SKIP LOCKED`; a tick enqueued twice only
makes two workers share the work.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import dramatiq
from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import sweeps
from engine.health import pool_health
from workers import runtime
from workers.broker import broker  # noqa: F401 - configures the global broker first
from workers.tick_metrics import mark
from workers.ticks import Tick

log = logging.getLogger("sir.workers.sweeps")

QUEUE = "sweeps"
BATCH_SIZE = int(os.environ.get("SIR_SWEEP_BATCH", "20000"))
MAX_BATCHES_PER_RUN = int(os.environ.get("SIR_SWEEP_MAX_BATCHES", "200"))
TIME_LIMIT_MS = 10 * 60 * 1000

SWEPT = Counter("sir_sweep_rows_total", "Rows handled by the sweeps", ["sweep"])
BATCHES = Counter("sir_sweep_batches_total", "Sweep batches committed", ["sweep"])
# "mostrecent": the figure of whichever worker process ran the tick last, not a stale maximum
# left behind by another process.
POOLS_BELOW_THRESHOLD = Gauge(
    "sir_pools_below_threshold",
    "Open token pools whose balance is below their low-balance threshold",
    ["environment"],
    multiprocess_mode="mostrecent",
)
POOLS_EXHAUSTED = Gauge(
    "sir_pools_exhausted",
    "Token pools in status EXHAUSTED",
    ["environment"],
    multiprocess_mode="mostrecent",
)

Sweep = Callable[[AsyncConnection, datetime, int], Awaitable[int]]


async def run_sweep(name: str, sweep: Sweep, *, batch_size: int = BATCH_SIZE) -> int:
    """Run `sweep` in fresh transactions until a batch is empty (or the run's cap). The clock is
    read once per run, so a row that comes due mid-run waits for the next tick and the refill
    sweep's once-per-`now` rule holds across the run's batches. Returns the rows handled."""
    db = runtime.database()
    now = datetime.now(UTC)
    total = 0
    for _ in range(MAX_BATCHES_PER_RUN):
        async with db.begin() as conn:
            handled = await sweep(conn, now, batch_size)
        if handled == 0:
            break
        total += handled
        SWEPT.labels(name).inc(handled)
        BATCHES.labels(name).inc()
    else:
        log.info("%s: stopped after %d batches; the next tick continues", name, MAX_BATCHES_PER_RUN)
    if total:
        log.info("%s: %d row(s)", name, total)
    return total


@dramatiq.actor(queue_name=QUEUE, time_limit=TIME_LIMIT_MS)
async def vest_tokens() -> None:
    """Vest locked lots whose vesting date has come."""
    await run_sweep("vest_tokens", sweeps.vest_due)


@dramatiq.actor(queue_name=QUEUE, time_limit=TIME_LIMIT_MS)
async def expire_tokens() -> None:
    """Expire open lots past their expiry date."""
    await run_sweep("expire_tokens", sweeps.expire_due)


@dramatiq.actor(queue_name=QUEUE, time_limit=TIME_LIMIT_MS)
async def refill_pools() -> None:
    """Auto-refill pools below their refill threshold from the partner's reserve."""
    await run_sweep("refill_pools", sweeps.refill_pools, batch_size=100)


@dramatiq.actor(queue_name=QUEUE, time_limit=TIME_LIMIT_MS)
async def check_low_balances() -> None:
    """Alert pools below their low-balance threshold, once per crossing; export the counts."""
    await run_sweep("check_low_balances", sweeps.check_low_balances, batch_size=100)
    async with runtime.database().connect() as conn:
        health = await pool_health(conn)
    for environment, figures in health.items():
        POOLS_BELOW_THRESHOLD.labels(environment).set(figures.below_threshold)
        POOLS_EXHAUSTED.labels(environment).set(figures.exhausted)
    mark("check_low_balances")


@dramatiq.actor(queue_name=QUEUE, time_limit=TIME_LIMIT_MS)
async def alert_expiring_keys() -> None:
    """Alert API keys 14, 7 and 1 days before they expire."""
    await run_sweep("alert_expiring_keys", sweeps.alert_expiring_keys, batch_size=500)


_SWEEP_SECONDS = float(os.environ.get("SIR_SWEEP_SECONDS", "60"))
_REFILL_SECONDS = float(os.environ.get("SIR_REFILL_SECONDS", str(_SWEEP_SECONDS)))
_KEY_ALERT_SECONDS = float(os.environ.get("SIR_KEY_ALERT_SECONDS", "3600"))

TICKS = [
    Tick("vest_tokens", _SWEEP_SECONDS, vest_tokens.send),
    Tick("expire_tokens", _SWEEP_SECONDS, expire_tokens.send),
    Tick("refill_pools", _REFILL_SECONDS, refill_pools.send),
    Tick("check_low_balances", _REFILL_SECONDS, check_low_balances.send),
    Tick("alert_expiring_keys", _KEY_ALERT_SECONDS, alert_expiring_keys.send),
]
