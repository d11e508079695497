"""Reversing an action, wholly or in part (contract section 7, `POST /actions/:id/reverse`).

Tokens go back to the action's pool and the campaign's spentTokens goes down by them. From each
stakeholder they come first from the lot this action credited (still locked before available),
then from the stakeholder's other available tokens (earliest-expiring first), and the rest
becomes a debt: a negative available balance that later credits repay first.

Partial reversals: tokensReversed = floor6(tokensDistributed x amount / action.amount), shared
among the stakeholders in proportion to what each still holds of this action (largest
remainder), so no stakeholder ever gives back more than it received; the reversal that brings
the reversed amount to the action's amount takes exactly what remains.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from engine.accounts import wallets_for
from engine.distribution import largest_remainder
from engine.errors import (
    AlreadyReversed,
    IdempotencyKeyReused,
    Idempotent,
    NotFound,
    ReversalExceedsAction,
)
from engine.ids import new_id
from engine.ledger import EntryDraft, Leg, consume_lots, post_entries
from engine.money import Tokens
from engine.outbox import Event, record_events
from engine.scope import Scope
from engine.wire import dumps


@dataclass(frozen=True, slots=True)
class ReversalRequest:
    idempotency_key: str
    reason: str | None = None
    amount: Decimal | None = None  # in the action's currency units; None reverses what remains

    def fingerprint(self, action_id: str) -> bytes:
        amount = None if self.amount is None else format(self.amount.normalize(), "f")
        canonical = json.dumps(
            {
                "actionId": action_id,
                "key": self.idempotency_key,
                "reason": self.reason,
                "amount": amount,
            },
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).digest()


@dataclass
class _Holder:
    """One credited distribution of the action and what it still holds of it."""

    transaction_id: str
    stakeholder_type: str
    partner_user_id: str | None
    organization_slug: str | None
    received: int
    reversed_so_far: int

    @property
    def remaining(self) -> int:
        return self.received - self.reversed_so_far


async def reverse_action(
    db: AsyncEngine,
    scope: Scope,
    action_id: str,
    request: ReversalRequest,
) -> dict[str, Any]:
    """Reverse an action in one transaction. Returns the reversal response.

    Raises NotFound, Idempotent (409 with the original), IdempotencyKeyReused, AlreadyReversed,
    ReversalExceedsAction. A refused reversal writes nothing; its key stays unused.
    """
    async with db.begin() as conn:
        # The action row is the lock that serialises reversals of one action (and their keys).
        action = (
            (
                await conn.execute(
                    text(
                        "SELECT * FROM actions WHERE id = :id AND partner_id = :partner_id "
                        "AND environment = :environment FOR NO KEY UPDATE"
                    ),
                    {**scope.params, "id": action_id},
                )
            )
            .mappings()
            .first()
        )
        if action is None:
            raise NotFound(f"action {action_id} not found")
        previous = (
            (
                await conn.execute(
                    text(
                        "SELECT action_id, request_hash, response FROM reversals WHERE partner_id = :partner_id "
                        "AND environment = :environment AND idempotency_key = :key"
                    ),
                    {**scope.params, "key": request.idempotency_key},
                )
            )
            .mappings()
            .first()
        )
        if previous is not None:
            if bytes(previous["request_hash"]) == request.fingerprint(action_id):
                raise Idempotent(previous["response"])
            raise IdempotencyKeyReused(
                "This idempotency key was used with a different reversal",
                details={"idempotencyKey": request.idempotency_key},
            )
        response = await _reverse(conn, scope, dict(action), request)
    return response


async def _reverse(
    conn: AsyncConnection,
    scope: Scope,
    action: dict[str, Any],
    request: ReversalRequest,
) -> dict[str, Any]:
    distributed = int(action["tokens_distributed"])
    already = int(action["tokens_reversed"])
    remaining = distributed - already
    if remaining <= 0:
        raise AlreadyReversed("Everything this action distributed has been reversed already")
    prior = (
        await conn.execute(
            text(
                "SELECT amount, response FROM reversals WHERE action_id = :id ORDER BY created_at"
            ),
            {"id": action["id"]},
        )
    ).all()
    reversed_amount = sum((Decimal(a) for a, _ in prior if a is not None), Decimal(0))
    action_amount = Decimal(action["amount"])
    if request.amount is None:
        tokens = remaining
    else:
        if reversed_amount + request.amount > action_amount:
            raise ReversalExceedsAction(
                "The amount exceeds what remains of the action",
                details={
                    "remainingAmount": format((action_amount - reversed_amount).normalize(), "f")
                },
            )
        if reversed_amount + request.amount == action_amount:
            tokens = remaining  # the reversal that completes the action takes exactly the rest
        else:
            tokens = Tokens.floor(
                Decimal(distributed) * request.amount / action_amount / Decimal(10**6)
            ).micro
            tokens = min(tokens, remaining)

    holders = _holders(action, prior)
    shares = _shares(holders, tokens)
    reversal_id = new_id()
    status = "REVERSED" if already + tokens == distributed else "PARTIALLY_REVERSED"
    legs, debited = await _take_back(conn, scope, holders, shares)
    transaction_ids = [leg.posting_id for leg in legs if leg.posting_id]
    response: dict[str, Any] = {
        "reversalId": reversal_id,
        "actionId": action["id"],
        "status": status,
        "tokensReversed": Tokens(tokens),
        "transactionIds": transaction_ids,
        "distributions": [
            {
                "transactionId": h.transaction_id,
                "stakeholderTypeCode": h.stakeholder_type,
                **(
                    {"organizationSlug": h.organization_slug}
                    if h.organization_slug
                    else {"partnerUserId": h.partner_user_id}
                ),
                "tokensReversed": Tokens(share),
            }
            for h, share in zip(holders, shares, strict=True)
            if share
        ],
        "reason": request.reason,
    }
    await conn.execute(
        text(
            "INSERT INTO reversals (id, partner_id, environment, action_id, idempotency_key, request_hash, "
            "status, amount, tokens_reversed, reason, response) VALUES (:id, :partner_id, :environment, "
            ":action_id, :key, :hash, :status, :amount, :tokens, :reason, CAST(:response AS jsonb))"
        ),
        {
            **scope.params,
            "id": reversal_id,
            "action_id": action["id"],
            "key": request.idempotency_key,
            "hash": request.fingerprint(action["id"]),
            "status": status,
            "amount": request.amount,
            "tokens": tokens,
            "reason": request.reason,
            "response": dumps(response),
        },
    )
    if tokens:
        pool_account = await _lock_pool(conn, scope, action["pool_id"])
        legs.append(Leg(pool_account, Tokens(tokens), "REVERSAL"))
        await post_entries(
            conn,
            scope,
            [
                EntryDraft(
                    "REVERSAL",
                    tuple(legs),
                    action_id=action["id"],
                    reversal_id=reversal_id,
                    memo=request.reason,
                )
            ],
        )
        await conn.execute(
            text(
                "UPDATE token_pools SET status = 'ACTIVE', updated_at = now() WHERE id = :id AND status = 'EXHAUSTED'"
            ),
            {"id": action["pool_id"]},
        )
        await _campaign_spend(conn, scope, action, tokens, debited)
    await conn.execute(
        text(
            "UPDATE actions SET tokens_reversed = tokens_reversed + :t, status = :s WHERE id = :id"
        ),
        {"t": tokens, "s": status, "id": action["id"]},
    )
    await record_events(conn, scope, [Event("action.reversed", response)])
    return response


def _holders(action: dict[str, Any], prior: Sequence[Any]) -> list[_Holder]:
    holders = []
    for d in action["response"]["distributions"]:
        holders.append(
            _Holder(
                transaction_id=d["transactionId"],
                stakeholder_type=d["stakeholderTypeCode"],
                partner_user_id=d.get("partnerUserId"),
                organization_slug=d.get("organizationSlug"),
                received=Tokens.parse(d["tokens"]).micro,
                reversed_so_far=0,
            )
        )
    by_transaction = {h.transaction_id: h for h in holders}
    for _, response in prior:
        for d in response.get("distributions", []):
            by_transaction[d["transactionId"]].reversed_so_far += Tokens.parse(
                d["tokensReversed"]
            ).micro
    return holders


def _shares(holders: list[_Holder], tokens: int) -> list[int]:
    """This reversal's part from each holder, in proportion to what each still holds.

    Weighting by what remains (not by what was received) keeps every part within what the
    holder still has, so repeated partial reversals never overdraw one stakeholder.
    """
    weights = [h.remaining for h in holders]
    positive = [i for i, w in enumerate(weights) if w > 0]
    parts = [0] * len(holders)
    for index, part in zip(
        positive, largest_remainder(tokens, [weights[i] for i in positive]), strict=True
    ):
        parts[index] = part
    return parts


async def _take_back(
    conn: AsyncConnection,
    scope: Scope,
    holders: list[_Holder],
    shares: list[int],
) -> tuple[list[Leg], dict[str, int]]:
    """Debit each holder's wallet; returns the legs and, per partnerUserId, what was taken."""
    external_ids = sorted({h.partner_user_id for h in holders if h.partner_user_id})
    slugs = sorted({h.organization_slug for h in holders if h.organization_slug})
    users: dict[str, str] = {
        external: user_id
        for external, user_id in await conn.execute(
            text(
                "SELECT external_user_id, id FROM partner_users WHERE partner_id = :partner_id "
                "AND environment = :environment AND external_user_id = ANY(:ids)"
            ),
            {**scope.params, "ids": external_ids},
        )
    }
    orgs: dict[str, str] = {
        slug: org_id
        for slug, org_id in await conn.execute(
            text("SELECT slug, id FROM organizations WHERE slug = ANY(:s)"), {"s": slugs}
        )
    }
    wallets = await wallets_for(
        conn, scope, user_ids=list(users.values()), organization_ids=list(orgs.values())
    )
    legs: list[Leg] = []
    taken_by_user: dict[str, int] = {}
    for holder, share in zip(holders, shares, strict=True):
        if not share:
            continue
        owner = (
            ("organization", orgs[holder.organization_slug])
            if holder.organization_slug
            else ("user", users[holder.partner_user_id or ""])
        )
        wallet = wallets[owner]
        from_locked, from_available = await _from_own_lot(
            conn, holder.transaction_id, wallet.locked_id, share
        )
        rest = share - from_locked - from_available
        if rest:
            # Then other available tokens, earliest-expiring first; what they cannot cover is debt.
            from_available += (
                await consume_lots(conn, scope, wallet.available_id, Tokens(rest))
            ).micro
        debt = share - from_locked - from_available
        if from_locked:
            legs.append(
                Leg(wallet.locked_id, -Tokens(from_locked), "REVERSAL", posting_id=new_id())
            )
        if from_available + debt:
            legs.append(
                Leg(
                    wallet.available_id,
                    -Tokens(from_available + debt),
                    "REVERSAL",
                    posting_id=new_id(),
                )
            )
        if holder.partner_user_id:
            taken_by_user[users[holder.partner_user_id]] = (
                taken_by_user.get(users[holder.partner_user_id], 0) + share
            )
    return legs, taken_by_user


