"""The outbox: events recorded in the same transaction as the change that caused them.

A relay (workers) hands committed rows to Dramatiq, so no committed change loses its event even
when Redis is down at commit time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ARRAY, Text, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.ids import new_event_id
from engine.scope import Scope
from engine.wire import dumps

EVENT_TYPES = frozenset(
    {
        "action.completed",
        "action.failed",
        "action.reversed",
        "transaction.completed",
        "tokens.vested",
        "tokens.expired",
        "token_pool.low_balance",
        "token_pool.refilled",
        "token_pool.exhausted",
        "campaign.status_changed",
        "campaign.budget_exhausted",
        "partner.status_changed",
        "api_key.expiring",
        "api_key.revoked",
        "donation.completed",
        "order.created",
        "order.processing",
        "order.delivered",
        "order.partially_delivered",
        "order.cancelled",
        "order.refunded",
        "voucher.issued",
        "reconciliation.drift_detected",
        "webhook.test",
    }
)


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    data: dict[str, Any]

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.type}")


_INSERT = text(
    "INSERT INTO outbox_events (id, partner_id, environment, type, payload) "
    "SELECT unnest(:ids), :partner_id, :environment, unnest(:types), "
    "CAST(unnest(:payloads) AS jsonb) RETURNING id"
).bindparams(
    bindparam("ids", type_=ARRAY(Text)),
    bindparam("types", type_=ARRAY(Text)),
    bindparam("payloads", type_=ARRAY(Text)),
)


async def record_events(conn: AsyncConnection, scope: Scope, events: Sequence[Event]) -> list[str]:
    """Record events in the caller's transaction; returns their `evt_` ids."""
    if not events:
        return []
    ids = [new_event_id() for _ in events]
    await conn.execute(
        _INSERT,
        {
            **scope.params,
            "ids": ids,
            "types": [e.type for e in events],
            "payloads": [dumps(e.data) for e in events],
        },
    )
    return ids
