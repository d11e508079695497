"""The partner dashboard on real PostgreSQL and Redis, through real signed HTTP: figures against
what the submits answered and a direct sum over the ledger (read live, then from the roll-ups,
then after a second roll-up), scoping, Monday weeks, webhook health from recorded attempts, API
usage counted by the front and folded by the worker's fold (twice, and after a fold that died
between its commit and its clean-up), and 422s for bad parameters."""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest_asyncio
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import text

from engine import webhooks
from engine.action_request import ActionRequest, StakeholderRequest
from engine.api_usage import FOLDING_KEY
from engine.credentials import IssuedKeys, issue_keys
from engine.money import Tokens
from engine.reversals import ReversalRequest, reverse_action
from engine.rollups import GRACE, roll_up, roll_up_webhooks
from engine.submit import submit_action
from engine.webhooks import AttemptResult, EndpointSpec
from engine.wire import loads
from http_front.app import create_app
from http_front.auth_partner import EPOCH_KEY
from http_front.keys import REDIS
from http_front.usage import USAGE
from tests.integration.conftest_auth import assert_envelope, signed
from workers.dashboard_actors import fold_usage

DASH = "/v1/partner/dashboard"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(settings) -> AsyncIterator[TestClient]:
    # A Redis up for an hour (the session flushed it; see conftest_auth's client fixture).
    redis = aioredis.from_url(settings.redis_url)
    await redis.set(EPOCH_KEY, int(time.time()) - 3600)
    await redis.aclose()
    started = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
    await started.start_server()
    yield started
    await started.close()


async def _keys(db, box, partner_id: str, environment: str = "sandbox") -> IssuedKeys:
    async with db.begin() as conn:
        return await issue_keys(
            conn, box, actor="test", partner_id=partner_id, environment=environment, name="dash"
        )


async def _get(client: TestClient, keys: IssuedKeys, path: str) -> tuple[int, Any]:
    async with client.get(path, headers=signed(keys, "GET", path)) as response:
        return response.status, loads(await response.read())


async def _ok(client: TestClient, keys: IssuedKeys, path: str) -> Any:
    status, body = await _get(client, keys, path)
    assert status == 200, body
    return body


async def _submit(db, scope, user: str, amount: str) -> dict[str, Any]:
    request = ActionRequest(
        idempotency_key=secrets.token_hex(8),
        action_type="PURCHASE",
        amount=Decimal(amount),
        currency="USD",
        stakeholders=(StakeholderRequest("CUSTOMER", partner_user_id=user),),
    )
    return await submit_action(db, scope, request)


async def _db_now(db) -> datetime:
    async with db.connect() as conn:
        return (await conn.execute(text("SELECT clock_timestamp()"))).scalar_one()


async def _age(db, scope, since: datetime, days: int) -> None:
    """Move the scope's rows recorded since `since` `days` days into the past, as if recorded
    then (the ledger's append-only triggers are bypassed for this test-only rewrite)."""
    async with db.begin() as conn:
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        for table in ("postings", "journal_entries", "actions", "reversals"):
            await conn.execute(
                text(
                    f"UPDATE {table} SET created_at = created_at - make_interval(days => :days) "  # noqa: S608
                    "WHERE partner_id = :partner_id AND environment = :environment "
                    "AND created_at >= :since"
                ),
                {**scope.params, "days": days, "since": since},
            )


async def _reset_rollups(db) -> None:
    """Forget the watermark: every day is read live until the next roll-up (tests age rows into
    days an earlier test may have closed already)."""
    async with db.begin() as conn:
        await conn.execute(text("UPDATE dashboard_rollup_state SET closed_until = NULL"))


