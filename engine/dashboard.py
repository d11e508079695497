"""The partner dashboard (contract section 7 "Dashboard"): summary, top earners, trends,
webhook health and API usage, each confined to the caller's partner and environment.

Periods are whole UTC days. `from` names the UTC day it falls in (inclusive); `to` is exclusive
and rounds up to the next midnight unless it is one, so a period covers every day [from, to)
touches. A bare date (`2026-11-01`) is read as that day's midnight UTC. Without `from`/`to`
the period is the last 30 days, today included; a period is at most 366 days. Weekly trends
widen the period to whole weeks, Monday to Monday (UTC). Answers echo the period used.

Where figures come from (see `engine.rollups` for what a day holds and how the watermark
moves): everything recorded before the roll-up watermark (about a minute ago) from the daily
roll-ups, what follows it from a live query over that part of the ledger only. So a figure
never waits for a tick and includes every commit before the request. Per-user totals of
complete days are cached per process until a complete day is recomputed (`ROLLED_CACHE`), so
a request costs a few index reads and in-memory merges whatever the size of the ledger.
Pool balances are the live balances. Webhook health lives in `engine.webhook_health`.
"""

# SQL here is composed from this module's constants only, never from request input:
# ruff: noqa: S608

from __future__ import annotations

import heapq
import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.errors import ValidationFailed
from engine.money import Tokens
from engine.rollups import midnight
from engine.scope import Scope

DEFAULT_DAYS = 30
MAX_DAYS = 366
TOP_EARNERS_DEFAULT = 10
TOP_EARNERS_MAX = 200

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


def moment(name: str, raw: str | None) -> datetime | None:
    """A query parameter's instant in UTC: a date (its midnight UTC) or an RFC 3339 time with an
    offset; None when absent or empty. Raises ValidationFailed on `name` for anything else."""
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
            moments[name] = moment(name, raw)
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
    """A period cut by the roll-up watermark `until`:
      - full days [start, full_end): complete in the roll-ups;
      - the cut day `full_end`, when the watermark falls inside it and inside the period: its
        roll-up rows cover [midnight, until), what follows is live;
      - live instants [live_lo, end).
    `days_version` changes only when the roll-up recomputes a complete day, so what is derived
    from the full days is cached for the day; what comes from the cut day is keyed by `until`."""

    period: Period
    full_end: date
    cut: bool  # the roll-ups hold part of day `full_end`
    live_lo: datetime
    days_version: int
    until: datetime | None

    @property
    def rolled_end(self) -> date:
        """Exclusive day bound of what the roll-ups hold (the cut day included)."""
        return self.full_end + timedelta(days=1) if self.cut else self.full_end

    def params(self, scope: Scope) -> dict[str, Any]:
        return {
            **scope.params,
            "r_lo": self.period.start,
            "r_hi": self.rolled_end,
            "full_end": self.full_end,
            "lo": self.live_lo,
            "hi": max(self.live_lo, midnight(self.period.end)),
        }

    @property
    def has_full(self) -> bool:
        return self.period.start < self.full_end

    @property
    def has_rolled(self) -> bool:
        return self.period.start < self.rolled_end

    @property
    def has_live(self) -> bool:
        return self.live_lo < midnight(self.period.end)


async def _split(conn: AsyncConnection, period: Period) -> _Split:
    row = (
        await conn.execute(
            text("SELECT closed_until, days_version FROM dashboard_rollup_state WHERE id = 1")
        )
    ).one_or_none()
    until: datetime | None = row[0] if row is not None else None
    version = int(row[1]) if row is not None else 0
    start, end = midnight(period.start), midnight(period.end)
    if until is None or until <= start:
        return _Split(period, period.start, False, start, version, until)
    if until >= end:
        return _Split(period, period.end, False, end, version, until)
    full_end = until.astimezone(UTC).date()
    return _Split(period, full_end, until != midnight(full_end), until, version, until)


