"""`engine.batches` on real PostgreSQL: a batch is stored, distributed chunk by chunk through
`apply_actions`, and reports per-item results; refusals, replays, concurrent processors and a
processor that dies mid-chunk all leave every item applied at most once and the ledger whole."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from engine import batches
from engine.action_request import ActionRequest, StakeholderRequest, to_wire
from engine.errors import NotFound
from engine.money import Tokens
from engine.pools import pool_balance
from engine.scope import Scope
from engine.submit import submit_action
from engine.tables import action_batch_items, actions, outbox_events
from engine.verify import verify_ledger
from engine.wire import dumps, loads

T = Tokens.parse


def action(uid: str, *, key: str | None = None, amount: str = "10", **kw) -> ActionRequest:
    return ActionRequest(
        idempotency_key=key or f"b-{secrets.token_hex(6)}",
        action_type="PURCHASE",
        amount=Decimal(amount),
        currency="USD",
        stakeholders=(StakeholderRequest("CUSTOMER", partner_user_id=uid),),
        **kw,
    )


async def _create(db, scope: Scope, items, indexes=None) -> str:
    async with db.begin() as conn:
        return (await batches.create_batch(conn, scope, items, indexes=indexes))["id"]


async def _get(db, scope: Scope, batch_id: str) -> dict:
    async with db.connect() as conn:
        return await batches.get_batch(conn, scope, batch_id)


async def _verify(db, scope: Scope) -> None:
    async with db.connect() as conn:
        report = await verify_ledger(conn, scope)
    assert report.ok, report.render()


async def _rows_per_key(db, scope: Scope, keys: list[str]) -> dict[str, int]:
    async with db.connect() as conn:
        rows = await conn.execute(
            select(actions.c.idempotency_key, func.count())
            .where(actions.c.partner_id == scope.partner_id, actions.c.idempotency_key.in_(keys))
            .group_by(actions.c.idempotency_key)
        )
        return dict(rows.all())


def test_stored_form_keeps_the_fingerprint():
    request = action(
        "u1",
        amount="49.990",
        occurred_at=datetime(2026, 11, 20, 11, 0, tzinfo=UTC) + timedelta(hours=0),
        metadata={"orderId": "98765", "ratio": Decimal("1.50"), "n": 2, "nested": [1, None]},
        campaign_id=None,
        auto_create_users=False,
    )
    again = batches.request_from_payload(loads(dumps(to_wire(request))))
    assert again.fingerprint == request.fingerprint
    assert again == request


def test_later_uses_of_a_key_are_refused_up_front():
    refused = batches.duplicate_keys([(0, "a"), (1, "b"), (2, "a"), (5, "a")])
    assert set(refused) == {2, 5}
    assert refused[5].fields == {
        "idempotencyKey": ["repeats the idempotencyKey of item 0 of this batch"]
    }


async def test_process_reports_every_item(db, make_partner):
    partner = await make_partner(funding="1000")
    scope = partner.scope
    # Given: an action submitted before (its key will replay) and one whose key a batch item
    # reuses with another body.
    earlier = await submit_action(db, scope, action("u1", key="earlier", amount="5"))
    await submit_action(db, scope, action("u1", key="reused", amount="5"))
    items = [
        action("u1", key="a0", amount="10"),
        action("u2", key="a2", amount="20"),
        action("ghost", key="a3", amount="1", auto_create_users=False),  # UNKNOWN_USER
        action("u1", key="earlier", amount="5"),  # same body: a replay, COMPLETED
        action("u3", key="reused", amount="6"),  # other body: IDEMPOTENCY_KEY_REUSED
        action("u3", key="a7", amount="2000"),  # more than the pool holds
        action("u3", key="a8", amount="1.5"),
    ]
    indexes = [0, 2, 3, 4, 5, 7, 8]  # gaps: items 1 and 6 were rejected up front
    batch_id = await _create(db, scope, items, indexes)
    pending = await _get(db, scope, batch_id)
    assert (pending["status"], pending["total"], pending["succeeded"]) == ("PENDING", 7, 0)
    assert [r["status"] for r in pending["results"]] == ["PENDING"] * 7

    # When: processed in chunks of 3
    progress = await batches.process_batch(db, batch_id, chunk_size=3)

    # Then
    assert (progress.succeeded, progress.failed, progress.completed) == (4, 3, True)
    body = await _get(db, scope, batch_id)
    assert (body["status"], body["total"], body["succeeded"], body["failed"]) == (
        "COMPLETED",
        7,
        4,
        3,
    )
    assert body["completedAt"] is not None
    results = {r["index"]: r for r in body["results"]}
    assert [r["index"] for r in body["results"]] == indexes
    assert results[0]["status"] == "COMPLETED" and "error" not in results[0]
    assert results[4] == {
        "index": 4,
        "idempotencyKey": "earlier",
        "status": "COMPLETED",
        "actionId": earlier["actionId"],
    }
    codes = {i: r["error"]["code"] for i, r in results.items() if r["status"] == "FAILED"}
    assert codes == {3: "UNKNOWN_USER", 5: "IDEMPOTENCY_KEY_REUSED", 7: "INSUFFICIENT_POOL"}
    assert set(results[3]["error"]) == {"name", "code", "message", "details"}
    assert all("actionId" not in results[i] for i in codes)

    async with db.connect() as conn:
        linked = dict(
            (
                await conn.execute(
                    select(actions.c.idempotency_key, actions.c.batch_id).where(
                        actions.c.partner_id == scope.partner_id
                    )
                )
            ).all()
        )
        failed_events = [
            row[0]
            for row in await conn.execute(
                select(outbox_events.c.payload).where(
                    outbox_events.c.partner_id == scope.partner_id,
                    outbox_events.c.type == "action.failed",
                )
            )
        ]
        balance = await pool_balance(conn, scope, partner.pool_id)
    # Applied items point at their batch; the replayed action stays its submit's.
    assert linked == {
        "earlier": None,
        "reused": None,
        "a0": batch_id,
        "a2": batch_id,
        "a8": batch_id,
    }
    assert sorted((e["index"], e["error"]["code"]) for e in failed_events) == sorted(codes.items())
    assert all(e["batchId"] == batch_id for e in failed_events)
    assert {e["idempotencyKey"] for e in failed_events} == {"a3", "reused", "a7"}
    assert balance == T("1000") - T("5") - T("5") - T("10") - T("20") - T("1.5")

    # Processing again changes nothing: every item is decided.
    again = await batches.process_batch(db, batch_id)
    assert (again.succeeded, again.failed, again.completed) == (0, 0, True)
    assert await _get(db, scope, batch_id) == body
    await _verify(db, scope)


async def test_other_partner_or_environment_sees_nothing(db, make_partner):
    owner = await make_partner(funding="10")
    other = await make_partner(funding="10")
    batch_id = await _create(db, owner.scope, [action("u1", amount="1")])
    for scope in (other.scope, Scope(owner.partner_id, "production")):
        with pytest.raises(NotFound):
            await _get(db, scope, batch_id)
    with pytest.raises(NotFound):
        await batches.process_batch(db, "0" * 24)
    await batches.process_batch(db, batch_id)
    await _verify(db, owner.scope)


async def test_an_empty_batch_is_completed_at_once(db, make_partner):
    partner = await make_partner(funding="10")
    batch_id = await _create(db, partner.scope, [])
    body = await _get(db, partner.scope, batch_id)
    assert (body["status"], body["total"], body["results"]) == ("COMPLETED", 0, [])


async def test_two_processors_share_one_batch_and_apply_each_item_once(db, make_partner):
    partner = await make_partner(funding="100000")
    items = [action(f"u{i % 40}", amount="3") for i in range(300)]
    batch_id = await _create(db, partner.scope, items)

    first, second = await asyncio.gather(
        batches.process_batch(db, batch_id, chunk_size=16),
        batches.process_batch(db, batch_id, chunk_size=16),
    )

    assert first.succeeded + second.succeeded == 300
    assert first.failed == second.failed == 0
    assert first.succeeded and second.succeeded  # both took chunks (SKIP LOCKED, no waiting)
    body = await _get(db, partner.scope, batch_id)
    assert (body["status"], body["succeeded"], body["failed"]) == ("COMPLETED", 300, 0)
    keys = [r.idempotency_key for r in items]
    assert await _rows_per_key(db, partner.scope, keys) == dict.fromkeys(keys, 1)
    async with db.connect() as conn:
        assert await pool_balance(conn, partner.scope, partner.pool_id) == T("100000") - T("900")
    await _verify(db, partner.scope)


async def test_a_processor_that_dies_mid_chunk_leaves_no_half_item(db, make_partner, monkeypatch):
    partner = await make_partner(funding="1000")
    items = [action(f"u{i}", amount="1") for i in range(10)]
    keys = [r.idempotency_key for r in items]
    batch_id = await _create(db, partner.scope, items)

    # Given: a processor that dies inside its second chunk's transaction, after apply_actions
    # wrote the actions and while it marks the items.
    real_record = batches._record
    calls = 0

    async def dying(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 2:
            await real_record(*args, **kwargs)
            raise RuntimeError("worker killed")
        return await real_record(*args, **kwargs)

    monkeypatch.setattr(batches, "_record", dying)
    with pytest.raises(RuntimeError):
        await batches.process_batch(db, batch_id, chunk_size=4)

    # Then: the first chunk is whole, the second left no trace (no action, no mark, no count).
    body = await _get(db, partner.scope, batch_id)
    assert (body["status"], body["succeeded"], body["failed"]) == ("PROCESSING", 4, 0)
    assert [r["status"] for r in body["results"]] == ["COMPLETED"] * 4 + ["PENDING"] * 6
    assert await _rows_per_key(db, partner.scope, keys) == dict.fromkeys(keys[:4], 1)
    async with db.connect() as conn:
        stalled = await batches.stalled_batches(conn, older_than=timedelta(0))
    assert batch_id in stalled

    # When: another run (the resumed message) picks the rest up
    monkeypatch.setattr(batches, "_record", real_record)
    progress = await batches.process_batch(db, batch_id, chunk_size=4)

    # Then: every item exactly once
    assert (progress.succeeded, progress.completed) == (6, True)
    body = await _get(db, partner.scope, batch_id)
    assert (body["status"], body["succeeded"], body["failed"]) == ("COMPLETED", 10, 0)
    assert await _rows_per_key(db, partner.scope, keys) == dict.fromkeys(keys, 1)
    async with db.connect() as conn:
        assert await pool_balance(conn, partner.scope, partner.pool_id) == T("990")
        assert batch_id not in await batches.stalled_batches(conn, older_than=timedelta(0))
    await _verify(db, partner.scope)


async def test_a_poisoned_item_fails_alone(db, make_partner, monkeypatch):
    partner = await make_partner(funding="1000")
    items = [action(f"u{i}", amount="1") for i in range(5)]
    poisoned = items[2].idempotency_key
    batch_id = await _create(db, partner.scope, items)
    real_apply = batches.apply_actions

    async def fragile(conn, scope, requests, **kwargs):
        if any(r.idempotency_key == poisoned for r in requests):
            raise DBAPIError("SELECT 1", {}, ValueError("a bug this action trips"))
        return await real_apply(conn, scope, requests, **kwargs)

    monkeypatch.setattr(batches, "apply_actions", fragile)
    progress = await batches.process_batch(db, batch_id, chunk_size=64)

    assert (progress.succeeded, progress.failed, progress.completed) == (4, 1, True)
    body = await _get(db, partner.scope, batch_id)
    failed = [r for r in body["results"] if r["status"] == "FAILED"]
    assert [(r["index"], r["error"]["code"]) for r in failed] == [(2, "INTERNAL_ERROR")]
    assert "a bug" not in failed[0]["error"]["message"]  # internals never leak
    async with db.connect() as conn:
        marked = (
            await conn.execute(
                select(func.count()).where(
                    action_batch_items.c.batch_id == batch_id,
                    action_batch_items.c.status == "COMPLETED",
                )
            )
        ).scalar_one()
    assert marked == 4
    await _verify(db, partner.scope)
