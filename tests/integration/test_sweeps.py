"""The sweeps on real PostgreSQL, the clock moved by passing `now`: vesting to the microsecond,
expiry of exactly what remains, debt repaid by vesting, auto-refill within maxPerDay and the
reserve, low-balance alerts once per crossing, API-key expiry alerts once per threshold, and two
sweepers sharing a backlog without double-vesting or double-expiring (SKIP LOCKED).

Every test lives in a window of time of its own, decades in the past: the sweeps are global,
and past windows keep them off the rows other tests create at the real time.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.accounts import singleton_account, wallet
from engine.credentials import issue_keys, revoke_key
from engine.crypto import SecretBox
from engine.ledger import EntryDraft, Leg, consume_lots, post_entries
from engine.money import Tokens
from engine.pools import allocate, fund_reserve, pool_balance, reserve_balance
from engine.reversals import ReversalRequest, reverse_action
from engine.scope import Scope
from engine.submit import submit_action
from engine.sweeps import (
    alert_expiring_keys,
    check_low_balances,
    expire_due,
    refill_pools,
    vest_due,
)
from engine.tables import api_keys, lots, outbox_events, token_pools
from engine.users import get_balance
from engine.verify import verify_ledger
from tests.integration.test_submit import action, user

T = Tokens.parse
US = timedelta(microseconds=1)
DAY = timedelta(days=1)


def epoch(year: int) -> datetime:
    return datetime(year, 3, 1, 12, 0, tzinfo=UTC)


async def sweep(db: AsyncEngine, fn, now: datetime, limit: int = 1000) -> int:
    """Run a sweep to exhaustion as the actor does: one transaction per batch."""
    total = 0
    for _ in range(1000):
        async with db.begin() as conn:
            handled = await fn(conn, now, limit)
        if not handled:
            return total
        total += handled
    raise AssertionError("sweep did not converge")


async def events(db: AsyncEngine, scope: Scope, kind: str) -> list[dict]:
    async with db.connect() as conn:
        rows = await conn.execute(
            select(outbox_events.c.payload)
            .where(
                outbox_events.c.partner_id == scope.partner_id,
                outbox_events.c.environment == scope.environment,
                outbox_events.c.type == kind,
            )
            .order_by(outbox_events.c.created_at, outbox_events.c.id)
        )
        return [row[0] for row in rows]


async def balance(db: AsyncEngine, scope: Scope, external_id: str, now: datetime):
    async with db.connect() as conn:
        return await get_balance(conn, scope, external_id, now=now)


async def verify(db: AsyncEngine, scope: Scope | None = None) -> None:
    async with db.connect() as conn:
        report = await verify_ledger(conn, scope)
    assert report.ok, report.render()


async def user_wallet(db: AsyncEngine, scope: Scope, external_id: str):
    async with db.begin() as conn:
        user_id = (
            await conn.execute(
                text(
                    "SELECT id FROM partner_users WHERE partner_id = :partner_id "
                    "AND environment = :environment AND external_user_id = :e"
                ),
                {**scope.params, "e": external_id},
            )
        ).scalar_one()
        return await wallet(conn, scope, partner_user_id=user_id)


async def redeem(db: AsyncEngine, scope: Scope, external_id: str, amount: Tokens) -> None:
    """A partial spend as a redemption would make it: lots consumed, REDEMPTION entry posted."""
    account = (await user_wallet(db, scope, external_id)).available_id
    async with db.begin() as conn:
        assert await consume_lots(conn, scope, account, amount) == amount
        sink = await singleton_account(conn, scope, "SINK_REDEEMED")
        await post_entries(
            conn,
            scope,
            [
                EntryDraft(
                    "REDEMPTION",
                    (Leg(account, -amount, "REDEMPTION"), Leg(sink, amount, "REDEMPTION")),
                )
            ],
        )


async def give(db, scope, who: str, amount: str, at: datetime) -> dict:
    return await submit_action(db, scope, action(user(who), amount=amount), now=at)


async def lot_rows(db: AsyncEngine, scope: Scope) -> list[dict]:
    async with db.connect() as conn:
        rows = await conn.execute(
            select(lots)
            .where(lots.c.partner_id == scope.partner_id, lots.c.environment == scope.environment)
            .order_by(lots.c.id)
        )
        return [dict(row) for row in rows.mappings()]


# -- vesting --------------------------------------------------------------------------------------


async def test_vesting_unlocks_exactly_at_vests_at(db, make_partner):
    p = await make_partner(funding="100", vesting_days=7)
    t0 = epoch(1990)
    result = await give(db, p.scope, "v", "12.5", t0)
    vests_at = t0 + 7 * DAY
    assert result["distributions"][0]["vestsAt"] == "1990-03-08T12:00:00Z"

    # Given a lot vesting at vests_at, when the sweep runs one microsecond before, it stays locked
    await sweep(db, vest_due, vests_at - US)
    before = await balance(db, p.scope, "v", vests_at - US)
    assert (before.available, before.locked) == (T("0"), T("12.5"))
    assert before.next_vesting is not None and before.next_vesting.at == vests_at
    assert await events(db, p.scope, "tokens.vested") == []

    # When it runs at vests_at, the lot moves to the available account
    await sweep(db, vest_due, vests_at)
    after = await balance(db, p.scope, "v", vests_at)
    assert (after.available, after.locked, after.total) == (T("12.5"), T("0"), T("12.5"))
    assert after.next_vesting is None
    wallet_ids = await user_wallet(db, p.scope, "v")
    (lot,) = await lot_rows(db, p.scope)
    assert lot["account_id"] == wallet_ids.available_id
    assert lot["vests_at"] == vests_at and lot["vested_at"] == vests_at
    assert lot["remaining"] == T("12.5").micro
    (vested,) = await events(db, p.scope, "tokens.vested")
    assert vested["externalUserId"] == "v"
    assert Decimal(str(vested["amount"])) == Decimal("12.5")
    assert vested["lots"] == 1 and vested["debtRepaid"] == 0
    assert vested["vestedAt"] == "1990-03-08T12:00:00Z"
    assert len(vested["transactionIds"]) == 2

    # A second run finds nothing left to vest
    await sweep(db, vest_due, vests_at + DAY)
    again = await balance(db, p.scope, "v", vests_at + DAY)
    assert (again.available, again.locked) == (T("12.5"), T("0"))
    assert len(await events(db, p.scope, "tokens.vested")) == 1
    await verify(db, p.scope)


async def test_vesting_repays_a_debt_first(db, make_partner):
    p = await make_partner(funding="100", vesting_days=7)
    t0 = epoch(1992)
    # Given: 10 tokens vested and spent, then that action reversed whole -> a debt of 10
    first = await give(db, p.scope, "d", "10", t0)
    await sweep(db, vest_due, t0 + 7 * DAY)
    await redeem(db, p.scope, "d", T("10"))
    await give(db, p.scope, "d", "5", t0 + 8 * DAY)  # 5 locked, vests at t0 + 15d
    await reverse_action(db, p.scope, first["actionId"], ReversalRequest("rev-d"))
    debt = await balance(db, p.scope, "d", t0 + 8 * DAY)
    assert (debt.available, debt.locked) == (T("-10"), T("5"))
    await verify(db, p.scope)

    # When 5 tokens vest, they all go to the debt
    await sweep(db, vest_due, t0 + 15 * DAY)
    partly = await balance(db, p.scope, "d", t0 + 15 * DAY)
    assert (partly.available, partly.locked) == (T("-5"), T("0"))
    await verify(db, p.scope)

    # When 8 more vest, 5 repay the rest of the debt and 3 are spendable
    await give(db, p.scope, "d", "8", t0 + 16 * DAY)
    await sweep(db, vest_due, t0 + 23 * DAY)
    repaid = await balance(db, p.scope, "d", t0 + 23 * DAY)
    assert (repaid.available, repaid.locked) == (T("3"), T("0"))
    open_lots = [lot for lot in await lot_rows(db, p.scope) if lot["remaining"]]
    assert [lot["remaining"] for lot in open_lots] == [T("3").micro]
    vested = await events(db, p.scope, "tokens.vested")
    assert [(Decimal(str(e["amount"])), Decimal(str(e["debtRepaid"]))) for e in vested] == [
        (Decimal(10), Decimal(0)),
        (Decimal(5), Decimal(5)),
        (Decimal(8), Decimal(5)),
    ]
    await verify(db, p.scope)


# -- expiry ---------------------------------------------------------------------------------------


async def test_expiry_takes_exactly_what_remains_earliest_first(db, make_partner):
    p = await make_partner(funding="100", expiration_days=30)
    t0 = epoch(1994)
    await sweep(db, expire_due, t0)  # anything an earlier window left due
    for days, amount in ((0, "10"), (1, "20"), (2, "30")):
        await give(db, p.scope, "e", amount, t0 + days * DAY)
    # A partial spend takes the earliest-expiring lots: all of the first, 5 of the second
    await redeem(db, p.scope, "e", T("15"))
    assert [lot["remaining"] for lot in await lot_rows(db, p.scope)] == [
        0,
        T("15").micro,
        T("30").micro,
    ]

    # Not a microsecond early
    await sweep(db, expire_due, t0 + 31 * DAY - US)
    assert (await balance(db, p.scope, "e", t0 + 31 * DAY)).available == T("45")

    # One lot at a time: the earliest-expiring goes first, with exactly what remains of it
    async with db.begin() as conn:
        assert await expire_due(conn, t0 + 40 * DAY, 1) == 1
    mid = await balance(db, p.scope, "e", t0 + 40 * DAY)
    assert (mid.available, mid.lifetime_expired) == (T("30"), T("15"))
    async with db.begin() as conn:
        assert await expire_due(conn, t0 + 40 * DAY, 1) == 1
    end = await balance(db, p.scope, "e", t0 + 40 * DAY)
    assert (end.available, end.total, end.lifetime_expired) == (T("0"), T("0"), T("45"))
    assert end.lifetime_earned - end.lifetime_redeemed - end.lifetime_expired == end.total
    expired = await events(db, p.scope, "tokens.expired")
    assert [Decimal(str(e["amount"])) for e in expired] == [Decimal(15), Decimal(30)]
    assert all(e["externalUserId"] == "e" and e["lots"] == 1 for e in expired)
    assert [lot["remaining"] for lot in await lot_rows(db, p.scope)] == [0, 0, 0]
    async with db.connect() as conn:
        sink = await singleton_account(conn, p.scope, "SINK_EXPIRED")
        held = (
            await conn.execute(
                text("SELECT balance FROM ledger_accounts WHERE id = :id"), {"id": sink}
            )
        ).scalar_one()
    assert held == T("45").micro
    await verify(db, p.scope)


async def test_expiry_after_a_partial_reversal_takes_the_rest(db, make_partner):
    p = await make_partner(funding="100", expiration_days=30)
    t0 = epoch(1996)
    given = await give(db, p.scope, "r", "10", t0)
    await reverse_action(
        db, p.scope, given["actionId"], ReversalRequest("rev-r", amount=Decimal("4"))
    )
    await sweep(db, expire_due, t0 + 30 * DAY)
    after = await balance(db, p.scope, "r", t0 + 30 * DAY)
    assert (after.available, after.lifetime_reversed, after.lifetime_expired) == (
        T("0"),
        T("4"),
        T("6"),
    )
    (expired,) = await events(db, p.scope, "tokens.expired")
    assert Decimal(str(expired["amount"])) == Decimal(6)
    await verify(db, p.scope)


async def test_a_locked_lot_past_expiry_expires_from_the_locked_account(db, make_partner):
    p = await make_partner(funding="100", vesting_days=7, expiration_days=30)
    t0 = epoch(1997)
    await give(db, p.scope, "late", "9", t0)
    # The vesting sweep never ran (workers down for a month): expiry takes it from locked
    await sweep(db, expire_due, t0 + 30 * DAY)
    gone = await balance(db, p.scope, "late", t0 + 30 * DAY)
    assert (gone.available, gone.locked, gone.lifetime_expired) == (T("0"), T("0"), T("9"))
    await sweep(db, vest_due, t0 + 30 * DAY)
    assert await events(db, p.scope, "tokens.vested") == []
    await verify(db, p.scope)


# -- concurrency ----------------------------------------------------------------------------------


async def _backlog(db, make_partner, t0: datetime, users: int = 4, each: int = 6):
    # User by user, so the first half of the lots by vests_at belongs to the first half of the
    # wallets: two batches of half the lots each touch disjoint wallets.
    p = await make_partner(funding="1000", vesting_days=7, expiration_days=30)
    for u in range(users):
        for n in range(each):
            at = t0 + (u * each + n) * timedelta(minutes=1)
            await give(db, p.scope, f"c{u}", str(n + 1), at)
    return p, users * sum(range(1, each + 1))


async def test_two_sweepers_never_double_vest_or_double_expire(db, make_partner):
    t0 = epoch(1998)
    await sweep(db, vest_due, t0 + 7 * DAY - US)
    await sweep(db, expire_due, t0 + 30 * DAY - US)
    p, total = await _backlog(db, make_partner, t0)
    vest_at = t0 + 8 * DAY

    # One sweeper holds its batch uncommitted; a second one neither waits for it nor takes its
    # lots (SKIP LOCKED): it vests the other half and commits while the first is still open
    async with db.begin() as first:
        assert await vest_due(first, vest_at, 12) == 12
        second = await asyncio.wait_for(sweep(db, vest_due, vest_at, 12), timeout=20)
        assert second == 12
        halfway = await balance(db, p.scope, "c3", vest_at)
        assert (halfway.available, halfway.locked) == (T("21"), T("0"))
        assert (await balance(db, p.scope, "c0", vest_at)).locked == T("21")
    async with db.begin() as conn:
        assert await vest_due(conn, vest_at, 100) == 0

    # Two looping sweepers side by side
    async def sweeper() -> int:
        return await sweep(db, expire_due, t0 + 31 * DAY, 5)

    a, b = await asyncio.gather(sweeper(), sweeper())
    assert a + b == 24
    for u in range(4):
        figures = await balance(db, p.scope, f"c{u}", t0 + 31 * DAY)
        assert (figures.available, figures.locked, figures.lifetime_expired) == (
            T("0"),
            T("0"),
            T("21"),
        )
    vested = await events(db, p.scope, "tokens.vested")
    expired = await events(db, p.scope, "tokens.expired")
    assert sum(Decimal(str(e["amount"])) for e in vested) == total
    assert sum(Decimal(str(e["amount"])) for e in expired) == total
    assert sum(e["lots"] for e in vested) == sum(e["lots"] for e in expired) == 24
    await verify(db, p.scope)


# -- auto-refill ----------------------------------------------------------------------------------


def _refill_settings(threshold: str, amount: str, per_day: int) -> dict:
    return {
        "enabled": True,
        "thresholdMicro": T(threshold).micro,
        "amountMicro": T(amount).micro,
        "maxPerDay": per_day,
    }


async def _pool_status(db, pool_id: str) -> str:
    async with db.connect() as conn:
        return (
            await conn.execute(select(token_pools.c.status).where(token_pools.c.id == pool_id))
        ).scalar_one()


async def test_refill_respects_max_per_day_and_the_reserve(db, make_partner):
    p = await make_partner(funding="60", auto_refill=_refill_settings("100", "50", 2))
    day1 = datetime(2002, 5, 1, 10, 0, tzinfo=UTC)
    async with db.begin() as conn:
        await fund_reserve(conn, p.scope, actor="test", amount=T("120"))

    async def figures() -> tuple[Tokens, Tokens]:
        async with db.connect() as conn:
            return await pool_balance(conn, p.scope, p.pool_id), await reserve_balance(
                conn, p.scope
            )

    await sweep(db, refill_pools, day1)
    assert await figures() == (T("110"), T("70"))
    await sweep(db, refill_pools, day1 + timedelta(minutes=1))
    assert await figures() == (T("110"), T("70"))  # at/above the threshold: nothing

    await give(db, p.scope, "spender", "20", day1)
    await sweep(db, refill_pools, day1 + timedelta(hours=1))
    assert await figures() == (T("140"), T("20"))
    await give(db, p.scope, "spender", "50", day1)
    await sweep(db, refill_pools, day1 + timedelta(hours=2))
    assert await figures() == (T("90"), T("20"))  # two refills today: no third

    # The next UTC day: the reserve covers only part of `amount`
    day2 = datetime(2002, 5, 2, 0, 0, tzinfo=UTC)
    await sweep(db, refill_pools, day2)
    assert await figures() == (T("110"), T("0"))
    await give(db, p.scope, "spender", "30", day2)
    await sweep(db, refill_pools, day2 + timedelta(hours=1))
    assert await figures() == (T("80"), T("0"))  # empty reserve: nothing

    refilled = await events(db, p.scope, "token_pool.refilled")
    assert [Decimal(str(e["amount"])) for e in refilled] == [Decimal(50), Decimal(50), Decimal(20)]
    assert [e["refillsToday"] for e in refilled] == [1, 2, 1]
    assert Decimal(str(refilled[-1]["reserveBalance"])) == 0
    assert Decimal(str(refilled[-1]["balance"])) == 110
    assert refilled[0]["autoRefill"]["maxPerDay"] == 2
    async with db.connect() as conn:
        logged = (
            await conn.execute(
                text("SELECT count(*) FROM pool_refills WHERE pool_id = :p"), {"p": p.pool_id}
            )
        ).scalar_one()
    assert logged == 3
    await verify(db, p.scope)


async def test_refill_turns_an_exhausted_pool_active(db, make_partner):
    p = await make_partner(funding="10", auto_refill=_refill_settings("5", "25", 1))
    at = datetime(2003, 1, 1, tzinfo=UTC)
    await give(db, p.scope, "all", "10", at)
    assert await _pool_status(db, p.pool_id) == "EXHAUSTED"
    async with db.begin() as conn:
        await fund_reserve(conn, p.scope, actor="test", amount=T("100"))
    await sweep(db, refill_pools, at)
    assert await _pool_status(db, p.pool_id) == "ACTIVE"
    (refilled,) = await events(db, p.scope, "token_pool.refilled")
    assert refilled["status"] == "ACTIVE" and Decimal(str(refilled["balance"])) == 25
    await give(db, p.scope, "all", "1", at)  # the pool pays again
    await verify(db, p.scope)


# -- low-balance alerts ---------------------------------------------------------------------------


async def _set_threshold(db, pool_id: str, amount: str) -> None:
    async with db.begin() as conn:
        await conn.execute(
            token_pools.update()
            .where(token_pools.c.id == pool_id)
            .values(low_balance_threshold=T(amount).micro)
        )


async def test_low_balance_alerts_once_per_crossing(db, make_partner):
    p = await make_partner(funding="100", low_balance_threshold=T("50"))
    at = epoch(2004)
    # An action crosses the threshold: submit records the alert; the sweep must not repeat it
    await give(db, p.scope, "x", "60", at)
    assert len(await events(db, p.scope, "token_pool.low_balance")) == 1
    await sweep(db, check_low_balances, at)
    assert len(await events(db, p.scope, "token_pool.low_balance")) == 1

    # Topped up above the threshold: re-armed, no event
    async with db.begin() as conn:
        await allocate(conn, p.scope, actor="test", pool_id=p.pool_id, amount=T("100"))
    await sweep(db, check_low_balances, at)
    async with db.connect() as conn:
        alerted = (
            await conn.execute(
                select(token_pools.c.low_balance_alerted_at).where(token_pools.c.id == p.pool_id)
            )
        ).scalar_one()
    assert alerted is None

    # Below it without any action crossing (the operator raised the threshold): the sweep
    # alerts, once
    await _set_threshold(db, p.pool_id, "200")
    await sweep(db, check_low_balances, at)
    await sweep(db, check_low_balances, at + DAY)
    low = await events(db, p.scope, "token_pool.low_balance")
    assert len(low) == 2
    assert Decimal(str(low[1]["balance"])) == 140
    assert Decimal(str(low[1]["lowBalanceThreshold"])) == 200

    # Back above, re-armed; the next crossing by an action alerts again (submit), once
    await _set_threshold(db, p.pool_id, "50")
    await sweep(db, check_low_balances, at)
    await give(db, p.scope, "x", "100", at)
    await sweep(db, check_low_balances, at)
    assert len(await events(db, p.scope, "token_pool.low_balance")) == 3
    await verify(db, p.scope)


async def test_a_pool_created_below_its_threshold_is_alerted_by_the_sweep(db, make_partner):
    p = await make_partner(funding="10", low_balance_threshold=T("50"))
    await sweep(db, check_low_balances, epoch(2005))
    await sweep(db, check_low_balances, epoch(2005))
    (low,) = await events(db, p.scope, "token_pool.low_balance")
    assert low["poolId"] == p.pool_id and Decimal(str(low["balance"])) == 10


# -- API-key expiry alerts ------------------------------------------------------------------------


async def _key(db, box: SecretBox, partner_id: str, expires_at: datetime) -> str:
    async with db.begin() as conn:
        issued = await issue_keys(
            conn,
            box,
            actor="test",
            partner_id=partner_id,
            environment="sandbox",
            name=f"key {secrets.token_hex(2)}",
        )
        await conn.execute(
            api_keys.update().where(api_keys.c.id == issued.id).values(expires_at=expires_at)
        )
    return issued.id


async def test_key_alerts_at_14_7_and_1_days_once_each(db, make_partner, box):
    p = await make_partner()
    expires = epoch(2006)
    key_id = await _key(db, box, p.partner_id, expires)
    await sweep(db, alert_expiring_keys, expires - 14 * DAY - US)
    assert await events(db, p.scope, "api_key.expiring") == []
    for days in (14, 7, 1):
        await sweep(db, alert_expiring_keys, expires - days * DAY)
        await sweep(db, alert_expiring_keys, expires - days * DAY + timedelta(hours=1))
    await sweep(db, alert_expiring_keys, expires - US)
    await sweep(db, alert_expiring_keys, expires + DAY)
    alerts = await events(db, p.scope, "api_key.expiring")
    assert [(a["thresholdDays"], a["daysLeft"]) for a in alerts] == [(14, 14), (7, 7), (1, 1)]
    assert all(a["id"] == key_id and a["expiresAt"] == "2006-03-01T12:00:00Z" for a in alerts)
    assert set(alerts[0]) == {
        "id",
        "name",
        "environment",
        "publicKey",
        "expiresAt",
        "daysLeft",
        "thresholdDays",
    }
    async with db.connect() as conn:
        sent = (
            await conn.execute(select(api_keys.c.expiry_alerts_sent).where(api_keys.c.id == key_id))
        ).scalar_one()
    assert sorted(sent) == [1, 7, 14]


async def test_key_alerts_skip_revoked_keys_and_merge_thresholds_passed_together(
    db, make_partner, box
):
    p = await make_partner()
    expires = epoch(2007)
    late = await _key(db, box, p.partner_id, expires)
    revoked = await _key(db, box, p.partner_id, expires)
    async with db.begin() as conn:
        await revoke_key(conn, actor="test", partner_id=p.partner_id, key_id=revoked)
    # First seen with 5 days left: one event (the 7-day one); 14 counts as sent too
    await sweep(db, alert_expiring_keys, expires - 5 * DAY)
    await sweep(db, alert_expiring_keys, expires - 2 * DAY)
    (alert,) = await events(db, p.scope, "api_key.expiring")
    assert (alert["id"], alert["thresholdDays"], alert["daysLeft"]) == (late, 7, 5)
    await sweep(db, alert_expiring_keys, expires - 12 * timedelta(hours=1))
    alerts = await events(db, p.scope, "api_key.expiring")
    assert [(a["thresholdDays"], a["daysLeft"]) for a in alerts] == [(7, 5), (1, 1)]
