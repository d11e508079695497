"""The outbox relay: turn committed events into webhook deliveries.

Events are recorded in `outbox_events` in the same transaction as the change that caused them.
The relay claims unrelayed ones (`FOR UPDATE SKIP LOCKED`, so any number of workers share the
work), creates one PENDING delivery per active endpoint of the event's partner and environment
that wants its type, and marks the events relayed, all in one transaction. The caller then
enqueues the deliveries; if that enqueue is lost (Redis down), the deliveries are still PENDING
and due in the database, where the webhook pick-up tick finds them. So a Redis outage delays
an event but never loses it, and a crash before commit leaves the events unrelayed.

`webhook.test` events are not fanned out: the test endpoint creates its one delivery itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

RELAY_BATCH = 500

_RELAY_SQL = text(
    """
    WITH claimed AS (
        SELECT id, partner_id, environment, type FROM outbox_events
        WHERE relayed_at IS NULL
        ORDER BY created_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ),
    fanned AS (
        INSERT INTO webhook_deliveries (id, partner_id, environment, event_id, endpoint_id, status, next_attempt_at)
        SELECT lpad(to_hex(floor(extract(epoch FROM clock_timestamp()))::bigint), 8, '0')
                   || substr(replace(gen_random_uuid()::text, '-', ''), 1, 16),
               c.partner_id, c.environment, c.id, w.id, 'PENDING', now()
        FROM claimed c
        JOIN webhook_endpoints w
          ON w.partner_id = c.partner_id AND w.environment = c.environment AND w.is_active
         AND (w.receive_all_events OR c.type = ANY(w.event_types))
        WHERE c.type <> 'webhook.test'
        ON CONFLICT (event_id, endpoint_id) DO NOTHING
        RETURNING id
    ),
    marked AS (
        UPDATE outbox_events e SET relayed_at = now() FROM claimed c WHERE e.id = c.id RETURNING e.id
    )
    SELECT (SELECT count(*) FROM marked) AS events, (SELECT array_agg(id) FROM fanned) AS deliveries
    """
)


@dataclass(frozen=True)
class Relayed:
    events: int
    delivery_ids: list[str]


async def relay_pending(conn: AsyncConnection, *, limit: int = RELAY_BATCH) -> Relayed:
    """Relay up to `limit` events in the caller's transaction (one statement)."""
    row = (await conn.execute(_RELAY_SQL, {"limit": limit})).one()
    return Relayed(events=int(row.events), delivery_ids=list(row.deliveries or []))


async def outbox_lag_seconds(conn: AsyncConnection, now: datetime) -> float:
    """Age of the oldest event not yet relayed (0 when none): the relay's lag."""
    oldest = (
        await conn.execute(
            text("SELECT min(created_at) FROM outbox_events WHERE relayed_at IS NULL")
        )
    ).scalar_one()
    return 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
