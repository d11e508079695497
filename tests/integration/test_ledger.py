"""The ledger on real PostgreSQL: balanced posting, database-enforced invariants, conditional
debit under concurrency, lots with vesting, expiry and debt."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from engine.accounts import pool_account, singleton_account, wallet
from engine.errors import LedgerImbalance
from engine.ids import new_id
from engine.ledger import (
    EntryDraft,
    Leg,
    LotCredit,
    consume_lots,
    debit_if_covered,
    open_lots,
    post_entries,
)
from engine.money import Tokens
from engine.pools import pool_balance
from engine.tables import ledger_accounts, lots, partner_users
from engine.verify import verify_ledger

T = Tokens.parse


async def _user(conn, scope, external="u1"):
    user_id = new_id()
    await conn.execute(
        partner_users.insert().values(
            id=user_id,
            partner_id=scope.partner_id,
            environment=scope.environment,
            external_user_id=external,
        )
    )
    return user_id


async def _grant(conn, scope, pool_id, user_id, amount, *, vests_at=None, expires_at=None):
    """Move `amount` from the pool to the user's wallet the way distribution does."""
    pool_acct = await pool_account(conn, scope, pool_id)
    w = await wallet(conn, scope, partner_user_id=user_id)
    locked = vests_at is not None
    target = w.locked_id if locked else w.available_id
    assert await debit_if_covered(conn, scope, pool_acct, amount) is not None
    draft = EntryDraft(
        "DISTRIBUTION", (Leg(pool_acct, -amount, "DEBIT"), Leg(target, amount, "CREDIT"))
    )
    (entry,), balances = await post_entries(
        conn, scope, [draft], already_applied={pool_acct: -amount.micro}
    )
    await open_lots(
        conn,
        scope,
        [LotCredit(target, entry.posting_ids[1], amount, None, vests_at, expires_at, locked)],
        balances,
    )
    return w


async def test_allocation_moves_issuance_into_pool(db, make_partner):
    partner = await make_partner(funding="250.5")
    async with db.connect() as conn:
        assert await pool_balance(conn, partner.scope, partner.pool_id) == T("250.5")
        issuance = await singleton_account(conn, partner.scope, "ISSUANCE")
        balance = (
            await conn.execute(
                select(ledger_accounts.c.balance).where(ledger_accounts.c.id == issuance)
            )
        ).scalar_one()
        assert balance == -T("250.5").micro
        report = await verify_ledger(conn, partner.scope)
    assert report.ok, report.render()
    assert report.entries_checked == 1 and report.postings_checked == 2


async def test_engine_refuses_unbalanced_entry_and_writes_nothing(db, make_partner):
    partner = await make_partner()
    async with db.connect() as conn:
        pool_acct = await pool_account(conn, partner.scope, partner.pool_id)
        issuance = await singleton_account(conn, partner.scope, "ISSUANCE")
        draft = EntryDraft(
            "CORRECTION",
            (Leg(issuance, T("-1"), "ALLOCATION"), Leg(pool_acct, T("2"), "ALLOCATION")),
        )
        with pytest.raises(LedgerImbalance):
            await post_entries(conn, partner.scope, [draft])
        count = (
            await conn.execute(
                text("SELECT count(*) FROM journal_entries WHERE id = :id"), {"id": draft.entry_id}
            )
        ).scalar_one()
        assert count == 0


async def test_database_refuses_unbalanced_postings_written_around_the_engine(db, make_partner):
    partner = await make_partner()
    async with db.connect() as conn:
        pool_acct = await pool_account(conn, partner.scope, partner.pool_id)
        entry_id = new_id()
        params = {**partner.scope.params, "e": entry_id, "a": pool_acct}
        await conn.execute(
            text(
                "INSERT INTO journal_entries (id, partner_id, environment, kind) VALUES (:e, :partner_id, :environment, 'CORRECTION')"
            ),
            params,
        )
        with pytest.raises(DBAPIError, match="does not balance"):
            await conn.execute(
                text(
                    "INSERT INTO postings (id, partner_id, environment, entry_id, account_id, amount, type) "
                    "VALUES (:p, :partner_id, :environment, :e, :a, 1000000, 'ALLOCATION')"
                ),
                {**params, "p": new_id()},
            )
        await conn.rollback()


async def test_postings_are_append_only(db, make_partner):
    partner = await make_partner()
    async with db.connect() as conn:
        with pytest.raises(DBAPIError, match="append-only"):
            await conn.execute(
                text("UPDATE postings SET amount = amount * 2 WHERE partner_id = :partner_id"),
                partner.scope.params,
            )
        await conn.rollback()
        with pytest.raises(DBAPIError, match="append-only"):
            await conn.execute(
                text("DELETE FROM journal_entries WHERE partner_id = :partner_id"),
                partner.scope.params,
            )
        await conn.rollback()


