"""Daily roll-ups of the ledger for the partner dashboard: what a day is made of, and the fold.

What a day holds, per partner and environment (UTC days, by the time the engine recorded a row):
  - `actions`: actions recorded (rows of `actions`, whatever tokens they gave);
  - `tokens_distributed`: tokens credited to wallets (users' and organizations') by
    distributions: the CREDIT postings on wallet accounts;
  - `tokens_reversed`: tokens taken back from wallets by reversals (REVERSAL postings on wallet
    accounts, as a positive figure), counted on the day of the reversal;
  - per user (`dashboard_user_days`): tokens credited, tokens reversed, and the actions that
    credited the user (their distribution entries). A user is *active* on a day when at least one
    distribution credited them that day.

The fold. A worker tick (`workers.dashboard_actors`) calls `roll_up`, which rolls up every *closed*
day after the watermark `dashboard_rollup_state.closed_through`, a few days per transaction.
A day is closed once `GRACE` has passed after its end: postings carry their transaction's start
time, so a transaction that began before midnight may commit just after it, and no engine
transaction stays open anywhere near `GRACE`. Each day is computed whole from the ledger and
replaces any earlier roll-up of it (delete, insert), and the watermark moves in the same
transaction, so a tick re-run, two workers racing (an advisory lock serialises them) or a worker
killed mid-fold never counts anything twice. The submit hot path is untouched.

Days after the watermark (today, and yesterday until GRACE has passed) are not rolled up;
`engine.dashboard` reads them live with the same definitions, bounded to those days through the
`(partner_id, environment, created_at)` indexes.
"""

# SQL here is composed from this module's constants only, never from request input:
# ruff: noqa: S608

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

GRACE = timedelta(minutes=15)
DAYS_PER_TRANSACTION = 7
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('sir.dashboard.rollup'))"

# Where the SELECTs get their scopes: every partner in both environments (each scope then reads
# the ledger through its own `(partner_id, environment, created_at)` index range).
ALL_SCOPES = (
    "SELECT id AS partner_id, v.environment FROM partners "
    "CROSS JOIN (VALUES ('sandbox'), ('production')) AS v(environment)"
)
ONE_SCOPE = "SELECT CAST(:partner_id AS varchar) AS partner_id, CAST(:environment AS varchar) AS environment"


def user_days_sql(scopes: str) -> str:
    """(partner_id, environment, day, partner_user_id, tokens, tokens_reversed, actions) for
    postings created in [:lo, :hi)."""
    return f"""
SELECT s.partner_id, s.environment, x.day, x.partner_user_id, x.tokens, x.tokens_reversed,
       x.actions
FROM ({scopes}) AS s CROSS JOIN LATERAL (
  SELECT CAST(p.created_at AT TIME ZONE 'UTC' AS date) AS day, a.partner_user_id,
         COALESCE(sum(p.amount) FILTER (WHERE p.type = 'CREDIT'), 0) AS tokens,
         COALESCE(-sum(p.amount) FILTER (WHERE p.type = 'REVERSAL'), 0) AS tokens_reversed,
         count(DISTINCT p.entry_id) FILTER (WHERE p.type = 'CREDIT') AS actions
  FROM postings p JOIN ledger_accounts a ON a.id = p.account_id
  WHERE p.partner_id = s.partner_id AND p.environment = s.environment
    AND p.created_at >= :lo AND p.created_at < :hi
    AND p.type IN ('CREDIT', 'REVERSAL') AND a.partner_user_id IS NOT NULL
  GROUP BY 1, 2
) AS x
"""


def day_tokens_sql(scopes: str) -> str:
    """(partner_id, environment, day, tokens, tokens_reversed) over every wallet, users' and
    organizations', for postings created in [:lo, :hi)."""
    return f"""
SELECT s.partner_id, s.environment, x.day, x.tokens, x.tokens_reversed
FROM ({scopes}) AS s CROSS JOIN LATERAL (
  SELECT CAST(p.created_at AT TIME ZONE 'UTC' AS date) AS day,
         COALESCE(sum(p.amount) FILTER (WHERE p.type = 'CREDIT'), 0) AS tokens,
         COALESCE(-sum(p.amount) FILTER (WHERE p.type = 'REVERSAL'), 0) AS tokens_reversed
  FROM postings p JOIN ledger_accounts a ON a.id = p.account_id
  WHERE p.partner_id = s.partner_id AND p.environment = s.environment
    AND p.created_at >= :lo AND p.created_at < :hi
    AND p.type IN ('CREDIT', 'REVERSAL') AND a.kind IN ('WALLET_AVAILABLE', 'WALLET_LOCKED')
  GROUP BY 1
) AS x
"""


def day_actions_sql(scopes: str) -> str:
    """(partner_id, environment, day, actions) for actions created in [:lo, :hi)."""
    return f"""
SELECT s.partner_id, s.environment, x.day, x.actions
FROM ({scopes}) AS s CROSS JOIN LATERAL (
  SELECT CAST(c.created_at AT TIME ZONE 'UTC' AS date) AS day, count(*) AS actions
  FROM actions c
  WHERE c.partner_id = s.partner_id AND c.environment = s.environment
    AND c.created_at >= :lo AND c.created_at < :hi
  GROUP BY 1
) AS x
"""


