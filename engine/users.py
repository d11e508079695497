"""Partner users: the people a partner rewards, keyed by the partner's own `externalUserId`.

Owns creating (upsert), reading, listing and editing users, and the read side of their wallets:
the balance figures and the wallet's ledger lines (transactions). Every query is scoped by
partner and environment, so another partner's or environment's user is simply not found.

Metadata follows Stripe: up to 50 keys of at most 40 characters, string values of at most 500
characters. An update merges keys into what is stored; a key set to null or "" is removed, and
`metadata: null` clears them all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import (
    ARRAY,
    BigInteger,
    and_,
    bindparam,
    func,
    literal,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.errors import NotFound, ValidationFailed
from engine.ids import new_id
from engine.money import Tokens
from engine.pagination import next_cursor, read_page
from engine.scope import Scope
from engine.tables import POSTING_TYPES, ledger_accounts, partner_users

MAX_EXTERNAL_ID = 255
MAX_EMAIL = 254  # RFC 5321's practical limit on a forward path
MAX_NAME = 255
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY = 40
MAX_METADATA_VALUE = 500
EXPIRING_SOON = timedelta(days=30)
# Lots are grouped by their exact expiry instant; a user credited many times a day could have
# hundreds of groups, so the answer is capped (earliest first) rather than unbounded.
MAX_EXPIRING_GROUPS = 100

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Deliberately loose (one @, a dot in the domain, no spaces): partners own their users' addresses,
# we only refuse what is clearly not one.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")


class _Unset:
    """Marks a field the caller did not send (as opposed to sending null to clear it)."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Final = _Unset()

MetadataPatch = Mapping[str, str | None]


@dataclass(frozen=True, slots=True)
class PartnerUser:
    id: str
    external_user_id: str
    email: str | None
    first_name: str | None
    last_name: str | None
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Vesting:
    amount: Tokens
    at: datetime


@dataclass(frozen=True, slots=True)
class Expiring:
    amount: Tokens
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Balance:
    external_user_id: str
    available: Tokens  # may be negative: a debt left by a reversal
    locked: Tokens
    total: Tokens
    lifetime_earned: Tokens
    lifetime_redeemed: Tokens  # net of refunds
    lifetime_expired: Tokens
    lifetime_reversed: Tokens
    next_vesting: Vesting | None
    expiring_soon: tuple[Expiring, ...]


@dataclass(frozen=True, slots=True)
class Transaction:
    """One ledger line on a user's wallet, signed from the wallet's point of view."""

    id: str
    type: str
    amount: Tokens
    wallet: str  # AVAILABLE or LOCKED: which of the user's two balances the line moved
    pool_id: str | None
    external_user_id: str
    action_id: str | None
    order_id: str | None
    created_at: datetime
    vests_at: datetime | None
    expires_at: datetime | None


# -- validation (the wire models call these too, so each rule is written once) ---------------------


def external_id_problems(value: str) -> list[str]:
    if not 1 <= len(value) <= MAX_EXTERNAL_ID:
        return [f"must be 1 to {MAX_EXTERNAL_ID} characters"]
    if _CONTROL.search(value):
        return ["must not contain control characters"]
    return []


def email_problems(value: str) -> list[str]:
    if len(value) > MAX_EMAIL or not _EMAIL.match(value):
        return ["must be an email address"]
    return []


def name_problems(value: str) -> list[str]:
    if len(value) > MAX_NAME:
        return [f"must be at most {MAX_NAME} characters"]
    if _CONTROL.search(value):
        return ["must not contain control characters"]
    return []


def metadata_problems(value: Mapping[str, Any]) -> list[str]:
    """Problems with a metadata object as sent (null values allowed: they mean remove)."""
    problems: list[str] = []
    if len(value) > MAX_METADATA_KEYS:
        problems.append(f"may hold at most {MAX_METADATA_KEYS} keys")
    for key, item in value.items():
        if not 1 <= len(key) <= MAX_METADATA_KEY:
            problems.append(
                f"key {key[:MAX_METADATA_KEY]!r} must be 1 to {MAX_METADATA_KEY} characters"
            )
        if item is not None and not isinstance(item, str):
            problems.append(f"value of {key!r} must be a string (or null to remove it)")
        elif item is not None and len(item) > MAX_METADATA_VALUE:
            problems.append(f"value of {key!r} must be at most {MAX_METADATA_VALUE} characters")
    return problems