async def _ledger_credits(db, scope, lo: datetime, hi: datetime) -> int:
    """The direct computation: CREDIT postings on the scope's wallets in [lo, hi)."""
    async with db.connect() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "SELECT COALESCE(sum(p.amount), 0) FROM postings p "
                        "JOIN ledger_accounts a ON a.id = p.account_id "
                        "WHERE p.partner_id = :partner_id AND p.environment = :environment "
                        "AND p.type = 'CREDIT' AND a.kind IN ('WALLET_AVAILABLE', 'WALLET_LOCKED') "
                        "AND p.created_at >= :lo AND p.created_at < :hi"
                    ),
                    {**scope.params, "lo": lo, "hi": hi},
                )
            ).scalar_one()
        )


def _dec(micro: int) -> Decimal:
    return Tokens(micro).to_decimal()


# -- figures ------------------------------------------------------------------------------------


async def test_figures_equal_the_ledger_live_and_rolled_up(db, box, make_partner, client):
    await _reset_rollups(db)
    partner = await make_partner(funding="100000")
    scope = partner.scope
    keys = await _keys(db, box, partner.partner_id)
    today = datetime.now(UTC).date()
    # (days ago, user, amount): users spread over today, yesterday, last week, and 40 days ago
    # (outside the default 30-day period).
    plan = [
        (0, "ann", "10"),
        (0, "bob", "2.5"),
        (1, "ann", "7"),
        (1, "cy", "30"),
        (8, "dee", "12.25"),
        (8, "ann", "1"),
        (40, "old", "99"),
    ]
    per_day: dict[date, int] = defaultdict(int)
    actions_per_day: Counter[date] = Counter()
    per_user: dict[str, int] = defaultdict(int)
    user_actions: Counter[str] = Counter()
    reversed_action: dict[str, Any] = {}
    for days_ago in sorted({d for d, _, _ in plan}, reverse=True):
        since = await _db_now(db)
        for d, user, amount in plan:
            if d != days_ago:
                continue
            answer = await _submit(db, scope, user, amount)
            if user == "ann" and days_ago == 0:
                cut = await _db_now(db)  # the first roll-up stops here: today is split
            day = today - timedelta(days=days_ago)
            per_day[day] += answer["tokensDistributed"].micro
            actions_per_day[day] += 1
            if days_ago < 30:
                per_user[user] += answer["tokensDistributed"].micro
                user_actions[user] += 1
            if user == "cy":
                reversed_action = answer
        if days_ago:
            await _age(db, scope, since, days_ago)
    # A reversal today of cy's action of yesterday: counted today, beside (not off) cy's earnings.
    reversal = await reverse_action(
        db, scope, reversed_action["actionId"], ReversalRequest(idempotency_key="rev-1")
    )
    reversed_micro = reversal["tokensReversed"].micro
    assert reversed_micro > 0

    start = today - timedelta(days=29)
    in_period = {d: v for d, v in per_day.items() if d >= start}
    expected_tokens = sum(in_period.values())
    assert expected_tokens == await _ledger_credits(
        db,
        scope,
        datetime.combine(start, datetime.min.time(), UTC),
        datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC),
    )

    async def snapshot() -> list[Any]:
        return [
            await _ok(client, keys, f"{DASH}/summary"),
            await _ok(client, keys, f"{DASH}/top-earners?limit=3"),
            await _ok(client, keys, f"{DASH}/trends?metric=tokens"),
            await _ok(client, keys, f"{DASH}/trends?metric=actions&interval=day"),
            await _ok(client, keys, f"{DASH}/trends?metric=users&interval=day"),
            # the week the watermark cuts (unless today is a Monday): rolled days plus today
            await _ok(client, keys, f"{DASH}/trends?metric=users&interval=week"),
        ]

    live = await snapshot()
    summary, top, tokens, actions, users, weekly_users = live
    assert summary["from"] == f"{start.isoformat()}T00:00:00Z"
    assert summary["to"] == f"{(today + timedelta(days=1)).isoformat()}T00:00:00Z"
    assert summary["tokensDistributed"] == _dec(expected_tokens)
    assert summary["tokensReversed"] == _dec(reversed_micro)
    assert summary["netTokens"] == _dec(expected_tokens - reversed_micro)
    assert summary["actions"] == sum(n for d, n in actions_per_day.items() if d >= start) == 6
    assert summary["activeUsers"] == 4  # ann, bob, cy, dee; "old" is outside the period
    assert [p["poolId"] for p in summary["pools"]] == [partner.pool_id]
    async with db.connect() as conn:
        pool_balance = (
            await conn.execute(
                text("SELECT balance FROM ledger_accounts WHERE pool_id = :id"),
                {"id": partner.pool_id},
            )
        ).scalar_one()
    assert summary["pools"][0]["balance"] == _dec(int(pool_balance))

    ranked = sorted(per_user.items(), key=lambda item: -item[1])[:3]
    assert [(r["externalUserId"], r["tokensEarned"]) for r in top["data"]] == [
        (user, _dec(micro)) for user, micro in ranked
    ]
    assert [r["rank"] for r in top["data"]] == [1, 2, 3]
    by_user = {r["externalUserId"]: r for r in top["data"]}
    assert by_user["ann"]["actions"] == user_actions["ann"] == 3
    if "cy" in by_user:
        assert by_user["cy"]["tokensReversed"] == _dec(reversed_micro)

    assert len(tokens["data"]) == 30
    assert {p["periodStart"][:10]: p["value"] for p in tokens["data"] if p["value"]} == {
        d.isoformat(): _dec(v) for d, v in in_period.items()
    }
    assert {p["periodStart"][:10]: p["value"] for p in actions["data"] if p["value"]} == {
        d.isoformat(): n for d, n in actions_per_day.items() if d >= start
    }
    day_users = {p["periodStart"][:10]: p["value"] for p in users["data"] if p["value"]}
    assert day_users == {
        today.isoformat(): 2,
        (today - timedelta(days=1)).isoformat(): 2,
        (today - timedelta(days=8)).isoformat(): 2,
    }

    this_week = today - timedelta(days=today.weekday())
    week_users = {"ann", "bob"} | ({"cy", "ann"} if today.weekday() >= 1 else set())
    assert weekly_users["data"][-1] == {
        "periodStart": f"{this_week.isoformat()}T00:00:00Z",
        "value": len(week_users),
    }

    # The roll-up: closed days and the start of today now come from it, with the same
    # answers (today: ann's first action rolled up, bob's read live); then up to now; a
    # second run (a re-delivered tick) changes nothing.
    run = await roll_up(db, cut + GRACE)
    assert run.closed_until is not None and run.closed_until <= cut
    assert run.days >= 40
    async with db.connect() as conn:
        rolled_today = (
            await conn.execute(
                text(
                    "SELECT actions, active_users FROM dashboard_days "
                    "WHERE partner_id = :partner_id AND day = :today"
                ),
                {**scope.params, "today": today},
            )
        ).one()
    assert tuple(rolled_today) == (1, 1)  # ann's first action only
    assert await snapshot() == live
    run = await roll_up(db, datetime.now(UTC) + GRACE)
    assert run.closed_until is not None and run.closed_until > cut
    assert await snapshot() == live
    async with db.connect() as conn:
        rows_before = (
            await conn.execute(
                text(
                    "SELECT day, actions, tokens_distributed, active_users FROM dashboard_days "
                    "WHERE partner_id = :partner_id ORDER BY day"
                ),
                scope.params,
            )
        ).all()
    assert rows_before and rows_before[0][0] == today - timedelta(days=40)
    # From scratch again, two workers at once (a tick delivered twice): the same rows.
    await _reset_rollups(db)
    await asyncio.gather(
        roll_up(db, datetime.now(UTC) + GRACE), roll_up(db, datetime.now(UTC) + GRACE)
    )
    async with db.connect() as conn:
        rows_after = (
            await conn.execute(
                text(
                    "SELECT day, actions, tokens_distributed, active_users FROM dashboard_days "
                    "WHERE partner_id = :partner_id ORDER BY day"
                ),
                scope.params,
            )
        ).all()
    assert rows_after == rows_before
    assert await snapshot() == live

    # A period in the past, given as times with offsets: whole UTC days it touches.
    frm = (today - timedelta(days=9)).isoformat() + "T23:30:00-01:00"  # = day -8, 00:30 UTC
    to = (today - timedelta(days=8)).isoformat() + "T06:00:00Z"
    past = await _ok(client, keys, f"{DASH}/summary?from={frm}&to={to}")
    assert past["from"] == f"{(today - timedelta(days=8)).isoformat()}T00:00:00Z"
    assert past["to"] == f"{(today - timedelta(days=7)).isoformat()}T00:00:00Z"
    assert past["tokensDistributed"] == _dec(per_day[today - timedelta(days=8)])
    assert (past["actions"], past["activeUsers"], past["tokensReversed"]) == (2, 2, 0)


