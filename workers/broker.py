"""The Dramatiq broker, configured from REDIS_URL when this module is imported, and the retry
policy every actor shares.

Dramatiq binds actors to the global broker at declaration, so `workers.actors` imports this
module first. `redis://` selects the Redis broker; `amqp://` selects RabbitMQ (needs `pika`).

Retries: transient faults (database or Redis unreachable, timeouts, deadlocks) are retried with
exponential backoff; domain errors (`SirError` other than ServiceUnavailable) never are, since
the same input would fail the same way. After MAX_RETRIES a message goes to the dead-letter
queue, where `sir-engine dead-letters` shows and requeues it.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Retries
from dramatiq.middleware.asyncio import AsyncIO
from prometheus_client import Counter
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from engine.db import CONNECT_REFUSED
from engine.errors import ConfigError, ServiceUnavailable, SirError
from engine.faults import dependency_of

QUEUES = ("distribution", "webhooks", "sweeps", "maintenance", "orders")
MAX_RETRIES = 20
MIN_BACKOFF_MS = 1_000
MAX_BACKOFF_MS = 5 * 60_000

DEPENDENCY_ERRORS = Counter(
    "sir_worker_dependency_errors_total",
    "Actor runs that failed on a database or Redis error (retried)",
    ["dependency"],  # database, redis
)


def is_transient(exc: BaseException) -> bool:
    """A fault that may pass by itself: worth retrying the same message later."""
    if isinstance(exc, ServiceUnavailable):
        return True
    if isinstance(exc, SirError):
        return False
    if isinstance(
        exc,
        (
            OperationalError,
            InterfaceError,
            OSError,
            RedisConnectionError,
            RedisTimeoutError,
            TimeoutError,
            *CONNECT_REFUSED,
        ),
    ):
        return True
    if isinstance(exc, DBAPIError):
        # Deadlocks, serialisation failures and connections lost mid-statement.
        name = type(exc.orig).__name__ if exc.orig is not None else ""
        return exc.connection_invalidated or name in {
            "DeadlockDetectedError",
            "SerializationError",
            "LockNotAvailableError",
            "QueryCanceledError",
        }
    return False


def should_retry(retries: int, exc: BaseException) -> bool:
    # Dramatiq asks once per failed run: the place to count the DB-errors alert's failures.
    dependency = dependency_of(exc)
    if dependency is not None:
        DEPENDENCY_ERRORS.labels(dependency).inc()
    return retries <= MAX_RETRIES and is_transient(exc)


def build_broker(url: str) -> dramatiq.Broker:
    if url.startswith("amqp"):
        try:
            from dramatiq.brokers.rabbitmq import RabbitmqBroker
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise ConfigError(
                "REDIS_URL is amqp:// but pika is not installed (pip install pika)"
            ) from exc
        broker: dramatiq.Broker = RabbitmqBroker(url=url)
    else:
        broker = RedisBroker(url=url)
    for middleware in broker.middleware:
        if isinstance(middleware, Retries):
            middleware.retry_when = should_retry
            middleware.min_backoff = MIN_BACKOFF_MS
            middleware.max_backoff = MAX_BACKOFF_MS
    broker.add_middleware(AsyncIO())
    if os.environ.get("SIR_WORKER_METRICS"):
        # Imported only here: the module reads its directory from the environment at import.
        from dramatiq.middleware.prometheus import Prometheus

        broker.add_middleware(Prometheus())
    for queue in QUEUES:
        broker.declare_queue(queue)
    return broker


broker = build_broker(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
dramatiq.set_broker(broker)