class _RolledCache:
    """What is derived from the roll-ups of closed days, per process, least recently used out.

    A complete day's roll-up changes only when the roll-up recomputes it, which bumps
    `days_version` (part of every key of complete days); the watermark's day is keyed by the
    watermark. So a period's per-user totals are read from PostgreSQL once per process and day
    (the watermark day's once a minute) and merged with the live part in memory. Bounded by
    the entries held (a user's totals count as two): about 100 MB at the bound."""

    def __init__(self, max_items: int = 1_000_000) -> None:
        self._entries: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._sizes: dict[tuple[Any, ...], int] = {}
        self._items = 0
        self.max_items = max_items

    def get(self, key: tuple[Any, ...]) -> Any:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: tuple[Any, ...], value: Any, size: int) -> None:
        self._entries[key] = value
        self._sizes[key] = size
        self._items += size
        while self._items > self.max_items and len(self._entries) > 1:
            old, _ = self._entries.popitem(last=False)
            self._items -= self._sizes.pop(old)

    def clear(self) -> None:
        self._entries.clear()
        self._sizes.clear()
        self._items = 0


ROLLED_CACHE = _RolledCache()

# Live postings on wallets (users' and organizations'; organizations under a NULL user), by day.
# Grouped by account first, then each group's account read by primary key (OFFSET 0 keeps the
# planner from flattening the lookup into a join over every account of the partner). An action
# credits an account once, so a count of CREDIT postings per account is a count of actions.
_LIVE_WALLETS = """
SELECT g.day, acc.partner_user_id, g.tokens, g.tokens_reversed, g.actions
FROM (
  SELECT CAST(p.created_at AT TIME ZONE 'UTC' AS date) AS day, p.account_id,
         COALESCE(sum(p.amount) FILTER (WHERE p.type = 'CREDIT'), 0) AS tokens,
         COALESCE(-sum(p.amount) FILTER (WHERE p.type = 'REVERSAL'), 0) AS tokens_reversed,
         count(*) FILTER (WHERE p.type = 'CREDIT') AS actions
  FROM postings p
  WHERE p.partner_id = :partner_id AND p.environment = :environment
    AND p.created_at >= :lo AND p.created_at < :hi AND p.type IN ('CREDIT', 'REVERSAL')
  GROUP BY 1, 2
) AS g
CROSS JOIN LATERAL (
  SELECT a.partner_user_id FROM ledger_accounts a
  WHERE a.id = g.account_id AND a.kind IN ('WALLET_AVAILABLE', 'WALLET_LOCKED') OFFSET 0
) AS acc
"""
_LIVE_ACTIONS = """
SELECT CAST(created_at AT TIME ZONE 'UTC' AS date) AS day, count(*) FROM actions
WHERE partner_id = :partner_id AND environment = :environment
  AND created_at >= :lo AND created_at < :hi
GROUP BY 1
"""
_SCOPED = "partner_id = :partner_id AND environment = :environment"


@dataclass
class _Day:
    actions: int = 0
    tokens: int = 0
    reversed: int = 0


@dataclass
class _Live:
    """The live part of a period: per day figures, and per (day, user) credits."""

    days: dict[date, _Day]
    users: list[tuple[date, str, int, int, int]]  # day, user id, tokens, reversed, actions


async def _live(conn: AsyncConnection, scope: Scope, split: _Split, *, actions: bool) -> _Live:
    live = _Live({}, [])
    if not split.has_live:
        return live
    params = split.params(scope)
    for day, user_id, tokens, reversed_, count in await conn.execute(text(_LIVE_WALLETS), params):
        figures = live.days.setdefault(day, _Day())
        figures.tokens += int(tokens)
        figures.reversed += int(reversed_)
        if user_id is not None:
            live.users.append((day, user_id, int(tokens), int(reversed_), int(count)))
    if actions:
        for day, count in await conn.execute(text(_LIVE_ACTIONS), params):
            live.days.setdefault(day, _Day()).actions = int(count)
    return live


