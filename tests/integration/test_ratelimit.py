# ruff: noqa: F811 - pytest fixtures imported from conftest_auth are parameters by design
"""Rate limits on real Redis: the Lua script, and partner budgets shared by two front apps."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from http_front.ratelimit import Verdict, consume, partner_limits
from tests.integration.conftest_auth import (  # noqa: F401 - fixtures
    PROBE,
    assert_envelope,
    client,
    make_credentials,
    probe_app,
    signed,
    start_client,
)


@pytest_asyncio.fixture(loop_scope="session")
async def redis(services):
    client = aioredis.from_url(services.redis_url)
    yield client
    await client.aclose()


def bucket() -> str:
    return f"test:rl:{secrets.token_hex(6)}"


# -- consume(): the script itself --------------------------------------------------------------


async def test_consume_allows_exactly_the_limit_and_counts_down(redis):
    key = bucket()
    verdicts = [await consume(redis, key, [(5, 60)]) for _ in range(7)]
    assert [v.allowed for v in verdicts] == [True] * 5 + [False] * 2
    assert [v.remaining for v in verdicts[:5]] == [4, 3, 2, 1, 0]
    assert all(v.limit == 5 for v in verdicts)
    refused = verdicts[5]
    assert refused.remaining == 0
    # Sliding window: with this slot full, the call passes once the slot has become the previous
    # one and decayed to max - cost: the rest of this slot (<= 60 s) plus 60 x (1 - 4/5) = 12 s.
    # (Bounding it by 60 made the test fail whenever it ran early in a minute.)
    assert 1 <= refused.retry_after <= 72
    assert refused.reset_at >= int(time.time()) + refused.retry_after - 1
    assert all(v.retry_after == 0 for v in verdicts[:5])


async def test_a_refused_call_consumes_nothing(redis):
    key = bucket()
    assert (await consume(redis, key, [(10, 60)], cost=7)).allowed
    refused = await consume(redis, key, [(10, 60)], cost=4)  # 7 + 4 > 10
    assert not refused.allowed
    assert refused.remaining == 3
    fits = await consume(redis, key, [(10, 60)], cost=3)  # the refusal spent nothing
    assert fits.allowed and fits.remaining == 0


async def test_every_window_must_allow_and_the_lowest_remaining_is_reported(redis):
    key = bucket()
    limits = [(100, 3600), (3, 60)]
    verdicts = [await consume(redis, key, limits) for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert [v.limit for v in verdicts] == [100] * 4  # the first (hourly) limit
    assert [v.remaining for v in verdicts] == [2, 1, 0, 0]
    # the minute binds, so the reset is the end of the current minute slot
    now = time.time()
    assert now < verdicts[0].reset_at <= now + 60
    # the hourly window was not charged for the refused call: 97 left there
    hourly_only = await consume(redis, key, [(100, 3600)])
    assert hourly_only.remaining == 100 - 3 - 1


async def test_retry_after_is_when_the_window_lets_the_next_call_through(redis):
    key = bucket()
    limits = [(3, 2)]  # 3 per 2 seconds, so the test can wait it out
    for _ in range(3):
        assert (await consume(redis, key, limits)).allowed
    refused = await consume(redis, key, limits)
    assert not refused.allowed
    assert 1 <= refused.retry_after <= 4
    await asyncio.sleep(refused.retry_after)
    assert (await consume(redis, key, limits)).allowed


async def test_concurrent_callers_never_overspend(redis):
    key = bucket()
    verdicts = await asyncio.gather(*(consume(redis, key, [(25, 60)]) for _ in range(100)))
    assert sum(v.allowed for v in verdicts) == 25
    assert sorted(v.remaining for v in verdicts if v.allowed) == list(range(25))


def test_verdict_headers():
    allowed = Verdict(True, 1000, 99, 1767225660, 0)
    assert allowed.headers() == {
        "X-RateLimit-Limit": "1000",
        "X-RateLimit-Remaining": "99",
        "X-RateLimit-Reset": "1767225660",
    }
    refused = Verdict(False, 1000, 0, 1767225612, 12)
    assert refused.headers()["Retry-After"] == "12"
    assert refused.headers()["X-RateLimit-RetryAfter"] == "12"


@pytest.mark.parametrize(
    "tier, override, expected",
    [
        ("STANDARD", None, [(1000, 3600), (100, 60)]),
        ("PROFESSIONAL", None, [(5000, 3600), (500, 60)]),
        ("ENTERPRISE", None, [(20000, 3600), (2000, 60)]),
        ("STANDARD", {"perHour": 50, "perMinute": 10}, [(50, 3600), (10, 60)]),
        ("ENTERPRISE", {"perMinute": 10}, [(20000, 3600), (10, 60)]),
        ("STANDARD", {"perHour": "lots", "perMinute": 0}, [(1000, 3600), (100, 60)]),
    ],
)
def test_partner_limits(tier, override, expected):
    assert partner_limits(tier, override) == expected


# -- partner budgets through two front apps sharing one Redis ----------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def two_fronts(settings, client):  # `client` sets the replay epoch for the module
    first = await start_client(probe_app(settings))
    second = await start_client(probe_app(settings))
    yield first, second
    await first.close()
    await second.close()


async def test_a_burst_across_two_fronts_gets_exactly_the_limit(two_fronts, make_credentials):
    # given a partner allowed 10 per minute, and two front processes on one Redis
    creds = await make_credentials(rate_limit_override={"perHour": 1000, "perMinute": 10})

    async def call(i: int):
        front = two_fronts[i % 2]
        response = await front.get(PROBE, headers=signed(creds.keys, "GET", PROBE))
        return response, await response.json()

    # when 3x the limit arrives at once, half through each front
    results = await asyncio.gather(*(call(i) for i in range(30)))

    # then exactly the limit goes through, and the rest is refused with the retry headers
    ok = [r for r, _ in results if r.status == 200]
    refused = [(r, body) for r, body in results if r.status != 200]
    assert len(ok) == 10
    assert len(refused) == 20
    for response, body in refused:
        assert response.status == 429
        assert_envelope(body, "RATE_LIMITED")
        assert int(response.headers["Retry-After"]) >= 1
        assert response.headers["X-RateLimit-RetryAfter"] == response.headers["Retry-After"]
        assert response.headers["X-RateLimit-Limit"] == "1000"
        assert response.headers["X-RateLimit-Remaining"] == "0"
    assert sorted(int(r.headers["X-RateLimit-Remaining"]) for r in ok) == list(range(10))


async def test_remaining_counts_down_across_fronts_and_keys(two_fronts, make_credentials):
    # given two keys of one partner (every key shares the partner's budget)
    creds = await make_credentials(rate_limit_override={"perHour": 50, "perMinute": 5})
    other = await make_credentials(partner_id=creds.partner_id)
    seen = []
    for i in range(6):
        keys = (creds, other)[i % 2].keys
        response = await two_fronts[i % 2].get(PROBE, headers=signed(keys, "GET", PROBE))
        seen.append((response.status, response.headers["X-RateLimit-Remaining"]))
        assert response.headers["X-RateLimit-Limit"] == "50"
    assert seen == [(200, "4"), (200, "3"), (200, "2"), (200, "1"), (200, "0"), (429, "0")]


async def test_environments_have_separate_budgets(two_fronts, make_credentials):
    sandbox = await make_credentials(rate_limit_override={"perMinute": 2})
    live = await make_credentials(partner_id=sandbox.partner_id, environment="production")
    front = two_fronts[0]
    statuses = [
        (await front.get(PROBE, headers=signed(sandbox.keys, "GET", PROBE))).status
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    response = await front.get(PROBE, headers=signed(live.keys, "GET", PROBE))
    assert response.status == 200
    assert response.headers["X-RateLimit-Remaining"] == "1"


async def test_a_rate_limited_write_is_not_recorded_as_seen(two_fronts, make_credentials, redis):
    # a 429 refuses before the replay record: the same signed write may come back later
    creds = await make_credentials(rate_limit_override={"perMinute": 1})
    body = b'{"a":1}'
    front = two_fronts[0]
    assert (await front.get(PROBE, headers=signed(creds.keys, "GET", PROBE))).status == 200
    headers = signed(creds.keys, "POST", PROBE, body)
    limited = await front.post(PROBE, data=body, headers=headers)
    assert limited.status == 429
    assert await redis.keys(f"sir:replay:{creds.keys.id}:*") == []
