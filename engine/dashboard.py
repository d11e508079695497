"""The partner dashboard (contract section 7 "Dashboard"): summary, top earners, trends,
webhook health and API usage, each confined to the caller's partner and environment.

Periods are whole UTC days. `from` names the UTC day it falls in (inclusive); `to` is exclusive
and rounds up to the next midnight unless it is one, so a period covers every day [from, to)
touches. A bare date (`2026-11-01`) is read as that day's midnight UTC. Without `from`/`to`
the period is the last 30 days, today included; a period is at most 366 days. Weekly trends
widen the period to whole weeks, Monday to Monday (UTC). Answers echo the period used.

Where figures come from (see `engine.rollups` for what a day holds): closed days from the daily
roll-ups, days after the roll-up watermark (today, and yesterday shortly after midnight) from a
live query over that part of the ledger only. So a figure never waits for a tick, and a request
reads a few index ranges whatever the size of the ledger. Pool balances are the live balances.
"""

# SQL here is composed from this module's constants only, never from request input:
# ruff: noqa: S608

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.errors import ValidationFailed
from engine.money import Tokens
from engine.rollups import (
    ONE_SCOPE,
    closed_through,
    day_actions_sql,
    day_tokens_sql,
    midnight,
    user_days_sql,
)
from engine.scope import Scope

DEFAULT_DAYS = 30
MAX_DAYS = 366
TOP_EARNERS_DEFAULT = 10
TOP_EARNERS_MAX = 200
HEALTH_DEFAULT = timedelta(hours=24)
HEALTH_MAX = timedelta(days=7)
# Retries of a delivery stop about 24 hours after its event (contract 9): an attempt made in a
# window belongs to a delivery created at most this long before the window opens.
_DELIVERY_LIFETIME = timedelta(days=2)
FAILING_ENDPOINTS_MAX = 20

METRICS = ("tokens", "actions", "users")
INTERVALS = ("day", "week")
Metric = Literal["tokens", "actions", "users"]
Interval = Literal["day", "week"]

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# -- periods -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    """Whole UTC days [start, end)."""

    start: date
    end: date

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    def wire(self) -> dict[str, datetime]:
        return {"from": midnight(self.start), "to": midnight(self.end)}


def _moment(name: str, raw: str | None) -> datetime | None:
    if raw is None or raw == "":
        return None
    candidate = raw.replace(" ", "+")  # an unencoded "+" of an offset arrives as a space
    if _DATE.match(candidate):
        candidate += "T00:00:00+00:00"
    try:
        moment = datetime.fromisoformat(candidate)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ValidationFailed(
            {name: ["must be a date (YYYY-MM-DD) or an RFC 3339 time with an offset"]}
        )
    return moment.astimezone(UTC)


def parse_period(
    raw_from: str | None, raw_to: str | None, now: datetime, *, interval: Interval = "day"
) -> Period:
    """The period of a dashboard query. Raises ValidationFailed (every bad parameter at once)."""
    problems: dict[str, list[str]] = {}
    moments: dict[str, datetime | None] = {}
    for name, raw in (("from", raw_from), ("to", raw_to)):
        try:
            moments[name] = _moment(name, raw)
        except ValidationFailed as exc:
            problems.update(exc.fields)
            moments[name] = None
    if problems:
        raise ValidationFailed(problems)
    upper = moments["to"]
    if upper is None:
        end = now.astimezone(UTC).date() + timedelta(days=1)
    else:
        end = upper.date() + timedelta(days=0 if upper == midnight(upper.date()) else 1)
    lower = moments["from"]
    start = end - timedelta(days=DEFAULT_DAYS) if lower is None else lower.date()
    if end <= start:
        raise ValidationFailed({"to": ["must be after from"]})
    if (end - start).days > MAX_DAYS:
        raise ValidationFailed({"to": [f"the period is at most {MAX_DAYS} days"]})
    if interval == "week":
        start -= timedelta(days=start.weekday())  # back to Monday
        end += timedelta(days=(7 - end.weekday()) % 7)
    return Period(start, end)


def parse_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return TOP_EARNERS_DEFAULT
    if not raw.isdigit() or not 1 <= int(raw) <= TOP_EARNERS_MAX:
        raise ValidationFailed({"limit": [f"must be an integer from 1 to {TOP_EARNERS_MAX}"]})
    return int(raw)


def parse_choice(name: str, raw: str | None, choices: tuple[str, ...], default: str) -> str:
    if raw is None or raw == "":
        return default
    if raw not in choices:
        raise ValidationFailed({name: [f"must be one of {', '.join(choices)}"]})
    return raw