async def test_scoped_to_partner_and_environment(db, box, make_partner, client):
    await _reset_rollups(db)
    partner = await make_partner(funding="1000")
    await _submit(db, partner.scope, "u1", "5")
    others = [
        await _keys(db, box, partner.partner_id, "production"),  # same partner, other environment
        await _keys(db, box, (await make_partner()).partner_id),  # another partner
    ]
    for round_ in ("live", "rolled"):
        for keys in others:
            summary = await _ok(client, keys, f"{DASH}/summary")
            assert (summary["tokensDistributed"], summary["actions"], summary["activeUsers"]) == (
                0,
                0,
                0,
            ), round_
            assert partner.pool_id not in [p["poolId"] for p in summary["pools"]]
            assert (await _ok(client, keys, f"{DASH}/top-earners"))["data"] == []
            trend = await _ok(client, keys, f"{DASH}/trends?metric=users")
            assert all(p["value"] == 0 for p in trend["data"])
        await roll_up(db, datetime.now(UTC))
    own = await _ok(client, await _keys(db, box, partner.partner_id), f"{DASH}/summary")
    assert own["actions"] == 1 and own["activeUsers"] == 1


async def test_weeks_start_on_monday(db, box, make_partner, client):
    await _reset_rollups(db)
    partner = await make_partner(funding="10000")
    keys = await _keys(db, box, partner.partner_id)
    today = datetime.now(UTC).date()
    monday = today - timedelta(days=today.weekday() + 14)  # a Monday two weeks back or more
    sunday = monday - timedelta(days=1)
    tuesday = monday + timedelta(days=1)
    # Sunday: ann; Monday: ann and bob; Tuesday: ann again (same week as Monday).
    tokens: dict[date, int] = defaultdict(int)
    for day, user, amount in [
        (sunday, "ann", "4"),
        (monday, "ann", "3"),
        (monday, "bob", "2"),
        (tuesday, "ann", "1"),
    ]:
        since = await _db_now(db)
        answer = await _submit(db, partner.scope, user, amount)
        tokens[day] += answer["tokensDistributed"].micro
        await _age(db, partner.scope, since, (today - day).days)

    # A Wednesday to a Tuesday: widened to Monday .. Monday.
    frm, to = (sunday - timedelta(days=4)).isoformat(), (tuesday + timedelta(days=1)).isoformat()
    query = f"from={frm}&to={to}&interval=week"
    for round_ in ("live", "rolled"):
        weekly = await _ok(client, keys, f"{DASH}/trends?metric=tokens&{query}")
        assert weekly["interval"] == "week"
        assert weekly["from"] == f"{(monday - timedelta(days=7)).isoformat()}T00:00:00Z"
        assert weekly["to"] == f"{(monday + timedelta(days=7)).isoformat()}T00:00:00Z"
        assert [(p["periodStart"][:10], p["value"]) for p in weekly["data"]] == [
            ((monday - timedelta(days=7)).isoformat(), _dec(tokens[sunday])),
            (monday.isoformat(), _dec(tokens[monday] + tokens[tuesday])),
        ], round_
        users = await _ok(client, keys, f"{DASH}/trends?metric=users&{query}")
        assert [p["value"] for p in users["data"]] == [1, 2], round_  # ann counted once a week
        actions = await _ok(client, keys, f"{DASH}/trends?metric=actions&{query}")
        assert [p["value"] for p in actions["data"]] == [1, 3], round_
        await roll_up(db, datetime.now(UTC))


