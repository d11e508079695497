"""The outbox relay on real PostgreSQL: committed events become one delivery per matching
endpoint, exactly once, even with relays running concurrently."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from engine.ids import new_id
from engine.outbox import Event, record_events
from engine.relay import outbox_lag_seconds, relay_pending
from engine.scope import Scope
from engine.tables import webhook_endpoints


async def _endpoint(db, box, scope: Scope, *, types=(), receive_all=False, active=True) -> str:
    endpoint_id = new_id()
    async with db.begin() as conn:
        await conn.execute(
            webhook_endpoints.insert().values(
                id=endpoint_id,
                partner_id=scope.partner_id,
                environment=scope.environment,
                url="http://127.0.0.1:9/hook",
                event_types=list(types),
                receive_all_events=receive_all,
                secret_enc=box.encrypt("whsec_" + secrets.token_hex(32)),
                is_active=active,
            )
        )
    return endpoint_id


async def _deliveries(db, scope: Scope) -> list[tuple[str, str]]:
    async with db.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT e.type, d.endpoint_id FROM webhook_deliveries d JOIN outbox_events e ON e.id = d.event_id "
                "WHERE d.partner_id = :partner_id AND d.environment = :environment ORDER BY e.type, d.endpoint_id"
            ),
            scope.params,
        )
        return [tuple(r) for r in rows]


async def _relay_all(db) -> list[str]:
    ids: list[str] = []
    while True:
        async with db.begin() as conn:
            relayed = await relay_pending(conn, limit=50)
        ids += relayed.delivery_ids
        if relayed.events == 0:
            return ids


async def test_fan_out_follows_subscriptions(db, box, make_partner):
    p = await make_partner()
    actions_only = await _endpoint(db, box, p.scope, types=["action.completed"])
    everything = await _endpoint(db, box, p.scope, receive_all=True)
    await _endpoint(db, box, p.scope, receive_all=True, active=False)  # inactive: nothing
    await _endpoint(
        db, box, Scope(p.partner_id, "production"), receive_all=True
    )  # other environment
    async with db.begin() as conn:
        await record_events(
            conn,
            p.scope,
            [
                Event("action.completed", {"n": 1}),
                Event("token_pool.low_balance", {"n": 2}),
                Event("webhook.test", {}),
            ],
        )
    await _relay_all(db)
    assert await _deliveries(db, p.scope) == sorted(
        [
            ("action.completed", actions_only),
            ("action.completed", everything),
            ("token_pool.low_balance", everything),
        ]
    )
    assert await _deliveries(db, Scope(p.partner_id, "production")) == []
    # Relayed events are not relayed again.
    await _relay_all(db)
    assert len(await _deliveries(db, p.scope)) == 3
    async with db.connect() as conn:
        assert await outbox_lag_seconds(conn, datetime.now(UTC)) == 0.0


async def test_concurrent_relays_deliver_each_event_once(db, box, make_partner):
    p = await make_partner()
    await _endpoint(db, box, p.scope, receive_all=True)
    async with db.begin() as conn:
        await record_events(
            conn, p.scope, [Event("action.completed", {"i": i}) for i in range(300)]
        )
    results = await asyncio.gather(*(_relay_all(db) for _ in range(4)))
    all_ids = [d for ids in results for d in ids]
    assert len(all_ids) == len(set(all_ids))
    assert len(await _deliveries(db, p.scope)) == 300


async def test_lag_reports_the_oldest_unrelayed_event(db, make_partner):
    p = await make_partner()
    async with db.begin() as conn:
        await record_events(conn, p.scope, [Event("action.completed", {})])
        # Seen ten seconds later, the unrelayed event is at least ten seconds old.
        lag = await outbox_lag_seconds(conn, datetime.now(UTC) + timedelta(seconds=10))
        await conn.rollback()
    assert lag >= 9.9