_INSERT_USER_DAYS = (
    "INSERT INTO dashboard_user_days (partner_id, environment, day, partner_user_id, tokens, "
    "tokens_reversed, actions) " + user_days_sql(ALL_SCOPES)
)
_INSERT_DAYS = f"""
INSERT INTO dashboard_days (partner_id, environment, day, actions, tokens_distributed,
                            tokens_reversed, active_users)
WITH t AS ({day_tokens_sql(ALL_SCOPES)}),
     n AS ({day_actions_sql(ALL_SCOPES)}),
     u AS (SELECT partner_id, environment, day, count(*) FILTER (WHERE tokens > 0) AS users
             FROM dashboard_user_days WHERE day >= :lo_day AND day < :hi_day
            GROUP BY 1, 2, 3)
SELECT partner_id, environment, day, COALESCE(n.actions, 0), COALESCE(t.tokens, 0),
       COALESCE(t.tokens_reversed, 0), COALESCE(u.users, 0)
FROM t FULL JOIN n USING (partner_id, environment, day) FULL JOIN u USING (partner_id, environment, day)
"""
# The first day with anything to roll up, read per scope through the created_at indexes.
_FIRST_DAY = f"""
SELECT CAST(min(x.first) AT TIME ZONE 'UTC' AS date) FROM ({ALL_SCOPES}) AS s CROSS JOIN LATERAL (
  SELECT least((SELECT min(p.created_at) FROM postings p
                 WHERE p.partner_id = s.partner_id AND p.environment = s.environment),
               (SELECT min(c.created_at) FROM actions c
                 WHERE c.partner_id = s.partner_id AND c.environment = s.environment)) AS first
) AS x
"""


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def last_closed_day(now: datetime) -> date:
    """The latest UTC day that ended at least GRACE before `now`."""
    return (now.astimezone(UTC) - GRACE).date() - timedelta(days=1)


async def closed_through(conn: AsyncConnection) -> date | None:
    """The watermark: every UTC day up to it (inclusive) is in the roll-ups; None before the
    first fold."""
    found = (
        await conn.execute(text("SELECT closed_through FROM dashboard_rollup_state WHERE id = 1"))
    ).scalar_one_or_none()
    return found if isinstance(found, date) else None


@dataclass(frozen=True)
class RollupRun:
    days: int  # days rolled up by this run
    closed_through: date | None  # the watermark after it


async def roll_up_days(conn: AsyncConnection, first: date, last: date) -> None:
    """Recompute the roll-ups of the days `first`..`last` (inclusive), replacing what was there.
    Idempotent; call inside a transaction holding the roll-up lock."""
    hi_day = last + timedelta(days=1)
    params = {"lo": midnight(first), "hi": midnight(hi_day), "lo_day": first, "hi_day": hi_day}
    for table in ("dashboard_user_days", "dashboard_days"):
        await conn.execute(
            text(f"DELETE FROM {table} WHERE day >= :lo_day AND day < :hi_day"), params
        )
    await conn.execute(text(_INSERT_USER_DAYS), params)
    await conn.execute(text(_INSERT_DAYS), params)


async def roll_up(db: AsyncEngine, now: datetime, *, max_days: int = 400) -> RollupRun:
    """Roll up every closed day after the watermark, `DAYS_PER_TRANSACTION` days per
    transaction, at most `max_days` in this run (the next tick carries on)."""
    done = 0
    through: date | None = None
    target = last_closed_day(now)
    while done < max_days:
        async with db.begin() as conn:
            await conn.execute(text(_LOCK))
            through = await closed_through(conn)
            if through is None:
                first = (await conn.execute(text(_FIRST_DAY))).scalar_one_or_none()
                if not isinstance(first, date) or first > target:
                    # Nothing recorded before today: every closed day is (trivially) rolled up.
                    first = target + timedelta(days=1)
            else:
                first = through + timedelta(days=1)
            if first > target:
                if through is None or through < target:
                    await _advance(conn, target)
                    through = target
                break
            last = min(
                target, first + timedelta(days=min(DAYS_PER_TRANSACTION, max_days - done) - 1)
            )
            await roll_up_days(conn, first, last)
            await _advance(conn, last)
            through = last
            done += (last - first).days + 1
    return RollupRun(done, through)


async def _advance(conn: AsyncConnection, day: date) -> None:
    await conn.execute(
        text(
            "UPDATE dashboard_rollup_state SET closed_through = :day, updated_at = now() "
            "WHERE id = 1"
        ),
        {"day": day},
    )


__all__ = [
    "ALL_SCOPES",
    "GRACE",
    "RollupRun",
    "closed_through",
    "day_actions_sql",
    "day_tokens_sql",
    "last_closed_day",
    "midnight",
    "roll_up",
    "roll_up_days",
    "user_days_sql",
]