# -- rolled and live parts -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Split:
    """A period cut at the roll-up watermark: [start, rolled_end) from the roll-ups,
    [live_start, end) live."""

    period: Period
    rolled_end: date
    live_start: date

    def params(self, scope: Scope) -> dict[str, Any]:
        live_lo = midnight(self.live_start)
        live_hi = max(live_lo, midnight(self.period.end))
        return {
            **scope.params,
            "r_lo": self.period.start,
            "r_hi": self.rolled_end,
            "lo": live_lo,
            "hi": live_hi,
        }

    @property
    def has_live(self) -> bool:
        return self.live_start < self.period.end


async def _split(conn: AsyncConnection, period: Period) -> _Split:
    through = await closed_through(conn)
    open_from = period.start if through is None else through + timedelta(days=1)
    rolled_end = min(period.end, max(period.start, open_from))
    return _Split(period, rolled_end, max(period.start, open_from))


_LIVE_USERS = user_days_sql(ONE_SCOPE)
_SCOPED = "partner_id = :partner_id AND environment = :environment"


@dataclass
class _Day:
    actions: int = 0
    tokens: int = 0
    reversed: int = 0
    users: int = 0


async def _days(conn: AsyncConnection, scope: Scope, split: _Split) -> dict[date, _Day]:
    """Per-day figures of the period: roll-up rows, then the live days."""
    params = split.params(scope)
    days: dict[date, _Day] = {}
    rows = await conn.execute(
        text(
            "SELECT day, actions, tokens_distributed, tokens_reversed, active_users "
            f"FROM dashboard_days WHERE {_SCOPED} AND day >= :r_lo AND day < :r_hi"
        ),
        params,
    )
    for day, actions, tokens, reversed_, users in rows:
        days[day] = _Day(int(actions), int(tokens), int(reversed_), int(users))
    if not split.has_live:
        return days
    live = await conn.execute(
        text(
            f"WITH t AS ({day_tokens_sql(ONE_SCOPE)}), n AS ({day_actions_sql(ONE_SCOPE)}), "
            f"u AS (SELECT day, count(*) FILTER (WHERE tokens > 0) AS users FROM ({_LIVE_USERS}) "
            "AS lu GROUP BY day) "
            "SELECT day, COALESCE(n.actions, 0), COALESCE(t.tokens, 0), "
            "COALESCE(t.tokens_reversed, 0), COALESCE(u.users, 0) "
            "FROM t FULL JOIN n USING (day) FULL JOIN u USING (day)"
        ),
        params,
    )
    for day, actions, tokens, reversed_, users in live:
        days[day] = _Day(int(actions), int(tokens), int(reversed_), int(users))
    return days


# -- summary -----------------------------------------------------------------------------------


_ACTIVE_USERS = f"""
WITH live AS ({_LIVE_USERS})
SELECT count(*) FROM (
  SELECT partner_user_id FROM dashboard_user_days
   WHERE {_SCOPED} AND day >= :r_lo AND day < :r_hi AND tokens > 0
  UNION
  SELECT partner_user_id FROM live WHERE tokens > 0
) AS active
"""

_POOLS = """
SELECT p.id, p.name, p.status, p.is_default, a.balance, p.low_balance_threshold
FROM token_pools p JOIN ledger_accounts a ON a.pool_id = p.id
WHERE p.partner_id = :partner_id AND p.environment = :environment
ORDER BY p.created_at, p.id
"""


async def summary(conn: AsyncConnection, scope: Scope, period: Period) -> dict[str, Any]:
    """Tokens distributed and reversed, actions, active users over `period`; pool balances now."""
    split = await _split(conn, period)
    days = await _days(conn, scope, split)
    active = (await conn.execute(text(_ACTIVE_USERS), split.params(scope))).scalar_one()
    pools = (await conn.execute(text(_POOLS), scope.params)).mappings()
    distributed = sum(d.tokens for d in days.values())
    reversed_ = sum(d.reversed for d in days.values())
    return {
        **period.wire(),
        "tokensDistributed": Tokens(distributed),
        "tokensReversed": Tokens(reversed_),
        "netTokens": Tokens(distributed - reversed_),
        "actions": sum(d.actions for d in days.values()),
        "activeUsers": int(active),
        "pools": [
            {
                "poolId": row["id"],
                "name": row["name"],
                "status": row["status"],
                "isDefault": row["is_default"],
                "balance": Tokens(int(row["balance"])),
                "lowBalanceThreshold": Tokens(int(row["low_balance_threshold"])),
            }
            for row in pools
        ],
    }


# -- top earners ---------------------------------------------------------------------------------

