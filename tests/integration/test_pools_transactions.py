"""Pools and ledger lines as the partner sees them, on real PostgreSQL: pool figures, listing,
top-up requests, and `GET /transactions`' lines (sign, filters, scoping, pagination)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest

from engine import pools, topups, transactions
from engine.accounts import pool_account, singleton_account, wallet
from engine.errors import NotFound, ValidationFailed
from engine.ids import new_id
from engine.ledger import EntryDraft, Leg, LotCredit, consume_lots, open_lots, post_entries
from engine.money import Tokens
from engine.pagination import InvalidCursor, read_page
from engine.scope import Scope
from engine.tables import actions, organizations
from engine.transactions import Filters
from tests.integration.test_ledger import _user

T = Tokens.parse


async def _organization(conn):
    org_id = new_id()
    slug = f"org-{secrets.token_hex(4)}"
    await conn.execute(organizations.insert().values(id=org_id, slug=slug, name="Charity"))
    return org_id, slug


async def _action(conn, scope, pool_id):
    action_id = new_id()
    await conn.execute(
        actions.insert().values(
            id=action_id,
            partner_id=scope.partner_id,
            environment=scope.environment,
            idempotency_key=action_id,
            request_hash=b"x",
            action_type="PURCHASE",
            amount=1,
            pool_id=pool_id,
            response={},
        )
    )
    return action_id


async def _distribute(conn, scope, pool_id, action_id, credits, *, vests_at=None, expires_at=None):
    """One DISTRIBUTION entry: the pool pays every (wallet, amount) in `credits`."""
    pool_acct = await pool_account(conn, scope, pool_id)
    total = sum((amount for _, amount in credits), Tokens(0))
    locked = vests_at is not None
    targets = [(w.locked_id if locked else w.available_id, amount) for w, amount in credits]
    draft = EntryDraft(
        "DISTRIBUTION",
        (Leg(pool_acct, -total, "DEBIT"), *(Leg(t, a, "CREDIT") for t, a in targets)),
        action_id=action_id,
    )
    (entry,), balances = await post_entries(conn, scope, [draft])
    await open_lots(
        conn,
        scope,
        [
            LotCredit(t, posting_id, a, action_id, vests_at, expires_at, locked)
            for (t, a), posting_id in zip(targets, entry.posting_ids[1:], strict=True)
        ],
        balances,
    )
    return entry


async def _reverse(conn, scope, pool_id, action_id, w, amount):
    """Take `amount` back into the pool the way the engine does: lots first, the rest is debt."""
    pool_acct = await pool_account(conn, scope, pool_id)
    await consume_lots(conn, scope, w.available_id, amount)
    draft = EntryDraft(
        "REVERSAL",
        (Leg(w.available_id, -amount, "REVERSAL"), Leg(pool_acct, amount, "REVERSAL")),
        action_id=action_id,
    )
    await post_entries(conn, scope, [draft])


async def _lines(db, scope, filters=Filters(), limit=None, cursor=None):
    async with db.connect() as conn:
        return await transactions.list_lines(conn, scope, filters, limit=limit, cursor=cursor)


# -- pools ---------------------------------------------------------------------------------------------


async def test_pool_figures_after_allocation_distribution_reversal_and_refill(db, make_partner):
    partner = await make_partner(funding="100")
    scope = partner.scope
    async with db.begin() as conn:
        user_id = await _user(conn, scope, "user_1")
        w = await wallet(conn, scope, partner_user_id=user_id)
        action_id = await _action(conn, scope, partner.pool_id)
        await _distribute(conn, scope, partner.pool_id, action_id, [(w, T("30"))])
        await _reverse(conn, scope, partner.pool_id, action_id, w, T("5"))
        await pools.fund_reserve(conn, scope, actor="test", amount=T("50"))
        reserve = await singleton_account(conn, scope, "RESERVE")
        pool_acct = await pool_account(conn, scope, partner.pool_id)
        await post_entries(
            conn,
            scope,
            [
                EntryDraft(
                    "REFILL", (Leg(reserve, T("-20"), "REFILL"), Leg(pool_acct, T("20"), "REFILL"))
                )
            ],
        )
        view = await pools.pool_view(conn, scope, partner.pool_id)
    assert view["balance"] == T("95")  # 100 - 30 + 5 + 20
    assert view["allocated_total"] == T("120")  # allocation 100 + refill 20
    assert view["distributed_total"] == T("25")  # -(DEBIT -30) - (REVERSAL +5)
    assert view["reserve_balance"] == T("30")


async def test_pool_list_is_scoped_and_paginated(db, make_partner):
    partner = await make_partner()
    other = await make_partner()
    async with db.begin() as conn:
        second = await pools.create_pool(conn, partner.scope, actor="test", name="second")
        await pools.create_pool(conn, Scope(partner.partner_id, "production"), actor="t", name="p")
    async with db.connect() as conn:
        first_page, cursor = await pools.list_pool_views(
            conn, partner.scope, read_page("1", None, {})
        )
        second_page, last = await pools.list_pool_views(
            conn, partner.scope, read_page("1", cursor, {})
        )
        with pytest.raises(ValidationFailed):
            await pools.list_pool_views(conn, partner.scope, read_page(None, None, {}), status="X")
        with pytest.raises(NotFound):
            await pools.pool_view(conn, other.scope, partner.pool_id)
    assert [v["id"] for v in first_page + second_page] == [second["id"], partner.pool_id]
    assert last is None
    assert first_page[0]["is_default"] is False and second_page[0]["is_default"] is True


async def test_topup_request_in_scope_only(db, make_partner):
    partner = await make_partner()
    other = await make_partner()
    async with db.begin() as conn:
        row = await topups.request_topup(conn, partner.scope, partner.pool_id, T("12.5"), " why ")
    assert row["status"] == "PENDING" and row["amount"] == T("12.5").micro
    assert row["reason"] == "why"
    async with db.begin() as conn:
        with pytest.raises(NotFound):
            await topups.request_topup(conn, other.scope, partner.pool_id, T("1"), None)
    async with db.begin() as conn:
        with pytest.raises(ValidationFailed):
            await topups.request_topup(conn, partner.scope, partner.pool_id, T("0"), None)


# -- transactions ------------------------------------------------------------------------------------


async def test_lines_show_pools_and_wallets_signed_from_their_side(db, make_partner):
    partner = await make_partner(funding="100", vesting_days=7, expiration_days=30)
    scope = partner.scope
    vests_at = datetime(2027, 1, 8, tzinfo=UTC)
    expires_at = datetime(2027, 1, 31, tzinfo=UTC)
    async with db.begin() as conn:
        user_id = await _user(conn, scope, "user_1")
        org_id, slug = await _organization(conn)
        user_wallet = await wallet(conn, scope, partner_user_id=user_id)
        org_wallet = await wallet(conn, scope, organization_id=org_id)
        action_id = await _action(conn, scope, partner.pool_id)
        await _distribute(
            conn,
            scope,
            partner.pool_id,
            action_id,
            [(user_wallet, T("7")), (org_wallet, T("3"))],
            vests_at=vests_at,
            expires_at=expires_at,
        )
        # Reserve funding is internal: it touches no pool and no wallet.
        await pools.fund_reserve(conn, scope, actor="test", amount=T("50"))
    lines, cursor = await _lines(db, scope)
    assert cursor is None
    by_type: dict[str, list[dict]] = {}
    for line in lines:
        by_type.setdefault(line["type"], []).append(line)
    assert set(by_type) == {"ALLOCATION", "DEBIT", "CREDIT"}
    (allocation,) = by_type["ALLOCATION"]
    assert allocation["amount"] == T("100") and allocation["poolId"] == partner.pool_id
    assert allocation["externalUserId"] is None and allocation["wallet"] is None
    (debit,) = by_type["DEBIT"]
    assert debit["amount"] == T("-10") and debit["actionId"] == action_id
    credits = {(c["externalUserId"], c["organizationSlug"]): c for c in by_type["CREDIT"]}
    user_credit = credits[("user_1", None)]
    org_credit = credits[(None, slug)]
    assert user_credit["amount"] == T("7") and org_credit["amount"] == T("3")
    assert user_credit["poolId"] == partner.pool_id and user_credit["actionId"] == action_id
    assert user_credit["wallet"] == "LOCKED"
    assert user_credit["vestsAt"] == vests_at and user_credit["expiresAt"] == expires_at
    # Newest first.
    assert lines[-1]["type"] == "ALLOCATION"


async def test_filters_and_scoping(db, make_partner):
    partner = await make_partner(funding="100")
    other = await make_partner(funding="100")
    scope = partner.scope
    async with db.begin() as conn:
        alice = await wallet(conn, scope, partner_user_id=await _user(conn, scope, "alice"))
        bob = await wallet(conn, scope, partner_user_id=await _user(conn, scope, "bob"))
        first = await _action(conn, scope, partner.pool_id)
        second = await _action(conn, scope, partner.pool_id)
        await _distribute(conn, scope, partner.pool_id, first, [(alice, T("1"))])
        await _distribute(conn, scope, partner.pool_id, second, [(bob, T("2"))])
        await _reverse(conn, scope, partner.pool_id, second, bob, T("0.5"))

    alice_lines, _ = await _lines(db, scope, Filters(external_user_id="alice"))
    assert [(x["type"], x["amount"]) for x in alice_lines] == [("CREDIT", T("1"))]
    action_lines, _ = await _lines(db, scope, Filters(action_id=second))
    assert sorted((x["type"], x["amount"].micro) for x in action_lines) == sorted(
        [
            ("DEBIT", -2_000_000),
            ("CREDIT", 2_000_000),
            ("REVERSAL", -500_000),
            ("REVERSAL", 500_000),
        ]
    )
    reversal_lines, _ = await _lines(db, scope, Filters(type="REVERSAL", external_user_id="bob"))
    assert [x["amount"] for x in reversal_lines] == [T("-0.5")]
    assert (await _lines(db, scope, Filters(external_user_id="nobody")))[0] == []
    # Another partner, or this partner's other environment, sees none of it.
    assert (await _lines(db, other.scope, Filters(action_id=second)))[0] == []
    production = Scope(partner.partner_id, "production")
    assert (await _lines(db, production))[0] == []

    now = datetime.now(UTC)
    assert len((await _lines(db, scope, Filters(created_from=now - timedelta(hours=1))))[0]) == 7
    assert (await _lines(db, scope, Filters(created_to=now - timedelta(hours=1))))[0] == []
    with pytest.raises(ValidationFailed) as caught:
        await _lines(db, scope, Filters(type="GIFT", created_from=now, created_to=now))
    assert set(caught.value.fields) == {"type", "to"}


async def test_lines_paginate_without_gaps_and_cursor_carries_filters(db, make_partner):
    partner = await make_partner(funding="100")
    scope = partner.scope
    async with db.begin() as conn:
        w = await wallet(conn, scope, partner_user_id=await _user(conn, scope, "u"))
        for _ in range(6):  # each in the same transaction: equal created_at, ids break ties
            await _distribute(conn, scope, partner.pool_id, None, [(w, T("1"))])
    everything, _ = await _lines(db, scope, limit="200")
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await _lines(db, scope, limit="4", cursor=cursor)
        seen += [x["id"] for x in page]
        if cursor is None:
            break
    assert seen == [x["id"] for x in everything] and len(seen) == 13
    _, cursor = await _lines(db, scope, limit="4")
    with pytest.raises(InvalidCursor):
        await _lines(db, scope, Filters(type="CREDIT"), limit="4", cursor=cursor)
    with pytest.raises(ValidationFailed):
        await _lines(db, scope, limit="201")


def test_parse_time():
    assert transactions.parse_time("from", None) is None
    assert transactions.parse_time("from", "2026-11-20T10:00:00Z") == datetime(
        2026, 11, 20, 10, tzinfo=UTC
    )
    # An unencoded "+" arrives as a space.
    assert transactions.parse_time("from", "2026-11-20T11:00:00 01:00") == datetime(
        2026, 11, 20, 10, tzinfo=UTC
    )
    for bad in ("yesterday", "2026-11-20T10:00:00", "2026-13-01T00:00:00Z"):
        with pytest.raises(ValidationFailed) as caught:
            transactions.parse_time("from", bad)
        assert caught.value.fields == {"from": ["must be an RFC 3339 time with an offset"]}
