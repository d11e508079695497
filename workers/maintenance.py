"""Maintenance actors: the periodic ledger audit."""

from __future__ import annotations

import logging
import os

import dramatiq
from prometheus_client import Gauge
from sqlalchemy import text

from engine.verify import verify_ledger
from workers import runtime
from workers.broker import QUEUES, broker
from workers.ticks import Tick

log = logging.getLogger("sir.workers")

LEDGER_PROBLEMS = Gauge(
    "sir_ledger_problems", "Problems found by the last ledger audit", multiprocess_mode="max"
)
QUEUE_DEPTH = Gauge(
    "sir_queue_depth",
    "Messages waiting per queue (ready and delayed)",
    ["queue"],
    multiprocess_mode="max",
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
    """Export how many messages wait in each queue, so operators see which pool to scale."""
    client = broker.client  # type: ignore[attr-defined]
    for queue in QUEUES:
        ready = client.hlen(f"dramatiq:{queue}.msgs")
        delayed = client.hlen(f"dramatiq:{queue}.DQ.msgs")
        QUEUE_DEPTH.labels(queue).set(int(ready) + int(delayed))


TICKS = [
    Tick("audit_ledger", int(os.environ.get("SIR_LEDGER_AUDIT_SECONDS", "900")), audit_ledger.send),
    Tick(
        "measure_queues",
        float(os.environ.get("SIR_QUEUE_METRICS_SECONDS", "15")),
        measure_queues.send,
    ),
]
