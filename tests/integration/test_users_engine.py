"""Partner users on real PostgreSQL: upsert, scoping, pagination, balance figures, wallet lines."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from engine import users
from engine.accounts import pool_account, wallet
from engine.errors import NotFound, ValidationFailed
from engine.ledger import (
    EntryDraft,
    Leg,
    consume_lots,
    post_entries,
)
from engine.money import Tokens
from engine.pagination import InvalidCursor
from engine.scope import Scope
from tests.integration.test_ledger import _grant

T = Tokens.parse


async def _reverse_available(conn, scope, pool_id, user_id, amount):
    """Take `amount` back from the available balance into the pool; what lots miss becomes debt."""
    pool_acct = await pool_account(conn, scope, pool_id)
    w = await wallet(conn, scope, partner_user_id=user_id)
    await consume_lots(conn, scope, w.available_id, amount)
    draft = EntryDraft(
        "REVERSAL", (Leg(w.available_id, -amount, "REVERSAL"), Leg(pool_acct, amount, "REVERSAL"))
    )
    await post_entries(conn, scope, [draft])


# -- upsert and read ---------------------------------------------------------------------------------


async def test_upsert_creates_then_updates_only_what_was_sent(db, make_partner):
    partner = await make_partner()
    async with db.begin() as conn:
        created, was_created = await users.upsert_user(
            conn,
            partner.scope,
            "user_42",
            email="jane@example.com",
            first_name="Jane",
            metadata={"tier": "gold", "x": ""},
        )
    assert was_created
    assert created.external_user_id == "user_42" and created.email == "jane@example.com"
    assert created.metadata == {"tier": "gold"}  # "" means absent, even on create
    assert len(created.id) == 24

    async with db.begin() as conn:
        again, was_created = await users.upsert_user(
            conn, partner.scope, "user_42", last_name="Doe", metadata={"city": "Oslo"}
        )
    assert not was_created
    assert again.id == created.id
    assert (again.email, again.first_name, again.last_name) == ("jane@example.com", "Jane", "Doe")
    assert again.metadata == {"tier": "gold", "city": "Oslo"}
    assert again.updated_at >= created.updated_at


async def test_upsert_with_nothing_new_changes_nothing(db, make_partner):
    partner = await make_partner()
    async with db.begin() as conn:
        first, _ = await users.upsert_user(conn, partner.scope, "same", email="a@b.co")
    async with db.begin() as conn:
        second, created = await users.upsert_user(conn, partner.scope, "same", email="a@b.co")
    assert not created and second == first


async def test_concurrent_upserts_of_one_new_user_create_it_once(db, make_partner):
    partner = await make_partner()

    async def upsert(i):
        async with db.begin() as conn:
            return await users.upsert_user(conn, partner.scope, "racer", metadata={f"k{i}": "v"})

    results = await asyncio.gather(*(upsert(i) for i in range(8)))
    assert sum(created for _, created in results) == 1
    assert len({user.id for user, _ in results}) == 1
    async with db.connect() as conn:
        final = await users.get_user(conn, partner.scope, "racer")
    # The row lock serialises the merges: no update is lost.
    assert final.metadata == {f"k{i}": "v" for i in range(8)}


async def test_update_merges_metadata_and_clears_fields(db, make_partner):
    partner = await make_partner()
    async with db.begin() as conn:
        await users.upsert_user(
            conn, partner.scope, "u", email="u@x.io", first_name="U", metadata={"a": "1", "b": "2"}
        )
        updated = await users.update_user(
            conn, partner.scope, "u", email=None, metadata={"a": None, "b": "", "c": "3"}
        )
        assert updated.email is None and updated.first_name == "U"
        assert updated.metadata == {"c": "3"}
        cleared = await users.update_user(conn, partner.scope, "u", metadata=None)
        assert cleared.metadata == {}


async def test_validation_names_every_bad_field(db, make_partner):
    partner = await make_partner()
    async with db.begin() as conn:
        with pytest.raises(ValidationFailed) as caught:
            await users.upsert_user(
                conn,
                partner.scope,
                "x" * 256,
                email="not-an-email",
                metadata={"k" * 41: "v", "long": "v" * 501},
            )
    fields = caught.value.fields
    assert set(fields) == {"externalUserId", "email", "metadata"}
    assert len(fields["metadata"]) == 2


async def test_metadata_may_not_pass_fifty_keys_after_merge(db, make_partner):
    partner = await make_partner()
    async with db.begin() as conn:
        await users.upsert_user(
            conn, partner.scope, "m", metadata={f"k{i}": "v" for i in range(50)}
        )
        with pytest.raises(ValidationFailed, match="Validation failed") as caught:
            await users.update_user(conn, partner.scope, "m", metadata={"one_more": "v"})
        assert "metadata" in caught.value.fields
        # Removing one while adding one stays within the limit.
        ok = await users.update_user(
            conn, partner.scope, "m", metadata={"k0": None, "one_more": "v"}
        )
        assert len(ok.metadata) == 50


# -- scoping -------------------------------------------------------------------------------------------


async def test_other_partner_and_other_environment_see_nothing(db, make_partner):
    mine = await make_partner()
    theirs = await make_partner()
    async with db.begin() as conn:
        await users.upsert_user(conn, mine.scope, "shared_id", email="mine@example.com")
    production = Scope(mine.partner_id, "production")
    async with db.begin() as conn:
        for scope in (theirs.scope, production):
            with pytest.raises(NotFound):
                await users.get_user(conn, scope, "shared_id")
            with pytest.raises(NotFound):
                await users.update_user(conn, scope, "shared_id", first_name="Mallory")
            with pytest.raises(NotFound):
                await users.get_balance(conn, scope, "shared_id")
            with pytest.raises(NotFound):
                await users.list_transactions(conn, scope, "shared_id")
            listed, _ = await users.list_users(conn, scope)
            assert listed == []
        # The same external id in another scope is another user.
        theirs_user, created = await users.upsert_user(conn, theirs.scope, "shared_id")
        assert created
        assert (await users.get_user(conn, mine.scope, "shared_id")).first_name is None
        assert (await users.get_user(conn, mine.scope, "shared_id")).id != theirs_user.id


# -- pagination ------------------------------------------------------------------------------------------


async def test_list_pages_newest_first_with_cursor(db, make_partner):
    partner = await make_partner()
    for i in range(5):
        # One transaction each, so created_at (the transaction's start) differs.
        async with db.begin() as conn:
            await users.upsert_user(conn, partner.scope, f"p{i}", email=f"P{i % 2}@example.com")
    async with db.connect() as conn:
        seen = []
        cursor = None
        while True:
            page, cursor = await users.list_users(conn, partner.scope, limit="2", cursor=cursor)
            seen.extend(u.external_user_id for u in page)
            assert len(page) <= 2
            if cursor is None:
                break
        assert seen == ["p4", "p3", "p2", "p1", "p0"]

        # email matches case-insensitively
        page, cursor = await users.list_users(
            conn, partner.scope, email="p0@EXAMPLE.com", limit="1"
        )
        assert [u.external_user_id for u in page] == ["p4"]
        assert cursor is not None
        rest, _ = await users.list_users(
            conn, partner.scope, email="p0@example.com", limit="5", cursor=cursor
        )
        assert [u.external_user_id for u in rest] == ["p2", "p0"]

        with pytest.raises(InvalidCursor):
            await users.list_users(conn, partner.scope, email="p1@example.com", cursor=cursor)
        with pytest.raises(InvalidCursor):
            await users.list_users(conn, partner.scope, cursor="garbage!")
        for bad in ("0", "201", "abc"):
            with pytest.raises(ValidationFailed):
                await users.list_users(conn, partner.scope, limit=bad)


async def test_time_filters_from_inclusive_to_exclusive(db, make_partner):
    partner = await make_partner()
    async with db.begin() as conn:
        user, _ = await users.upsert_user(conn, partner.scope, "timed")
    async with db.connect() as conn:
        found, _ = await users.list_users(conn, partner.scope, created_from=user.created_at)
        assert [u.id for u in found] == [user.id]
        found, _ = await users.list_users(conn, partner.scope, created_to=user.created_at)
        assert found == []


# -- balance and wallet lines ----------------------------------------------------------------------------


async def test_balance_of_a_user_never_credited_is_zero(db, make_partner):
    partner = await make_partner()
    async with db.begin() as conn:
        await users.upsert_user(conn, partner.scope, "new")
        balance = await users.get_balance(conn, partner.scope, "new")
        lines, cursor = await users.list_transactions(conn, partner.scope, "new")
    assert balance.total == balance.available == balance.locked == Tokens.zero()
    assert balance.next_vesting is None and balance.expiring_soon == ()
    assert lines == [] and cursor is None


async def test_balance_figures_from_wallets_lots_and_postings(db, make_partner):
    partner = await make_partner(funding="1000")
    scope = partner.scope
    now = datetime.now(UTC)
    vests = now + timedelta(days=7)
    soon = now + timedelta(days=10)
    later = now + timedelta(days=90)
    async with db.begin() as conn:
        user, _ = await users.upsert_user(conn, scope, "earner")
    # 10 locked until `vests`; 4 + 6 available expiring `soon` (one group); 3 expiring `later`.
    # One transaction each: lines in one transaction share created_at and would tie.
    grants = [
        (T("10"), {"vests_at": vests, "expires_at": later}),
        (T("4"), {"expires_at": soon}),
        (T("6"), {"expires_at": soon}),
        (T("3"), {"expires_at": later}),
    ]
    for amount, dates in grants:
        async with db.begin() as conn:
            await _grant(conn, scope, partner.pool_id, user.id, amount, **dates)
    async with db.connect() as conn:
        before = await users.get_balance(conn, scope, "earner", now=now)
    assert before.available == T("13") and before.locked == T("10") and before.total == T("23")
    assert before.lifetime_earned == T("23")
    assert before.next_vesting == users.Vesting(T("10"), vests)
    assert before.expiring_soon == (users.Expiring(T("10"), soon),)

    async with db.begin() as conn:
        # Reverse more than is available: 13 from lots, 2.5 becomes debt.
        await _reverse_available(conn, scope, partner.pool_id, user.id, T("15.5"))
        after = await users.get_balance(conn, scope, "earner", now=now)
    assert after.available == T("-2.5")
    assert after.locked == T("10")
    assert after.total == T("7.5")
    assert after.lifetime_earned == T("23")
    assert after.lifetime_reversed == T("15.5")
    assert after.lifetime_redeemed == after.lifetime_expired == Tokens.zero()
    assert (
        after.total
        == after.lifetime_earned
        - after.lifetime_redeemed
        - after.lifetime_expired
        - after.lifetime_reversed
    )
    assert after.expiring_soon == ()  # the reversal consumed the expiring lots first
    assert after.next_vesting == users.Vesting(T("10"), vests)

    async with db.connect() as conn:
        lines, cursor = await users.list_transactions(conn, scope, "earner")
        assert cursor is None
        assert [(t.type, t.amount) for t in lines] == [
            ("REVERSAL", T("-15.5")),
            ("CREDIT", T("3")),
            ("CREDIT", T("6")),
            ("CREDIT", T("4")),
            ("CREDIT", T("10")),
        ]
        assert sum((t.amount for t in lines), Tokens.zero()) == after.total
        first_credit = lines[-1]
        assert first_credit.wallet == "LOCKED" and first_credit.vests_at == vests
        assert first_credit.expires_at == later
        assert lines[1].wallet == "AVAILABLE" and lines[1].expires_at == later
        assert all(t.pool_id == partner.pool_id and t.external_user_id == "earner" for t in lines)

        page, cursor = await users.list_transactions(conn, scope, "earner", limit="2")
        assert [t.type for t in page] == ["REVERSAL", "CREDIT"] and cursor
        page2, cursor2 = await users.list_transactions(
            conn, scope, "earner", limit="2", cursor=cursor
        )
        assert [t.id for t in page2] == [lines[2].id, lines[3].id] and cursor2
        with pytest.raises(InvalidCursor):
            await users.list_transactions(
                conn, scope, "earner", limit="2", cursor=cursor, posting_type="CREDIT"
            )

        credits, _ = await users.list_transactions(conn, scope, "earner", posting_type="CREDIT")
        assert len(credits) == 4
        with pytest.raises(ValidationFailed):
            await users.list_transactions(conn, scope, "earner", posting_type="BOGUS")
