"""Sweeps: the ledger's work driven by the clock rather than by a request.

Vesting (locked lots whose date has come move to the available account), expiry (open lots past
their date go to the expired sink), auto-refill (pools below their refill threshold draw on the
partner's reserve), low-balance alerts (once per crossing) and API-key expiry alerts.

Every function takes `now` (tests move the clock by passing it), works on at most `limit` rows
claimed with `FOR UPDATE SKIP LOCKED` in the caller's transaction, and returns how many it
handled: any number of workers can share a sweep, and a caller loops until a batch comes back
empty. Rows locked by someone else are skipped, never waited for; the next run picks them up.

Lock order, as everywhere in the engine: lots, then ledger accounts (one statement, id order,
in `post_entries`), and for pools the pool account before the reserve and the pool row.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ARRAY, BigInteger, SmallInteger, Text, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.accounts import singleton_account
from engine.ledger import EntryDraft, Leg, post_entries
from engine.money import Tokens
from engine.outbox import Event, record_events
from engine.scope import Scope

# Days before `expiresAt` at which `api_key.expiring` is sent (API.md section 9).
KEY_ALERT_DAYS = (14, 7, 1)

_IDS = bindparam("ids", type_=ARRAY(BigInteger))
_TEXT_IDS = bindparam("ids", type_=ARRAY(Text))


def _scope(partner_id: str, environment: str) -> Scope:
    return Scope(partner_id, environment)  # type: ignore[arg-type]


def _scope_order(scope: Scope) -> tuple[str, str]:
    # Scopes in a fixed order, so two sweepers whose batches share wallets in several scopes
    # lock those accounts in the same order.
    return scope.partner_id, scope.environment


def _owner(external_user_id: str | None, organization_slug: str | None) -> dict[str, str]:
    """A wallet's holder as partners name them in events."""
    if external_user_id is not None:
        return {"externalUserId": external_user_id}
    return {"organizationSlug": organization_slug or ""}


# -- vesting ------------------------------------------------------------------------------------
#
# The per-lot work stays in PostgreSQL: one statement claims the due lots (ix_lots_vest_due,
# which holds exactly the lots waiting to vest), moves them to their wallet's available account
# and answers one row per wallet. Python only sees wallets (entries, events) and, for the rare
# wallet in debt, that wallet's lots.

_VEST_SQL = text(
    """
WITH claimed AS (
    SELECT id, account_id FROM lots
     WHERE remaining > 0 AND vests_at IS NOT NULL AND vested_at IS NULL AND vests_at <= :now
     ORDER BY vests_at LIMIT :limit FOR UPDATE SKIP LOCKED
), pairs AS (
    SELECT k.id AS locked_id, v.id AS available_id, u.external_user_id, NULL::text AS slug
      FROM ledger_accounts k
      JOIN ledger_accounts v ON v.partner_user_id = k.partner_user_id AND v.kind = 'WALLET_AVAILABLE'
      JOIN partner_users u ON u.id = k.partner_user_id
     WHERE k.kind = 'WALLET_LOCKED'
       AND k.id IN (SELECT account_id FROM claimed)
    UNION ALL
    SELECT k.id, v.id, NULL, o.slug
      FROM ledger_accounts k
      JOIN ledger_accounts v ON v.organization_id = k.organization_id
       AND v.partner_id = k.partner_id AND v.environment = k.environment
       AND v.kind = 'WALLET_AVAILABLE'
      JOIN organizations o ON o.id = k.organization_id
     WHERE k.kind = 'WALLET_LOCKED'
       AND k.id IN (SELECT account_id FROM claimed)
), moved AS (
    -- A lot not in a locked account (none by construction) is only marked, not moved.
    UPDATE lots SET account_id = coalesce(p.available_id, c.account_id), vested_at = :now
      FROM claimed c LEFT JOIN pairs p ON p.locked_id = c.account_id
     WHERE lots.id = c.id
    RETURNING lots.id, lots.partner_id, lots.environment, lots.remaining, lots.expires_at,
              p.locked_id, p.available_id, p.external_user_id, p.slug
)
SELECT partner_id, environment, locked_id, available_id, external_user_id, slug,
       sum(remaining) AS amount, count(*) AS lots,
       array_agg(id ORDER BY expires_at ASC NULLS LAST, id) AS lot_ids,
       array_agg(remaining ORDER BY expires_at ASC NULLS LAST, id) AS remainings
  FROM moved GROUP BY partner_id, environment, locked_id, available_id, external_user_id, slug
"""
)