def _check_fields(
    *,
    external_user_id: str | None = None,
    email: str | None | _Unset = UNSET,
    first_name: str | None | _Unset = UNSET,
    last_name: str | None | _Unset = UNSET,
    metadata: MetadataPatch | None | _Unset = UNSET,
) -> None:
    problems: dict[str, list[str]] = {}
    if external_user_id is not None and (found := external_id_problems(external_user_id)):
        problems["externalUserId"] = found
    if isinstance(email, str) and (found := email_problems(email)):
        problems["email"] = found
    for field, value in (("firstName", first_name), ("lastName", last_name)):
        if isinstance(value, str) and (found := name_problems(value)):
            problems[field] = found
    if isinstance(metadata, Mapping) and (found := metadata_problems(metadata)):
        problems["metadata"] = found
    if problems:
        raise ValidationFailed(problems)


def merge_metadata(current: Mapping[str, str], patch: MetadataPatch | None) -> dict[str, str]:
    """Stripe's rule: keys merge in, a key set to null or "" is removed, None clears all."""
    if patch is None:
        return {}
    merged = dict(current)
    for key, value in patch.items():
        if value is None or value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


# -- reading ---------------------------------------------------------------------------------------


def _user(row: RowMapping | Mapping[str, Any]) -> PartnerUser:
    return PartnerUser(
        id=row["id"],
        external_user_id=row["external_user_id"],
        email=row["email"],
        first_name=row["first_name"],
        last_name=row["last_name"],
        metadata=dict(row["metadata"] or {}),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _in_scope(scope: Scope) -> Any:
    return and_(
        partner_users.c.partner_id == scope.partner_id,
        partner_users.c.environment == scope.environment,
    )


async def _row(
    conn: AsyncConnection, scope: Scope, external_user_id: str, *, for_update: bool = False
) -> RowMapping:
    query = select(partner_users).where(
        _in_scope(scope), partner_users.c.external_user_id == external_user_id
    )
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).mappings().first()
    if row is None:
        raise NotFound(
            f"user {external_user_id!r} not found", details={"externalUserId": external_user_id}
        )
    return row


async def get_user(conn: AsyncConnection, scope: Scope, external_user_id: str) -> PartnerUser:
    """The user with this external id in `scope`. Raises NotFound (also for other scopes)."""
    return _user(await _row(conn, scope, external_user_id))


async def list_users(
    conn: AsyncConnection,
    scope: Scope,
    *,
    limit: str | None = None,
    cursor: str | None = None,
    email: str | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
) -> tuple[list[PartnerUser], str | None]:
    """One page of users, newest first, and the cursor of the next page (None on the last).

    `email` matches case-insensitively; `created_from` is inclusive, `created_to` exclusive.
    Raises ValidationFailed (limit) and InvalidCursor (a foreign cursor, or changed filters).
    """
    email_key = email.lower() if email else None
    page = read_page(
        limit,
        cursor,
        {"email": email_key, "from": created_from, "to": created_to},
    )
    query = select(partner_users).where(_in_scope(scope))
    if email_key is not None:
        query = query.where(func.lower(partner_users.c.email) == email_key)
    if created_from is not None:
        query = query.where(partner_users.c.created_at >= created_from)
    if created_to is not None:
        query = query.where(partner_users.c.created_at < created_to)
    if page.after is not None:
        query = query.where(
            tuple_(partner_users.c.created_at, partner_users.c.id)
            < tuple_(literal(page.after[0]), literal(page.after[1]))
        )
    query = query.order_by(partner_users.c.created_at.desc(), partner_users.c.id.desc()).limit(
        page.limit + 1
    )
    rows: list[Mapping[str, Any]] = [dict(row) for row in (await conn.execute(query)).mappings()]
    return [_user(row) for row in rows[: page.limit]], next_cursor(page, rows)


