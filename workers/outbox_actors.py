"""The outbox relay actor: committed events -> webhook deliveries -> `deliver_webhook` messages.

The front nudges it right after a commit that recorded events; the scheduler's tick runs it
every few seconds regardless, so events committed while Redis or the workers were down are
relayed once they are back.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

import dramatiq
from prometheus_client import Counter, Gauge

from engine.relay import outbox_lag_seconds, relay_pending
from workers import runtime
from workers.broker import broker
from workers.tick_metrics import mark
from workers.ticks import Tick

log = logging.getLogger("sir.workers.outbox")

MAX_BATCHES_PER_RUN = 40
RELAYED = Counter("sir_outbox_events_relayed_total", "Outbox events relayed to webhook deliveries")
LAG = Gauge(
    "sir_outbox_lag_seconds",
    "Age of the oldest event not yet relayed",
    multiprocess_mode="mostrecent",  # the last relay's figure, not another process's stale one
)


def _enqueue_delivery(delivery_id: str) -> None:
    # By name: the delivery actor lives in its own module (workers.webhook_actors).
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name="webhooks",
        actor_name="deliver_webhook",
        args=(delivery_id,),
        kwargs={},
        options={},
    )
    broker.enqueue(message)


@dramatiq.actor(queue_name="webhooks", time_limit=5 * 60 * 1000)
async def relay_outbox() -> None:
    """Relay every pending event, in batches, enqueueing each new delivery after its commit."""
    db = runtime.database()
    for _ in range(MAX_BATCHES_PER_RUN):
        async with db.begin() as conn:
            relayed = await relay_pending(conn)
        RELAYED.inc(relayed.events)
        for delivery_id in relayed.delivery_ids:
            try:
                _enqueue_delivery(delivery_id)
            except Exception as exc:  # noqa: BLE001 - the pick-up tick re-finds due deliveries
                log.warning(
                    "delivery %s not enqueued (%s); the pick-up tick will",
                    delivery_id,
                    type(exc).__name__,
                )
                break
        if relayed.events == 0:
            break
    async with db.connect() as conn:
        LAG.set(await outbox_lag_seconds(conn, datetime.now(UTC)))
    mark("outbox_relay")


TICKS = [
    Tick("outbox_relay", float(os.environ.get("SIR_OUTBOX_RELAY_SECONDS", "2")), relay_outbox.send)
]