_REPAY_SQL = text(
    "UPDATE lots SET remaining = t.remaining FROM (SELECT unnest(:ids) AS id, "
    "unnest(:remainings) AS remaining) t WHERE lots.id = t.id"
).bindparams(_IDS, bindparam("remainings", type_=ARRAY(BigInteger)))


async def vest_due(conn: AsyncConnection, now: datetime, limit: int) -> int:
    """Vest up to `limit` locked lots whose `vests_at` <= `now`. Returns how many lots vested.

    Per wallet, one VESTING entry moves the lots' remaining tokens from the locked account to the
    available one, and the lots move with them (`vests_at` kept, `vested_at` = now). A wallet in
    debt is repaid first, from its earliest-expiring lots: the repaid part opens no spendable
    lot, so the available account's open lots still sum to max(balance, 0). Records
    `tokens.vested` per wallet.
    """
    rows = (await conn.execute(_VEST_SQL, {"now": now, "limit": limit})).all()
    handled = sum(int(row.lots) for row in rows)
    by_scope: dict[Scope, list[Any]] = defaultdict(list)
    for row in rows:
        if row.locked_id is not None and int(row.amount) > 0:
            by_scope[_scope(row.partner_id, row.environment)].append(row)
    repay_ids: list[int] = []
    repay_remaining: list[int] = []
    for scope in sorted(by_scope, key=_scope_order):
        wallets = sorted(by_scope[scope], key=lambda row: int(row.locked_id))
        drafts = [
            EntryDraft(
                "VESTING",
                (
                    Leg(int(row.locked_id), -Tokens(int(row.amount)), "VESTING"),
                    Leg(int(row.available_id), Tokens(int(row.amount)), "VESTING"),
                ),
            )
            for row in wallets
        ]
        posted, balances = await post_entries(conn, scope, drafts)
        events: list[Event] = []
        for row, entry in zip(wallets, posted, strict=True):
            vested = int(row.amount)
            # Negative available balance before this entry: debt, repaid before anything opens.
            debt = max(0, -(balances[int(row.available_id)] - vested))
            repaid = min(debt, vested)
            if debt:
                for lot_id, remaining in zip(row.lot_ids, row.remainings, strict=True):
                    take = min(int(remaining), debt)
                    if take:
                        debt -= take
                        repay_ids.append(int(lot_id))
                        repay_remaining.append(int(remaining) - take)
            events.append(
                Event(
                    "tokens.vested",
                    {
                        **_owner(row.external_user_id, row.slug),
                        "amount": Tokens(vested),
                        "lots": int(row.lots),
                        "debtRepaid": Tokens(repaid),
                        "vestedAt": now,
                        "transactionIds": list(entry.posting_ids),
                    },
                )
            )
        await record_events(conn, scope, events)
    if repay_ids:
        await conn.execute(_REPAY_SQL, {"ids": repay_ids, "remainings": repay_remaining})
    return handled


# -- expiry -------------------------------------------------------------------------------------

_EXPIRE_SQL = text(
    """
WITH claimed AS (
    SELECT id, remaining FROM lots
     WHERE remaining > 0 AND expires_at IS NOT NULL AND expires_at <= :now
     ORDER BY expires_at, id LIMIT :limit FOR UPDATE SKIP LOCKED
), emptied AS (
    UPDATE lots SET remaining = 0 FROM claimed c WHERE lots.id = c.id
    RETURNING lots.partner_id, lots.environment, lots.account_id, c.remaining
), per_account AS (
    SELECT partner_id, environment, account_id, sum(remaining) AS amount, count(*) AS lots
      FROM emptied GROUP BY partner_id, environment, account_id
)
SELECT e.partner_id, e.environment, e.account_id, e.amount, e.lots, a.partner_user_id,
       a.organization_id, u.external_user_id, o.slug
  FROM per_account e JOIN ledger_accounts a ON a.id = e.account_id
  LEFT JOIN partner_users u ON u.id = a.partner_user_id
  LEFT JOIN organizations o ON o.id = a.organization_id
"""
)