# -- webhook health ---------------------------------------------------------------------------


async def test_webhook_health_from_recorded_attempts(db, box, make_partner, client):
    partner = await make_partner()
    scope = partner.scope
    keys = await _keys(db, box, partner.partner_id)
    now = datetime.now(UTC)
    endpoints = []
    for n in range(2):
        async with db.begin() as conn:
            row, _ = await webhooks.create_endpoint(
                conn,
                box,
                scope,
                EndpointSpec(url=f"http://127.0.0.1:9/hook{n}", receive_all_events=True),
                allow_private=True,
            )
        endpoints.append(row["id"])
    # endpoint 0: 8 answers 200; endpoint 1: two 500s, one timeout, then a 200.
    results = [(endpoints[0], 200, 10 * (n + 1)) for n in range(8)] + [
        (endpoints[1], 500, 300),
        (endpoints[1], 500, 250),
        (endpoints[1], None, 5000),
        (endpoints[1], 200, 90),
    ]
    # Half of them three hours ago (an hour the roll-up folds), half in the last minute (live).
    for n, (endpoint_id, status, latency) in enumerate(results):
        back = timedelta(hours=3) if n % 2 == 0 else timedelta(0)
        at = now - back - timedelta(seconds=len(results) - n)  # in order, each its own second
        async with db.begin() as conn:
            delivery = await webhooks.send_test(conn, scope, endpoint_id, at)
            plan = await webhooks.next_attempt(conn, box, delivery["id"], at)
            assert plan is not None
            await webhooks.record_attempt(
                conn,
                delivery["id"],
                AttemptResult(status, latency, None if status else "timeout"),
                at,
            )
    latencies = sorted(latency for _, _, latency in results)
    # These attempts were backdated into hours the roll-up may have folded already (the
    # watermark is global, and a worker earlier in the session moves it): start the webhook
    # roll-up afresh, as a new deployment would (a fold recomputes whole hours, so nothing else
    # changes).
    async with db.begin() as conn:
        await conn.execute(text("UPDATE dashboard_rollup_state SET webhooks_until = NULL"))
    live = await _ok(client, keys, f"{DASH}/webhook-health")
    assert await roll_up_webhooks(db, now) >= 3
    assert await roll_up_webhooks(db, now) == 0  # nothing new: the next hour is not over
    health = await _ok(client, keys, f"{DASH}/webhook-health")
    assert health == live

    def nearest_rank(q: float) -> int:
        return latencies[math.ceil(q * len(latencies)) - 1]

    assert (health["attempts"], health["succeeded"], health["failed"]) == (12, 9, 3)
    assert health["successRate"] == Decimal("0.75")
    assert health["latencyMs"] == {
        "p50": nearest_rank(0.5),
        "p95": nearest_rank(0.95),
        "p99": nearest_rank(0.99),
    }
    assert health["pendingDeliveries"] == 3  # the failures wait for their retries
    (failing,) = health["failingEndpoints"]
    assert failing["endpointId"] == endpoints[1]
    assert (failing["attempts"], failing["failures"], failing["isActive"]) == (4, 3, True)
    assert failing["lastStatusCode"] == 200  # the last attempt, n = 11, is live and answered 200

    other = await _keys(db, box, (await make_partner()).partner_id)
    elsewhere = await _ok(client, other, f"{DASH}/webhook-health")
    assert (elsewhere["attempts"], elsewhere["successRate"], elsewhere["failingEndpoints"]) == (
        0,
        None,
        [],
    )
    assert elsewhere["latencyMs"] == {"p50": None, "p95": None, "p99": None}


