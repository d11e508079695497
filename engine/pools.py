"""Token pools: where a partner's distributions draw from, funded from the issuance account."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit
from engine.accounts import open_pool_account, pool_account, singleton_account
from engine.errors import NotFound, ValidationFailed
from engine.ids import new_id
from engine.ledger import EntryDraft, Leg, post_entries
from engine.money import Tokens
from engine.scope import Scope
from engine.tables import ledger_accounts, token_pools


def _restriction_problems(
    vesting_days: int | None, expiration_days: int | None
) -> dict[str, list[str]]:
    problems: dict[str, list[str]] = {}
    if vesting_days is not None and vesting_days < 0:
        problems["restrictions.vestingDays"] = ["must be 0 or more"]
    if expiration_days is not None and expiration_days <= 0:
        problems["restrictions.expirationDays"] = ["must be greater than 0"]
    if vesting_days and expiration_days and expiration_days <= vesting_days:
        problems["restrictions.expirationDays"] = ["must exceed vestingDays"]
    return problems


async def create_pool(
    conn: AsyncConnection,
    scope: Scope,
    *,
    actor: str,
    name: str,
    vesting_days: int | None = None,
    expiration_days: int | None = None,
    low_balance_threshold: Tokens = Tokens(0),
    redemption: dict[str, Any] | None = None,
    auto_refill: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Create a pool and its ledger account. The partner's first pool in an environment is its
    default. Raises ValidationFailed."""
    problems = _restriction_problems(vesting_days, expiration_days)
    if not name.strip():
        problems["name"] = ["must not be empty"]
    if problems:
        raise ValidationFailed(problems)
    existing = await conn.execute(
        select(func.count())
        .select_from(token_pools)
        .where(
            token_pools.c.partner_id == scope.partner_id,
            token_pools.c.environment == scope.environment,
        )
    )
    pool_id = new_id()
    row = (
        (
            await conn.execute(
                token_pools.insert()
                .values(
                    id=pool_id,
                    partner_id=scope.partner_id,
                    environment=scope.environment,
                    name=name.strip(),
                    is_default=existing.scalar_one() == 0,
                    vesting_days=vesting_days or None,
                    expiration_days=expiration_days,
                    low_balance_threshold=low_balance_threshold.micro,
                    redemption=redemption or {},
                    auto_refill=auto_refill or {"enabled": False},
                )
                .returning(token_pools)
            )
        )
        .mappings()
        .one()
    )
    await open_pool_account(conn, scope, pool_id)
    await audit.record(
        conn,
        actor=actor,
        action="token_pool.create",
        target_type="token_pool",
        target_id=pool_id,
        after=dict(row),
    )
    return dict(row)


async def pool_balance(conn: AsyncConnection, scope: Scope, pool_id: str) -> Tokens:
    row = await conn.execute(
        select(ledger_accounts.c.balance).where(
            ledger_accounts.c.pool_id == pool_id,
            ledger_accounts.c.partner_id == scope.partner_id,
            ledger_accounts.c.environment == scope.environment,
        )
    )
    balance = row.scalar_one_or_none()
    if balance is None:
        raise NotFound(f"token pool {pool_id} not found")
    return Tokens(int(balance))


async def allocate(
    conn: AsyncConnection,
    scope: Scope,
    *,
    actor: str,
    pool_id: str,
    amount: Tokens,
    memo: str | None = None,
) -> str:
    """Mint `amount` into a pool from the issuance account. Returns the journal entry id.

    Raises ValidationFailed (amount not positive), NotFound (pool not in scope).
    """
    if not amount.is_positive:
        raise ValidationFailed({"amount": ["must be greater than 0"]})
    account = await pool_account(conn, scope, pool_id)
    if account is None:
        raise NotFound(f"token pool {pool_id} not found")
    issuance = await singleton_account(conn, scope, "ISSUANCE")
    draft = EntryDraft(
        kind="ALLOCATION",
        memo=memo,
        legs=(Leg(issuance, -amount, "ALLOCATION"), Leg(account, amount, "ALLOCATION")),
    )
    (entry,), _ = await post_entries(conn, scope, [draft])
    # An exhausted pool that is topped up is chosen again.
    await conn.execute(
        update(token_pools)
        .where(token_pools.c.id == pool_id, token_pools.c.status == "EXHAUSTED")
        .values(status="ACTIVE", updated_at=func.now())
    )
    await audit.record(
        conn,
        actor=actor,
        action="token_pool.allocate",
        target_type="token_pool",
        target_id=pool_id,
        after={"amount": amount, "memo": memo, "entryId": entry.entry_id},
    )
    return entry.entry_id


async def fund_reserve(
    conn: AsyncConnection, scope: Scope, *, actor: str, amount: Tokens, memo: str | None = None
) -> str:
    """Mint `amount` into the partner's refill reserve. Returns the journal entry id."""
    if not amount.is_positive:
        raise ValidationFailed({"amount": ["must be greater than 0"]})
    issuance = await singleton_account(conn, scope, "ISSUANCE")
    reserve = await singleton_account(conn, scope, "RESERVE")
    draft = EntryDraft(
        kind="RESERVE_FUNDING",
        memo=memo,
        legs=(Leg(issuance, -amount, "ALLOCATION"), Leg(reserve, amount, "ALLOCATION")),
    )
    (entry,), _ = await post_entries(conn, scope, [draft])
    await audit.record(
        conn,
        actor=actor,
        action="reserve.fund",
        target_type="partner",
        target_id=scope.partner_id,
        after={"environment": scope.environment, "amount": amount, "memo": memo},
    )
    return entry.entry_id