async def expire_due(conn: AsyncConnection, now: datetime, limit: int) -> int:
    """Expire up to `limit` open lots whose `expires_at` <= `now`, earliest-expiring first.
    Returns how many lots expired.

    Per wallet, one EXPIRATION entry moves exactly each lot's remaining tokens from the account
    holding it (available, or locked for a lot past expiry that never vested) to the
    partner-environment's SINK_EXPIRED account; the lots are emptied. Records `tokens.expired`
    per wallet.
    """
    rows = (await conn.execute(_EXPIRE_SQL, {"now": now, "limit": limit})).all()
    handled = sum(int(row.lots) for row in rows)
    # scope -> wallet (its owner) -> the accounts it loses tokens from
    by_scope: dict[Scope, dict[tuple[str | None, str | None], list[Any]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for row in rows:
        owner = (row.partner_user_id, row.organization_id)
        by_scope[_scope(row.partner_id, row.environment)][owner].append(row)
    for scope in sorted(by_scope, key=_scope_order):
        sink = await singleton_account(conn, scope, "SINK_EXPIRED")
        wallets = [by_scope[scope][owner] for owner in sorted(by_scope[scope], key=str)]
        drafts = []
        for accounts in wallets:
            total = Tokens(sum(int(row.amount) for row in accounts))
            legs = [
                Leg(int(row.account_id), -Tokens(int(row.amount)), "EXPIRATION")
                for row in sorted(accounts, key=lambda row: int(row.account_id))
            ]
            drafts.append(EntryDraft("EXPIRATION", (*legs, Leg(sink, total, "EXPIRATION"))))
        posted, _ = await post_entries(conn, scope, drafts)
        events = [
            Event(
                "tokens.expired",
                {
                    **_owner(accounts[0].external_user_id, accounts[0].slug),
                    "amount": Tokens(sum(int(row.amount) for row in accounts)),
                    "lots": sum(int(row.lots) for row in accounts),
                    "expiredAt": now,
                    "transactionIds": list(entry.posting_ids[:-1]),
                },
            )
            for accounts, entry in zip(wallets, posted, strict=True)
        ]
        await record_events(conn, scope, events)
    return handled


# -- auto-refill --------------------------------------------------------------------------------
#
# auto_refill JSONB (engine.pools.encode_settings):
#   {"enabled": bool, "thresholdMicro": int, "amountMicro": int, "maxPerDay": int}


# The pool account is the claim (the lock every writer of the pool takes first). Pools that
# cannot be refilled (day's refills used, reserve empty, already refilled at this `now`) are
# left out, so a caller looping until 0 stops. A pool busy with actions is skipped this time.
_CLAIM_REFILL = text(
    "SELECT a.id AS account_id, a.balance, p.id, p.partner_id, p.environment "
    "FROM token_pools p JOIN ledger_accounts a ON a.pool_id = p.id "
    "JOIN ledger_accounts r ON r.partner_id = p.partner_id AND r.environment = p.environment "
    "AND r.kind = 'RESERVE' "
    "WHERE p.status <> 'CLOSED' AND coalesce((p.auto_refill->>'enabled')::boolean, false) "
    "AND coalesce((p.auto_refill->>'amountMicro')::bigint, 0) > 0 "
    "AND a.balance < coalesce((p.auto_refill->>'thresholdMicro')::bigint, 0) AND r.balance > 0 "
    "AND (SELECT count(*) FROM pool_refills f WHERE f.pool_id = p.id AND f.refill_day = :day) "
    "< coalesce((p.auto_refill->>'maxPerDay')::int, 0) "
    "AND NOT EXISTS (SELECT 1 FROM pool_refills f WHERE f.pool_id = p.id "
    "AND f.created_at >= :now) "
    "ORDER BY a.id LIMIT :limit FOR NO KEY UPDATE OF a SKIP LOCKED"
)

# Re-read under the locks, in a new snapshot: a sweeper that committed a refill just before our
# claim may not be visible to the claim's own snapshot.
_POOLS_LOCKED = text(
    "SELECT p.id, p.name, p.status, p.low_balance_threshold, p.auto_refill, a.balance, "
    "(SELECT count(*) FROM pool_refills f WHERE f.pool_id = p.id AND f.refill_day = :day) "
    "AS today, EXISTS (SELECT 1 FROM pool_refills f WHERE f.pool_id = p.id "
    "AND f.created_at >= :now) AS done FROM token_pools p JOIN ledger_accounts a "
    "ON a.pool_id = p.id WHERE p.id = ANY(:ids)"
).bindparams(_TEXT_IDS)

_LOCK_RESERVE = text(
    "SELECT id, balance FROM ledger_accounts WHERE partner_id = :partner_id "
    "AND environment = :environment AND kind = 'RESERVE' FOR NO KEY UPDATE"
)

_LOG_REFILLS = text(
    "INSERT INTO pool_refills (partner_id, environment, pool_id, entry_id, amount, refill_day, "
    "created_at) SELECT :partner_id, :environment, unnest(:pool_ids), unnest(:entry_ids), "
    "unnest(:amounts), :day, :now"
).bindparams(
    bindparam("pool_ids", type_=ARRAY(Text)),
    bindparam("entry_ids", type_=ARRAY(Text)),
    bindparam("amounts", type_=ARRAY(BigInteger)),
)

_REACTIVATE = text(
    "UPDATE token_pools SET status = 'ACTIVE', updated_at = :now "
    "WHERE id = ANY(:ids) AND status = 'EXHAUSTED' RETURNING id"
).bindparams(_TEXT_IDS)


def utc_day(now: datetime) -> datetime:
    """Midnight UTC of the day `now` falls on: the unit of `maxPerDay`."""
    moment = now.astimezone(UTC)
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)


async def refill_pools(conn: AsyncConnection, now: datetime, limit: int) -> int:
    """Refill up to `limit` pools whose auto-refill is enabled and whose balance is below its
    threshold. Returns how many pools were refilled.

    Each gets min(amount, reserve balance) from the partner-environment's RESERVE account in a
    REFILL entry, at most `maxPerDay` times per UTC day (counted in pool_refills) and at most
    once per `now`; an EXHAUSTED pool turns ACTIVE. Records `token_pool.refilled`.
    """
    day = utc_day(now)
    claimed = (await conn.execute(_CLAIM_REFILL, {"now": now, "day": day, "limit": limit})).all()
    if not claimed:
        return 0
    pools = {
        row.id: row
        for row in await conn.execute(
            _POOLS_LOCKED, {"ids": [row.id for row in claimed], "now": now, "day": day}
        )
    }
    by_scope: dict[Scope, list[Any]] = defaultdict(list)
    for row in claimed:
        by_scope[_scope(row.partner_id, row.environment)].append(row)
    refilled = 0
    for scope in sorted(by_scope, key=lambda s: (s.partner_id, s.environment)):
        reserve = (await conn.execute(_LOCK_RESERVE, scope.params)).first()
        if reserve is None:
            continue
        reserve_id, reserve_left = int(reserve.id), int(reserve.balance)
        drafts: list[EntryDraft] = []
        done: list[tuple[Any, int]] = []
        for row in sorted(by_scope[scope], key=lambda r: int(r.account_id)):
            pool = pools[row.id]
            settings = pool.auto_refill or {}
            threshold = int(settings.get("thresholdMicro") or 0)
            amount = min(int(settings.get("amountMicro") or 0), reserve_left)
            if (
                amount <= 0
                or int(pool.balance) >= threshold
                or pool.done
                or int(pool.today) >= int(settings.get("maxPerDay") or 0)
            ):
                continue
            reserve_left -= amount
            drafts.append(
                EntryDraft(
                    "REFILL",
                    (
                        Leg(reserve_id, -Tokens(amount), "REFILL"),
                        Leg(int(row.account_id), Tokens(amount), "REFILL"),
                    ),
                    memo="auto-refill",
                )
            )
            done.append((pool, amount))
        if not drafts:
            continue
        posted, balances = await post_entries(conn, scope, drafts)
        await conn.execute(
            _LOG_REFILLS,
            {
                **scope.params,
                "pool_ids": [pool.id for pool, _ in done],
                "entry_ids": [entry.entry_id for entry in posted],
                "amounts": [amount for _, amount in done],
                "day": day,
                "now": now,
            },
        )
        reactivated = {
            pool_id
            for (pool_id,) in await conn.execute(
                _REACTIVATE, {"ids": [pool.id for pool, _ in done], "now": now}
            )
        }
        events = []
        for (pool, amount), entry, draft in zip(done, posted, drafts, strict=True):
            settings = pool.auto_refill or {}
            events.append(
                Event(
                    "token_pool.refilled",
                    {
                        "poolId": pool.id,
                        "name": pool.name,
                        "status": "ACTIVE" if pool.id in reactivated else pool.status,
                        "amount": Tokens(amount),
                        "balance": Tokens(balances[draft.legs[1].account_id]),
                        "reserveBalance": Tokens(balances[reserve_id]),
                        "lowBalanceThreshold": Tokens(int(pool.low_balance_threshold)),
                        "autoRefill": {
                            "enabled": bool(settings.get("enabled")),
                            "threshold": Tokens(int(settings.get("thresholdMicro") or 0)),
                            "amount": Tokens(int(settings.get("amountMicro") or 0)),
                            "maxPerDay": int(settings.get("maxPerDay") or 0),
                        },
                        "refillsToday": int(pool.today) + 1,
                        "transactionIds": list(entry.posting_ids),
                        "refilledAt": now,
                    },
                )
            )
        await record_events(conn, scope, events)
        refilled += len(done)
    return refilled


# -- low-balance alerts -------------------------------------------------------------------------
#
# low_balance_alerted_at is set whenever `token_pool.low_balance` is recorded (here, or by the
# outbox trigger of migration 0003 when engine.submit records the crossing), and cleared here
# once the balance is back at/above the threshold: one alert per crossing.
#
# Both rows are claimed: the pool account (FOR SHARE: no action can move the balance while we
# decide, and actions that hold it are skipped, not waited for) and the pool row. With the
# account held, a submit that is about to cross cannot be in flight, so its alert and ours
# cannot both fire.

_CLAIM_LOW = text(
    "SELECT p.id, p.partner_id, p.environment, p.name, p.status, p.low_balance_threshold, "
    "p.low_balance_alerted_at, a.balance FROM token_pools p "
    "JOIN ledger_accounts a ON a.pool_id = p.id "
    "WHERE (p.low_balance_alerted_at IS NULL AND p.low_balance_threshold > 0 "
    "AND a.balance < p.low_balance_threshold AND p.status <> 'CLOSED') "
    "OR (p.low_balance_alerted_at IS NOT NULL AND a.balance >= p.low_balance_threshold) "
    "ORDER BY p.id LIMIT :limit FOR SHARE OF a SKIP LOCKED FOR UPDATE OF p SKIP LOCKED"
)


async def check_low_balances(conn: AsyncConnection, now: datetime, limit: int) -> int:
    """Alert pools below their low-balance threshold that were not alerted for this crossing,
    and re-arm pools back at/above it. Returns how many pools were alerted or re-armed.

    Records `token_pool.low_balance` (poolId, name, status, balance, lowBalanceThreshold).
    """
    rows = (await conn.execute(_CLAIM_LOW, {"limit": limit})).all()
    if not rows:
        return 0
    alerts: dict[Scope, list[Any]] = defaultdict(list)
    rearm: list[str] = []
    for row in rows:
        if row.low_balance_alerted_at is None:
            alerts[_scope(row.partner_id, row.environment)].append(row)
        else:
            rearm.append(row.id)
    if rearm:
        await conn.execute(
            text(
                "UPDATE token_pools SET low_balance_alerted_at = NULL WHERE id = ANY(:ids)"
            ).bindparams(_TEXT_IDS),
            {"ids": rearm},
        )
    for scope, pools in alerts.items():
        # Set before recording, so the outbox trigger finds nothing left to do.
        await conn.execute(
            text(
                "UPDATE token_pools SET low_balance_alerted_at = :now WHERE id = ANY(:ids)"
            ).bindparams(_TEXT_IDS),
            {"ids": [pool.id for pool in pools], "now": now},
        )
        await record_events(
            conn,
            scope,
            [
                Event(
                    "token_pool.low_balance",
                    {
                        "poolId": pool.id,
                        "name": pool.name,
                        "status": pool.status,
                        "balance": Tokens(int(pool.balance)),
                        "lowBalanceThreshold": Tokens(int(pool.low_balance_threshold)),
                    },
                )
                for pool in pools
            ],
        )
    return len(rows)


# -- API-key expiry alerts ----------------------------------------------------------------------

_CLAIM_KEYS = text(
    "SELECT id, partner_id, environment, name, public_key, expires_at, expiry_alerts_sent "
    "FROM api_keys WHERE is_active AND revoked_at IS NULL AND expires_at > :now "
    "AND expires_at <= :now + make_interval(days => :widest) "
    "AND EXISTS (SELECT 1 FROM unnest(:days) AS d(n) "
    "WHERE expires_at <= :now + make_interval(days => d.n::int) AND NOT d.n = ANY(expiry_alerts_sent)) "
    "ORDER BY expires_at, id LIMIT :limit FOR UPDATE SKIP LOCKED"
).bindparams(bindparam("days", type_=ARRAY(SmallInteger)))

_MARK_KEYS = text(
    "UPDATE api_keys SET expiry_alerts_sent = t.sent FROM (SELECT unnest(:ids) AS id, "
    "CAST(unnest(:sents) AS smallint[]) AS sent) t WHERE api_keys.id = t.id"
).bindparams(_TEXT_IDS, bindparam("sents", type_=ARRAY(Text)))


def due_alerts(expires_at: datetime, now: datetime, sent: Sequence[int]) -> list[int]:
    """The alert thresholds (days) that have come for a key and were not sent yet."""
    left = expires_at - now
    return [days for days in KEY_ALERT_DAYS if left <= timedelta(days=days) and days not in sent]


async def alert_expiring_keys(conn: AsyncConnection, now: datetime, limit: int) -> int:
    """Record `api_key.expiring` for active keys within 14, 7 or 1 days of `expiresAt`, once per
    threshold (api_keys.expiry_alerts_sent). Returns how many keys were alerted.

    A key first seen past several thresholds at once (created with 5 days left) gets one event,
    for the nearest threshold, and all of them count as sent. Data: id, name, environment,
    publicKey, expiresAt, daysLeft (whole days, rounded up), thresholdDays; never a secret.
    """
    rows = (
        await conn.execute(
            _CLAIM_KEYS,
            {
                "now": now,
                "widest": max(KEY_ALERT_DAYS),
                "days": list(KEY_ALERT_DAYS),
                "limit": limit,
            },
        )
    ).all()
    if not rows:
        return 0
    events: dict[Scope, list[Event]] = defaultdict(list)
    ids: list[str] = []
    sents: list[str] = []
    for row in rows:
        sent = list(row.expiry_alerts_sent or [])
        due = due_alerts(row.expires_at, now, sent)
        if not due:
            continue
        ids.append(row.id)
        sents.append("{" + ",".join(str(d) for d in sorted(set(sent) | set(due))) + "}")
        left = row.expires_at - now
        events[_scope(row.partner_id, row.environment)].append(
            Event(
                "api_key.expiring",
                {
                    "id": row.id,
                    "name": row.name,
                    "environment": row.environment,
                    "publicKey": row.public_key,
                    "expiresAt": row.expires_at,
                    "daysLeft": math.ceil(left / timedelta(days=1)),
                    "thresholdDays": min(due),
                },
            )
        )
    if ids:
        await conn.execute(_MARK_KEYS, {"ids": ids, "sents": sents})
    for scope, scoped in events.items():
        await record_events(conn, scope, scoped)
    return len(ids)
