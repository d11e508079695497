"""Maintenance actors: the periodic ledger audit."""

from __future__ import annotations

import json
import logging
import os
import time

import dramatiq
from prometheus_client import Gauge
from sqlalchemy import text

from engine.verify import verify_ledger
from workers import runtime
from workers.broker import QUEUES, broker
from workers.tick_metrics import mark
from workers.ticks import Tick

log = logging.getLogger("sir.workers")

LEDGER_PROBLEMS = Gauge(
    "sir_ledger_problems", "Problems found by the last ledger audit", multiprocess_mode="max"
)
# Sampled gauges are "mostrecent": the figure of the last process that measured, never a stale
# maximum another worker process left behind (a drained queue must read 0 for its alert to clear).
QUEUE_DEPTH = Gauge(
    "sir_queue_depth",
    "Messages waiting per queue (ready and delayed)",
    ["queue"],
    multiprocess_mode="mostrecent",
)
QUEUE_OLDEST_AGE = Gauge(
    "sir_queue_oldest_message_age_seconds",
    "Age of the oldest message waiting (ready, not delayed) per queue; 0 when empty",
    ["queue"],
    multiprocess_mode="mostrecent",
)
DEAD_LETTERS = Gauge(
    "sir_dead_letters",
    "Messages the workers gave up on, per queue (`sir-engine dead-letters list`)",
    ["queue"],
    multiprocess_mode="mostrecent",
)


@dramatiq.actor(queue_name="maintenance", time_limit=10 * 60 * 1000)
async def audit_ledger() -> None:
    """Run `ledger verify` over the whole ledger; a broken ledger is logged as an error and
    exported as `sir_ledger_problems` so an alert fires."""
    async with runtime.database().connect() as conn:
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        report = await verify_ledger(conn)
    LEDGER_PROBLEMS.set(len(report.problems))
    if report.ok:
        log.info(report.render())
    else:
        log.error(report.render())


@dramatiq.actor(queue_name="maintenance", time_limit=60 * 1000)
def measure_queues() -> None:
    """Export how many messages wait in each queue and for how long, and how many are dead, so
    operators see which pool to scale (and alerts fire on lag and dead letters).

    The Redis broker appends message ids to the list `dramatiq:<queue>` and pops from its head,
    so the head is the oldest waiting message: O(1) per queue. Dead letters are the sorted set
    `dramatiq:<queue>.XQ` (see ops/dead_letters.py)."""
    client = broker.client  # type: ignore[attr-defined]
    now_ms = time.time() * 1000
    for queue in QUEUES:
        ready = client.hlen(f"dramatiq:{queue}.msgs")
        delayed = client.hlen(f"dramatiq:{queue}.DQ.msgs")
        QUEUE_DEPTH.labels(queue).set(int(ready) + int(delayed))
        QUEUE_OLDEST_AGE.labels(queue).set(_oldest_age_seconds(client, queue, now_ms))
        DEAD_LETTERS.labels(queue).set(int(client.zcard(f"dramatiq:{queue}.XQ")))
    mark("measure_queues")


def _oldest_age_seconds(client, queue: str, now_ms: float) -> float:  # type: ignore[no-untyped-def]
    head = client.lindex(f"dramatiq:{queue}", 0)
    if head is None:
        return 0.0
    encoded = client.hget(f"dramatiq:{queue}.msgs", head)
    if encoded is None:  # taken by a worker between the two calls
        return 0.0
    try:
        enqueued_ms = float(json.loads(encoded)["message_timestamp"])
    except (ValueError, KeyError, TypeError):
        return 0.0
    return max(0.0, (now_ms - enqueued_ms) / 1000)


TICKS = [
    Tick("audit_ledger", int(os.environ.get("SIR_LEDGER_AUDIT_SECONDS", "900")), audit_ledger.send),
    Tick(
        "measure_queues",
        float(os.environ.get("SIR_QUEUE_METRICS_SECONDS", "15")),
        measure_queues.send,
    ),
]