# -- writing ---------------------------------------------------------------------------------------


async def upsert_user(
    conn: AsyncConnection,
    scope: Scope,
    external_user_id: str,
    *,
    email: str | None | _Unset = UNSET,
    first_name: str | None | _Unset = UNSET,
    last_name: str | None | _Unset = UNSET,
    metadata: MetadataPatch | None | _Unset = UNSET,
) -> tuple[PartnerUser, bool]:
    """Create the user, or update the fields sent if it exists. Returns (user, created).

    Safe under concurrency: two upserts of one new id both succeed, one creating, one updating.
    Fields not sent are left alone; on update they follow `update_user`'s rules.
    Raises ValidationFailed.
    """
    _check_fields(
        external_user_id=external_user_id,
        email=email,
        first_name=first_name,
        last_name=last_name,
        metadata=metadata,
    )
    inserted = (
        (
            await conn.execute(
                pg_insert(partner_users)
                .values(
                    id=new_id(),
                    partner_id=scope.partner_id,
                    environment=scope.environment,
                    external_user_id=external_user_id,
                    email=email or None,
                    first_name=first_name or None,
                    last_name=last_name or None,
                    metadata=merge_metadata({}, None if isinstance(metadata, _Unset) else metadata),
                )
                .on_conflict_do_nothing(
                    index_elements=["partner_id", "environment", "external_user_id"]
                )
                .returning(partner_users)
            )
        )
        .mappings()
        .first()
    )
    if inserted is not None:
        return _user(inserted), True
    updated = await update_user(
        conn,
        scope,
        external_user_id,
        email=email,
        first_name=first_name,
        last_name=last_name,
        metadata=metadata,
    )
    return updated, False


async def update_user(
    conn: AsyncConnection,
    scope: Scope,
    external_user_id: str,
    *,
    email: str | None | _Unset = UNSET,
    first_name: str | None | _Unset = UNSET,
    last_name: str | None | _Unset = UNSET,
    metadata: MetadataPatch | None | _Unset = UNSET,
) -> PartnerUser:
    """Change the fields sent (null or "" clears email and names; metadata merges).

    `updated_at` moves only when something actually changed. Raises NotFound, ValidationFailed
    (including a merge that would pass 50 metadata keys).
    """
    _check_fields(email=email, first_name=first_name, last_name=last_name, metadata=metadata)
    # Row lock: the metadata merge is read-modify-write and must not lose a concurrent update.
    row = await _row(conn, scope, external_user_id, for_update=True)
    changes: dict[str, Any] = {}
    for column, value in (("email", email), ("first_name", first_name), ("last_name", last_name)):
        if value is not UNSET and (value or None) != row[column]:
            changes[column] = value or None
    if not isinstance(metadata, _Unset):
        merged = merge_metadata(row["metadata"] or {}, metadata)
        if len(merged) > MAX_METADATA_KEYS:
            raise ValidationFailed(
                {"metadata": [f"may hold at most {MAX_METADATA_KEYS} keys after merging"]}
            )
        if merged != row["metadata"]:
            changes["metadata"] = merged
    if not changes:
        return _user(row)
    fresh = (
        (
            await conn.execute(
                update(partner_users)
                .where(partner_users.c.id == row["id"], _in_scope(scope))
                .values(**changes, updated_at=func.now())
                .returning(partner_users)
            )
        )
        .mappings()
        .one()
    )
    return _user(fresh)


# -- wallet read side ----------------------------------------------------------------------------------


async def _wallet_accounts(
    conn: AsyncConnection, scope: Scope, user_id: str
) -> dict[str, tuple[int, int]]:
    """kind → (account id, cached balance) for the user's wallet; empty if never credited.

    Reading never opens accounts: a GET must not write.
    """
    rows = await conn.execute(
        select(ledger_accounts.c.kind, ledger_accounts.c.id, ledger_accounts.c.balance).where(
            ledger_accounts.c.partner_user_id == user_id,
            ledger_accounts.c.partner_id == scope.partner_id,
            ledger_accounts.c.environment == scope.environment,
            ledger_accounts.c.kind.in_(("WALLET_AVAILABLE", "WALLET_LOCKED")),
        )
    )
    return {kind: (int(account_id), int(balance)) for kind, account_id, balance in rows}


