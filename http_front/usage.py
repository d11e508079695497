"""API usage counting in the front: per partner, environment, UTC day, route class and status.

Cheap on the request path: a request only bumps an in-memory counter (no Redis round trip of its
own); a background task adds the counters to Redis (`engine.api_usage.PENDING_KEY`) about once a
second in one pipelined MULTI of HINCRBYs, and once more at shutdown. A flush that fails (Redis
down) keeps its counts for the next one. A process killed outright loses at most its last second
of counts, which is acceptable for usage figures and keeps the hot path free of extra I/O.

Which requests count: those whose partner the authentication identified (`USAGE_SCOPE`, set by
`http_front.auth_partner` once the key is known and, for secret keys, the signature verified),
whatever the answer, so 4xx/429 after identification show too. Unsigned noise that names no
verified partner counts nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from engine.api_usage import PENDING_KEY, field
from engine.scope import Scope
from http_front.keys import REDIS
from http_front.metrics import route_class
from http_front.middlewares import Handler

log = logging.getLogger("sir.http.usage")

FLUSH_SECONDS = 1.0
# request[USAGE_SCOPE]: the identified partner and environment of the request
USAGE_SCOPE = web.RequestKey("sir.usage_scope", Scope)


class UsageCounter:
    """Counts in memory; `flush` moves them to Redis."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._day_number = -1
        self._day = ""

    def _today(self) -> str:
        number = int(time.time() // 86400)
        if number != self._day_number:  # format the date once a day, not per request
            self._day_number = number
            self._day = time.strftime("%Y-%m-%d", time.gmtime(number * 86400))
        return self._day

    def record(self, scope: Scope, klass: str, status: int) -> None:
        self._counts[field(scope.partner_id, scope.environment, self._today(), klass, status)] += 1

    async def flush(self, redis: aioredis.Redis) -> int:
        """Add the counts to Redis; returns how many requests were flushed. On a Redis error the
        counts are kept for the next flush and the error is raised."""
        if not self._counts:
            return 0
        taken, self._counts = self._counts, Counter()
        try:
            async with redis.pipeline(transaction=True) as pipe:
                for name, amount in taken.items():
                    pipe.hincrby(PENDING_KEY, name, amount)
                await pipe.execute()
        except BaseException:
            self._counts.update(taken)
            raise
        return sum(taken.values())


USAGE = web.AppKey("sir.usage", UsageCounter)


@web.middleware
async def usage_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the answer of every identified request (inside the request-id middleware, outside
    the error middleware, so error answers are counted with their real status)."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _count(request, exc.status)
        raise
    _count(request, response.status)
    return response


def _count(request: web.Request, status: int) -> None:
    scope = request.get(USAGE_SCOPE)
    if isinstance(scope, Scope):
        request.app[USAGE].record(scope, route_class(request.path), status)


async def usage_ctx(app: web.Application) -> AsyncIterator[None]:
    """The counter and its flusher; runs after the Redis context (needs `app[REDIS]`)."""
    counter = app[USAGE] = UsageCounter()

    async def flusher() -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await counter.flush(app[REDIS])
            except RedisError as exc:
                log.warning("usage counts not flushed yet: %s", type(exc).__name__)

    task = asyncio.create_task(flusher())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    try:
        await counter.flush(app[REDIS])
    except RedisError as exc:
        log.warning("usage counts lost at shutdown: %s", type(exc).__name__)