async def test_posting_to_another_partners_account_is_refused(db, make_partner):
    mine = await make_partner()
    theirs = await make_partner()
    async with db.connect() as conn:
        their_pool = await pool_account(conn, theirs.scope, theirs.pool_id)
        my_issuance = await singleton_account(conn, mine.scope, "ISSUANCE")
        draft = EntryDraft(
            "ALLOCATION",
            (Leg(my_issuance, T("-1"), "ALLOCATION"), Leg(their_pool, T("1"), "ALLOCATION")),
        )
        with pytest.raises(IntegrityError, match="fk_postings_account_scoped"):
            await post_entries(conn, mine.scope, [draft])
        await conn.rollback()


async def test_pool_can_never_go_negative_in_the_database(db, make_partner):
    partner = await make_partner(funding="1")
    async with db.connect() as conn:
        with pytest.raises(IntegrityError, match="balance_sign"):
            await conn.execute(
                text("UPDATE ledger_accounts SET balance = -1 WHERE pool_id = :p"),
                {"p": partner.pool_id},
            )
        await conn.rollback()


async def test_conditional_debit_refuses_without_exception(db, make_partner):
    partner = await make_partner(funding="10")
    async with db.begin() as conn:
        pool_acct = await pool_account(conn, partner.scope, partner.pool_id)
        assert await debit_if_covered(conn, partner.scope, pool_acct, T("10.000001")) is None
        assert await debit_if_covered(conn, partner.scope, pool_acct, T("4")) == T("6").micro
        await conn.rollback()


async def test_concurrent_grants_never_overdraw_and_conserve_tokens(db, make_partner):
    """The cosmicpython race, forty ways: 40 writers each try to grant 1 token from a pool of
    25. Exactly 25 succeed, the pool ends at 0, and the ledger still balances."""
    partner = await make_partner(funding="25")
    async with db.begin() as conn:
        users = [await _user(conn, partner.scope, f"racer-{i}") for i in range(40)]

    async def attempt(user_id):
        async with db.begin() as conn:
            pool_acct = await pool_account(conn, partner.scope, partner.pool_id)
            w = await wallet(conn, partner.scope, partner_user_id=user_id)
            if await debit_if_covered(conn, partner.scope, pool_acct, T("1")) is None:
                return False
            draft = EntryDraft(
                "DISTRIBUTION",
                (Leg(pool_acct, T("-1"), "DEBIT"), Leg(w.available_id, T("1"), "CREDIT")),
            )
            (entry,), balances = await post_entries(
                conn, partner.scope, [draft], already_applied={pool_acct: -1_000_000}
            )
            await open_lots(
                conn,
                partner.scope,
                [LotCredit(w.available_id, entry.posting_ids[1], T("1"), None, None, None, False)],
                balances,
            )
            return True

    results = await asyncio.gather(*(attempt(u) for u in users))
    assert sum(results) == 25
    async with db.connect() as conn:
        assert await pool_balance(conn, partner.scope, partner.pool_id) == T("0")
        report = await verify_ledger(conn, partner.scope)
    assert report.ok, report.render()


async def test_vesting_lot_lives_in_the_locked_account(db, make_partner):
    partner = await make_partner(funding="100")
    now = datetime.now(UTC)
    async with db.begin() as conn:
        user = await _user(conn, partner.scope)
        w = await _grant(
            conn,
            partner.scope,
            partner.pool_id,
            user,
            T("30"),
            vests_at=now + timedelta(days=7),
            expires_at=now + timedelta(days=30),
        )
        lot = (
            (await conn.execute(select(lots).where(lots.c.account_id == w.locked_id)))
            .mappings()
            .one()
        )
        assert lot["remaining"] == T("30").micro and lot["vests_at"] is not None
        report = await verify_ledger(conn, partner.scope)
    assert report.ok, report.render()


async def test_spending_takes_earliest_expiring_lots_first(db, make_partner):
    partner = await make_partner(funding="100")
    now = datetime.now(UTC)
    async with db.begin() as conn:
        user = await _user(conn, partner.scope)
        await _grant(conn, partner.scope, partner.pool_id, user, T("10"))  # never expires
        await _grant(
            conn, partner.scope, partner.pool_id, user, T("5"), expires_at=now + timedelta(days=60)
        )
        w = await _grant(
            conn, partner.scope, partner.pool_id, user, T("3"), expires_at=now + timedelta(days=10)
        )
        covered = await consume_lots(conn, partner.scope, w.available_id, T("6"))
        assert covered == T("6")
        rows = (
            await conn.execute(
                select(lots.c.amount, lots.c.remaining)
                .where(lots.c.account_id == w.available_id)
                .order_by(lots.c.id)
            )
        ).all()
        # the 3 expiring soonest went first, then 3 of the 5; the non-expiring 10 untouched
        assert [(a, r) for a, r in rows] == [
            (T("10").micro, T("10").micro),
            (T("5").micro, T("2").micro),
            (T("3").micro, 0),
        ]
        assert await consume_lots(conn, partner.scope, w.available_id, T("100")) == T("12")
        await conn.rollback()


