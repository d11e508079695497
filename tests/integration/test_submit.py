"""`submit_action` on real PostgreSQL: distribution, idempotency, refusals that apply nothing,
campaigns and budgets, vesting, organizations, pool events, and concurrent duplicates."""

from __future__ import annotations

import asyncio
import secrets
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text

from engine.action_request import ActionRequest, StakeholderRequest
from engine.campaigns import CampaignSpec, create_campaign
from engine.distribution import Split
from engine.errors import (
    CampaignBudgetExhausted,
    CampaignNotApplicable,
    IdempotencyKeyReused,
    Idempotent,
    InsufficientPool,
    NoActivePool,
    UnknownActionType,
    UnknownOrganization,
    UnknownStakeholderType,
    UnknownUser,
)
from engine.ids import new_id
from engine.money import Tokens
from engine.pools import allocate, pool_balance
from engine.scope import Scope
from engine.submit import submit_action
from engine.tables import actions, organizations, outbox_events, partner_users
from engine.verify import verify_ledger

T = Tokens.parse


def user(uid: str, kind: str = "CUSTOMER") -> StakeholderRequest:
    return StakeholderRequest(kind, partner_user_id=uid)


def org(slug: str) -> StakeholderRequest:
    return StakeholderRequest("ORGANIZATION", organization_slug=slug)


def action(
    *stakeholders: StakeholderRequest, key: str | None = None, amount: str = "10", **kw
) -> ActionRequest:
    return ActionRequest(
        idempotency_key=key or f"k-{secrets.token_hex(6)}",
        action_type=kw.pop("action_type", "PURCHASE"),
        amount=Decimal(amount),
        stakeholders=stakeholders,
        currency="USD",
        **kw,
    )


async def _events(db, scope: Scope, kind: str) -> list[dict]:
    async with db.connect() as conn:
        rows = await conn.execute(
            select(outbox_events.c.payload).where(
                outbox_events.c.partner_id == scope.partner_id, outbox_events.c.type == kind
            )
        )
        return [r[0] for r in rows]


async def _verify(db, scope: Scope) -> None:
    async with db.connect() as conn:
        report = await verify_ledger(conn, scope)
    assert report.ok, report.render()


async def _count_actions(db, scope: Scope) -> int:
    async with db.connect() as conn:
        return (
            await conn.execute(
                select(func.count())
                .select_from(actions)
                .where(actions.c.partner_id == scope.partner_id)
            )
        ).scalar_one()


async def _org(db, slug: str | None = None) -> str:
    slug = slug or f"org-{secrets.token_hex(4)}"
    async with db.begin() as conn:
        await conn.execute(organizations.insert().values(id=new_id(), slug=slug, name=slug.title()))
    return slug


async def test_default_rule_shares_equally_and_debits_the_pool(db, make_partner):
    p = await make_partner(funding="100")
    result = await submit_action(
        db, p.scope, action(user("a"), user("b"), user("c"), amount="1.000001")
    )
    tokens = [d["tokens"] for d in result["distributions"]]
    # Largest remainder over 1.000001: the two leftover micro-tokens go to the first two.
    assert tokens == [T("0.333334"), T("0.333334"), T("0.333333")]
    assert result["tokensDistributed"] == T("1.000001")
    assert (
        result["status"] == "COMPLETED"
        and result["campaignId"] is None
        and result["poolId"] == p.pool_id
    )
    assert len(result["transactionIds"]) == 3
    async with db.connect() as conn:
        assert await pool_balance(conn, p.scope, p.pool_id) == T("98.999999")
        created = (
            await conn.execute(
                select(func.count())
                .select_from(partner_users)
                .where(partner_users.c.partner_id == p.partner_id)
            )
        ).scalar_one()
    assert created == 3
    await _verify(db, p.scope)
    assert len(await _events(db, p.scope, "action.completed")) == 1
    assert len(await _events(db, p.scope, "transaction.completed")) == 3


async def test_replay_with_reformatted_body_answers_409_with_the_original(db, make_partner):
    p = await make_partner(funding="100")
    first = await submit_action(db, p.scope, action(user("a"), key="same", amount="49.99"))
    with pytest.raises(Idempotent) as replay:
        await submit_action(db, p.scope, action(user("a"), key="same", amount="49.990"))
    assert replay.value.details["original"]["actionId"] == first["actionId"]
    assert replay.value.headers == {"Idempotent-Replayed": "true"}
    with pytest.raises(IdempotencyKeyReused):
        await submit_action(
            db, p.scope, action(user("a"), key="same", amount="49.99", metadata={"x": "1"})
        )
    async with db.connect() as conn:
        assert await pool_balance(conn, p.scope, p.pool_id) == T("50.01")
    assert await _count_actions(db, p.scope) == 1


