"""The partner's ledger lines (`GET /transactions`): postings on its pools and wallets.

What is shown. A line is one posting on an account the partner thinks in: a token pool, or the
available or locked wallet of one of its users or of an organization. The postings on internal
accounts (issuance, refill reserve, expiry and redemption sinks) are the other side of those
same movements and are not shown: every movement already appears on the pool or wallet it
touched, and listing both legs would show each movement twice.

Sign. `amount` is signed from the side of the account the line is on, so the lines of an
account add up to its balance:
  - wallet lines: CREDIT and REFUND are positive (tokens to the user or organization); REVERSAL,
    EXPIRATION and REDEMPTION negative; a vesting is two VESTING lines, the locked wallet minus
    and the available wallet plus (`wallet` says which);
  - pool lines (no externalUserId or organizationSlug; `wallet` is null): ALLOCATION and REFILL
    positive (tokens into the pool), DEBIT negative (a distribution), REVERSAL positive (tokens
    returning from a reversal).

`poolId` is the pool the line concerns: the pool itself for pool lines; for wallet lines the
pool leg of the same journal entry, else the pool of the action the entry belongs to (vesting and
expiry entries have no pool leg).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.errors import ValidationFailed
from engine.money import Tokens
from engine.pagination import next_cursor, read_page
from engine.scope import Scope
from engine.tables import POSTING_TYPES


@dataclass(frozen=True, slots=True)
class Filters:
    """The query of `GET /transactions`; every field optional. `created_from` is inclusive,
    `created_to` exclusive."""

    type: str | None = None
    external_user_id: str | None = None
    action_id: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None

    def as_cursor_filters(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "externalUserId": self.external_user_id,
            "actionId": self.action_id,
            "from": self.created_from,
            "to": self.created_to,
        }


def parse_time(name: str, raw: str | None) -> datetime | None:
    """An RFC 3339 time from a query parameter (None when absent or empty).

    Raises ValidationFailed on `name` for anything else, including a time without an offset.
    """
    if raw is None or raw == "":
        return None
    # An unencoded "+" of a UTC offset arrives as a space (form decoding of the query string).
    candidate = raw.replace(" ", "+")
    try:
        moment = datetime.fromisoformat(candidate)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ValidationFailed({name: ["must be an RFC 3339 time with an offset"]})
    return moment


def filter_problems(filters: Filters) -> dict[str, list[str]]:
    problems: dict[str, list[str]] = {}
    if filters.type is not None and filters.type not in POSTING_TYPES:
        problems["type"] = [f"must be one of {', '.join(POSTING_TYPES)}"]
    if (
        filters.created_from is not None
        and filters.created_to is not None
        and filters.created_to <= filters.created_from
    ):
        problems["to"] = ["must be after from"]
    return problems


_LINES = """
SELECT p.id, p.type, p.amount, p.created_at, a.kind AS account_kind,
       u.external_user_id, o.slug AS organization_slug, e.action_id, e.order_id,
       l.vests_at, l.expires_at,
       CASE WHEN a.kind = 'POOL' THEN a.pool_id ELSE COALESCE(
         (SELECT pa.pool_id FROM postings pp JOIN ledger_accounts pa ON pa.id = pp.account_id
           WHERE pp.entry_id = p.entry_id AND pa.kind = 'POOL' LIMIT 1),
         (SELECT ac.pool_id FROM actions ac WHERE ac.id = e.action_id
           AND ac.partner_id = p.partner_id AND ac.environment = p.environment)
       ) END AS pool_id
FROM postings p
JOIN ledger_accounts a ON a.id = p.account_id
JOIN journal_entries e ON e.id = p.entry_id
LEFT JOIN partner_users u ON u.id = a.partner_user_id
LEFT JOIN organizations o ON o.id = a.organization_id
LEFT JOIN lots l ON l.posting_id = p.id
WHERE p.partner_id = :partner_id AND p.environment = :environment
  AND a.kind IN ('POOL', 'WALLET_AVAILABLE', 'WALLET_LOCKED')
"""


def line_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """One line on the wire. Optional fields are present with null when they do not apply."""
    kind = row["account_kind"]
    return {
        "id": row["id"],
        "type": row["type"],
        "amount": Tokens(int(row["amount"])),
        "poolId": row["pool_id"],
        "wallet": {"WALLET_AVAILABLE": "AVAILABLE", "WALLET_LOCKED": "LOCKED"}.get(kind),
        "externalUserId": row["external_user_id"],
        "organizationSlug": row["organization_slug"],
        "actionId": row["action_id"],
        "orderId": row["order_id"],
        "createdAt": row["created_at"],
        "vestsAt": row["vests_at"],
        "expiresAt": row["expires_at"],
    }


async def list_lines(
    conn: AsyncConnection,
    scope: Scope,
    filters: Filters,
    *,
    limit: str | None = None,
    cursor: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the scope's ledger lines (wire shape), newest first, and the next cursor.

    `external_user_id` keeps the lines of that user's wallets (an unknown user gives an empty
    page, as any filter that matches nothing does); `action_id` the lines of the action's
    journal entries (distribution, reversal, and vesting/expiry of its lots when recorded with
    it). Raises ValidationFailed, InvalidCursor.
    """
    problems = filter_problems(filters)
    if problems:
        raise ValidationFailed(problems)
    page = read_page(limit, cursor, filters.as_cursor_filters())
    sql = _LINES
    params: dict[str, Any] = {**scope.params, "n": page.limit + 1}
    if filters.type is not None:
        sql += " AND p.type = :type"
        params["type"] = filters.type
    if filters.external_user_id is not None:
        sql += " AND u.external_user_id = :external_user_id AND u.partner_id = p.partner_id"
        params["external_user_id"] = filters.external_user_id
    if filters.action_id is not None:
        sql += " AND e.action_id = :action_id"
        params["action_id"] = filters.action_id
    if filters.created_from is not None:
        sql += " AND p.created_at >= :created_from"
        params["created_from"] = filters.created_from
    if filters.created_to is not None:
        sql += " AND p.created_at < :created_to"
        params["created_to"] = filters.created_to
    if page.after is not None:
        sql += " AND (p.created_at, p.id) < (:after_t, :after_id)"
        params["after_t"], params["after_id"] = page.after
    sql += " ORDER BY p.created_at DESC, p.id DESC LIMIT :n"
    rows: list[Mapping[str, Any]] = [
        dict(row) for row in (await conn.execute(text(sql), params)).mappings()
    ]
    return [line_json(row) for row in rows[: page.limit]], next_cursor(page, rows)


__all__ = ["Filters", "filter_problems", "line_json", "list_lines", "parse_time"]
