"""Group commit on real PostgreSQL: concurrent submissions coalesce, each keeps its own outcome,
and one poisoned action cannot fail its neighbours."""

from __future__ import annotations

import asyncio

import pytest

from engine.errors import Idempotent, InsufficientPool
from engine.group_commit import GroupCommitter
from engine.money import Tokens
from engine.pools import pool_balance
from engine.verify import verify_ledger
from tests.integration.test_submit import action, user

T = Tokens.parse


async def _settle(committer, scope, requests):
    async def one(request):
        try:
            return await committer.submit(scope, request)
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            return exc

    return await asyncio.gather(*(one(r) for r in requests))


async def _ok(db, scope):
    async with db.connect() as conn:
        report = await verify_ledger(conn, scope)
    assert report.ok, report.render()


async def test_concurrent_submissions_share_transactions(db, make_partner):
    p = await make_partner(funding="1000")
    committer = GroupCommitter(db)
    results = await _settle(
        committer, p.scope, [action(user(f"u{i % 13}"), amount="1.5") for i in range(200)]
    )
    assert all(isinstance(r, dict) for r in results), [
        r for r in results if not isinstance(r, dict)
    ][:3]
    assert len({r["actionId"] for r in results}) == 200
    # 200 submissions arriving together need far fewer transactions than 200.
    assert committer.stats.actions == 200 and committer.stats.batches <= 20
    async with db.connect() as conn:
        assert await pool_balance(conn, p.scope, p.pool_id) == T("700")
    await _ok(db, p.scope)


async def test_duplicates_and_refusals_inside_one_batch(db, make_partner):
    p = await make_partner(funding="10")
    committer = GroupCommitter(db)
    same = action(user("a"), key="twice", amount="4")
    requests = [same, same, action(user("b"), amount="4"), action(user("c"), amount="4")]
    results = await _settle(committer, p.scope, requests)
    assert isinstance(results[0], dict)
    assert (
        isinstance(results[1], Idempotent)
        and results[1].details["original"]["actionId"] == results[0]["actionId"]
    )
    assert isinstance(results[2], dict)
    assert isinstance(results[3], InsufficientPool)  # 4 + 4 of 10 taken; 4 more does not fit
    async with db.connect() as conn:
        assert await pool_balance(conn, p.scope, p.pool_id) == T("2")
    await _ok(db, p.scope)


async def test_a_poisoned_action_does_not_fail_its_neighbours(db, make_partner):
    p = await make_partner(funding="100")
    committer = GroupCommitter(db)
    # PostgreSQL's jsonb refuses \u0000: the whole batch insert fails, then each action is
    # retried alone and only the poisoned one fails.
    poisoned = action(user("x"), amount="1", metadata={"note": "nul\u0000byte"})
    requests = [action(user(f"ok{i}"), amount="1") for i in range(5)] + [poisoned]
    results = await _settle(committer, p.scope, requests)
    assert all(isinstance(r, dict) for r in results[:5])
    assert isinstance(results[5], Exception) and not isinstance(results[5], dict)
    assert committer.stats.isolated_retries >= 1
    async with db.connect() as conn:
        assert await pool_balance(conn, p.scope, p.pool_id) == T("95")
    await _ok(db, p.scope)


@pytest.mark.parametrize("count", [1, 65])
async def test_batches_are_capped(db, make_partner, count):
    p = await make_partner(funding="1000")
    committer = GroupCommitter(db, max_batch=64)
    results = await _settle(
        committer, p.scope, [action(user("u"), amount="1") for _ in range(count)]
    )
    assert all(isinstance(r, dict) for r in results)
    assert committer.stats.batches >= (count + 63) // 64