async def test_refused_attempt_leaves_the_key_unused(db, make_partner):
    p = await make_partner(funding="5")
    request = action(user("a"), key="retry-me", amount="10")
    with pytest.raises(InsufficientPool) as refused:
        await submit_action(db, p.scope, request)
    assert refused.value.status == 402 and refused.value.details["required"] == "10"
    assert await _count_actions(db, p.scope) == 0
    async with db.begin() as conn:
        await allocate(conn, p.scope, actor="test", pool_id=p.pool_id, amount=T("20"))
    result = await submit_action(db, p.scope, request)
    assert result["tokensDistributed"] == T("10")
    await _verify(db, p.scope)


@pytest.mark.parametrize(
    ("make_request", "error"),
    [
        (lambda: action(user("a"), action_type="TELEPORT"), UnknownActionType),
        (lambda: action(user("a", "ALIEN")), UnknownStakeholderType),
        (lambda: action(user("nobody"), auto_create_users=False), UnknownUser),
        (lambda: action(user("a"), org("no-such-org")), UnknownOrganization),
        (lambda: action(user("a"), campaign_id="0" * 24), CampaignNotApplicable),
    ],
)
async def test_refusals_apply_nothing(db, make_partner, make_request, error):
    p = await make_partner(funding="100")
    with pytest.raises(error):
        await submit_action(db, p.scope, make_request())
    assert await _count_actions(db, p.scope) == 0
    async with db.connect() as conn:
        assert await pool_balance(conn, p.scope, p.pool_id) == T("100")
        users = (
            await conn.execute(
                select(func.count())
                .select_from(partner_users)
                .where(partner_users.c.partner_id == p.partner_id)
            )
        ).scalar_one()
    assert users == 0


async def test_no_pool_in_the_environment(db, make_partner):
    p = await make_partner(funding="100")
    with pytest.raises(NoActivePool):
        await submit_action(db, Scope(p.partner_id, "production"), action(user("a")))


async def test_campaign_splits_match_the_contract_example(db, make_partner):
    p = await make_partner(funding="1000")
    slug = await _org(db)
    async with db.begin() as conn:
        campaign = await create_campaign(
            conn,
            p.scope,
            CampaignSpec(
                name="Donation match",
                status="ACTIVE",
                multiplier=Decimal(2),
                splits=(
                    Split("DONOR", Decimal(70)),
                    Split("ORGANIZATION", Decimal(20)),
                    Split("REFERRER", Decimal(10)),
                ),
                budget_total=T("100"),
            ),
        )
    result = await submit_action(
        db,
        p.scope,
        action(
            user("d", "DONOR"),
            org(slug),
            user("r", "REFERRER"),
            amount="33.33",
            action_type="DONATION",
        ),
    )
    assert result["campaignId"] == campaign["id"]
    assert [(d["stakeholderTypeCode"], d["tokens"]) for d in result["distributions"]] == [
        ("DONOR", T("46.662")),
        ("ORGANIZATION", T("13.332")),
        ("REFERRER", T("6.666")),
    ]
    assert result["distributions"][1]["organizationSlug"] == slug
    # 66.66 spent of 100: the next one would pass the budget and is refused whole.
    with pytest.raises(CampaignBudgetExhausted) as refused:
        await submit_action(
            db,
            p.scope,
            action(
                user("d", "DONOR"),
                org(slug),
                user("r", "REFERRER"),
                amount="33.33",
                action_type="DONATION",
            ),
        )
    assert refused.value.details["scope"] == "campaign"
    async with db.connect() as conn:
        spent = (
            await conn.execute(
                text("SELECT spent_tokens FROM campaigns WHERE id = :id"), {"id": campaign["id"]}
            )
        ).scalar_one()
    assert spent == T("66.66").micro
    await _verify(db, p.scope)


