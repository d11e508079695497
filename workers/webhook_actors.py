"""Webhook delivery actors: send one attempt of a delivery, and pick up the deliveries due.

The database is the source of truth (`engine.webhooks`): a `deliver_webhook` message only says
"look at delivery X now". The actor claims and plans the attempt in one transaction, posts it,
and records the result in another; a failed attempt's retry time is written to the row, and the
`webhook_pickup` tick finds it when due. No Dramatiq delayed messages, so a Redis restart loses
nothing: at worst a delivery waits for the next tick (or its claim's lease) and goes out again.

Environment:
- SIR_WEBHOOK_PICKUP_SECONDS (default 5): how often the pick-up tick runs.
- SIR_WEBHOOK_LEASE_SECONDS (default 60): how long a claimed delivery waits before it counts as
  lost and is picked up again (a killed worker, a message lost with Redis).
- SIR_WEBHOOK_RETRY_SCALE (default 1): multiplies the retry schedule (tests use 0.01, so the
  first retry comes after ~50 ms instead of ~5 s). Never set it in production.

Destinations: with SIR_WEBHOOK_ALLOW_PRIVATE off, the host is resolved here and every address
must be public (`engine.webhooks.destination_problem`); the session's resolver checks again what
it connects to, so a DNS answer that changes between the two checks cannot reach inside.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import aiohttp
import dramatiq
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from prometheus_client import Counter, Histogram

from engine.crypto import SecretBox
from engine.webhooks import (
    EXCERPT_CHARS,
    SUCCESS_WITHIN_MS,
    AttemptPlan,
    AttemptResult,
    destination_problem,
    due_deliveries,
    next_attempt,
    record_attempt,
)
from workers import runtime
from workers.broker import broker  # noqa: F401 - configures the global broker first
from workers.ticks import Tick

log = logging.getLogger("sir.workers.webhooks")

PICKUP_BATCH = 500
NOT_ALLOWED = "destination not allowed"

ATTEMPTS = Counter(
    "sir_webhook_attempts_total",
    "Webhook delivery attempts by outcome",
    ["outcome"],  # succeeded, http_error, timeout, connection_error, not_allowed
)
LATENCY = Histogram(
    "sir_webhook_attempt_seconds",
    "Webhook delivery attempt latency (request sent to response read)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10),
)


def retry_scale() -> float:
    return float(os.environ.get("SIR_WEBHOOK_RETRY_SCALE", "1"))


def lease() -> timedelta:
    """How long a claimed delivery is left alone before it counts as lost (a worker killed
    mid-attempt, a message lost with Redis): SIR_WEBHOOK_LEASE_SECONDS, default 60."""
    return timedelta(seconds=float(os.environ.get("SIR_WEBHOOK_LEASE_SECONDS", "60")))


# -- per-process resources ------------------------------------------------------------------------


class PublicOnlyResolver(AbstractResolver):
    """aiohttp resolver that drops non-public addresses, so what is connected to was checked."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if destination_problem(r["host"]) is None]
        if not allowed:
            raise OSError(f"{host} resolves to no public address")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


_session: aiohttp.ClientSession | None = None
_box: SecretBox | None = None


def http_session() -> aiohttp.ClientSession:
    """This process's client session, made on first use on the worker's event loop (a session
    belongs to the loop that created it)."""
    global _session
    if _session is None or _session.closed:
        resolver = None if runtime.settings().webhook_allow_private else PublicOnlyResolver()
        connector = aiohttp.TCPConnector(limit=100, limit_per_host=10, resolver=resolver)
        _session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=SUCCESS_WITHIN_MS / 1000),
            # Headers are exactly the plan's: no Accept-Encoding games, no cookies kept.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
        )
    return _session


def secret_box() -> SecretBox:
    global _box
    if _box is None:
        _box = SecretBox(runtime.settings().master_key)
    return _box


# -- one attempt ----------------------------------------------------------------------------------