# -- API usage -----------------------------------------------------------------------------------


async def _usage(db, client: TestClient, keys: IssuedKeys) -> dict[tuple[str, int], int]:
    """Flush the front's counters, fold, and read the partner's API usage."""
    app = client.server.app
    await app[USAGE].flush(app[REDIS])
    await fold_usage(app[REDIS], db)
    await fold_usage(app[REDIS], db)  # the tick folds at least twice in a row: nothing doubles
    body = await _ok(client, keys, f"{DASH}/api-usage")
    counts = {(r["routeClass"], r["status"]): r["requests"] for r in body["data"]}
    assert body["totalRequests"] == sum(counts.values())
    return counts


async def test_api_usage_counted_and_folded_once(db, box, make_partner, client):
    partner = await make_partner()
    keys = await _keys(db, box, partner.partner_id)
    for _ in range(3):
        await _ok(client, keys, f"{DASH}/summary")
    status, _ = await _get(client, keys, f"{DASH}/trends?metric=coins")
    assert status == 422
    await _ok(client, keys, "/v1/partner/users")
    # A bad signature names no verified partner: counted nowhere.
    bad = signed(keys, "GET", f"{DASH}/summary")
    bad["X-Signature"] = "0" * 64
    async with client.get(f"{DASH}/summary", headers=bad) as response:
        assert response.status == 401

    counts = await _usage(db, client, keys)
    assert counts == {
        ("partner:dashboard", 200): 3,
        ("partner:dashboard", 422): 1,
        ("partner:users", 200): 1,
    }

    # The api-usage read itself is counted now; folding again adds exactly that one request.
    again = await _usage(db, client, keys)
    assert again == {**counts, ("partner:dashboard", 200): 4}

    # A worker that dies after its commit, before deleting the folding hash: the next fold
    # finds the hash, sees its fold id applied, deletes it and adds nothing twice.
    app = client.server.app
    await app[USAGE].flush(app[REDIS])
    assert await fold_usage(app[REDIS], db, stop_after_commit=True) >= 1
    assert await app[REDIS].exists(FOLDING_KEY) == 1
    assert await fold_usage(app[REDIS], db) == 0
    assert await app[REDIS].exists(FOLDING_KEY) == 0
    final = await _usage(db, client, keys)  # the read of `again`, folded once
    assert final == {**counts, ("partner:dashboard", 200): 5}

    other = await _keys(db, box, partner.partner_id, "production")
    assert (await _ok(client, other, f"{DASH}/api-usage"))["data"] == []