async def _days(
    conn: AsyncConnection, scope: Scope, split: _Split, live: _Live
) -> dict[date, _Day]:
    """Per-day actions and tokens of the period: roll-up rows plus the live days (the cut day
    has both, which add up). Active users are not additive: see `_users_by_bucket`."""
    days: dict[date, _Day] = {}
    if split.has_rolled:
        rows = await conn.execute(
            text(
                "SELECT day, actions, tokens_distributed, tokens_reversed "
                f"FROM dashboard_days WHERE {_SCOPED} AND day >= :r_lo AND day < :r_hi"
            ),
            split.params(scope),
        )
        for day, actions, tokens, reversed_ in rows:
            days[day] = _Day(int(actions), int(tokens), int(reversed_))
    for day, figures in live.days.items():
        merged = days.setdefault(day, _Day())
        merged.actions += figures.actions
        merged.tokens += figures.tokens
        merged.reversed += figures.reversed
    return days


UserTotals = dict[str, tuple[int, int, int]]  # user id -> tokens, tokens reversed, actions


@dataclass(frozen=True)
class _RolledUsers:
    """Per-user totals over the rolled part of a period, and the same ranked (most tokens
    first, ties by user id): a top-N is then merged with the live users in O(N + live)."""

    totals: UserTotals
    ranked: list[tuple[int, str]]  # (-tokens, user id) of users with tokens > 0, ascending


_ROLLED_USERS = f"""
SELECT partner_user_id, sum(tokens), sum(tokens_reversed), sum(actions)
FROM dashboard_user_days WHERE {_SCOPED} AND day >= :lo_day AND day < :hi_day
GROUP BY partner_user_id
"""
_NO_USERS = _RolledUsers({}, [])


async def _users_between(
    conn: AsyncConnection, scope: Scope, lo: date, hi: date, version: Any
) -> _RolledUsers:
    """Per-user totals of the rolled days [lo, hi), cached under `version`."""
    if lo >= hi:
        return _NO_USERS
    key = ("users", scope, lo, hi, version)
    found = ROLLED_CACHE.get(key)
    if found is None:
        rows = await conn.execute(text(_ROLLED_USERS), {**scope.params, "lo_day": lo, "hi_day": hi})
        totals = {user: (int(t), int(r), int(a)) for user, t, r, a in rows}
        ranked = sorted((-t, user) for user, (t, _, _) in totals.items() if t > 0)
        found = _RolledUsers(totals, ranked)
        ROLLED_CACHE.put(key, found, 2 * len(totals) + 1)
    return found  # type: ignore[no-any-return]


async def _rolled_users(conn: AsyncConnection, scope: Scope, split: _Split) -> _RolledUsers:
    """Per-user totals over the rolled part of the period: the complete days (cached for the
    day) plus the cut day's rows (cached until the watermark moves)."""
    full = await _users_between(
        conn, scope, split.period.start, split.full_end, ("days", split.days_version)
    )
    if not split.cut:
        return full
    cut_end = split.full_end + timedelta(days=1)
    cut = await _users_between(conn, scope, split.full_end, cut_end, ("cut", split.until))
    if not cut.totals:
        return full
    key = ("merged", scope, split.period.start, cut_end, split.days_version, split.until)
    found = ROLLED_CACHE.get(key)
    if found is None:
        totals = dict(full.totals)
        for user, (t, r, a) in cut.totals.items():
            ft, fr, fa = totals.get(user, (0, 0, 0))
            totals[user] = (ft + t, fr + r, fa + a)
        ranked = sorted((-t, user) for user, (t, _, _) in totals.items() if t > 0)
        found = _RolledUsers(totals, ranked)
        ROLLED_CACHE.put(key, found, 2 * len(totals) + 1)
    return found  # type: ignore[no-any-return]


