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
open in the database (`pg_stat_activity`), and never later than `now - GRACE`. The usual tick
adds what was recorded between the old and the new watermark to the day's rows (an action's
postings share one created_at, so none is split) and recounts the day's active users; when the
watermark crosses midnight, or on the first run, the days from the old watermark's day on are
recomputed whole from the ledger and replace their rows (delete, insert), a few days per
transaction. Either way the watermark moves in the same transaction, so a tick re-run, two
workers racing (an advisory lock serialises them) or a worker killed mid-fold never counts
anything twice. The submit hot path is untouched.

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
# The watermark's day, moved on from :lo to :hi within that day: what was recorded in between
# is added to the day's rows (an action's postings share one created_at, so none is split), and
# the day's active users are recounted from its user rows (distinct users do not add up).
_ADD_USER_DAYS = (
    "INSERT INTO dashboard_user_days AS d (partner_id, environment, day, partner_user_id, "
    "tokens, tokens_reversed, actions) "
    + user_days_sql(ALL_SCOPES)
    + " ON CONFLICT (partner_id, environment, day, partner_user_id) DO UPDATE SET "
    "tokens = d.tokens + EXCLUDED.tokens, "
    "tokens_reversed = d.tokens_reversed + EXCLUDED.tokens_reversed, "
    "actions = d.actions + EXCLUDED.actions"
)
_ADD_DAYS = f"""
INSERT INTO dashboard_days AS d (partner_id, environment, day, actions, tokens_distributed,
                                 tokens_reversed, active_users)
WITH t AS ({day_tokens_sql(ALL_SCOPES)}),
     n AS ({day_actions_sql(ALL_SCOPES)})
SELECT partner_id, environment, day, COALESCE(n.actions, 0), COALESCE(t.tokens, 0),
       COALESCE(t.tokens_reversed, 0), 0
FROM t FULL JOIN n USING (partner_id, environment, day)
ON CONFLICT (partner_id, environment, day) DO UPDATE SET
  actions = d.actions + EXCLUDED.actions,
  tokens_distributed = d.tokens_distributed + EXCLUDED.tokens_distributed,
  tokens_reversed = d.tokens_reversed + EXCLUDED.tokens_reversed
"""
_RECOUNT_ACTIVE = """
UPDATE dashboard_days d SET active_users = u.users
FROM (SELECT partner_id, environment, count(*) FILTER (WHERE tokens > 0) AS users
        FROM dashboard_user_days WHERE day = :day GROUP BY 1, 2) AS u
WHERE d.day = :day AND d.partner_id = u.partner_id AND d.environment = u.environment
  AND d.active_users <> u.users
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


async def add_to_day(conn: AsyncConnection, since: datetime, until: datetime) -> None:
    """Add what was recorded in [since, until), two instants of one UTC day, to that day's
    rows. Only correct when the rows hold exactly [midnight, since): call it with the watermark
    as `since` and move the watermark to `until` in the same transaction."""
    day = since.astimezone(UTC).date()
    params = {"lo": since, "hi": until, "day": day}
    await conn.execute(text(_ADD_USER_DAYS), params)
    await conn.execute(text(_ADD_DAYS), params)
    await conn.execute(text(_RECOUNT_ACTIVE), params)


async def roll_up(db: AsyncEngine, now: datetime, *, max_days: int = 400) -> RollupRun:
    """Roll up everything safely committed since the watermark (see `_SAFE_UNTIL`; never past
    `now - GRACE`), `DAYS_PER_TRANSACTION` days per transaction, at most `max_days` per run
    (the next tick carries on). Within the watermark's day the new span is added to the day's
    rows; when the watermark crosses midnight, the days from its old day on are recomputed
    whole (so a day is finally computed once more from the ledger when it ends)."""
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
            whole_days = first < new_until.astimezone(UTC).date()
            if until is not None and not whole_days and until > midnight(first):
                # The usual tick: the watermark moves on within its day; add, do not recompute.
                await add_to_day(conn, until, new_until)
            else:
                await roll_up_range(conn, first, new_until)
            await _advance(conn, new_until, whole_days=whole_days)
            done += (day_after(new_until) - first).days
            until = new_until
            if new_until >= target:
                break
    return RollupRun(done, until)


async def _advance(conn: AsyncConnection, until: datetime, *, whole_days: bool) -> None:
    """Move the watermark; `whole_days` when complete days were (re)computed, which readers
    must see as a new version of the complete days."""
    await conn.execute(
        text(
            "UPDATE dashboard_rollup_state SET closed_until = :until, updated_at = now(), "
            "days_version = days_version + CAST(:bump AS integer) WHERE id = 1"
        ),
        {"until": until, "bump": 1 if whole_days else 0},
    )


# -- webhook attempts, by endpoint and UTC hour --------------------------------------------------

HOUR = timedelta(hours=1)
# Attempts carry the time the worker took before recording them, not their transaction's start:
# an hour is folded once this long has passed after its end.
WEBHOOK_GRACE = timedelta(minutes=2)

# Every attempt made in [:lo, :hi), with its scope and endpoint.
ALL_ATTEMPTS = """
SELECT d.partner_id, d.environment, d.endpoint_id, t.id, t.attempted_at, t.status_code,
       t.latency_ms