_TOP = f"""
WITH live AS ({_LIVE_USERS}),
per_day AS (
  SELECT partner_user_id, tokens, tokens_reversed, actions FROM dashboard_user_days
   WHERE {_SCOPED} AND day >= :r_lo AND day < :r_hi
  UNION ALL
  SELECT partner_user_id, tokens, tokens_reversed, actions FROM live
),
top AS (
  SELECT partner_user_id, sum(tokens) AS tokens, sum(tokens_reversed) AS tokens_reversed,
         sum(actions) AS actions
  FROM per_day GROUP BY partner_user_id HAVING sum(tokens) > 0
  ORDER BY sum(tokens) DESC, partner_user_id LIMIT :limit
)
SELECT u.external_user_id, top.tokens, top.tokens_reversed, top.actions
FROM top JOIN partner_users u ON u.id = top.partner_user_id
ORDER BY top.tokens DESC, top.partner_user_id
"""


async def top_earners(
    conn: AsyncConnection, scope: Scope, period: Period, limit: int
) -> dict[str, Any]:
    """The users credited the most tokens over `period`, most first (ties: oldest user first)."""
    split = await _split(conn, period)
    rows = await conn.execute(text(_TOP), {**split.params(scope), "limit": limit})
    return {
        **period.wire(),
        "limit": limit,
        "data": [
            {
                "rank": rank,
                "externalUserId": external_id,
                "tokensEarned": Tokens(int(tokens)),
                "tokensReversed": Tokens(int(reversed_)),
                "actions": int(actions),
            }
            for rank, (external_id, tokens, reversed_, actions) in enumerate(rows, start=1)
        ],
    }


# -- trends ------------------------------------------------------------------------------------------

_USERS_BY_BUCKET = f"""
WITH live AS ({_LIVE_USERS}),
per_day AS (
  SELECT day, partner_user_id FROM dashboard_user_days
   WHERE {_SCOPED} AND day >= :r_lo AND day < :r_hi AND tokens > 0
  UNION ALL
  SELECT day, partner_user_id FROM live WHERE tokens > 0
)
SELECT CASE WHEN :weekly THEN CAST(date_trunc('week', day) AS date) ELSE day END AS bucket,
       count(DISTINCT partner_user_id)
FROM per_day GROUP BY 1
"""


def bucket_of(day: date, interval: Interval) -> date:
    """The start of the bucket holding `day`: the day itself, or the Monday of its week."""
    return day if interval == "day" else day - timedelta(days=day.weekday())


async def trends(
    conn: AsyncConnection, scope: Scope, period: Period, metric: Metric, interval: Interval
) -> dict[str, Any]:
    """One point per day or week of `period` (zero-filled), oldest first. Weekly `users` counts
    each user once per week; daily figures are per day."""
    split = await _split(conn, period)
    values: dict[date, int] = {}
    if metric == "users":
        rows = await conn.execute(
            text(_USERS_BY_BUCKET), {**split.params(scope), "weekly": interval == "week"}
        )
        values = {bucket: int(count) for bucket, count in rows}
    else:
        for day, figures in (await _days(conn, scope, split)).items():
            bucket = bucket_of(day, interval)
            amount = figures.tokens if metric == "tokens" else figures.actions
            values[bucket] = values.get(bucket, 0) + amount
    step = timedelta(days=1 if interval == "day" else 7)
    points = []
    cursor = period.start
    while cursor < period.end:
        value = values.get(cursor, 0)
        points.append(
            {
                "periodStart": midnight(cursor),
                "value": Tokens(value) if metric == "tokens" else value,
            }
        )
        cursor += step
    return {**period.wire(), "metric": metric, "interval": interval, "data": points}


# -- webhook health ---------------------------------------------------------------------------------


def parse_window(
    raw_from: str | None, raw_to: str | None, now: datetime
) -> tuple[datetime, datetime]:
    """The webhook-health window: exact times, default the last 24 hours, at most 7 days."""
    problems: dict[str, list[str]] = {}
    found: dict[str, datetime | None] = {}
    for name, raw in (("from", raw_from), ("to", raw_to)):
        try:
            found[name] = _moment(name, raw)
        except ValidationFailed as exc:
            problems.update(exc.fields)
            found[name] = None
    if problems:
        raise ValidationFailed(problems)
    upper = found["to"] or now.astimezone(UTC)
    lower = found["from"] or upper - HEALTH_DEFAULT
    if upper <= lower:
        raise ValidationFailed({"to": ["must be after from"]})
    if upper - lower > HEALTH_MAX:
        raise ValidationFailed({"to": ["the window is at most 7 days"]})
    return lower, upper


