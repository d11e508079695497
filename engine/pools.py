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
from engine.pagination import Page, fetch_page
from engine.scope import Scope
from engine.tables import ledger_accounts, postings, token_pools


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


# -- operator use and the pool as partners see it -------------------------------------------------
#
# Pool settings live in JSONB. Token figures inside them are stored as integer micro-tokens under
# names ending in `Micro` (JSONB goes through the stdlib encoder, which cannot hold a Decimal
# exactly, and an explicit unit keeps a reader from mistaking micro-tokens for tokens):
#   redemption  = {"minBalanceMicro": int | None, "allowedCategories": [str] | None}
#   auto_refill = {"enabled": bool, "thresholdMicro": int, "amountMicro": int, "maxPerDay": int}


def encode_settings(
    *,
    redemption_min_balance: Tokens | None,
    allowed_categories: list[str] | None,
    refill_enabled: bool,
    refill_threshold: Tokens,
    refill_amount: Tokens,
    refill_max_per_day: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(redemption, auto_refill) JSONB documents from wire values. Raises ValidationFailed."""
    problems: dict[str, list[str]] = {}
    if redemption_min_balance is not None and redemption_min_balance.micro < 0:
        problems["restrictions.redemption.minBalance"] = ["must be 0 or more"]
    if refill_threshold.micro < 0:
        problems["autoRefill.threshold"] = ["must be 0 or more"]
    if refill_amount.micro < 0:
        problems["autoRefill.amount"] = ["must be 0 or more"]
    if refill_max_per_day < 0:
        problems["autoRefill.maxPerDay"] = ["must be 0 or more"]
    if refill_enabled and not refill_amount.is_positive:
        problems["autoRefill.amount"] = ["must be greater than 0 when auto-refill is enabled"]
    if refill_enabled and refill_max_per_day < 1:
        problems["autoRefill.maxPerDay"] = ["must be at least 1 when auto-refill is enabled"]
    if problems:
        raise ValidationFailed(problems)
    redemption = {
        "minBalanceMicro": None if redemption_min_balance is None else redemption_min_balance.micro,
        "allowedCategories": allowed_categories,
    }
    auto_refill = {
        "enabled": refill_enabled,
        "thresholdMicro": refill_threshold.micro,
        "amountMicro": refill_amount.micro,
        "maxPerDay": refill_max_per_day,
    }
    return redemption, auto_refill


async def find_pool(conn: AsyncConnection, partner_id: str, pool_id: str) -> dict[str, Any]:
    """A pool of this partner in either environment (operators name pools by id alone)."""
    row = (
        (
            await conn.execute(
                select(token_pools).where(
                    token_pools.c.id == pool_id, token_pools.c.partner_id == partner_id
                )
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"token pool {pool_id} not found")
    return dict(row)


async def pool_view(conn: AsyncConnection, scope: Scope, pool_id: str) -> dict[str, Any]:
    """The pool row plus its figures: `balance`, `allocated_total` (allocations and refills
    into it), `distributed_total` (= allocated_total - balance: everything that left the pool,
    net of reversals) and the partner's `reserve_balance`, all as Tokens. Raises NotFound."""
    row = (
        (
            await conn.execute(
                select(token_pools).where(
                    token_pools.c.id == pool_id,
                    token_pools.c.partner_id == scope.partner_id,
                    token_pools.c.environment == scope.environment,
                )
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"token pool {pool_id} not found")
    account = await pool_account(conn, scope, pool_id)
    balance = await pool_balance(conn, scope, pool_id)
    allocated = (
        await conn.execute(
            select(func.coalesce(func.sum(postings.c.amount), 0)).where(
                postings.c.account_id == account,
                postings.c.partner_id == scope.partner_id,
                postings.c.environment == scope.environment,
                postings.c.type.in_(("ALLOCATION", "REFILL")),
                postings.c.amount > 0,
            )
        )
    ).scalar_one()
    allocated_total = Tokens(int(allocated))
    return {
        **dict(row),
        "balance": balance,
        "allocated_total": allocated_total,
        "distributed_total": allocated_total - balance,
        "reserve_balance": await reserve_balance(conn, scope),
    }


async def reserve_balance(conn: AsyncConnection, scope: Scope) -> Tokens:
    row = await conn.execute(
        select(ledger_accounts.c.balance).where(
            ledger_accounts.c.partner_id == scope.partner_id,
            ledger_accounts.c.environment == scope.environment,
            ledger_accounts.c.kind == "RESERVE",
        )
    )
    return Tokens(int(row.scalar_one_or_none() or 0))


# -- the partner API's pool listing (GET /token-pools) ---------------------------------------------
#
# distributedTotal, precisely: allocated_total - balance, where allocated_total is the sum of the
# positive ALLOCATION and REFILL postings on the pool's account. Everything else on that account
# is a distribution (DEBIT, negative) or a reversal returning tokens (REVERSAL, positive), so it
# equals -(sum of DEBIT postings) - (sum of REVERSAL postings): tokens that left the pool net of
# those that came back. It only goes down when a reversal returns tokens.

POOL_STATUSES = ("ACTIVE", "EXHAUSTED", "CLOSED")


async def list_pool_views(
    conn: AsyncConnection, scope: Scope, page: Page, *, status: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the scope's pools as `pool_view`s, newest first, and the next cursor.

    Raises ValidationFailed for an unknown status filter.
    """
    if status is not None and status not in POOL_STATUSES:
        raise ValidationFailed({"status": [f"must be one of {', '.join(POOL_STATUSES)}"]})
    query = select(token_pools).where(
        token_pools.c.partner_id == scope.partner_id,
        token_pools.c.environment == scope.environment,
    )
    if status is not None:
        query = query.where(token_pools.c.status == status)
    rows, cursor = await fetch_page(conn, query, token_pools.c.created_at, token_pools.c.id, page)
    return [await pool_view(conn, scope, row["id"]) for row in rows], cursor