_ACCOUNT_IDS = bindparam("account_ids", type_=ARRAY(BigInteger))

_TOTALS_BY_TYPE = text(
    "SELECT type, sum(amount) FROM postings WHERE account_id = ANY(:account_ids) "
    "AND partner_id = :partner_id AND environment = :environment GROUP BY type"
).bindparams(_ACCOUNT_IDS)

_NEXT_VESTING = text(
    "SELECT vests_at, sum(remaining) FROM lots WHERE account_id = :account_id AND remaining > 0 "
    "AND vests_at IS NOT NULL AND partner_id = :partner_id AND environment = :environment "
    "GROUP BY vests_at ORDER BY vests_at LIMIT 1"
)

# Lots already past their date but not yet swept are still in the balance and about to go, so
# they are listed too (there is no lower bound).
_EXPIRING = text(
    "SELECT expires_at, sum(remaining) FROM lots WHERE account_id = ANY(:account_ids) "
    "AND remaining > 0 AND expires_at IS NOT NULL AND expires_at <= :horizon "
    "AND partner_id = :partner_id AND environment = :environment "
    "GROUP BY expires_at ORDER BY expires_at LIMIT :max_groups"
).bindparams(_ACCOUNT_IDS)


async def get_balance(
    conn: AsyncConnection, scope: Scope, external_user_id: str, *, now: datetime | None = None
) -> Balance:
    """The user's balance figures. Raises NotFound.

    Run it in one REPEATABLE READ transaction for figures that agree with each other while
    actions land concurrently (it reads several tables).
    Lifetime figures are positive: earned = credits; redeemed = redemptions net of refunds;
    expired; reversed. For any wallet, total = earned - redeemed - expired - reversed.
    """
    user = await _row(conn, scope, external_user_id)
    accounts = await _wallet_accounts(conn, scope, user["id"])
    available = Tokens(accounts.get("WALLET_AVAILABLE", (0, 0))[1])
    locked = Tokens(accounts.get("WALLET_LOCKED", (0, 0))[1])
    by_type: dict[str, int] = {}
    next_vesting: Vesting | None = None
    expiring: list[Expiring] = []
    if accounts:
        ids = [account_id for account_id, _ in accounts.values()]
        rows = await conn.execute(_TOTALS_BY_TYPE, {**scope.params, "account_ids": ids})
        by_type = {kind: int(total) for kind, total in rows}
        if "WALLET_LOCKED" in accounts:
            found = (
                await conn.execute(
                    _NEXT_VESTING, {**scope.params, "account_id": accounts["WALLET_LOCKED"][0]}
                )
            ).first()
            if found is not None:
                next_vesting = Vesting(amount=Tokens(int(found[1])), at=found[0])
        moment = now or (await conn.execute(select(func.now()))).scalar_one()
        rows = await conn.execute(
            _EXPIRING,
            {
                **scope.params,
                "account_ids": ids,
                "horizon": moment + EXPIRING_SOON,
                "max_groups": MAX_EXPIRING_GROUPS,
            },
        )
        expiring = [Expiring(amount=Tokens(int(total)), expires_at=at) for at, total in rows]
    return Balance(
        external_user_id=external_user_id,
        available=available,
        locked=locked,
        total=available + locked,
        lifetime_earned=Tokens(by_type.get("CREDIT", 0)),
        lifetime_redeemed=Tokens(-(by_type.get("REDEMPTION", 0) + by_type.get("REFUND", 0))),
        lifetime_expired=Tokens(-by_type.get("EXPIRATION", 0)),
        lifetime_reversed=Tokens(-by_type.get("REVERSAL", 0)),
        next_vesting=next_vesting,
        expiring_soon=tuple(expiring),
    )


# The page is cut first (inner query) and only its rows are enriched. The pool a line concerns:
# the pool leg of its own journal entry (distribution, reversal), else the pool of the action
# the entry belongs to (vesting and expiry entries have no pool leg).
_PAGE = """
SELECT p.id, p.type, p.amount, p.created_at, p.account_id, p.entry_id
FROM postings p
WHERE p.account_id = ANY(:account_ids)
  AND p.partner_id = :partner_id AND p.environment = :environment{filters}
ORDER BY p.created_at DESC, p.id DESC LIMIT :n
"""

