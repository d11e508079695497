"""`GET /dashboard/*` (contract section 7 "Dashboard"): translation only; the figures, their
sources and the period rules live in `engine.dashboard`."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from engine import dashboard
from engine import webhook_health as health
from engine.errors import ValidationFailed
from http_front.auth_partner import secret_key_required
from http_front.body import json_response
from http_front.keys import DB
from http_front.openapi import EXAMPLES, Query, documented
from http_front.principal import principal
from schemas.dashboard import (
    ApiUsageOut,
    DashboardSummaryOut,
    TopEarnersOut,
    TrendsOut,
    WebhookHealthOut,
)

PREFIX = "/v1/partner/dashboard"

_PERIOD_RULES = (
    "Periods are whole UTC days: `from` counts from the start of its UTC day; `to` is "
    "exclusive and rounds up to the next UTC midnight (unless it is one). Each accepts a date "
    "(`2026-11-01`, midnight UTC) or an RFC 3339 time with an offset. Default: the last 30 days, "
    "today included (`to` = next midnight, `from` = 30 days before). At most 366 days; "
    "`to` <= `from` or a longer period is 422 VALIDATION_FAILED. The answer echoes the period used.\n\n"
    "Freshness: figures include every action and reversal committed before the request. What "
    "was recorded before about a minute ago comes from daily roll-ups a worker tick keeps; the "
    "rest is read live from the ledger. Days are UTC days of when the engine recorded the "
    "action or reversal (not the action's `occurredAt`)."
)
FROM = Query(
    "from", "Period start: a date or RFC 3339 time; its UTC day is included", format="date-time"
)
TO = Query(
    "to",
    "Period end (exclusive): a date or RFC 3339 time, rounded up to a UTC midnight",
    format="date-time",
)


def _period(request: web.Request, interval: dashboard.Interval = "day") -> dashboard.Period:
    return dashboard.parse_period(
        request.query.get("from"), request.query.get("to"), datetime.now(UTC), interval=interval
    )


@documented(
    "Dashboard summary",
    auth="secret",
    responses={200: DashboardSummaryOut},
    query=[FROM, TO],
    description=_PERIOD_RULES
    + "\n\n`tokensDistributed` counts tokens credited to wallets (users' and organizations') by "
    "actions in the period; `tokensReversed` what reversals in the period took back, on the day "
    "of the reversal. `activeUsers`: distinct users credited tokens by at least one action in "
    "the period (a stakeholder who received nothing is not active). `pools`: every pool of the "
    "environment with its balance now.",
)
@secret_key_required
async def summary(request: web.Request) -> web.Response:
    period = _period(request)
    async with request.app[DB].connect() as conn:
        body = await dashboard.summary(conn, principal(request).scope, period)
    return json_response(body)


@documented(
    "Top earners",
    auth="secret",
    responses={200: TopEarnersOut},
    query=[
        FROM,
        TO,
        Query(
            "limit",
            f"How many users, 1-{dashboard.TOP_EARNERS_MAX} "
            f"(default {dashboard.TOP_EARNERS_DEFAULT}); outside: 422",
            type="integer",
        ),
    ],
    description=_PERIOD_RULES
    + "\n\nUsers ranked by tokens credited to them in the period (gross: reversals are shown "
    "beside, not subtracted), most first; ties keep the user created first. Users with no "
    "tokens in the period are not listed. Organizations are not users and are not ranked.",
)
@secret_key_required
async def top_earners(request: web.Request) -> web.Response:
    problems: dict[str, list[str]] = {}  # every bad parameter in one answer
    limit = dashboard.TOP_EARNERS_DEFAULT
    try:
        limit = dashboard.parse_limit(request.query.get("limit"))
    except ValidationFailed as exc:
        problems.update(exc.fields)
    try:
        period = _period(request)
    except ValidationFailed as exc:
        problems.update(exc.fields)
    if problems:
        raise ValidationFailed(problems)
    async with request.app[DB].connect() as conn:
        body = await dashboard.top_earners(conn, principal(request).scope, period, limit)
    return json_response(body)


@documented(
    "Trends",
    auth="secret",
    responses={200: TrendsOut},
    query=[
        Query("metric", "What to count (default tokens)", enum=dashboard.METRICS),
        Query("interval", "Bucket size (default day)", enum=dashboard.INTERVALS),
        FROM,
        TO,
    ],
    description=_PERIOD_RULES
    + "\n\nOne point per day or week, oldest first, zero-filled. Weeks start on Monday 00:00 "
    "UTC; with `interval=week` the period widens to whole weeks (`from` back to its Monday, "
    "`to` forward to the next Monday) and the answer says so. `tokens`: tokens distributed; "
    "`actions`: actions recorded; `users`: distinct active users in that day or week (a user "
    "active on three days of a week counts once in the week).",
)
@secret_key_required
async def trends(request: web.Request) -> web.Response:
    problems: dict[str, list[str]] = {}  # every bad parameter in one answer
    choices: dict[str, str] = {}
    for name, allowed, default in (
        ("metric", dashboard.METRICS, "tokens"),
        ("interval", dashboard.INTERVALS, "day"),
    ):
        try:
            choices[name] = dashboard.parse_choice(name, request.query.get(name), allowed, default)
        except ValidationFailed as exc:
            problems.update(exc.fields)
            choices[name] = default
    metric, interval = choices["metric"], choices["interval"]
    try:
        period = _period(request, interval)  # type: ignore[arg-type]
    except ValidationFailed as exc:
        problems.update(exc.fields)
    if problems:
        raise ValidationFailed(problems)
    async with request.app[DB].connect() as conn:
        body = await dashboard.trends(
            conn,
            principal(request).scope,
            period,
            metric,  # type: ignore[arg-type]
            interval,  # type: ignore[arg-type]
        )
    return json_response(body)


@documented(
    "Webhook health",
    auth="secret",
    responses={200: WebhookHealthOut},
    query=[
        Query(
            "from",
            "Window start, rounded down to its UTC hour (default: `to` - 25 h)",
            format="date-time",
        ),
        Query(
            "to",
            "Window end (exclusive), rounded up to a UTC hour (default: the next hour)",
            format="date-time",
        ),
    ],
    description="Delivery attempts made in the window, in whole UTC hours (`from` back to its "
    "hour, `to` up to the next; default: the current hour and the 24 before it; at most 7 days): "
    "how many, how many succeeded (2xx within 5 s), the success rate (4 decimals), and exact "
    "latency percentiles (nearest rank, milliseconds, every attempt counted, timeouts at the "
    "time they took). `failingEndpoints`: the endpoints with a failed attempt in the window, "
    "and disabled endpoints, most failures first (at most 20); `lastStatusCode` is the status of "
    "the endpoint's latest attempt in the window (null: no answer). `pendingDeliveries` is a "
    "live count. Hours that ended more than 2 minutes ago come from an hourly roll-up; the rest "
    "is read live.",
)
@secret_key_required
async def webhook_health(request: web.Request) -> web.Response:
    lower, upper = health.parse_window(
        request.query.get("from"), request.query.get("to"), datetime.now(UTC)
    )
    async with request.app[DB].connect() as conn:
        body = await health.webhook_health(conn, principal(request).scope, lower, upper)
    return json_response(body)


@documented(
    "API usage",
    auth="secret",
    responses={200: ApiUsageOut},
    query=[FROM, TO],
    description=_PERIOD_RULES.split("\n\n")[0]
    + "\n\nRequests answered to this environment's keys, by route class (`partner:<resource>`, "
    "as in the `/metrics` labels) and HTTP status, over the period. Every request whose key "
    "was recognised (and, for a secret key, whose signature was valid) counts, refusals such "
    "as 429 included. Counts reach this report within about a minute (the front batches them "
    "in Redis; a worker tick folds them into the database).",
)
@secret_key_required
async def api_usage(request: web.Request) -> web.Response:
    period = _period(request)
    async with request.app[DB].connect() as conn:
        body = await dashboard.api_usage(conn, principal(request).scope, period)
    return json_response(body)


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{PREFIX}/summary", summary)
    app.router.add_get(f"{PREFIX}/top-earners", top_earners)
    app.router.add_get(f"{PREFIX}/trends", trends)
    app.router.add_get(f"{PREFIX}/webhook-health", webhook_health)
    app.router.add_get(f"{PREFIX}/api-usage", api_usage)


# -- examples for the OpenAPI document ------------------------------------------------------------

_FROM, _TO = "2026-11-04T00:00:00Z", "2026-12-04T00:00:00Z"
EXAMPLES[("GET", f"{PREFIX}/summary")] = {
    200: {
        "from": _FROM,
        "to": _TO,
        "tokensDistributed": 182340.5,
        "tokensReversed": 1200,
        "netTokens": 181140.5,
        "actions": 9123,
        "activeUsers": 2311,
        "pools": [
            {
                "poolId": "6751a2b3c4d5e6f708192a3b",
                "name": "Main pool",
                "status": "ACTIVE",
                "isDefault": True,
                "balance": 817659.5,
                "lowBalanceThreshold": 10000,
            }
        ],
    }
}
EXAMPLES[("GET", f"{PREFIX}/top-earners")] = {
    200: {
        "from": _FROM,
        "to": _TO,
        "limit": 2,
        "data": [
            {
                "rank": 1,
                "externalUserId": "user_42",
                "tokensEarned": 1520.25,
                "tokensReversed": 0,
                "actions": 31,
            },
            {
                "rank": 2,
                "externalUserId": "user_7",
                "tokensEarned": 1311,
                "tokensReversed": 25,
                "actions": 18,
            },
        ],
    }
}
EXAMPLES[("GET", f"{PREFIX}/trends")] = {
    200: {
        "from": "2026-11-16T00:00:00Z",
        "to": "2026-11-30T00:00:00Z",
        "metric": "users",
        "interval": "week",
        "data": [
            {"periodStart": "2026-11-16T00:00:00Z", "value": 1204},
            {"periodStart": "2026-11-23T00:00:00Z", "value": 1187},
        ],
    }
}
EXAMPLES[("GET", f"{PREFIX}/webhook-health")] = {
    200: {
        "from": "2026-12-02T12:00:00Z",
        "to": "2026-12-03T12:00:00Z",
        "attempts": 5210,
        "succeeded": 5188,
        "failed": 22,
        "successRate": 0.9958,
        "latencyMs": {"p50": 41, "p95": 180, "p99": 950},
        "pendingDeliveries": 3,
        "failingEndpoints": [
            {
                "endpointId": "6751a2b3c4d5e6f708192a40",
                "url": "https://partner.example.com/sir/webhooks",
                "isActive": True,
                "disabledReason": None,
                "attempts": 1302,
                "failures": 22,
                "lastStatusCode": 200,
                "lastFailureAt": "2026-12-03T09:14:02Z",
            }
        ],
    }
}
EXAMPLES[("GET", f"{PREFIX}/api-usage")] = {
    200: {
        "from": _FROM,
        "to": _TO,
        "totalRequests": 9412,
        "data": [
            {"routeClass": "partner:actions", "status": 200, "requests": 9123},
            {"routeClass": "partner:actions", "status": 409, "requests": 12},
            {"routeClass": "partner:users", "status": 200, "requests": 277},
        ],
    }
}