Resolve = Callable[[str, int], Awaitable[list[str]]]


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host` (IP literals resolve to themselves)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(sockaddr[0]) for *_, sockaddr in infos]


async def destination_refused(url: str, resolve: Resolve = system_resolve) -> str | None:
    """Why the URL's host may not be delivered to now, or None. Resolves host names: one
    non-public address among the answers refuses the whole name (a resolver may rotate)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = await resolve(host, port)
    except OSError:
        return None  # unresolvable: the request fails as a connection error, which is retried
    for address in addresses:
        problem = destination_problem(address)
        if problem is not None:
            return f"{NOT_ALLOWED}: {host} resolves to {address} ({problem})"
    return None


async def send(plan: AttemptPlan) -> AttemptResult:
    """POST the plan once: 5 s in all, redirects not followed. Never raises for the receiver's
    faults; they are the result."""
    refused = (
        None if runtime.settings().webhook_allow_private else await destination_refused(plan.url)
    )
    if refused is not None:
        ATTEMPTS.labels("not_allowed").inc()
        return AttemptResult(status_code=None, latency_ms=0, error=refused)
    started = time.monotonic()
    try:
        async with http_session().post(
            plan.url, data=plan.body, headers=plan.headers, allow_redirects=False
        ) as response:
            raw = await response.content.read(EXCERPT_CHARS * 4)
            status = response.status
        elapsed = time.monotonic() - started
    except TimeoutError:
        elapsed = time.monotonic() - started
        ATTEMPTS.labels("timeout").inc()
        LATENCY.observe(elapsed)
        return AttemptResult(None, int(elapsed * 1000), f"no answer within {SUCCESS_WITHIN_MS} ms")
    except (aiohttp.ClientError, OSError) as exc:
        elapsed = time.monotonic() - started
        ATTEMPTS.labels("connection_error").inc()
        LATENCY.observe(elapsed)
        detail = str(exc) or type(exc).__name__
        return AttemptResult(None, int(elapsed * 1000), f"{type(exc).__name__}: {detail}"[:500])
    LATENCY.observe(elapsed)
    ATTEMPTS.labels("succeeded" if 200 <= status < 300 else "http_error").inc()
    excerpt = raw.decode("utf-8", errors="replace")[:EXCERPT_CHARS] or None
    return AttemptResult(status, int(elapsed * 1000), None, excerpt)


@dramatiq.actor(queue_name="webhooks", time_limit=60 * 1000)
async def deliver_webhook(delivery_id: str) -> None:
    """Make one attempt of delivery `delivery_id` if it is due (idempotent: a delivery not due,
    already claimed, finished or gone is left alone)."""
    db = runtime.database()
    async with db.begin() as conn:
        plan = await next_attempt(conn, secret_box(), delivery_id, datetime.now(UTC), lease=lease())
    if plan is None:
        return
    result = await send(plan)
    async with db.begin() as conn:
        outcome = await record_attempt(
            conn, delivery_id, result, datetime.now(UTC), retry_scale=retry_scale()
        )
    if outcome is not None:
        # A success per delivery at INFO floods the logs at volume (and costs CPU); failures
        # stay visible.
        log.log(
            logging.DEBUG if outcome.status == "SUCCEEDED" else logging.INFO,
            "delivery %s attempt %d: %s -> %s",
            delivery_id,
            plan.attempt_number,
            result.status_code if result.status_code is not None else result.error,
            outcome.status,
        )
        if outcome.endpoint_disabled:
            log.warning("endpoint %s disabled: %s", plan.endpoint_id, outcome.endpoint_disabled)


def _enqueue(delivery_ids: list[str]) -> None:
    for delivery_id in delivery_ids:
        deliver_webhook.send(delivery_id)


@dramatiq.actor(queue_name="webhooks", time_limit=60 * 1000)
async def pick_up_due_deliveries() -> None:
    """Enqueue an attempt for every delivery due now (new, retry time reached, replayed, or
    lost with Redis). The claim commits before the messages go; a message lost after that is
    made up for when the claim's lease passes."""
    async with runtime.database().begin() as conn:
        ids = await due_deliveries(conn, datetime.now(UTC), PICKUP_BATCH, lease=lease())
    if ids:
        # redis-py is blocking: keep the worker's event loop free for other attempts.
        await asyncio.get_running_loop().run_in_executor(None, _enqueue, ids)
        log.info("picked up %d due deliveries", len(ids))


TICKS = [
    Tick(
        "webhook_pickup",
        float(os.environ.get("SIR_WEBHOOK_PICKUP_SECONDS", "5")),
        pick_up_due_deliveries.send,
    )
]
