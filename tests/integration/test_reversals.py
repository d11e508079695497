"""Reversals on real PostgreSQL: full and partial, proportional shares, own lots first, debt,
campaign spend, idempotency, and the ledger staying whole."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import text

from engine.campaigns import CampaignSpec, create_campaign
from engine.distribution import Split
from engine.errors import (
    AlreadyReversed,
    IdempotencyKeyReused,
    Idempotent,
    NotFound,
    ReversalExceedsAction,
)
from engine.money import Tokens
from engine.pools import pool_balance
from engine.reversals import ReversalRequest, reverse_action
from engine.scope import Scope
from engine.submit import submit_action
from engine.verify import verify_ledger
from tests.integration.test_submit import action, user

T = Tokens.parse


async def _wallet(db, scope: Scope, external: str) -> dict[str, int]:
    async with db.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT a.kind, a.balance FROM ledger_accounts a JOIN partner_users u ON u.id = a.partner_user_id "
                "WHERE u.partner_id = :p AND u.environment = :e AND u.external_user_id = :x"
            ),
            {"p": scope.partner_id, "e": scope.environment, "x": external},
        )
        return {kind: balance for kind, balance in rows}


async def _ok(db, scope):
    async with db.connect() as conn:
        report = await verify_ledger(conn, scope)
    assert report.ok, report.render()


async def _action_row(db, action_id):
    async with db.connect() as conn:
        return (
            await conn.execute(
                text("SELECT status, tokens_reversed FROM actions WHERE id = :id"),
                {"id": action_id},
            )
        ).one()


async def test_full_reversal_returns_everything_to_the_pool(db, make_partner):
    p = await make_partner(funding="100")
    submitted = await submit_action(db, p.scope, action(user("a"), user("b"), amount="30"))
    reversal = await reverse_action(
        db, p.scope, submitted["actionId"], ReversalRequest("rev-1", reason="refund")
    )
    assert reversal["status"] == "REVERSED" and reversal["tokensReversed"] == T("30")
    assert len(reversal["transactionIds"]) == 2
    async with db.connect() as conn:
        assert await pool_balance(conn, p.scope, p.pool_id) == T("100")
    assert await _wallet(db, p.scope, "a") == {"WALLET_AVAILABLE": 0, "WALLET_LOCKED": 0}
    assert tuple(await _action_row(db, submitted["actionId"])) == ("REVERSED", T("30").micro)
    with pytest.raises(AlreadyReversed):
        await reverse_action(db, p.scope, submitted["actionId"], ReversalRequest("rev-2"))
    await _ok(db, p.scope)


async def test_partial_reversals_are_proportional_and_the_last_takes_the_rest(db, make_partner):
    p = await make_partner(funding="100")
    # 10 tokens among three: 3.333334 / 3.333333 / 3.333333
    submitted = await submit_action(
        db, p.scope, action(user("a"), user("b"), user("c"), amount="10")
    )
    first = await reverse_action(
        db, p.scope, submitted["actionId"], ReversalRequest("r1", amount=Decimal("3"))
    )
    # floor6(10 x 3 / 10) = 3, shared by what each holds
    assert first["status"] == "PARTIALLY_REVERSED" and first["tokensReversed"] == T("3")
    assert sum(d["tokensReversed"].micro for d in first["distributions"]) == T("3").micro
    with pytest.raises(ReversalExceedsAction):
        await reverse_action(
            db, p.scope, submitted["actionId"], ReversalRequest("r2", amount=Decimal("7.01"))
        )
    last = await reverse_action(
        db, p.scope, submitted["actionId"], ReversalRequest("r3", amount=Decimal("7"))
    )
    assert last["status"] == "REVERSED" and last["tokensReversed"] == T("7")
    for who in ("a", "b", "c"):
        assert await _wallet(db, p.scope, who) == {"WALLET_AVAILABLE": 0, "WALLET_LOCKED": 0}
    await _ok(db, p.scope)


async def test_spent_tokens_leave_a_debt_repaid_by_later_credits(db, make_partner):
    p = await make_partner(funding="100")
    submitted = await submit_action(db, p.scope, action(user("spender"), amount="10"))
    async with db.begin() as conn:  # the user spends 6 of the 10 (a redemption of sorts)
        from engine.accounts import singleton_account, wallet
        from engine.ledger import EntryDraft, Leg, consume_lots, post_entries

        sink = await singleton_account(conn, p.scope, "SINK_REDEEMED")
        w = await wallet(
            conn,
            p.scope,
            partner_user_id=(
                await conn.execute(
                    text(
                        "SELECT id FROM partner_users WHERE external_user_id='spender' AND partner_id=:p"
                    ),
                    {"p": p.partner_id},
                )
            ).scalar_one(),
        )
        await consume_lots(conn, p.scope, w.available_id, T("6"))
        await post_entries(
            conn,
            p.scope,
            [
                EntryDraft(
                    "REDEMPTION",
                    (Leg(w.available_id, T("-6"), "REDEMPTION"), Leg(sink, T("6"), "REDEMPTION")),
                )
            ],
        )
    await reverse_action(db, p.scope, submitted["actionId"], ReversalRequest("undo"))
    assert (await _wallet(db, p.scope, "spender"))["WALLET_AVAILABLE"] == -T("6").micro
    await _ok(db, p.scope)
    await submit_action(db, p.scope, action(user("spender"), amount="10"))
    assert (await _wallet(db, p.scope, "spender"))["WALLET_AVAILABLE"] == T("4").micro
    await _ok(db, p.scope)


async def test_locked_tokens_come_back_before_available_ones(db, make_partner):
    p = await make_partner(funding="100", vesting_days=30)
    submitted = await submit_action(db, p.scope, action(user("v"), amount="8"))
    await reverse_action(
        db, p.scope, submitted["actionId"], ReversalRequest("rv", amount=Decimal("2"))
    )
    assert await _wallet(db, p.scope, "v") == {"WALLET_LOCKED": T("6").micro, "WALLET_AVAILABLE": 0}
    await _ok(db, p.scope)


async def test_campaign_spend_goes_down(db, make_partner):
    p = await make_partner(funding="100")
    async with db.begin() as conn:
        campaign = await create_campaign(
            conn,
            p.scope,
            CampaignSpec(
                name="c",
                status="ACTIVE",
                splits=(Split("CUSTOMER", Decimal(100)),),
                budget_total=T("20"),
                budget_per_user=T("20"),
            ),
        )
    submitted = await submit_action(db, p.scope, action(user("a"), amount="20"))
    await reverse_action(
        db, p.scope, submitted["actionId"], ReversalRequest("rc", amount=Decimal("5"))
    )
    async with db.connect() as conn:
        spent = (
            await conn.execute(
                text("SELECT spent_tokens FROM campaigns WHERE id = :id"), {"id": campaign["id"]}
            )
        ).scalar_one()
        per_user = (
            await conn.execute(
                text("SELECT spent_tokens FROM campaign_user_spend WHERE campaign_id = :id"),
                {"id": campaign["id"]},
            )
        ).scalar_one()
    assert spent == per_user == T("15").micro
    await submit_action(
        db, p.scope, action(user("a"), amount="5")
    )  # the freed budget is usable again


async def test_reversal_idempotency_and_scoping(db, make_partner):
    p = await make_partner(funding="100")
    submitted = await submit_action(db, p.scope, action(user("a"), amount="10"))
    first = await reverse_action(
        db, p.scope, submitted["actionId"], ReversalRequest("same", amount=Decimal("1"))
    )
    with pytest.raises(Idempotent) as replay:
        await reverse_action(
            db, p.scope, submitted["actionId"], ReversalRequest("same", amount=Decimal("1.000"))
        )
    assert replay.value.details["original"]["reversalId"] == first["reversalId"]
    with pytest.raises(IdempotencyKeyReused):
        await reverse_action(
            db, p.scope, submitted["actionId"], ReversalRequest("same", amount=Decimal("2"))
        )
    with pytest.raises(NotFound):
        await reverse_action(
            db, Scope(p.partner_id, "production"), submitted["actionId"], ReversalRequest("x")
        )
    other = await make_partner(funding="1")
    with pytest.raises(NotFound):
        await reverse_action(db, other.scope, submitted["actionId"], ReversalRequest("x"))
    assert tuple(await _action_row(db, submitted["actionId"])) == (
        "PARTIALLY_REVERSED",
        T("1").micro,
    )
    await _ok(db, p.scope)
