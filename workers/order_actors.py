"""Marketplace actors: the vendor path of voucher orders and the daily reconciliation.

`pick_up_orders` (a tick, and nudged by the front after a PENDING order) claims due orders for
one lease and sends one `process_order` per order, so worker threads share vendor calls. Both
are idempotent: `engine.orders.process_order` records a vendor's answer only while the order is
still PROCESSING and the vendor dedupes on the order id; a lost message is found again when
the lease runs out. `reconcile_yesterday` reconciles the previous UTC day of every partner that
had marketplace activity; running it twice stores every finding once.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, date, datetime, timedelta

import dramatiq
from prometheus_client import Counter

from engine import orders, reconciliation
from engine.errors import NotFound
from engine.scope import Scope
from workers import runtime
from workers.broker import broker  # noqa: F401 - configures the global broker first
from workers.ticks import Tick

log = logging.getLogger("sir.workers.orders")

QUEUE = "orders"
PICK_UP_BATCH = 100

ORDER_STEPS = Counter(
    "sir_order_vendor_steps_total",
    "Vendor-path steps of voucher orders, by resulting status",
    ["status"],
)
DRIFTS = Counter("sir_reconciliation_drifts_total", "Reconciliation findings recorded", ["kind"])


@dramatiq.actor(queue_name=QUEUE, time_limit=5 * 60 * 1000)
async def process_order(order_id: str) -> None:
    """Take one order a step along the vendor path."""
    try:
        status = await orders.process_order(
            runtime.database(), runtime.secret_box(), runtime.vendors(), order_id
        )
    except NotFound:
        log.warning("order %s does not exist; message dropped", order_id)
        return
    ORDER_STEPS.labels(status).inc()
    log.info("order %s: %s", order_id, status)


@dramatiq.actor(queue_name=QUEUE, time_limit=60 * 1000)
async def pick_up_orders() -> None:
    """Claim orders due on the vendor path and send one `process_order` each."""
    async with runtime.database().begin() as conn:
        due = await orders.claim_due(conn, datetime.now(UTC), PICK_UP_BATCH)
        await orders.purge_expired_keys(conn, limit=1_000)
    for order_id in due:
        process_order.send(order_id)
    if due:
        log.info("picked up %d order(s)", len(due))


@dramatiq.actor(queue_name="maintenance", time_limit=30 * 60 * 1000)
async def reconcile_day(partner_id: str, environment: str, day: str) -> None:
    """Reconcile one UTC day of one partner-environment and store its findings."""
    scope = Scope(partner_id, environment)  # type: ignore[arg-type]
    report = await reconciliation.reconcile_day(
        runtime.database(), runtime.vendors(), scope, date.fromisoformat(day)
    )
    summary = report["summary"]
    for kind, count in (("DRIFTED", summary["drifted"]), ("UNMATCHED", summary["unmatched"])):
        if count:
            DRIFTS.labels(kind).inc(count)
    level = logging.WARNING if summary["drifted"] or summary["unmatched"] else logging.INFO
    log.log(level, "reconciliation %s %s %s: %s", partner_id, environment, day, summary)


@dramatiq.actor(queue_name="maintenance", time_limit=5 * 60 * 1000)
async def reconcile_yesterday() -> None:
    """The daily job: one `reconcile_day` per partner-environment active yesterday (UTC)."""
    day = datetime.now(UTC).date() - timedelta(days=1)
    async with runtime.database().connect() as conn:
        scopes = await reconciliation.scopes_to_reconcile(conn, day)
    for scope in scopes:
        reconcile_day.send(scope.partner_id, scope.environment, day.isoformat())


TICKS = [
    Tick(
        "pick_up_orders",
        float(os.environ.get("SIR_ORDER_PICKUP_SECONDS", "5")),
        pick_up_orders.send,
    ),
    # Hourly, not daily: a missed run (scheduler down at midnight) is made up within the hour,
    # and re-running a day stores nothing twice.
    Tick(
        "reconcile_yesterday",
        float(os.environ.get("SIR_RECONCILE_SECONDS", "3600")),
        reconcile_yesterday.send,
    ),
]