# Attempts of the scope's deliveries made in the window. Deliveries are found per endpoint through
# (endpoint_id, created_at), bounded below by the retry lifetime; attempts by delivery_id.
_ATTEMPTS = """
SELECT d.endpoint_id, t.id, t.status_code, t.latency_ms, t.attempted_at
FROM webhook_endpoints w
JOIN webhook_deliveries d ON d.endpoint_id = w.id AND d.created_at >= :oldest
JOIN webhook_attempts t ON t.delivery_id = d.id
WHERE w.partner_id = :partner_id AND w.environment = :environment
  AND t.attempted_at >= :lo AND t.attempted_at < :hi
"""
_HEALTH = f"""
WITH a AS ({_ATTEMPTS})
SELECT count(*) AS attempts,
       count(*) FILTER (WHERE status_code BETWEEN 200 AND 299) AS succeeded,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50,
       percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95,
       percentile_disc(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99
FROM a
"""
_FAILING = f"""
WITH a AS ({_ATTEMPTS}),
f AS (
  SELECT endpoint_id, count(*) AS attempts,
         count(*) FILTER (WHERE status_code IS NULL OR status_code NOT BETWEEN 200 AND 299)
           AS failures,
         max(attempted_at) FILTER (WHERE status_code IS NULL OR status_code NOT BETWEEN 200 AND 299)
           AS last_failure_at
  FROM a GROUP BY endpoint_id
)
SELECT w.id, w.url, w.is_active, w.disabled_reason, COALESCE(f.attempts, 0) AS attempts,
       COALESCE(f.failures, 0) AS failures, f.last_failure_at,
       (SELECT a.status_code FROM a WHERE a.endpoint_id = w.id
         ORDER BY a.attempted_at DESC, a.id DESC LIMIT 1) AS last_status_code
FROM webhook_endpoints w LEFT JOIN f ON f.endpoint_id = w.id
WHERE w.partner_id = :partner_id AND w.environment = :environment
  AND (f.failures > 0 OR NOT w.is_active)
ORDER BY COALESCE(f.failures, 0) DESC, w.id
LIMIT :max
"""
_PENDING = f"""
SELECT count(*) FROM webhook_deliveries
WHERE {_SCOPED} AND status = 'PENDING'
"""


async def webhook_health(
    conn: AsyncConnection, scope: Scope, lower: datetime, upper: datetime
) -> dict[str, Any]:
    """Delivery attempts in [lower, upper): success rate, latency percentiles, failing endpoints."""
    params = {**scope.params, "lo": lower, "hi": upper, "oldest": lower - _DELIVERY_LIFETIME}
    health = (await conn.execute(text(_HEALTH), params)).mappings().one()
    failing = (
        await conn.execute(text(_FAILING), {**params, "max": FAILING_ENDPOINTS_MAX})
    ).mappings()
    pending = (await conn.execute(text(_PENDING), scope.params)).scalar_one()
    attempts, succeeded = int(health["attempts"]), int(health["succeeded"])
    return {
        "from": lower,
        "to": upper,
        "attempts": attempts,
        "succeeded": succeeded,
        "failed": attempts - succeeded,
        "successRate": round(succeeded / attempts, 4) if attempts else None,
        "latencyMs": {
            name: None if health[name] is None else int(health[name])
            for name in ("p50", "p95", "p99")
        },
        "pendingDeliveries": int(pending),
        "failingEndpoints": [_failing_json(row) for row in failing],
    }


def _failing_json(row: RowMapping | Mapping[str, Any]) -> dict[str, Any]:
    return {
        "endpointId": row["id"],
        "url": row["url"],
        "isActive": row["is_active"],
        "disabledReason": row["disabled_reason"],
        "attempts": int(row["attempts"]),
        "failures": int(row["failures"]),
        "lastStatusCode": row["last_status_code"],
        "lastFailureAt": row["last_failure_at"],
    }


# -- API usage ---------------------------------------------------------------------------------------

_USAGE = f"""
SELECT route_class, status, sum(requests) AS requests FROM api_usage_days
WHERE {_SCOPED} AND day >= :r_lo AND day < :r_hi
GROUP BY route_class, status ORDER BY route_class, status
"""


async def api_usage(conn: AsyncConnection, scope: Scope, period: Period) -> dict[str, Any]:
    """Requests the front answered for the scope over `period`, by route class and status."""
    params = {**scope.params, "r_lo": period.start, "r_hi": period.end}
    rows = [
        {"routeClass": route_class, "status": int(status), "requests": int(requests)}
        for route_class, status, requests in await conn.execute(text(_USAGE), params)
    ]
    return {
        **period.wire(),
        "totalRequests": sum(r["requests"] for r in rows),
        "data": rows,
    }


__all__ = [
    "INTERVALS",
    "METRICS",
    "Period",
    "api_usage",
    "bucket_of",
    "parse_choice",
    "parse_limit",
    "parse_period",
    "parse_window",
    "summary",
    "top_earners",
    "trends",
    "webhook_health",
]