FROM webhook_attempts t JOIN webhook_deliveries d ON d.id = t.delivery_id
WHERE t.attempted_at >= :lo AND t.attempted_at < :hi
"""


def webhook_hours_sql(attempts: str) -> str:
    """Per scope, endpoint and hour: attempts, succeeded, an exact latency histogram (distinct
    latencies in ms, ascending, and how many attempts took each), the status
    and time of the last attempt and the time of the last failure, over `attempts`."""
    return f"""
WITH a AS MATERIALIZED (
  SELECT x.*, date_trunc('hour', x.attempted_at) AS hour,
         COALESCE(x.status_code BETWEEN 200 AND 299, false) AS ok
  FROM ({attempts}) AS x
),
lat AS (
  SELECT partner_id, environment, endpoint_id, hour, latency_ms, count(*) AS n
  FROM a WHERE latency_ms IS NOT NULL GROUP BY 1, 2, 3, 4, 5
),
hist AS (
  SELECT partner_id, environment, endpoint_id, hour,
         array_agg(latency_ms ORDER BY latency_ms) AS latency_values,
         array_agg(n ORDER BY latency_ms) AS latency_counts
  FROM lat GROUP BY 1, 2, 3, 4
),
agg AS (
  SELECT partner_id, environment, endpoint_id, hour, count(*) AS attempts,
         count(*) FILTER (WHERE ok) AS succeeded,
         max(attempted_at) FILTER (WHERE NOT ok) AS last_failure_at,
         (array_agg(status_code ORDER BY attempted_at DESC, id DESC))[1] AS last_status_code,
         max(attempted_at) AS last_attempt_at
  FROM a GROUP BY 1, 2, 3, 4
)
SELECT agg.partner_id, agg.environment, agg.endpoint_id, agg.hour, agg.attempts, agg.succeeded,
       COALESCE(hist.latency_values, '{{}}') AS latency_values,
       COALESCE(hist.latency_counts, '{{}}') AS latency_counts, agg.last_status_code,
       agg.last_attempt_at, agg.last_failure_at
FROM agg LEFT JOIN hist USING (partner_id, environment, endpoint_id, hour)
"""


_INSERT_WEBHOOK_HOURS = (
    "INSERT INTO dashboard_webhook_hours (partner_id, environment, endpoint_id, hour, attempts, "
    "succeeded, latency_values, latency_counts, last_status_code, last_attempt_at, "
    "last_failure_at) " + webhook_hours_sql(ALL_ATTEMPTS)
)


def hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


async def roll_up_webhooks(db: AsyncEngine, now: datetime, *, max_hours: int = 24 * 8) -> int:
    """Fold the webhook attempts of every hour that ended WEBHOOK_GRACE ago and is not folded
    yet (at most `max_hours` per run, from the oldest attempt the first time); an hour is
    recomputed whole and replaces its rows. Returns the hours folded."""
    target = hour_floor(now - WEBHOOK_GRACE)
    async with db.begin() as conn:
        await conn.execute(text(_LOCK))
        until = (
            await conn.execute(text("SELECT webhooks_until FROM dashboard_rollup_state"))
        ).scalar_one_or_none()
        if until is None:
            oldest = (
                await conn.execute(text("SELECT min(attempted_at) FROM webhook_attempts"))
            ).scalar_one_or_none()
            until = hour_floor(oldest) if oldest is not None else target
        first = until
        last = min(target, first + max_hours * HOUR)
        if last > first:
            params = {"lo": first, "hi": last}
            await conn.execute(
                text("DELETE FROM dashboard_webhook_hours WHERE hour >= :lo AND hour < :hi"),
                params,
            )
            await conn.execute(text(_INSERT_WEBHOOK_HOURS), params)
        await conn.execute(
            text("UPDATE dashboard_rollup_state SET webhooks_until = :until, updated_at = now()"),
            {"until": max(last, first)},
        )
    return int((last - first) / HOUR) if last > first else 0


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
    "add_to_day",
    "roll_up_range",
    "roll_up_webhooks",
    "webhook_hours_sql",
    "user_days_sql",
]
