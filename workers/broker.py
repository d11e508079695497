"""The Dramatiq broker, configured from REDIS_URL when this module is imported.

Dramatiq binds actors to the global broker at declaration, so `workers.actors` imports this
module first. `redis://` selects the Redis broker; `amqp://` selects RabbitMQ (needs `pika`).
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware.asyncio import AsyncIO

from engine.errors import ConfigError

QUEUES = ("distribution", "webhooks", "sweeps", "maintenance")


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
    broker.add_middleware(AsyncIO())
    return broker


broker = build_broker(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
dramatiq.set_broker(broker)