def _live_totals(live: _Live) -> UserTotals:
    totals: UserTotals = {}
    for _, user, tokens, reversed_, actions in live.users:
        t, r, a = totals.get(user, (0, 0, 0))
        totals[user] = (t + tokens, r + reversed_, a + actions)
    return totals


# -- summary -----------------------------------------------------------------------------------


_POOLS = """
SELECT p.id, p.name, p.status, p.is_default, a.balance, p.low_balance_threshold
FROM token_pools p JOIN ledger_accounts a ON a.pool_id = p.id
WHERE p.partner_id = :partner_id AND p.environment = :environment
ORDER BY p.created_at, p.id
"""


async def summary(conn: AsyncConnection, scope: Scope, period: Period) -> dict[str, Any]:
    """Tokens distributed and reversed, actions, active users over `period`; pool balances now."""
    split = await _split(conn, period)
    live = await _live(conn, scope, split, actions=True)
    days = await _days(conn, scope, split, live)
    rolled = await _rolled_users(conn, scope, split)
    # |rolled active ∪ live active| without building the rolled set: O(live users)
    newly_active = {
        user
        for _, user, tokens, _, _ in live.users
        if tokens > 0 and rolled.totals.get(user, (0, 0, 0))[0] <= 0
    }
    active = len(rolled.ranked) + len(newly_active)
    pools = (await conn.execute(text(_POOLS), scope.params)).mappings()
    distributed = sum(d.tokens for d in days.values())
    reversed_ = sum(d.reversed for d in days.values())
    return {
        **period.wire(),
        "tokensDistributed": Tokens(distributed),
        "tokensReversed": Tokens(reversed_),
        "netTokens": Tokens(distributed - reversed_),
        "actions": sum(d.actions for d in days.values()),
        "activeUsers": active,
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


async def top_earners(
    conn: AsyncConnection, scope: Scope, period: Period, limit: int
) -> dict[str, Any]:
    """The users credited the most tokens over `period`, most first (ties: oldest user first:
    user ids begin with their creation time)."""
    split = await _split(conn, period)
    live = _live_totals(await _live(conn, scope, split, actions=False))
    rolled = await _rolled_users(conn, scope, split)
    # Users without live credits keep their rolled rank: the first `limit` of them (skipping
    # live users) are the only ones that can make the top; every live user is a candidate.
    candidates: list[tuple[int, str]] = []
    for minus_tokens, user in rolled.ranked:
        if len(candidates) >= limit:
            break
        if user not in live:
            candidates.append((minus_tokens, user))
    users: UserTotals = {user: rolled.totals[user] for _, user in candidates}
    for user, (tokens, reversed_, actions) in live.items():
        t, r, a = rolled.totals.get(user, (0, 0, 0))
        users[user] = (t + tokens, r + reversed_, a + actions)
        if t + tokens > 0:
            candidates.append((-(t + tokens), user))
    top = heapq.nsmallest(limit, candidates)
    external: dict[str, str] = {}
    if top:
        rows = await conn.execute(
            text(
                f"SELECT id, external_user_id FROM partner_users WHERE {_SCOPED} AND id = ANY(:ids)"
            ),
            {**scope.params, "ids": [user for _, user in top]},
        )
        external = {user_id: external_id for user_id, external_id in rows}
    return {
        **period.wire(),
        "limit": limit,
        "data": [
            {
                "rank": rank,
                "externalUserId": external[user],
                "tokensEarned": Tokens(users[user][0]),
                "tokensReversed": Tokens(users[user][1]),
                "actions": users[user][2],
            }
            for rank, (_, user) in enumerate(top, start=1)
        ],
    }


# -- trends ------------------------------------------------------------------------------------------

_ROLLED_WEEKS = f"""
SELECT CAST(date_trunc('week', day) AS date) AS week, count(DISTINCT partner_user_id)
FROM dashboard_user_days
WHERE {_SCOPED} AND day >= :lo_day AND day < :hi_day AND tokens > 0
GROUP BY 1
"""
_ROLLED_DAYS_USERS = f"""
SELECT day, active_users FROM dashboard_days
WHERE {_SCOPED} AND day >= :lo_day AND day < :hi_day
"""
_ACTIVE_BETWEEN = f"""
SELECT DISTINCT partner_user_id FROM dashboard_user_days
WHERE {_SCOPED} AND day >= :lo_day AND day < :hi_day AND tokens > 0
"""


def bucket_of(day: date, interval: Interval) -> date:
    """The start of the bucket holding `day`: the day itself, or the Monday of its week."""
    return day if interval == "day" else day - timedelta(days=day.weekday())


async def _active_between(
    conn: AsyncConnection, scope: Scope, lo: date, hi: date, version: Any
) -> frozenset[str]:
    """Users active in the rolled days [lo, hi), cached under `version`."""
    if lo >= hi:
        return frozenset()
    key = ("active", scope, lo, hi, version)
    found = ROLLED_CACHE.get(key)
    if found is None:
        params = {**scope.params, "lo_day": lo, "hi_day": hi}
        found = frozenset(u for (u,) in await conn.execute(text(_ACTIVE_BETWEEN), params))
        ROLLED_CACHE.put(key, found, len(found) + 1)
    return found  # type: ignore[no-any-return]


async def _users_by_bucket(
    conn: AsyncConnection, scope: Scope, split: _Split, live: _Live, interval: Interval
) -> dict[date, int]:
    """Distinct active users per day or week. Buckets before the one holding the end of the
    complete days come from the roll-ups (weeks counted once per day, cached); that bucket
    joins its rolled users (complete days, the cut day) with its live ones; later buckets are
    live only."""
    counts: dict[date, int] = {}
    edge = bucket_of(split.full_end, interval)
    if split.period.start < edge:
        params = {**scope.params, "lo_day": split.period.start, "hi_day": edge}
        if interval == "day":
            rows = await conn.execute(text(_ROLLED_DAYS_USERS), params)
            counts = {day: int(n) for day, n in rows}
        else:
            key = ("weeks", scope, split.period.start, edge, split.days_version)
            found = ROLLED_CACHE.get(key)
            if found is None:
                found = {w: int(n) for w, n in await conn.execute(text(_ROLLED_WEEKS), params)}
                ROLLED_CACHE.put(key, found, len(found) + 1)
            counts = dict(found)
    by_bucket: dict[date, set[str]] = {}
    for day, user, tokens, _, _ in live.users:
        if tokens > 0:
            by_bucket.setdefault(bucket_of(day, interval), set()).add(user)
    if edge < split.period.end:
        edge_users = set(by_bucket.pop(edge, set()))
        edge_users |= await _active_between(
            conn, scope, edge, split.full_end, ("days", split.days_version)
        )
        if split.cut:
            cut_end = split.full_end + timedelta(days=1)
            edge_users |= await _active_between(
                conn, scope, split.full_end, cut_end, ("cut", split.until)
            )
        counts[edge] = len(edge_users)
    for bucket, users in by_bucket.items():
        counts[bucket] = len(users)
    return counts


async def trends(
    conn: AsyncConnection, scope: Scope, period: Period, metric: Metric, interval: Interval
) -> dict[str, Any]:
    """One point per day or week of `period` (zero-filled), oldest first. Weekly `users` counts
    each user once per week; daily figures are per day."""
    split = await _split(conn, period)
    live = await _live(conn, scope, split, actions=metric == "actions")
    values: dict[date, int] = {}
    if metric == "users":
        values = await _users_by_bucket(conn, scope, split, live, interval)
    else:
        for day, figures in (await _days(conn, scope, split, live)).items():
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
    "summary",
    "top_earners",
    "trends",
]