async def _from_own_lot(
    conn: AsyncConnection, posting_id: str, locked_account: int, wanted: int
) -> tuple[int, int]:
    """Take up to `wanted` from the lot this action credited. Returns (from locked, from available)."""
    row = (
        await conn.execute(
            text("SELECT id, account_id, remaining FROM lots WHERE posting_id = :p FOR UPDATE"),
            {"p": posting_id},
        )
    ).first()
    if row is None or not row.remaining:
        return 0, 0
    take = min(int(row.remaining), wanted)
    await conn.execute(
        text("UPDATE lots SET remaining = remaining - :t WHERE id = :id"), {"t": take, "id": row.id}
    )
    return (take, 0) if int(row.account_id) == locked_account else (0, take)


async def _lock_pool(conn: AsyncConnection, scope: Scope, pool_id: str) -> int:
    # Pool first, as every writer does, before post_entries locks the wallets.
    row = await conn.execute(
        text(
            "SELECT id FROM ledger_accounts WHERE pool_id = :pool AND partner_id = :partner_id "
            "AND environment = :environment FOR NO KEY UPDATE"
        ),
        {**scope.params, "pool": pool_id},
    )
    return int(row.scalar_one())


async def _campaign_spend(
    conn: AsyncConnection,
    scope: Scope,
    action: dict[str, Any],
    total: int,
    taken_by_user: dict[str, int],
) -> None:
    """The campaign's spentTokens goes down by every reversed token (organizations' included);
    each user's spend in the campaign by that user's part."""
    if not action["campaign_id"]:
        return
    await conn.execute(
        text(
            "UPDATE campaigns SET spent_tokens = greatest(spent_tokens - :t, 0), updated_at = now() "
            "WHERE id = :id AND partner_id = :partner_id AND environment = :environment"
        ),
        {**scope.params, "id": action["campaign_id"], "t": total},
    )
    for user_id, taken in taken_by_user.items():
        await conn.execute(
            text(
                "UPDATE campaign_user_spend SET spent_tokens = greatest(spent_tokens - :t, 0) "
                "WHERE campaign_id = :c AND partner_user_id = :u"
            ),
            {"t": taken, "c": action["campaign_id"], "u": user_id},
        )
