"""Token pool top-up requests: a partner asks for more tokens, an operator approves or rejects.

Approval allocates from the issuance account in the same transaction that marks the request
APPROVED, so a request is never approved without its tokens (nor funded twice: the row is
locked and must still be PENDING).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit
from engine.errors import AlreadyDecided, NotFound, ValidationFailed
from engine.ids import new_id
from engine.money import Tokens
from engine.pagination import Page, fetch_page
from engine.pools import allocate
from engine.scope import Scope
from engine.tables import token_pool_requests, token_pools

STATUSES = ("PENDING", "APPROVED", "REJECTED")


async def request_topup(
    conn: AsyncConnection, scope: Scope, pool_id: str, amount: Tokens, reason: str | None
) -> dict[str, Any]:
    """Record a PENDING request for `amount` more tokens in a pool of `scope`.

    Raises ValidationFailed (amount not positive), NotFound (pool not in scope, or CLOSED).
    """
    if not amount.is_positive:
        raise ValidationFailed({"amount": ["must be greater than 0"]})
    pool = await conn.execute(
        select(token_pools.c.status).where(
            token_pools.c.id == pool_id,
            token_pools.c.partner_id == scope.partner_id,
            token_pools.c.environment == scope.environment,
        )
    )
    status = pool.scalar_one_or_none()
    if status is None:
        raise NotFound(f"token pool {pool_id} not found")
    if status == "CLOSED":
        raise ValidationFailed({"poolId": ["the pool is closed"]})
    row = await conn.execute(
        token_pool_requests.insert()
        .values(
            id=new_id(),
            partner_id=scope.partner_id,
            environment=scope.environment,
            pool_id=pool_id,
            amount=amount.micro,
            reason=(reason or "").strip() or None,
        )
        .returning(token_pool_requests)
    )
    return dict(row.mappings().one())


async def list_requests(
    conn: AsyncConnection,
    partner_id: str,
    page: Page,
    *,
    status: str | None = None,
    environment: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    query = select(token_pool_requests).where(token_pool_requests.c.partner_id == partner_id)
    if status is not None:
        query = query.where(token_pool_requests.c.status == status)
    if environment is not None:
        query = query.where(token_pool_requests.c.environment == environment)
    return await fetch_page(
        conn, query, token_pool_requests.c.created_at, token_pool_requests.c.id, page
    )


async def _pending(conn: AsyncConnection, request_id: str) -> dict[str, Any]:
    row = (
        (
            await conn.execute(
                select(token_pool_requests)
                .where(token_pool_requests.c.id == request_id)
                .with_for_update()
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"token pool request {request_id} not found")
    if row["status"] != "PENDING":
        raise AlreadyDecided(
            f"token pool request {request_id} is already {row['status']}",
            details={"status": row["status"]},
        )
    return dict(row)


async def _decide(
    conn: AsyncConnection, request_id: str, status: str, actor: str
) -> dict[str, Any]:
    row = await conn.execute(
        token_pool_requests.update()
        .where(token_pool_requests.c.id == request_id)
        .values(status=status, decided_by=actor, decided_at=func.now())
        .returning(token_pool_requests)
    )
    return dict(row.mappings().one())


async def approve_request(
    conn: AsyncConnection, *, actor: str, request_id: str, memo: str | None = None
) -> dict[str, Any]:
    """Allocate the requested amount to its pool and mark the request APPROVED.

    Raises NotFound, AlreadyDecided.
    """
    request = await _pending(conn, request_id)
    scope = Scope(request["partner_id"], request["environment"])
    await allocate(
        conn,
        scope,
        actor=actor,
        pool_id=request["pool_id"],
        amount=Tokens(int(request["amount"])),
        memo=memo or f"top-up request {request_id}",
    )
    decided = await _decide(conn, request_id, "APPROVED", actor)
    await audit.record(
        conn,
        actor=actor,
        action="token_pool_request.approve",
        target_type="token_pool_request",
        target_id=request_id,
        before={"status": "PENDING"},
        after={"status": "APPROVED", "amount": Tokens(int(request["amount"]))},
    )
    return decided


async def reject_request(
    conn: AsyncConnection, *, actor: str, request_id: str, reason: str | None = None
) -> dict[str, Any]:
    """Mark the request REJECTED; nothing is allocated. Raises NotFound, AlreadyDecided."""
    await _pending(conn, request_id)
    decided = await _decide(conn, request_id, "REJECTED", actor)
    await audit.record(
        conn,
        actor=actor,
        action="token_pool_request.reject",
        target_type="token_pool_request",
        target_id=request_id,
        before={"status": "PENDING"},
        after={"status": "REJECTED", "reason": reason},
    )
    return decided
