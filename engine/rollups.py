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

The fold. A worker tick (`workers.dashboard_actors`, every minute by default) calls `roll_up`,
which moves the watermark `dashboard_rollup_state.closed_until` (an instant) forward to the
newest instant before which every row is committed: postings and actions carry their
transaction's start time (`now()`), so that instant is the start of the oldest transaction still
open in the database (`pg_stat_activity`), and never later than `now - GRACE`. The days from
the old watermark's day to the new one are recomputed whole from the ledger (the last one up
to the watermark) and replace their earlier rows (delete, insert), a few days per transaction,
the watermark moving in the same transaction. So a tick re-run, two workers racing (an advisory
lock serialises them) or a worker killed mid-fold never counts anything twice. The submit hot
path is untouched.

What follows the watermark (the last minute or so) is not rolled up; `engine.dashboard` reads it
live with the same definitions, bounded through the `(partner_id, environment, created_at)`
indexes, and merges it with the roll-ups.
"""

# SQL here is composed from this module's constants only, never from request input:
# ruff: noqa: S608

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

GRACE = timedelta(seconds=30)
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


def day_after(moment: datetime) -> date:
    """The first day wholly after `moment`'s day, unless `moment` is a midnight: the exclusive
    day bound of [.., moment)."""
    day = moment.astimezone(UTC).date()
    return day if moment == midnight(day) else day + timedelta(days=1)


# Everything recorded before the oldest transaction still open in this database has committed
# (or never will): a posting's created_at is its transaction's start. Bounded by `now - GRACE`
# too, in case pg_stat_activity hides other roles' sessions from ours.
_SAFE_UNTIL = """
SELECT least(CAST(:bound AS timestamptz),
             (SELECT min(xact_start) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid()
                 AND xact_start IS NOT NULL))
"""


async def closed_until(conn: AsyncConnection) -> datetime | None:
    """The watermark: everything recorded before it is in the roll-ups; None before the first."""
    found = (
        await conn.execute(text("SELECT closed_until FROM dashboard_rollup_state WHERE id = 1"))
    ).scalar_one_or_none()
    return found if isinstance(found, datetime) else None


@dataclass(frozen=True)
class RollupRun:
    days: int  # days (re)computed by this run, the open day included
    closed_until: datetime | None  # the watermark after it


async def roll_up_range(conn: AsyncConnection, first: date, until: datetime) -> None:
    """Recompute the roll-ups of [midnight of `first`, `until`), replacing the rows of those
    days (the last one partial when `until` is not a midnight). Idempotent; call inside a
    transaction holding the roll-up lock."""
    hi_day = day_after(until)
    params = {"lo": midnight(first), "hi": until, "lo_day": first, "hi_day": hi_day}
    for table in ("dashboard_user_days", "dashboard_days"):
        await conn.execute(
            text(f"DELETE FROM {table} WHERE day >= :lo_day AND day < :hi_day"), params
        )
    await conn.execute(text(_INSERT_USER_DAYS), params)
    await conn.execute(text(_INSERT_DAYS), params)


async def roll_up(db: AsyncEngine, now: datetime, *, max_days: int = 400) -> RollupRun:
    """Roll up everything safely committed since the watermark (see `_SAFE_UNTIL`; never past
    `now - GRACE`), `DAYS_PER_TRANSACTION` days per transaction, at most `max_days` per run
    (the next tick carries on). The day the watermark is in is recomputed from its midnight."""
    done = 0
    until: datetime | None = None
    while done < max_days:
        async with db.begin() as conn:
            await conn.execute(text(_LOCK))
            target = (await conn.execute(text(_SAFE_UNTIL), {"bound": now - GRACE})).scalar_one()
            until = await closed_until(conn)
            if until is None:
                found = (await conn.execute(text(_FIRST_DAY))).scalar_one_or_none()
                first = found if isinstance(found, date) else target.astimezone(UTC).date()
            elif until >= target:
                break
            else:
                first = until.astimezone(UTC).date()
            chunk_end = midnight(first + timedelta(days=min(DAYS_PER_TRANSACTION, max_days - done)))
            new_until = min(target, chunk_end)
            if new_until <= midnight(first) and until is not None:
                break
            await roll_up_range(conn, first, new_until)
            await _advance(conn, new_until)
            done += (day_after(new_until) - first).days
            until = new_until
            if new_until >= target:
                break
    return RollupRun(done, until)


async def _advance(conn: AsyncConnection, until: datetime) -> None:
    await conn.execute(
        text(
            "UPDATE dashboard_rollup_state SET closed_until = :until, updated_at = now() "
            "WHERE id = 1"
        ),
        {"until": until},
    )


__all__ = [
    "ALL_SCOPES",
    "GRACE",
    "RollupRun",
    "closed_until",
    "day_after",
    "day_actions_sql",
    "day_tokens_sql",
    "midnight",
    "roll_up",
    "roll_up_range",
    "user_days_sql",
]