_ENRICHED = """
SELECT pg.id, pg.type, pg.amount, pg.created_at, a.kind AS account_kind, e.action_id,
       e.order_id, l.vests_at, l.expires_at,
       COALESCE(
         (SELECT pa.pool_id FROM postings pp JOIN ledger_accounts pa ON pa.id = pp.account_id
           WHERE pp.entry_id = pg.entry_id AND pa.kind = 'POOL' LIMIT 1),
         (SELECT ac.pool_id FROM actions ac WHERE ac.id = e.action_id
           AND ac.partner_id = :partner_id AND ac.environment = :environment)
       ) AS pool_id
FROM ({page}) pg
JOIN ledger_accounts a ON a.id = pg.account_id
JOIN journal_entries e ON e.id = pg.entry_id
LEFT JOIN lots l ON l.posting_id = pg.id
ORDER BY pg.created_at DESC, pg.id DESC
"""


async def list_transactions(
    conn: AsyncConnection,
    scope: Scope,
    external_user_id: str,
    *,
    limit: str | None = None,
    cursor: str | None = None,
    posting_type: str | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
) -> tuple[list[Transaction], str | None]:
    """One page of the ledger lines on the user's wallet, newest first, and the next cursor.

    Amounts are signed from the wallet's side (a credit is positive, a reversal negative); a
    vesting shows as two lines, LOCKED minus and AVAILABLE plus, so the lines always add up to
    the balance. Raises NotFound, ValidationFailed, InvalidCursor.
    """
    if posting_type is not None and posting_type not in POSTING_TYPES:
        raise ValidationFailed({"type": [f"must be one of {', '.join(POSTING_TYPES)}"]})
    page = read_page(
        limit,
        cursor,
        {
            "externalUserId": external_user_id,
            "type": posting_type,
            "from": created_from,
            "to": created_to,
        },
    )
    user = await _row(conn, scope, external_user_id)
    accounts = await _wallet_accounts(conn, scope, user["id"])
    if not accounts:
        return [], None
    filters = ""
    params: dict[str, Any] = {
        **scope.params,
        "account_ids": [account_id for account_id, _ in accounts.values()],
        "n": page.limit + 1,
    }
    if posting_type is not None:
        filters += " AND p.type = :type"
        params["type"] = posting_type
    if created_from is not None:
        filters += " AND p.created_at >= :created_from"
        params["created_from"] = created_from
    if created_to is not None:
        filters += " AND p.created_at < :created_to"
        params["created_to"] = created_to
    if page.after is not None:
        filters += " AND (p.created_at, p.id) < (:after_t, :after_id)"
        params["after_t"], params["after_id"] = page.after
    # Only fixed fragments are spliced in; every value is a bound parameter.
    sql = _ENRICHED.format(page=_PAGE.format(filters=filters))
    result = await conn.execute(text(sql).bindparams(_ACCOUNT_IDS), params)
    rows: list[Mapping[str, Any]] = [dict(row) for row in result.mappings()]
    lines = [
        Transaction(
            id=row["id"],
            type=row["type"],
            amount=Tokens(int(row["amount"])),
            wallet="LOCKED" if row["account_kind"] == "WALLET_LOCKED" else "AVAILABLE",
            pool_id=row["pool_id"],
            external_user_id=external_user_id,
            action_id=row["action_id"],
            order_id=row["order_id"],
            created_at=row["created_at"],
            vests_at=row["vests_at"],
            expires_at=row["expires_at"],
        )
        for row in rows[: page.limit]
    ]
    return lines, next_cursor(page, rows)


__all__ = [
    "UNSET",
    "Balance",
    "Expiring",
    "PartnerUser",
    "Transaction",
    "Vesting",
    "get_balance",
    "get_user",
    "list_transactions",
    "list_users",
    "merge_metadata",
    "update_user",
    "upsert_user",
]