async def test_per_user_budget_and_exhausted_event(db, make_partner):
    p = await make_partner(funding="1000")
    async with db.begin() as conn:
        await create_campaign(
            conn,
            p.scope,
            CampaignSpec(
                name="Cap",
                status="ACTIVE",
                splits=(Split("CUSTOMER", Decimal(100)),),
                budget_per_user=T("15"),
                budget_total=T("25"),
            ),
        )
    await submit_action(db, p.scope, action(user("u1"), amount="10"))
    with pytest.raises(CampaignBudgetExhausted) as refused:
        await submit_action(db, p.scope, action(user("u1"), amount="10"))
    assert (
        refused.value.details["scope"] == "user" and refused.value.details["partnerUserId"] == "u1"
    )
    await submit_action(db, p.scope, action(user("u2"), amount="15"))
    exhausted = await _events(db, p.scope, "campaign.budget_exhausted")
    assert len(exhausted) == 1 and exhausted[0]["budget"]["spentTokens"] == Decimal(25)


async def test_vesting_pool_credits_locked_tokens(db, make_partner):
    p = await make_partner(funding="100", vesting_days=7, expiration_days=30)
    result = await submit_action(db, p.scope, action(user("v"), amount="12.5"))
    share = result["distributions"][0]
    assert share["vestsAt"] is not None and share["expiresAt"] is not None
    async with db.connect() as conn:
        kinds = dict(
            (
                await conn.execute(
                    text(
                        "SELECT a.kind, a.balance FROM ledger_accounts a JOIN partner_users u ON u.id = a.partner_user_id "
                        "WHERE u.partner_id = :p AND u.external_user_id = 'v'"
                    ),
                    {"p": p.partner_id},
                )
            ).all()
        )
    assert kinds == {"WALLET_LOCKED": T("12.5").micro, "WALLET_AVAILABLE": 0}
    await _verify(db, p.scope)


async def test_pool_running_dry_emits_events_and_exhausts(db, make_partner):
    p = await make_partner(funding="10")
    async with db.begin() as conn:
        await conn.execute(
            text("UPDATE token_pools SET low_balance_threshold = :t WHERE id = :id"),
            {"t": T("5").micro, "id": p.pool_id},
        )
    await submit_action(db, p.scope, action(user("a"), amount="6"))
    assert len(await _events(db, p.scope, "token_pool.low_balance")) == 1
    await submit_action(db, p.scope, action(user("a"), amount="4"))
    assert len(await _events(db, p.scope, "token_pool.exhausted")) == 1
    async with db.connect() as conn:
        status = (
            await conn.execute(
                text("SELECT status FROM token_pools WHERE id = :id"), {"id": p.pool_id}
            )
        ).scalar_one()
    assert status == "EXHAUSTED"
    with pytest.raises(InsufficientPool):
        await submit_action(db, p.scope, action(user("a"), amount="1"))
    async with db.begin() as conn:
        await allocate(conn, p.scope, actor="test", pool_id=p.pool_id, amount=T("1"))
    await submit_action(db, p.scope, action(user("a"), amount="1"))
    await _verify(db, p.scope)


async def test_concurrent_duplicates_apply_exactly_once(db, make_partner):
    p = await make_partner(funding="1000")
    request = action(user("dup"), key="race-key", amount="7")

    async def attempt():
        try:
            return await submit_action(db, p.scope, request)
        except Idempotent as replay:
            return replay

    results = await asyncio.gather(*(attempt() for _ in range(12)))
    applied = [r for r in results if isinstance(r, dict)]
    replays = [r for r in results if isinstance(r, Idempotent)]
    assert len(applied) == 1 and len(replays) == 11
    assert all(r.details["original"]["actionId"] == applied[0]["actionId"] for r in replays)
    async with db.connect() as conn:
        assert await pool_balance(conn, p.scope, p.pool_id) == T("993")
    await _verify(db, p.scope)


async def test_many_concurrent_actions_on_one_pool_stay_exact(db, make_partner):
    """50 writers on one hot pool of 100: exactly the 40 that fit (2.5 each) succeed."""
    p = await make_partner(funding="100")

    async def attempt(i):
        try:
            await submit_action(db, p.scope, action(user(f"u{i % 7}"), amount="2.5"))
            return True
        except InsufficientPool:
            return False

    results = await asyncio.gather(*(attempt(i) for i in range(50)))
    assert sum(results) == 40
    async with db.connect() as conn:
        assert await pool_balance(conn, p.scope, p.pool_id) == T("0")
    await _verify(db, p.scope)