# -- validation -------------------------------------------------------------------------------------


async def test_bad_parameters_are_422(db, box, make_partner, client):
    keys = await _keys(db, box, (await make_partner()).partner_id)
    cases = {
        f"{DASH}/trends?metric=coins": "metric",
        f"{DASH}/trends?interval=month": "interval",
        f"{DASH}/summary?from=yesterday": "from",
        f"{DASH}/summary?from=2026-11-10T00:00:00": "from",  # no offset
        f"{DASH}/summary?from=2026-11-10&to=2026-11-10": "to",
        f"{DASH}/summary?from=2024-01-01&to=2026-01-01": "to",  # over 366 days
        f"{DASH}/top-earners?limit=0": "limit",
        f"{DASH}/top-earners?limit=201": "limit",
        f"{DASH}/top-earners?limit=ten": "limit",
        f"{DASH}/api-usage?to=2026-13-01": "to",
        f"{DASH}/webhook-health?from=2026-11-01&to=2026-11-20": "to",  # over 7 days
    }
    for path, name in cases.items():
        status, body = await _get(client, keys, path)
        assert status == 422, (path, body)
        assert_envelope(body, "VALIDATION_FAILED")
        assert name in body["error"]["details"]["fields"], (path, body)
    assert (await _ok(client, keys, f"{DASH}/top-earners?limit=200"))["limit"] == 200
    # Every bad parameter of a request in one answer.
    status, body = await _get(client, keys, f"{DASH}/trends?metric=x&interval=y&from=z")
    assert status == 422
    assert set(body["error"]["details"]["fields"]) == {"metric", "interval", "from"}
    status, body = await _get(client, keys, f"{DASH}/top-earners?limit=0&to=never")
    assert status == 422
    assert set(body["error"]["details"]["fields"]) == {"limit", "to"}
