"""Ledger accounts: finding or opening the account a movement needs.

Accounts are opened lazily and concurrently (two actions may reward a new user at once), so each
opener is an `INSERT ... ON CONFLICT DO NOTHING` followed by a read, which never fails on a race.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ARRAY, Text, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.scope import Scope

SINGLETON_KINDS = ("ISSUANCE", "RESERVE", "SINK_EXPIRED", "SINK_REDEEMED")


@dataclass(frozen=True, slots=True)
class Wallet:
    """A user's or organization's pair of accounts: spendable tokens and unvested ones."""

    available_id: int
    locked_id: int


async def singleton_account(conn: AsyncConnection, scope: Scope, kind: str) -> int:
    """The partner-environment's one account of `kind` (issuance, reserve or a sink)."""
    if kind not in SINGLETON_KINDS:
        raise ValueError(f"{kind} is not a singleton account kind")
    await conn.execute(
        text(
            "INSERT INTO ledger_accounts (partner_id, environment, kind) "
            "VALUES (:partner_id, :environment, :kind) "
            "ON CONFLICT (partner_id, environment, kind) "
            "WHERE kind IN ('ISSUANCE', 'RESERVE', 'SINK_EXPIRED', 'SINK_REDEEMED') DO NOTHING"
        ),
        {**scope.params, "kind": kind},
    )
    row = await conn.execute(
        text(
            "SELECT id FROM ledger_accounts WHERE partner_id = :partner_id "
            "AND environment = :environment AND kind = :kind"
        ),
        {**scope.params, "kind": kind},
    )
    return int(row.scalar_one())


async def open_pool_account(conn: AsyncConnection, scope: Scope, pool_id: str) -> int:
    row = await conn.execute(
        text(
            "INSERT INTO ledger_accounts (partner_id, environment, kind, pool_id) "
            "VALUES (:partner_id, :environment, 'POOL', :pool_id) RETURNING id"
        ),
        {**scope.params, "pool_id": pool_id},
    )
    return int(row.scalar_one())


async def pool_account(conn: AsyncConnection, scope: Scope, pool_id: str) -> int | None:
    row = await conn.execute(
        text(
            "SELECT id FROM ledger_accounts WHERE pool_id = :pool_id "
            "AND partner_id = :partner_id AND environment = :environment"
        ),
        {**scope.params, "pool_id": pool_id},
    )
    found = row.scalar_one_or_none()
    return None if found is None else int(found)


async def wallet(
    conn: AsyncConnection,
    scope: Scope,
    *,
    partner_user_id: str | None = None,
    organization_id: str | None = None,
) -> Wallet:
    """The wallet of exactly one owner (a partner user or an organization), opened if new."""
    if (partner_user_id is None) == (organization_id is None):
        raise ValueError("a wallet belongs to exactly one user or organization")
    owner_col = "partner_user_id" if partner_user_id is not None else "organization_id"
    owner = partner_user_id if partner_user_id is not None else organization_id
    conflict = (
        "(partner_user_id, kind) WHERE partner_user_id IS NOT NULL"
        if partner_user_id is not None
        else "(partner_id, environment, organization_id, kind) WHERE organization_id IS NOT NULL"
    )
    await conn.execute(
        text(
            f"INSERT INTO ledger_accounts (partner_id, environment, kind, {owner_col}) "  # noqa: S608
            "VALUES (:partner_id, :environment, 'WALLET_AVAILABLE', :owner), "
            "(:partner_id, :environment, 'WALLET_LOCKED', :owner) "
            f"ON CONFLICT {conflict} DO NOTHING"
        ),
        {**scope.params, "owner": owner},
    )
    rows = await conn.execute(
        text(
            f"SELECT kind, id FROM ledger_accounts WHERE {owner_col} = :owner "  # noqa: S608
            "AND partner_id = :partner_id AND environment = :environment "
            "AND kind IN ('WALLET_AVAILABLE', 'WALLET_LOCKED')"
        ),
        {**scope.params, "owner": owner},
    )
    ids = {kind: int(account_id) for kind, account_id in rows}
    return Wallet(available_id=ids["WALLET_AVAILABLE"], locked_id=ids["WALLET_LOCKED"])


async def wallets_for(
    conn: AsyncConnection,
    scope: Scope,
    *,
    user_ids: Sequence[str] = (),
    organization_ids: Sequence[str] = (),
) -> dict[tuple[str, str], Wallet]:
    """Wallets of many owners at once (opened where new), keyed ("user"|"organization", id).

    Two statements whatever the count: the distribution hot path calls this once per batch.
    """
    users = sorted(set(user_ids))
    orgs = sorted(set(organization_ids))
    if users:
        await conn.execute(
            text(
                "INSERT INTO ledger_accounts (partner_id, environment, kind, partner_user_id) "
                "SELECT :partner_id, :environment, k.kind, u.id FROM unnest(:ids) AS u(id) "
                "CROSS JOIN (VALUES ('WALLET_AVAILABLE'), ('WALLET_LOCKED')) AS k(kind) "
                "ON CONFLICT (partner_user_id, kind) WHERE partner_user_id IS NOT NULL DO NOTHING"
            ).bindparams(bindparam("ids", type_=ARRAY(Text))),
            {**scope.params, "ids": users},
        )
    if orgs:
        await conn.execute(
            text(
                "INSERT INTO ledger_accounts (partner_id, environment, kind, organization_id) "
                "SELECT :partner_id, :environment, k.kind, o.id FROM unnest(:ids) AS o(id) "
                "CROSS JOIN (VALUES ('WALLET_AVAILABLE'), ('WALLET_LOCKED')) AS k(kind) "
                "ON CONFLICT (partner_id, environment, organization_id, kind) "
                "WHERE organization_id IS NOT NULL DO NOTHING"
            ).bindparams(bindparam("ids", type_=ARRAY(Text))),
            {**scope.params, "ids": orgs},
        )
    if not users and not orgs:
        return {}
    rows = await conn.execute(
        text(
            "SELECT partner_user_id, organization_id, kind, id FROM ledger_accounts "
            "WHERE partner_id = :partner_id AND environment = :environment "
            "AND kind IN ('WALLET_AVAILABLE', 'WALLET_LOCKED') "
            "AND (partner_user_id = ANY(:users) OR organization_id = ANY(:orgs))"
        ).bindparams(bindparam("users", type_=ARRAY(Text)), bindparam("orgs", type_=ARRAY(Text))),
        {**scope.params, "users": users, "orgs": orgs},
    )
    found: dict[tuple[str, str], dict[str, int]] = {}
    for user_id, org_id, kind, account_id in rows:
        owner = ("user", user_id) if user_id is not None else ("organization", org_id)
        found.setdefault(owner, {})[kind] = int(account_id)
    return {
        owner: Wallet(ids["WALLET_AVAILABLE"], ids["WALLET_LOCKED"]) for owner, ids in found.items()
    }