async def test_debt_is_repaid_first_by_later_credits(db, make_partner):
    partner = await make_partner(funding="100")
    async with db.begin() as conn:
        user = await _user(conn, partner.scope)
        w = await wallet(conn, partner.scope, partner_user_id=user)
        pool_acct = await pool_account(conn, partner.scope, partner.pool_id)
        # A reversal that finds nothing to take leaves a debt of 4 on the available balance.
        reversal = EntryDraft(
            "REVERSAL",
            (Leg(w.available_id, T("-4"), "REVERSAL"), Leg(pool_acct, T("4"), "REVERSAL")),
        )
        await post_entries(conn, partner.scope, [reversal])
        await _grant(conn, partner.scope, partner.pool_id, user, T("10"))
        lot = (
            await conn.execute(
                select(lots.c.amount, lots.c.remaining).where(lots.c.account_id == w.available_id)
            )
        ).one()
        assert tuple(lot) == (T("10").micro, T("6").micro)
        report = await verify_ledger(conn, partner.scope)
        assert report.ok, report.render()
        await conn.rollback()


async def test_verify_catches_a_corrupted_balance_cache(db, make_partner):
    partner = await make_partner(funding="42")
    async with db.begin() as conn:
        await conn.execute(
            text("UPDATE ledger_accounts SET balance = balance + 7 WHERE pool_id = :p"),
            {"p": partner.pool_id},
        )
        report = await verify_ledger(conn, partner.scope)
        await conn.rollback()
    assert not report.ok
    checks = {p.check for p in report.problems}
    assert checks == {"balance-cache", "conservation"}
    assert "drift=7" in report.render()


async def test_concurrent_entries_on_shared_accounts_do_not_deadlock(db, make_partner):
    """Writers that take no lock before posting (the sweeps) still never deadlock: inserting
    postings takes KEY SHARE on each account (the foreign key), so the balance update must lock
    with FOR NO KEY UPDATE, which does not conflict with it (FOR UPDATE would)."""
    p = await make_partner(funding="1000")
    async with db.begin() as conn:
        wallets = [
            await wallet(conn, p.scope, partner_user_id=await _user(conn, p.scope, f"shared-{i}"))
            for i in range(4)
        ]
        pool_acct = await pool_account(conn, p.scope, p.pool_id)
        assert await debit_if_covered(conn, p.scope, pool_acct, T("400")) is not None
        seed = EntryDraft(
            "DISTRIBUTION",
            (
                Leg(pool_acct, T("-400"), "DEBIT"),
                *(Leg(w.available_id, T("100"), "CREDIT", posting_id=new_id()) for w in wallets),
            ),
        )
        _, balances = await post_entries(
            conn, p.scope, [seed], already_applied={pool_acct: -T("400").micro}
        )
        await open_lots(
            conn,
            p.scope,
            [
                LotCredit(leg.account_id, leg.posting_id, leg.amount, None, None, None, False)
                for leg in seed.legs[1:]
            ],
            balances,
        )

    async def shuffle(i: int) -> None:
        # Each entry moves 1 token between two of the shared wallets, in varying orders.
        a, b = wallets[i % 4], wallets[(i + 1 + i // 4) % 4]
        if a == b:
            b = wallets[(i + 2) % 4]
        async with db.begin() as conn:
            credit_id = new_id()
            draft = EntryDraft(
                "CORRECTION",
                (
                    Leg(a.available_id, T("-1"), "DEBIT"),
                    Leg(b.available_id, T("1"), "CREDIT", posting_id=credit_id),
                ),
            )
            await consume_lots(conn, p.scope, a.available_id, T("1"))
            _, balances = await post_entries(conn, p.scope, [draft])
            await open_lots(
                conn,
                p.scope,
                [LotCredit(b.available_id, credit_id, T("1"), None, None, None, False)],
                balances,
            )
            await asyncio.sleep(0.01)  # hold the locks a moment, as a longer transaction would

    await asyncio.gather(*(shuffle(i) for i in range(40)))
    async with db.connect() as conn:
        total = (
            await conn.execute(
                select(text("sum(balance)"))
                .select_from(ledger_accounts)
                .where(ledger_accounts.c.id.in_([w.available_id for w in wallets]))
            )
        ).scalar_one()
    assert total == T("400").micro
